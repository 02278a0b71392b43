//! Hostile clients against the real `weir serve` listener (issue 18, items 1 and 4):
//!
//! - 1,000 connections that send part of a request header, half of them then one byte every
//!   half second (slowloris), are all closed within `listener.header_read_timeout` (the
//!   default 10 s); a normal client is served meanwhile; afterwards the process's open file
//!   descriptors and heap (jemalloc's allocated bytes) are back where they were, and its RSS
//!   within a bound;
//! - a connection past `listener.max_connections_per_ip` is closed at once, and the address
//!   is served again once its connections end; a request body that stops arriving is answered
//!   408 after `listener.request_timeout`;
//! - a WebSocket upgrade from a foreign `Origin` is refused (403), from the server's own origin
//!   or none accepted; WebSockets past `websocket.max_sockets_per_ip` are refused (429);
//! - one principal cannot hold more than `limits.max_subscriptions_per_principal` operations
//!   across its connections, while another key still can.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use weir_test_support::process::{
    ChildProcess, free_port, http_request, service_env, workspace_binary,
};
use weir_test_support::ws::{Frame, GraphqlWs};

use support::*;

const OTHER_KEY: &str = "listener-other-key-0123456789";

/// `weir serve` with `extra` TOML appended to its settings file; two API keys.
async fn serve(dir: &std::path::Path, extra: &str) -> (SocketAddr, ChildProcess) {
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs]\njob_dir = {:?}\nspool_dir = {:?}\n{extra}",
            dir.join("jobs"),
            dir.join("spool")
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "UNUSED")
        .env("WEIR_LOG", "warn")
        .env("WEIR_API_KEYS", format!("{KEY},{OTHER_KEY}"))
        .args(["serve", "--bind"])
        .arg(addr.to_string())
        .arg("--config")
        .arg(&config);
    let child = ChildProcess::spawn(&mut cmd);
    wait_ready(addr, &child).await;
    (addr, child)
}

fn open_fds(pid: u32) -> usize {
    weir_memwatch::procfs::open_fds(pid).expect("the server's /proc/<pid>/fd")
}

fn rss_kib(pid: u32) -> u64 {
    weir_memwatch::procfs::rss_bytes(pid).expect("the server's RSS") / 1024
}

