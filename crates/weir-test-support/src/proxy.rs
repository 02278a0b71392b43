//! A fault-injection TCP proxy for tests: forward to a target, then cut, restore or
//! blackhole the link without touching the real server.
//!
//! ```no_run
//! # async fn demo() {
//! let proxy = weir_test_support::proxy::TcpProxy::start("127.0.0.1:17687").await.unwrap();
//! let uri = format!("bolt://{}", proxy.addr()); // point the client here
//! proxy.cut();            // live connections closed, new ones refused
//! proxy.restore().await.unwrap(); // accepting again on the same port
//! proxy.blackhole();      // connections accepted (and kept) but nothing is forwarded
//! # let _ = uri; }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Bytes flow both ways.
    Forward,
    /// Listener closed (connects are refused) and every live connection closed.
    Cut,
    /// Connects are accepted and sockets stay open, but no byte is forwarded either way.
    Blackhole,
}

struct Shared {
    target: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    /// Bumped by `cut()`: every connection of an older generation closes.
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
    live: AtomicU64,
}

/// A TCP proxy on `127.0.0.1:<random port>` forwarding to one target.
/// Dropping it closes the listener and every connection.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Starts forwarding from a fresh local port to `target` (e.g. `127.0.0.1:17687`).
    pub async fn start(target: &str) -> std::io::Result<Self> {
        let target = tokio::net::lookup_host(target)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "target has no address")
            })?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            mode: watch::Sender::new(ProxyMode::Forward),
            generation: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            live: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept_task: Mutex::new(Some(task)),
        })
    }

    /// The proxy's address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A Bolt URI pointing at the proxy.
    pub fn bolt_uri(&self) -> String {
        format!("bolt://{}", self.addr)
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.shared.mode.borrow()
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn live(&self) -> u64 {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Closes every live connection and stops listening, so new connects are refused.
    pub fn cut(&self) {
        self.shared.mode.send_replace(ProxyMode::Cut);
        if let Some(task) = self.lock_task().take() {
            task.abort();
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again; after a `cut()` listens again on the same port.
    pub async fn restore(&self) -> std::io::Result<()> {
        let needs_listener = self.lock_task().is_none();
        if needs_listener {
            // The aborted accept task drops its listener asynchronously: retry briefly.
            let mut tries = 0;
            let listener = loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let task = tokio::spawn(accept_loop(listener, self.shared.clone()));
            *self.lock_task() = Some(task);
        }
        self.shared.mode.send_replace(ProxyMode::Forward);
        Ok(())
    }

    /// Accepts connections and keeps them open but forwards nothing (live ones stall too):
    /// the client sees a server that never answers. `restore()` resumes forwarding.
    pub fn blackhole(&self) {
        self.shared.mode.send_replace(ProxyMode::Blackhole);
    }

    fn lock_task(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.accept_task.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.lock_task().take() {
            task.abort();
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // E.g. out of file descriptors: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(handle(client, shared.clone()));
    }
}

async fn handle(client: TcpStream, shared: Arc<Shared>) {
    let mut gen_rx = shared.generation.subscribe();
    let my_gen = *gen_rx.borrow_and_update();
    shared.live.fetch_add(1, Ordering::SeqCst);
    let _live = LiveGuard(&shared.live);
    let cut = async {
        let _ = gen_rx.wait_for(|g| *g != my_gen).await;
    };
    let work = async {
        // Until forwarding is allowed (blackhole), hold the client without connecting.
        let mut mode_rx = shared.mode.subscribe();
        if mode_rx
            .wait_for(|m| *m == ProxyMode::Forward)
            .await
            .is_err()
        {
            return;
        }
        let Ok(server) = TcpStream::connect(shared.target).await else {
            return;
        };
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::select! {
            () = pump(cr, sw, shared.mode.subscribe()) => {}
            () = pump(sr, cw, shared.mode.subscribe()) => {}
        }
    };
    tokio::select! {
        () = cut => {}
        () = work => {}
    }
}

struct LiveGuard<'a>(&'a AtomicU64);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`; while blackholed, stops reading (data stalls, nothing is lost).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if mode.wait_for(|m| *m == ProxyMode::Forward).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Re-check the mode if it changes while we wait for data.
            _ = mode.changed() => continue,
        };
        // Data read just as the mode flipped to blackhole is held until forwarding resumes.
        if mode.wait_for(|m| *m == ProxyMode::Forward).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn forwards_cuts_refuses_restores_on_same_port() {
        let target = echo_server().await;
        let proxy = TcpProxy::start(&target.to_string()).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"hello").await.unwrap(), b"hello");
        assert_eq!(proxy.live(), 1);

        proxy.cut();
        assert_eq!(proxy.mode(), ProxyMode::Cut);
        // The live connection is closed: reads see EOF or an error, never data.
        let mut buf = [0u8; 8];
        let _ = c.write_all(b"x").await;
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("cut connection must not hang");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // New connects are refused.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = TcpStream::connect(proxy.addr()).await;
        assert!(refused.is_err(), "connect after cut must be refused");

        proxy.restore().await.unwrap();
        let mut c2 = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c2, b"again").await.unwrap(), b"again");
        assert_eq!(proxy.mode(), ProxyMode::Forward);
    }

    #[tokio::test]
    async fn blackhole_accepts_but_never_answers_then_resumes() {
        let target = echo_server().await;
        let proxy = TcpProxy::start(&target.to_string()).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut live, b"ok").await.unwrap(), b"ok");

        proxy.blackhole();
        let mut fresh = TcpStream::connect(proxy.addr())
            .await
            .expect("blackhole still accepts");
        for s in [&mut live, &mut fresh] {
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
            assert!(r.is_err(), "blackholed connection answered: {r:?}");
        }

        proxy.restore().await.unwrap();
        // What was sent during the blackhole is delivered once forwarding resumes.
        for s in [&mut live, &mut fresh] {
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .expect("resumed")
                .unwrap();
            assert_eq!(&buf, b"ping");
        }
    }

    #[tokio::test]
    async fn drop_closes_everything() {
        let target = echo_server().await;
        let proxy = TcpProxy::start(&target.to_string()).await.unwrap();
        let addr = proxy.addr();
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"a").await.unwrap(), b"a");
        drop(proxy);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("dropped proxy closes connections");
        assert!(matches!(r, Ok(0) | Err(_)));
    }
}
