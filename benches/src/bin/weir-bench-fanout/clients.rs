//! The load generator's WebSocket clients (graphql-transport-ws), as tasks in this process.
//!
//! Each client connects, sends `connection_init` with the API key, waits for
//! `connection_ack`, subscribes to `graphChanges` for the run's label and then reads: every
//! `next` carries the publish time (`properties.sent_us`, µs since the Unix epoch), so the
//! delivery latency is the receive time minus it. Pings are answered. A client leaves either
//! cleanly (`complete`, then a close frame) or abruptly (TCP RST: zero linger, then drop).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::gateway::API_KEY;
use weir_benches::hist::Histogram;

/// The client's WebSocket read buffer.
const CLIENT_READ_BUFFER: usize = 8 * 1024;

/// How long a client waits for the handshake and `connection_ack`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters shared by every client of a scenario.
pub(crate) struct Shared {
    /// Delivery latencies.
    pub(crate) hist: Histogram,
    /// `next` messages received.
    pub(crate) received: AtomicU64,
    /// Clients that sent their `subscribe`.
    pub(crate) subscribed: AtomicU64,
    /// Connections or handshakes that failed.
    pub(crate) failed: AtomicU64,
    /// Sockets the server closed (or that broke) while the client meant to stay.
    pub(crate) ended_early: AtomicU64,
    /// `error` / `complete` messages from the server for a live subscription.
    pub(crate) op_errors: AtomicU64,
    /// Clean leaves (`complete` + close frame).
    pub(crate) clean_leaves: AtomicU64,
    /// Abrupt leaves (TCP reset).
    pub(crate) abrupt_leaves: AtomicU64,
    /// Latest receive time, µs since the Unix epoch.
    pub(crate) last_receive_us: AtomicU64,
    /// The first unexpected end or server error seen, for the report.
    pub(crate) first_close: OnceLock<String>,
}

impl Shared {
    /// Fresh counters.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            hist: Histogram::new(),
            received: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ended_early: AtomicU64::new(0),
            op_errors: AtomicU64::new(0),
            clean_leaves: AtomicU64::new(0),
            abrupt_leaves: AtomicU64::new(0),
            last_receive_us: AtomicU64::new(0),
            first_close: OnceLock::new(),
        })
    }

    /// Clears the delivery counters (between load steps).
    pub(crate) fn reset_deliveries(&self) {
        self.hist.reset();
        self.received.store(0, Ordering::Relaxed);
        self.last_receive_us.store(0, Ordering::Relaxed);
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

type Ws = WebSocketStream<TcpStream>;

/// The subscription every client starts (operation id `id`; ids are 1, 2, … per client).
fn subscribe_message(label: &str, id: usize) -> String {
    let query = format!(
        "subscription {{ graphChanges(labels: [\"{label}\"]) {{ seq index key properties missed }} }}"
    );
    serde_json::json!({"type": "subscribe", "id": id.to_string(), "payload": {"query": query}})
        .to_string()
}

/// Connects, initialises (API key in `connection_init`) and subscribes.
pub(crate) async fn open(addr: SocketAddr, label: &str) -> anyhow::Result<Ws> {
    open_from(addr, None, label, 1).await
}

/// Clients per loopback source address: below the 28,232 ephemeral ports of Linux's default
/// `ip_local_port_range` (32768–60999), which bound the connections from one source address
/// to one gateway address.
pub(crate) const CLIENTS_PER_SOURCE: usize = 20_000;

/// The source address of client `i` of `clients` towards `addr`: `None` (the kernel picks)
/// unless more than [`CLIENTS_PER_SOURCE`] clients connect to a loopback address, in which case
/// client `i` binds to `127.0.0.(1 + i mod n)` with `n` the sources needed (any 127/8 address
/// is local on Linux).
pub(crate) fn source_for(addr: SocketAddr, i: usize, clients: usize) -> Option<std::net::IpAddr> {
    let sources = clients.div_ceil(CLIENTS_PER_SOURCE);
    (sources > 1 && addr.ip().is_loopback())
        .then(|| std::net::IpAddr::from([127, 0, 0, 1 + (i % sources.min(250)) as u8]))
}

/// Like [`open`], from `source` (port picked by the kernel) when given, with `subs` identical
/// subscriptions (operation ids 1..=subs) on the one connection.
pub(crate) async fn open_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    label: &str,
    subs: usize,
) -> anyhow::Result<Ws> {
    let handshake = async {
        let tcp = match source {
            None => TcpStream::connect(addr).await.context("TCP connect")?,
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .with_context(|| format!("binding to {ip}"))?;
                socket.connect(addr).await.context("TCP connect")?
            }
        };
        tcp.set_nodelay(true)?;
        let mut req = format!("ws://{addr}/graphql/ws").into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws"
                .parse()
                .expect("a valid header value"),
        );
        // tungstenite zero-fills its whole read buffer (default 128 KiB) before every read;
        // deliveries are a few hundred bytes, so a small buffer saves this process that memset
        // per message (larger frames still grow the buffer as needed).
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
            .await
            .context("WebSocket handshake")?;
        let init = serde_json::json!({
            "type": "connection_init",
            "payload": {"Authorization": format!("Bearer {API_KEY}")},
        });
        ws.send(Message::Text(init.to_string().into())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t)?;
                    match v["type"].as_str() {
                        Some("connection_ack") => break,
                        Some("ping") => {
                            ws.send(Message::Text(r#"{"type":"pong"}"#.into())).await?;
                        }
                        _ => bail!("expected connection_ack, got {t}"),
                    }
                }
                Some(Ok(Message::Close(f))) => bail!("closed during init: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("socket ended during init"),
            }
        }
        for id in 1..=subs.max(1) {
            ws.send(Message::Text(subscribe_message(label, id).into()))
                .await?;
        }
        Ok::<_, anyhow::Error>(ws)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .context("handshake timed out")?
}

