//! Shutdown with live subscriptions: every client gets `complete` for each operation and a
//! 1001 close, `serve` returns, the registry is empty and new connections are refused.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;
use weir_gateway::close_codes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscriptions_complete_and_sockets_close_1001() {
    let server = serve(config()).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let legacy = i % 2 == 1;
        let mut c = connect(
            server.addr,
            if legacy {
                "graphql-ws"
            } else {
                "graphql-transport-ws"
            },
        )
        .await;
        c.init().await;
        for j in 0..3 {
            let payload = json!({"query": format!(r#"subscription {{ graphChanges(labels: ["S{j}"]) {{ key }} }}"#)});
            let ty = if legacy { "start" } else { "subscribe" };
            c.send(json!({"type": ty, "id": format!("op{j}"), "payload": payload}))
                .await;
        }
        clients.push(c);
    }
    server.wait_active(18).await;
    server.shutdown.cancel();
    for mut c in clients {
        let mut completed = BTreeSet::new();
        loop {
            match c.recv().await {
                Frame::Json(m) => {
                    assert_eq!(m["type"], "complete", "{m}");
                    completed.insert(m["id"].as_str().unwrap().to_owned());
                }
                Frame::Close(code, reason) => {
                    assert_eq!(code, close_codes::GOING_AWAY, "{reason}");
                    break;
                }
                Frame::Ended => panic!("socket ended without a 1001 close"),
            }
        }
        assert_eq!(
            completed,
            BTreeSet::from(["op0".into(), "op1".into(), "op2".into()])
        );
    }
    let served = tokio::time::timeout(WAIT, server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
    let stats = server.state.manager().stats();
    assert_eq!(stats.completed_shutdown, 18);
    assert_eq!(stats.active, 0);
    assert_eq!(server.state.open_sockets(), 0);
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "the listener still accepts after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_cannot_hold_shutdown_past_the_grace_period() {
    let mut cfg = config();
    cfg.shutdown_grace = std::time::Duration::from_millis(300);
    // Longer than the test's wait: only the grace period can end the blocked write.
    cfg.websocket.write_timeout = std::time::Duration::from_secs(60);
    cfg.subscriptions.max_lag = std::time::Duration::from_secs(60);
    let server = serve(cfg).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.subscribe(
        "f",
        r#"subscription { graphChanges(labels: ["F"]) { key properties } }"#,
    )
    .await;
    server.wait_active(1).await;
    // Fill the socket buffers: the gateway's write to this client blocks.
    let blob = serde_json::Value::String("x".repeat(4096));
    for n in 0..4000 {
        let mut e = event(
            weir_events::EntityKind::Node,
            "F",
            &n.to_string(),
            weir_events::Operation::Created,
        );
        e.properties.insert("blob".into(), blob.clone());
        server.state.manager().publish(batch(vec![e]));
        if n % 100 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    server.shutdown.cancel();
    let served = tokio::time::timeout(WAIT, server.task)
        .await
        .expect("shutdown waited on a blocked client past the grace period")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert_eq!(server.state.open_sockets(), 0);
    assert_eq!(server.state.manager().active(), 0);
    drop(c);
}
