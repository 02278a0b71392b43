//! A private `nats-server -js` for tests that must see NATS stop and come back.
//!
//! [`PrivateNatsServer::start_new`] runs `nats-server` (from `$WEIR_NATS_SERVER`, else
//! `/usr/sbin/nats-server`, else `nats-server` on `PATH`) on a free 127.0.0.1 port with
//! JetStream and a temporary store directory. [`PrivateNatsServer::stop`] ends it gracefully
//! (SIGTERM, so JetStream flushes its store) and [`PrivateNatsServer::start`] brings it back
//! on the same port with the same store. Dropping the handle kills the process and deletes
//! the store. Without the binary, `start_new` panics with a message saying how to install it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for the server to accept connections or to exit.
const WAIT: Duration = Duration::from_secs(15);

/// A `nats-server` process owned by one test.
pub struct PrivateNatsServer {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    /// A config file (`-c`) with extra server settings, when started with one.
    config: Option<PathBuf>,
    child: Option<Child>,
}

fn find_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let sbin = Path::new("/usr/sbin/nats-server");
    if sbin.exists() {
        return sbin.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nats-server"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found (looked at $WEIR_NATS_SERVER, /usr/sbin/nats-server, PATH)\n  \
                 -> install it (`apt-get install nats-server`) or set WEIR_NATS_SERVER"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free 127.0.0.1 port: {e}"))
}

impl PrivateNatsServer {
    /// Like [`Self::start_new`], with `settings` (nats-server config syntax, e.g.
    /// `max_payload: 65536`) in a config file the server reads at every start.
    pub fn start_new_with(settings: &str) -> Self {
        let mut server = Self::start_new_stopped();
        let config = server.store.join("server.conf");
        std::fs::write(&config, settings)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        server.config = Some(config);
        server.start();
        server
    }

    /// Starts a new server with JetStream on a free port and an empty store.
    pub fn start_new() -> Self {
        let mut server = Self::start_new_stopped();
        server.start();
        server
    }

    fn start_new_stopped() -> Self {
        let store = std::env::temp_dir().join(format!("weir-nats-{}", crate::unique_namespace()));
        std::fs::create_dir_all(&store)
            .unwrap_or_else(|e| panic!("creating NATS store {}: {e}", store.display()));
        Self {
            binary: find_binary(),
            port: free_port(),
            store,
            config: None,
            child: None,
        }
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across stop/start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server (again) on the same port and store, and waits until it accepts
    /// connections. Does nothing when it is running.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut cmd = Command::new(&self.binary);
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let child = cmd
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!(
                    "nats-server on port {} exited at start ({status}); is the port taken?",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} not accepting connections within {WAIT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL if it has not exited within 15 s) and
    /// waits until it has exited. The port and store are kept for [`Self::start`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        if term.map(|s| s.success()).unwrap_or(false) {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateNatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
