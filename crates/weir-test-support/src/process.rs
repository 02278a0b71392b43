//! Weir's binaries as child processes in tests: their environment, their stderr, plain
//! HTTP/1.1 requests to them, and the memory checks every long-running binary must pass.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a child gets to answer or to log something.
pub const WAIT: Duration = Duration::from_secs(60);
/// Most stderr lines kept from one child (the rest are dropped: bounded like everything else).
pub const MAX_STDERR_LINES: usize = 5000;

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Clears `cmd`'s environment and gives it what a Weir service needs to reach this machine's
/// test graph server and NATS: `PATH`, `NEO4J_*`, `NATS_URL`, and the bus stream `stream` with
/// a subject prefix of its own (so a stream a killed run left behind cannot overlap it).
pub fn service_env<'a>(cmd: &'a mut Command, stream: &str) -> &'a mut Command {
    let s = crate::settings();
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NEO4J_URI", &s.graph.uri)
        .env("NEO4J_USER", &s.graph.user)
        .env("NEO4J_PASSWORD", s.graph.password.expose())
        .env("NEO4J_DATABASE", &s.graph.database)
        .env("NATS_URL", &s.nats.url)
        .env("WEIR_BUS_STREAM", stream)
        .env("WEIR_BUS_SUBJECT_PREFIX", stream.to_lowercase())
}

/// A child process, killed on drop, whose stderr lines are collected (at most
/// [`MAX_STDERR_LINES`]).
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildProcess {
    /// Spawns `cmd` with stdout discarded and stderr collected.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                if l.len() < MAX_STDERR_LINES {
                    l.push(line);
                }
            }
        });
        Self { child, lines }
    }

    /// Waits at most `timeout` for the process to exit; panics (with its stderr) past it.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for a child") {
                // Give the stderr reader a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit within {timeout:?}; its stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything collected from stderr so far.
    pub fn stderr(&self) -> String {
        self.lines().join("\n")
    }

    /// The stderr lines collected so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The JSON `memory` log lines (`--log-format json`) collected so far.
    pub fn memory_lines(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(is_memory_line)
            .collect()
    }

    /// Waits (up to [`WAIT`]) for a JSON `memory` log line and returns it.
    pub fn wait_memory_line(&self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.memory_lines().into_iter().next() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no memory line; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a JSON log line is the periodic `memory` line.
pub fn is_memory_line(v: &Value) -> bool {
    v["target"] == "weir::memory" && v["fields"]["message"] == "memory"
}

/// An HTTP response: status, head (status line and headers), body (chunked encoding decoded).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request without a body (`Connection: close`), with `bearer` as its
/// `Authorization` when given; reads until the server closes (at most [`WAIT`] per read).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse_response(out)
}

/// One HTTP/1.1 request with `body` (`Connection: close`), as [`http_request`] does.
pub fn http_request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    http_send(
        addr,
        method,
        path,
        bearer,
        content_type,
        body.len() as u64,
        &mut &body[..],
    )
}

/// `POST path` with the file at `file` as the body, streamed (never held in memory whole).
pub fn http_upload(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    file: &std::path::Path,
) -> std::io::Result<HttpResponse> {
    let len = std::fs::metadata(file)?.len();
    let mut f = std::io::BufReader::new(std::fs::File::open(file)?);
    http_send(
        addr,
        "POST",
        path,
        bearer,
        "application/octet-stream",
        len,
        &mut f,
    )
}

fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    content_type: &str,
    len: u64,
    body: &mut dyn Read,
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(body, &mut s)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse_response(out)
}

fn parse_response(out: Vec<u8>) -> std::io::Result<HttpResponse> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse { status, head, body })
}

/// Percent-encodes `s` for a URL query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A binary of this workspace (`weir`, `weir-ingestd`, `weir-gatewayd`), from the target
/// directory the running test was built in. A workspace test run (`cargo nextest run
/// --workspace`, as CI does) has built every binary already; when one is missing it is built
/// here with `cargo build -p <package>`.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("the target directory");
    let bin = dir.join(name);
    if !bin.is_file() {
        let package = if name == "weir" { "weir-cli" } else { name };
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "-p", package, "--bin", name])
            .status()
            .unwrap_or_else(|e| panic!("running cargo build for {name}: {e}"));
        assert!(status.success(), "cargo build -p {package} failed");
    }
    assert!(bin.is_file(), "{name} not found at {}", bin.display());
    bin
}

fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::other("bad chunked body");
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(bad)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = b.get(eol + 2..eol + 2 + size).ok_or_else(bad)?;
        out.extend_from_slice(chunk);
        b = b.get(eol + 2 + size + 2..).ok_or_else(bad)?;
    }
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// What every long-running Weir binary started with an admin listener on `admin` (token
/// `token`), `--log-format json`, a short `--memory-log-interval` and heap profiling on must
/// show: real jemalloc figures in `/api/memory/stats` and `/metrics`, the periodic `memory` line
/// as one JSON object with the memory fields, and a gzipped heap profile from
/// `POST /api/memory/snapshot` (its pprof content is decoded in weir-cli's
/// `tests/memory_process.rs`).
pub async fn assert_memory_observability(child: &ChildProcess, admin: SocketAddr, token: &str) {
    // The first sample of the admin watcher: real jemalloc figures.
    let deadline = Instant::now() + WAIT;
    let stats = loop {
        if let Ok(r) = http_request(admin, "GET", "/api/memory/stats", Some(token))
            && r.status == 200
            && !r.json()["current"].is_null()
        {
            break r.json();
        }
        assert!(
            Instant::now() < deadline,
            "no admin listener; stderr:\n{}",
            child.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats["allocator_stats_enabled"], true, "{stats}");
    for field in ["allocated_bytes", "resident_bytes"] {
        assert!(
            stats["current"]["allocator"][field].as_u64().unwrap_or(0) > 0,
            "{field}: {stats}"
        );
    }
    let metrics = http_request(admin, "GET", "/metrics", Some(token)).expect("GET /metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for name in [
        "weir_memory_allocator_allocated_bytes",
        "weir_memory_allocator_resident_bytes",
    ] {
        assert!(
            metric_value(&text, name).unwrap_or(0.0) > 0.0,
            "{name}:\n{text}"
        );
    }

    // The memory line, as JSON.
    let line = child.wait_memory_line();
    for field in [
        "used_bytes",
        "rss_bytes",
        "allocated_bytes",
        "resident_bytes",
    ] {
        assert!(
            line["fields"][field].as_u64().unwrap_or(0) > 0,
            "{field}: {line}"
        );
    }

    // Heap profiling is on: a gzipped profile.
    let snap = http_request(admin, "POST", "/api/memory/snapshot", Some(token))
        .expect("POST /api/memory/snapshot");
    assert_eq!(
        snap.status,
        200,
        "{}\n{}\nstderr:\n{}",
        snap.head,
        snap.text(),
        child.stderr()
    );
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(snap.body.as_slice())
        .read_to_end(&mut raw)
        .expect("gzip");
    assert!(!raw.is_empty());
    assert!(
        String::from_utf8_lossy(&raw).contains("inuse_space"),
        "the profile's string table names its sample type"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_and_refuses_garbage() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\nabc").is_err());
        assert!(dechunk(b"9\r\nabc\r\n").is_err());
    }

    #[test]
    fn reads_unlabelled_samples() {
        let text = "# HELP a x\na 1.5\na_total 3\nb{l=\"x\"} 2\n";
        assert_eq!(metric_value(text, "a"), Some(1.5));
        assert_eq!(metric_value(text, "a_total"), Some(3.0));
        assert_eq!(metric_value(text, "b"), None);
    }
}
