//! `weir-gatewayd` in-process (in-process bus, real graph server): `/ready` reflects graph and
//! bus, `/health` shows the subscription count, and the admin listener serves Prometheus
//! metrics behind its token.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weir_app::settings::{Role, Settings};
use weir_bus::{BusConfig, InProcessConfig};
use weir_config::Secret;
use weir_gateway::AuthConfig;

async fn raw_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_health_and_admin_metrics() {
    let settings = weir_test_support::settings();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = Settings::defaults(Role::Gatewayd);
    config.graph = settings.graph;
    config.bus = BusConfig::InProcess(InProcessConfig::default());
    config.admin.bind = Some(admin);
    config.admin.token = Some(Secret::new("admin-token-123"));
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
    let (_, health) = http(addr, "GET", "/health", None).await;
    assert_eq!(health["components"]["bus"]["status"], "up", "{health}");
    assert_eq!(health["components"]["graph"]["status"], "up", "{health}");
    assert_eq!(health["subscriptions"], 0);
    let _ws = Ws::subscribe(addr, "Anything").await;
    wait_subscriptions(addr, 1).await;

    assert_eq!(raw_get(admin, "/metrics", None).await.0, 401);
    let (status, text) = raw_get(admin, "/metrics", Some("admin-token-123")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("weir_subscriptions"), "{text}");
    assert!(text.contains("weir_bus"), "{text}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("gatewayd stops")
        .unwrap()
        .unwrap();
}
