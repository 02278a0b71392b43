//! `weir-gatewayd` as built (jemalloc as its global allocator, heap profiler built in), run as a
//! child process against the real NATS bus, with `--log-format json --memory-log-interval
//! 100ms` and heap profiling turned on (`WEIR_HEAP_PROFILING=1`):
//!
//! - `/api/memory/stats` and `/metrics` on the admin listener carry real jemalloc figures;
//! - the periodic `memory` line is one JSON object with the memory fields;
//! - `POST /api/memory/snapshot` returns a gzipped heap profile (the pprof content itself is
//!   decoded and checked in crates/weir-cli/tests/memory_process.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "admin-token-memory-0123";
const WAIT: Duration = Duration::from_secs(60);
/// Most stderr lines kept from the child.
const MAX_LINES: usize = 5000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request with the admin token (`Connection: close`): status, head, body.
fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, head, out[split + 4..].to_vec()))
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_stats_memory_line_and_heap_profile() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("MEM");
    let s = weir_test_support::settings();
    let dir = tempfile::tempdir().unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-gatewayd"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NEO4J_URI", &s.graph.uri)
        .env("NEO4J_USER", &s.graph.user)
        .env("NEO4J_PASSWORD", s.graph.password.expose())
        .env("NEO4J_DATABASE", &s.graph.database)
        .env("NATS_URL", &s.nats.url)
        .env("WEIR_BUS_STREAM", &stream)
        // Subjects unique per test too: a stream left behind by a killed run must not overlap.
        .env("WEIR_BUS_SUBJECT_PREFIX", stream.to_lowercase())
        .env("WEIR_API_KEYS", "svc-memory-key-0123456789")
        .env("WEIR_BIND", format!("127.0.0.1:{}", free_port()))
        .env("WEIR_ADMIN_BIND", admin.to_string())
        .env("WEIR_ADMIN_TOKEN", TOKEN)
        .env("WEIR_LOG", "info")
        // One sample per 16 KiB instead of 512 KiB, so a small process surely has samples.
        .env("MALLOC_CONF", "lg_prof_sample:14")
        .env("WEIR_HEAP_PROFILING", "1")
        .current_dir(dir.path())
        .args(["--log-format", "json", "--memory-log-interval", "100ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning weir-gatewayd");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = lines.lock().unwrap();
                if l.len() < MAX_LINES {
                    l.push(line);
                }
            }
        });
    }
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let dump = || lines.lock().unwrap().join("\n");

    // The first sample of the admin watcher: real jemalloc figures.
    let deadline = Instant::now() + WAIT;
    let stats = loop {
        if let Ok((200, _, body)) = request(admin, "GET", "/api/memory/stats") {
            let v: Value = serde_json::from_slice(&body).unwrap();
            if !v["current"].is_null() {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no admin listener; stderr:\n{}",
            dump()
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
    let (status, _, body) = request(admin, "GET", "/metrics").unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for name in [
        "weir_memory_allocator_allocated_bytes",
        "weir_memory_allocator_resident_bytes",
    ] {
        assert!(metric(&text, name).unwrap_or(0.0) > 0.0, "{name}:\n{text}");
    }

    // The memory line, as JSON.
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["target"] == "weir::memory" && v["fields"]["message"] == "memory").then_some(v)
        });
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no memory line; stderr:\n{}",
            dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let (status, head, body) = request(admin, "POST", "/api/memory/snapshot").unwrap();
    assert_eq!(
        status,
        200,
        "{head}\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&body),
        dump()
    );
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(body.as_slice())
        .read_to_end(&mut raw)
        .expect("gzip");
    assert!(!raw.is_empty());
    assert!(
        String::from_utf8_lossy(&raw).contains("inuse_space"),
        "the profile's string table names its sample type"
    );
}
