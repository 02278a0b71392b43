//! A private Kafka-protocol broker (tansu, memory store) for tests that need a topic of their
//! own or must see the broker stop.
//!
//! [`PrivateKafkaBroker::start_new`] runs `tansu broker` (from `$WEIR_TANSU_BIN`, which
//! `scripts/dev.sh up` writes to `.weir/env`, else `~/.cache/weir/tansu-0.6.0/bin/tansu`) on a
//! free 127.0.0.1 port with the memory storage engine. The memory store forgets every topic
//! and offset when the broker stops. Dropping the handle kills the process. Without the binary,
//! `start_new` panics saying how to install it (`./scripts/dev.sh up` builds it once).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for the broker to accept connections.
const WAIT: Duration = Duration::from_secs(15);

/// A tansu broker process owned by one test.
#[derive(Debug)]
pub struct PrivateKafkaBroker {
    binary: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

fn find_binary() -> PathBuf {
    let candidate = std::env::var_os("WEIR_TANSU_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("WEIR_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir")));
            cache.map(|c| c.join("tansu-0.6.0/bin/tansu"))
        });
    match candidate {
        Some(p) if p.exists() => p,
        other => panic!(
            "the tansu Kafka broker was not found (looked at {other:?}: $WEIR_TANSU_BIN, else \
             ~/.cache/weir/tansu-0.6.0/bin/tansu)\n  -> run ./scripts/dev.sh up (it builds tansu \
             once with cargo install) and load .weir/env"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free 127.0.0.1 port: {e}"))
}

impl PrivateKafkaBroker {
    /// Starts a new broker on a free port and waits until it accepts connections.
    pub fn start_new() -> Self {
        let log =
            std::env::temp_dir().join(format!("weir-tansu-{}.log", crate::unique_namespace()));
        let mut b = Self {
            binary: find_binary(),
            port: free_port(),
            log,
            child: None,
        };
        b.start();
        b
    }

    /// The bootstrap address, `127.0.0.1:<port>`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the broker (again, empty: memory store) on the same port. Does nothing when it
    /// is running.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{}: {e}", self.log.display()));
        let err = out.try_clone().unwrap();
        let child = Command::new(&self.binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!(
                    "tansu on port {} exited at start ({status}):\n{}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tansu on port {} not accepting connections within {WAIT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker and waits for it (its memory store is gone with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateKafkaBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