/// Extracts the publish time from a `next` message without a full JSON parse.
fn sent_us(text: &str) -> Option<u64> {
    let at = text.find("\"sent_us\":")? + "\"sent_us\":".len();
    let digits: &str = text[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse().ok()
}

/// What one received frame meant.
enum Frame {
    Delivery,
    Other,
    Ended,
}

async fn on_message(ws: &mut Ws, shared: &Shared, m: Option<Result<Message, WsError>>) -> Frame {
    match m {
        Some(Ok(Message::Text(t))) => {
            if let Some(sent) = sent_us(&t) {
                let now = now_us();
                shared.hist.record(now.saturating_sub(sent));
                shared.received.fetch_add(1, Ordering::Relaxed);
                shared.last_receive_us.fetch_max(now, Ordering::Relaxed);
                return Frame::Delivery;
            }
            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
            match v["type"].as_str() {
                Some("ping")
                    if ws
                        .send(Message::Text(r#"{"type":"pong"}"#.into()))
                        .await
                        .is_err() =>
                {
                    return Frame::Ended;
                }
                Some("error" | "complete") => {
                    shared.op_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = shared.first_close.set(format!("server message: {t}"));
                }
                _ => {}
            }
            Frame::Other
        }
        Some(Ok(Message::Close(f))) => {
            let _ = shared.first_close.set(format!("close frame: {f:?}"));
            Frame::Ended
        }
        Some(Ok(_)) => Frame::Other,
        Some(Err(e)) => {
            let _ = shared.first_close.set(format!("socket error: {e}"));
            Frame::Ended
        }
        None => {
            let _ = shared.first_close.set("socket ended".into());
            Frame::Ended
        }
    }
}

/// Leaves cleanly: `complete` for each of its `subs` operations, a close frame, then waits
/// (bounded) for the server's close.
async fn leave_clean(mut ws: Ws, subs: usize) {
    for id in 1..=subs.max(1) {
        let _ = ws
            .send(Message::Text(
                format!(r#"{{"type":"complete","id":"{id}"}}"#).into(),
            ))
            .await;
    }
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Leaves abruptly: the socket is reset (zero linger) without a close frame.
fn leave_abrupt(ws: Ws) {
    let _ = ws.get_ref().set_zero_linger();
    drop(ws);
}

/// A client (with `subs` subscriptions) that stays until `stop` turns true, then leaves cleanly.
pub(crate) async fn run_steady(
    ws: Ws,
    subs: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = ws;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => {
                if let Frame::Ended = on_message(&mut ws, &shared, m).await {
                    shared.ended_early.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    leave_clean(ws, subs).await;
    shared.clean_leaves.fetch_add(1, Ordering::Relaxed);
}

/// A churning client: connect, subscribe, stay a little (reading), leave (alternately clean
/// and abrupt), again, until `stop` turns true.
pub(crate) async fn run_churn(
    addr: SocketAddr,
    label: String,
    seed: u64,
    stay: (Duration, Duration),
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut round = 0u64;
    while !*stop.borrow() {
        let ws = tokio::select! {
            _ = stop.changed() => return,
            r = open(addr, &label) => r,
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        shared.subscribed.fetch_add(1, Ordering::Relaxed);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let span = stay.1.saturating_sub(stay.0).as_millis().max(1) as u64;
        let dwell = stay.0 + Duration::from_millis(rng % span);
        let deadline = tokio::time::Instant::now() + dwell;
        let mut alive = true;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                _ = stop.changed() => break,
                m = ws.next() => {
                    if let Frame::Ended = on_message(&mut ws, &shared, m).await {
                        shared.ended_early.fetch_add(1, Ordering::Relaxed);
                        alive = false;
                        break;
                    }
                }
            }
        }
        if alive {
            if (seed + round).is_multiple_of(2) {
                leave_clean(ws, 1).await;
                shared.clean_leaves.fetch_add(1, Ordering::Relaxed);
            } else {
                leave_abrupt(ws);
                shared.abrupt_leaves.fetch_add(1, Ordering::Relaxed);
            }
        }
        round += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_publish_time_in_a_next_message() {
        let m = r#"{"id":"1","payload":{"data":{"graphChanges":{"seq":3,"index":0,"key":"7","properties":{"i":7,"sent_us":1700000000123456},"missed":0}}},"type":"next"}"#;
        assert_eq!(sent_us(m), Some(1_700_000_000_123_456));
        assert_eq!(sent_us(r#"{"type":"ping"}"#), None);
    }

    #[test]
    fn many_loopback_clients_spread_over_source_addresses() {
        let gw: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(source_for(gw, 7, 10_000), None);
        assert_eq!(source_for(gw, 0, 50_000), Some([127, 0, 0, 1].into()));
        assert_eq!(source_for(gw, 4, 50_000), Some([127, 0, 0, 2].into()));
        assert_eq!(
            source_for("10.0.0.1:9000".parse().unwrap(), 4, 50_000),
            None
        );
    }

    #[test]
    fn the_subscription_names_the_label() {
        let v: serde_json::Value = serde_json::from_str(&subscribe_message("Bench_x", 1)).unwrap();
        assert_eq!(v["type"], "subscribe");
        assert!(
            v["payload"]["query"]
                .as_str()
                .unwrap()
                .contains("[\"Bench_x\"]")
        );
    }
}
