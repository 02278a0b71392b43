//! `weir-gatewayd` serves the web console: the page without a key, `/console/info` saying there
//! is no job API here (the page hides its jobs section) but memory figures, and the memory
//! history and figures behind the gateway's API keys.

// This test binds its listener to port 0 and has no use for `common::free_port`.
#[allow(unused_imports)]
mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weir_app::settings::{Role, Settings};
use weir_bus::{BusConfig, InProcessConfig};
use weir_config::Secret;
use weir_gateway::AuthConfig;

/// `GET path` with the key or none; status and the whole answer (head and body).
async fn get(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, text)
}

fn json_body(text: &str) -> serde_json::Value {
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatewayd_serves_the_console_without_jobs() {
    let settings = weir_test_support::settings();
    let mut config = Settings {
        graph: settings.graph,
        bus: BusConfig::InProcess(InProcessConfig::default()),
        ..Settings::defaults(Role::Gatewayd)
    };
    config.auth = AuthConfig::ApiKeys {
        keys: vec![Secret::new(KEY)],
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(weir_app::app::run_on(
        Role::Gatewayd,
        config,
        listener,
        None,
        shutdown.clone(),
    ));
    wait_ready(addr).await;

    for page in ["/", "/graphiql"] {
        let (status, text) = get(addr, page, None).await;
        assert_eq!(status, 200, "{page}: {text}");
        assert!(text.contains("text/html"), "{text}");
    }
    let (status, text) = get(addr, "/console/info", None).await;
    assert_eq!(status, 200);
    let info = json_body(&text);
    assert_eq!(info["service"], "weir-gatewayd");
    assert_eq!(info["jobs"], false, "no job API on gatewayd: {info}");
    assert_eq!(info["memory"], true);
    assert_eq!(info["auth_required"], true);

    assert_eq!(get(addr, "/api/memory/stats", None).await.0, 401);
    assert_eq!(get(addr, "/api/memory/stats", Some("wrong")).await.0, 401);
    let (status, text) = get(addr, "/api/memory/stats", Some(KEY)).await;
    assert_eq!(status, 200, "{text}");
    let stats = json_body(&text);
    assert!(stats["interval_seconds"].as_f64().unwrap() > 0.0, "{stats}");
    let (status, figures) = http(addr, "GET", "/api/console/figures", None).await;
    assert_eq!(status, 200, "{figures}");
    assert_eq!(figures["bus"]["connected"], true, "{figures}");
    assert!(figures["gateway"]["sockets"].is_u64(), "{figures}");
    // No job API behind the console on this service.
    assert_eq!(http(addr, "GET", "/jobs", None).await.0, 404);

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("gatewayd stops")
        .unwrap()
        .unwrap();
}
