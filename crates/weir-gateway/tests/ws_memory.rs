//! The memory an idle subscription costs the gateway, measured on the real process: sockets
//! over TCP, each with one subscription, and the process RSS before and after. The WebSocket
//! library's default read buffer (128 KiB per socket, zero-filled) made it ~150 KB; with
//! `websocket.read_buffer_bytes` (256 B) it is a few KB (the bench measures it precisely:
//! `weir-bench-fanout`; this test keeps the bound from regressing).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use weir_memwatch::procfs::{self, Process};

fn rss_bytes() -> u64 {
    procfs::rss_bytes(Process::Current).expect("linux /proc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_costs_kilobytes_not_a_read_buffer() {
    const N: usize = 300;
    let mut cfg = config();
    cfg.subscriptions.max_per_connection = 4;
    cfg.subscriptions.max_total = N + 10;
    assert_eq!(cfg.websocket.read_buffer_bytes, 256, "the default");
    let server = serve(cfg).await;
    // Warm up: one full connection, so one-off allocations are not counted per socket.
    let warm = server.warm_up().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss_bytes();

    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        // The clients live in this process too: give them small read buffers as well, so the
        // growth measured is the server side's.
        let mut req = format!("ws://{}/graphql/ws", server.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let client_cfg = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(client_cfg), false)
            .await
            .unwrap();
        let mut c = Client {
            ws,
            answer_pings: true,
        };
        c.init().await;
        c.send(json!({"type": "subscribe", "id": "1", "payload": {"query": "subscription { graphChanges { key } }"}}))
            .await;
        clients.push(c);
    }
    server.wait_active(N + 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes();
    let per_socket = after.saturating_sub(before) / N as u64;
    eprintln!(
        "RSS {before} -> {after} bytes over {N} idle subscriptions (server and client sides): \
         {per_socket} bytes each"
    );
    // Server + client side together; with the library's 128 KiB read buffer per server socket
    // this was above 128 KiB, with a 4 KiB one ~26 KB; now ~20 KB. `ws_heap` bounds the server
    // side's heap exactly.
    assert!(
        per_socket < 32 * 1024,
        "{per_socket} bytes per idle subscription (both sides)"
    );
    drop(clients);
    drop(warm);
    server.wait_empty().await;
}
