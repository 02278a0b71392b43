//! Helpers for the service tests: child processes, a raw HTTP client, a graphql-transport-ws
//! client.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const KEY: &str = "svc-test-key-0123456789";
pub const WAIT: Duration = Duration::from_secs(45);

pub use weir_test_support::process::free_port;

/// The `weir-ingestd` binary (it belongs to another package, so Cargo gives this test no
/// path to it). A workspace test run (`cargo nextest run --workspace`, as CI does, or
/// `-p weir-gatewayd -p weir-ingestd`) has just built it beside `weir-gatewayd` for
/// weir-ingestd's own tests, and that one is used. Only when it is missing is it built here
/// — with this package's feature set, which rebuilds many dependencies (slow, and more disk).
pub fn ingestd_bin() -> PathBuf {
    let gw = PathBuf::from(env!("CARGO_BIN_EXE_weir-gatewayd"));
    let bin = gw.with_file_name("weir-ingestd");
    if bin.is_file() {
        return bin;
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "weir-ingestd", "--bin", "weir-ingestd"])
        .status()
        .expect("running cargo build for weir-ingestd");
    assert!(status.success(), "cargo build -p weir-ingestd failed");
    assert!(bin.is_file(), "weir-ingestd not found at {}", bin.display());
    bin
}

/// A service child process, killed on drop.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY-free: libc::kill is a plain syscall wrapper; the pid is our own child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "service did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Environment shared by the services of one test: the test graph server and NATS, its own bus
/// stream and subjects (`weir_test_support::process::service_env`), the API key, warn logs.
pub fn base_env(cmd: &mut Command, stream: &str) {
    weir_test_support::process::service_env(cmd, stream)
        .env("WEIR_API_KEYS", KEY)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
}

pub fn spawn_gatewayd(stream: &str, port: u16) -> Service {
    spawn_gatewayd_with(stream, port, &[], &[])
}

/// Like [`spawn_gatewayd`], with extra environment (applied last) and arguments.
pub fn spawn_gatewayd_with(
    stream: &str,
    port: u16,
    env: &[(&str, String)],
    args: &[String],
) -> Service {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-gatewayd"));
    base_env(&mut cmd, stream);
    cmd.env("WEIR_BIND", format!("127.0.0.1:{port}"));
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args);
    Service {
        child: cmd.spawn().expect("spawning weir-gatewayd"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

pub fn spawn_ingestd(bin: &Path, stream: &str, port: u16, dir: &Path) -> Service {
    spawn_ingestd_with(bin, stream, port, dir, &[], &[])
}

/// Like [`spawn_ingestd`], with extra environment (applied last) and arguments.
pub fn spawn_ingestd_with(
    bin: &Path,
    stream: &str,
    port: u16,
    dir: &Path,
    env: &[(&str, String)],
    args: &[String],
) -> Service {
    let mut cmd = Command::new(bin);
    base_env(&mut cmd, stream);
    cmd.env("WEIR_BIND", format!("127.0.0.1:{port}"))
        .env("WEIR_INPUT_ROOTS", dir)
        .env("WEIR_JOB_DIR", dir.join("jobs"))
        .env("WEIR_SPOOL_DIR", dir.join("spool"));
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args);
    Service {
        child: cmd.spawn().expect("spawning weir-ingestd"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// One HTTP/1.1 request (`Connection: close`); returns status and body as JSON (Null if not).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Waits until `GET /ready` answers 200.
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        {
            drop(s.shutdown().await);
            let (status, body) = http(addr, "GET", "/ready", None).await;
            if status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{addr} not ready: {body}"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never listened"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the gateway's `/health` shows `n` subscriptions.
pub async fn wait_subscriptions(addr: SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http(addr, "GET", "/health", None).await;
        if body["subscriptions"] == json!(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions never {n}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a job until it ends; returns its status.
pub async fn wait_job(addr: SocketAddr, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http(addr, "GET", &format!("/jobs/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        if ["completed", "failed", "cancelled"].contains(&body["state"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not end: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects with graphql-transport-ws, initialises and subscribes to `labels`' changes.
    pub async fn subscribe(addr: SocketAddr, label: &str) -> Self {
        Self::subscribe_args(addr, &format!("labels: [\"{label}\"]")).await
    }

    /// Like [`Ws::subscribe`], catching up from after `since` first.
    pub async fn subscribe_since(addr: SocketAddr, label: &str, since: u64) -> Self {
        Self::subscribe_args(addr, &format!("labels: [\"{label}\"], since: {since}")).await
    }

    async fn subscribe_args(addr: SocketAddr, args: &str) -> Self {
        let mut req = format!("ws://{addr}/graphql/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut c = Self { ws };
        c.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {KEY}")}}))
            .await;
        let ack = c.next_json().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        let query =
            format!("subscription {{ graphChanges({args}) {{ seq index key operation missed }} }}");
        c.send(json!({"type": "subscribe", "id": "1", "payload": {"query": query}}))
            .await;
        c
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn next_json(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no websocket message in time")
                .expect("websocket ended")
                .expect("websocket error");
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return v;
                }
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// Receives `n` change events: (seq, index, key).
    pub async fn changes(&mut self, n: usize) -> Vec<(u64, u64, String)> {
        let mut out = Vec::with_capacity(n);
        // Pings keep the socket busy, so bound the whole wait, not only each message.
        let deadline = tokio::time::Instant::now() + 2 * WAIT;
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} changes arrived: {out:?}",
                out.len()
            );
            let v = tokio::time::timeout_at(deadline, self.next_json())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} changes arrived", out.len()));
            assert_eq!(v["type"], "next", "{v}");
            let c = &v["payload"]["data"]["graphChanges"];
            assert_eq!(
                c["missed"], 0,
                "the gateway dropped changes for this client: {v}"
            );
            out.push((
                c["seq"].as_u64().unwrap(),
                c["index"].as_u64().unwrap(),
                c["key"].as_str().unwrap().to_owned(),
            ));
        }
        out
    }

    /// Asserts nothing more arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.ws.next()).await {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_ne!(v["type"], "next", "unexpected extra delivery: {v}");
        }
    }
}

/// Writes `n` people rows starting at id `from` and returns the path.
pub fn people_csv(dir: &Path, name: &str, from: u64, n: u64) -> PathBuf {
    use std::fmt::Write as _;
    let mut s = String::from("person_id,name,age\n");
    for i in from..from + n {
        let _ = writeln!(s, "{i},person {i},{}", 20 + i % 50);
    }
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

pub const MAPPING: &str = r#"
[[nodes]]
label = "Person"
key = ["id"]
properties = [
  { name = "id", field = "person_id", type = "int" },
  { name = "name" },
  { name = "age", type = "int" },
]
"#;

/// Asserts every event arrived once, in (seq, index) order, and returns the keys.
pub fn assert_once_in_order(events: &[(u64, u64, String)]) -> std::collections::BTreeSet<String> {
    for w in events.windows(2) {
        assert!((w[0].0, w[0].1) < (w[1].0, w[1].1), "out of order: {w:?}");
    }
    let keys: std::collections::BTreeSet<String> = events.iter().map(|e| e.2.clone()).collect();
    assert_eq!(keys.len(), events.len(), "a change was delivered twice");
    keys
}