/// Whether the server has closed `s` (a read sees end of file or a reset).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_connections_are_closed_and_the_gateway_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (addr, serve) = serve(
        dir.path(),
        &format!(
            "[listener]\nmax_connections_per_ip = 2000\n\
             [admin]\nbind = \"{admin}\"\n"
        ),
    )
    .await;
    let pid = serve.id();
    // Bytes the allocator has handed out and not got back (jemalloc's `allocated`).
    let allocated = || {
        let r = http_request(admin, "GET", "/metrics", None).expect("/metrics");
        weir_test_support::process::metric_value(&r.text(), "weir_memory_allocator_allocated_bytes")
            .expect("the allocator's figures")
    };
    // Baseline after a few ordinary requests (lazy allocations made).
    for _ in 0..5 {
        assert_eq!(
            http_request(addr, "GET", "/health", None).unwrap().status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_before, rss_before, heap_before) = (open_fds(pid), rss_kib(pid), allocated());

    let start = Instant::now();
    let mut conns: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    // The server accepts them (the kernel queued them first).
    let accepted = Instant::now() + Duration::from_secs(5);
    while open_fds(pid) < fds_before + 900 {
        assert!(
            Instant::now() < accepted,
            "the server holds only {} fds (before: {fds_before})",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A normal client is served while they are held.
    let r = http_request(addr, "GET", "/health", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Half trickle a byte every 500 ms, half send nothing more; all must be closed by the
    // header-read timeout (the default 10 s, long enough that all 1,000 are open at once
    // even when connecting them is slow), measured from when they opened, plus slack.
    let mut open: Vec<usize> = (0..conns.len()).collect();
    let deadline = start + Duration::from_secs(10 + 8);
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of 1000 slow connections still open after {:?}",
            open.len(),
            start.elapsed()
        );
        open.retain(|&i| {
            let s = &mut conns[i];
            if i % 2 == 0 && s.write_all(b"a").is_err() {
                return false;
            }
            !closed(s)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "closed before the timeout ({took:?}): something else closed them"
    );
    drop(conns);
    let r = http_request(addr, "GET", "/health", None).unwrap();
    assert_eq!(r.status, 200);
    // Descriptors back to the baseline.
    let settle = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > fds_before + 5 {
        assert!(
            Instant::now() < settle,
            "open fds {} (before: {fds_before})",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every byte the connections took is given back to the allocator (a leak would stay);
    // the allocator returns pages to the system over time, so RSS is only held to a bound:
    // 1,000 connections' buffers at most.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let heap = allocated();
        if heap < heap_before + 2e6 {
            break;
        }
        assert!(
            Instant::now() < settle,
            "heap {heap} B 30 s after, {heap_before} B before"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 48 * 1024,
        "RSS {rss_after} KiB after, {rss_before} KiB before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_cap_and_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _serve) = serve(
        dir.path(),
        "[listener]\nmax_connections_per_ip = 8\nrequest_timeout = \"2s\"\nheader_read_timeout = \"30s\"\n",
    )
    .await;
    // Eight idle connections take the address's slots.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The ninth is closed before it is read.
    let mut ninth = TcpStream::connect(addr).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = ninth.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let n = ninth.read_to_end(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "answered past the cap: {}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    // Served again once they are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(r) = http_request(addr, "GET", "/health", None)
            && r.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A body that stops arriving: 408 after the request timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"query\":"
    )
    .unwrap();
    let started = Instant::now();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap();
    let status = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

/// The status line of a WebSocket upgrade to `/graphql/ws` with `origin`.
fn upgrade_status(addr: SocketAddr, origin: Option<&str>) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /graphql/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: graphql-transport-ws\r\n{origin}\r\n"
    )
    .unwrap();
    let mut head = [0u8; 256];
    let n = s.read(&mut head).unwrap();
    let line = String::from_utf8_lossy(&head[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    (line, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_origin_and_per_address_socket_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _serve) = serve(
        dir.path(),
        "[gateway]\nallowed_origins = [\"https://app.example.com\"]\n[gateway.websocket]\nmax_sockets_per_ip = 3\n",
    )
    .await;
    let (evil, _) = upgrade_status(addr, Some("https://evil.example"));
    assert!(evil.contains(" 403"), "{evil}");
    // A foreign page's POST is refused too; a same-origin one (the console) is not.
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://evil.example\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");

    let own = format!("http://{addr}");
    let (a, _a) = upgrade_status(addr, Some(&own));
    let (b, _b) = upgrade_status(addr, Some("https://app.example.com"));
    let (c, _c) = upgrade_status(addr, None);
    for line in [&a, &b, &c] {
        assert!(line.contains(" 101"), "{line}");
    }
    // Three sockets open from 127.0.0.1: the fourth is refused.
    let (d, _d) = upgrade_status(addr, None);
    assert!(d.contains(" 429"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_cannot_take_every_subscription_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _serve) = serve(
        dir.path(),
        "[gateway.limits]\nmax_subscriptions_per_principal = 3\n",
    )
    .await;
    let mut first = GraphqlWs::connect(addr, KEY).await;
    let mut second = GraphqlWs::connect(addr, KEY).await;
    first.subscribe_changes("a", "").await;
    first.subscribe_changes("b", "").await;
    second.subscribe_changes("c", "").await;
    wait_subscriptions(addr, 3).await;
    // The fourth, on either connection, is refused.
    second.subscribe_changes("d", "").await;
    match second.recv(Duration::from_secs(10)).await {
        Some(Frame::Json(v)) => {
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(
                v["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
                "{v}"
            );
        }
        other => panic!("no error for the fourth operation: {other:?}"),
    }
    // Another key is not affected.
    let mut other = GraphqlWs::connect(addr, OTHER_KEY).await;
    other.subscribe_changes("e", "").await;
    wait_subscriptions(addr, 4).await;
    // A slot comes back when an operation completes.
    first
        .send(serde_json::json!({"type": "complete", "id": "a"}))
        .await;
    wait_subscriptions(addr, 3).await;
    second.subscribe_changes("f", "").await;
    wait_subscriptions(addr, 4).await;
}
