//! Each close code with its trigger: 4408, 4401, 4403, 4409, 4429, 4400, 4499 (pong timeout, not
//! while the client takes writes),
//! 1009 (message too big); and the per-operation refusals (rate and per-connection limits).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use weir_gateway::close_codes;

const Q: &str = r#"subscription { graphChanges(labels: ["A"]) { key } }"#;

#[tokio::test]
async fn init_timeout_closes_4408() {
    let mut cfg = config();
    cfg.websocket.connection_init_timeout = Duration::from_millis(300);
    let server = serve(cfg).await;
    for proto in ["graphql-transport-ws", "graphql-ws"] {
        let mut c = connect(server.addr, proto).await;
        let reason = c.expect_close(close_codes::INIT_TIMEOUT).await;
        assert!(reason.contains("initialisation timeout"), "{reason}");
    }
    server.wait_empty().await;
}

#[tokio::test]
async fn subscribe_before_ack_closes_4401() {
    let server = serve(config()).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.subscribe("1", Q).await;
    c.expect_close(close_codes::UNAUTHORIZED).await;
    assert_eq!(server.state.manager().stats().created, 0);
}

#[tokio::test]
async fn bad_or_missing_token_closes_4403() {
    let server = serve(config()).await;
    for payload in [
        json!({"Authorization": "Bearer wrong"}),
        json!({"token": "also-wrong"}),
        json!({}),
        json!(null),
    ] {
        let mut c = connect(server.addr, "graphql-transport-ws").await;
        c.send(json!({"type": "connection_init", "payload": payload}))
            .await;
        c.expect_close(close_codes::FORBIDDEN).await;
    }
    // Legacy: connection_error, then the close.
    let mut c = connect(server.addr, "graphql-ws").await;
    c.send(json!({"type": "connection_init", "payload": {"authToken": "nope"}}))
        .await;
    let m = c.recv_json().await;
    assert_eq!(m["type"], "connection_error");
    assert_eq!(m["payload"]["message"], "invalid token");
    c.expect_close(close_codes::FORBIDDEN).await;
    // The token may also come on the upgrade request.
    let mut c = connect_with_header(server.addr, "graphql-transport-ws", Some(TOKEN)).await;
    c.send(json!({"type": "connection_init"})).await;
    assert_eq!(c.recv_json().await["type"], "connection_ack");
    drop(c);
    server.wait_empty().await;
}

#[tokio::test]
async fn duplicate_operation_id_closes_4409() {
    let server = serve(config()).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.subscribe("same", Q).await;
    server.wait_active(1).await;
    c.subscribe("same", Q).await;
    c.expect_close(close_codes::DUPLICATE_ID).await;
    server.wait_empty().await;
}

#[tokio::test]
async fn second_init_closes_4429_and_garbage_closes_4400() {
    let server = serve(config()).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.send(json!({"type": "connection_init"})).await;
    c.expect_close(close_codes::TOO_MANY_INIT).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.send(json!({"type": "no_such_type"})).await;
    c.expect_close(close_codes::BAD_REQUEST).await;
    server.wait_empty().await;
}

#[tokio::test]
async fn silent_client_is_closed_after_pong_timeout() {
    let mut cfg = config();
    cfg.websocket.ping_interval = Duration::from_millis(200);
    cfg.websocket.pong_timeout = Duration::from_millis(300);
    let server = serve(cfg).await;
    // A client that answers pings stays connected across several ping rounds.
    let mut good = connect(server.addr, "graphql-transport-ws").await;
    good.init().await;
    good.subscribe("1", Q).await;
    server.wait_active(1).await;
    let good_task = tokio::spawn(async move {
        loop {
            match good.recv().await {
                Frame::Json(m) if m["type"] == "next" => return good,
                Frame::Json(_) => continue,
                other => panic!("the answering client was dropped: {other:?}"),
            }
        }
    });
    // One that does not is closed.
    let mut bad = connect(server.addr, "graphql-transport-ws").await;
    bad.answer_pings = false;
    bad.init().await;
    assert_eq!(bad.recv_json().await["type"], "ping");
    bad.expect_close(close_codes::PONG_TIMEOUT).await;
    // Several more ping rounds pass; then an event still reaches the good client.
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.state.manager().publish(batch(vec![event(
        weir_events::EntityKind::Node,
        "A",
        "k",
        weir_events::Operation::Created,
    )]));
    let good = good_task.await.unwrap();
    assert_eq!(server.state.manager().active(), 1);
    drop(good);
    server.wait_empty().await;
}

/// A subscriber that keeps reading what it is sent is not closed by the pong timeout, although
/// its pong is late (here: never sent, as when the ping waits behind frames it has not read
/// yet): how far behind it may fall is the slow-consumer rule's to decide. Once nothing is sent
/// to it, the unanswered ping ends it with 4499.
#[tokio::test]
async fn a_client_taking_writes_is_not_closed_for_a_late_pong() {
    let mut cfg = config();
    cfg.websocket.ping_interval = Duration::from_millis(200);
    cfg.websocket.pong_timeout = Duration::from_millis(300);
    let server = serve(cfg).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.answer_pings = false;
    c.init().await;
    c.subscribe("1", Q).await;
    server.wait_active(1).await;
    // 2 s of changes, one every 50 ms: about ten ping rounds, each past its pong deadline.
    let mut pings = 0;
    for i in 0..40 {
        server.state.manager().publish(batch(vec![event(
            weir_events::EntityKind::Node,
            "A",
            &format!("k{i}"),
            weir_events::Operation::Created,
        )]));
        loop {
            match c.recv().await {
                Frame::Json(m) if m["type"] == "next" => break,
                Frame::Json(m) if m["type"] == "ping" => pings += 1,
                other => panic!("closed while reading, after {i} changes: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pings >= 3, "only {pings} pings in 2 s");
    // Nothing more is sent to it: the unanswered ping ends it.
    loop {
        match c.recv().await {
            Frame::Json(m) if m["type"] == "ping" => continue,
            Frame::Close(code, _) => {
                assert_eq!(code, close_codes::PONG_TIMEOUT);
                break;
            }
            other => panic!("expected the pong timeout, got {other:?}"),
        }
    }
    server.wait_empty().await;
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let mut cfg = config();
    cfg.limits.max_ws_message_bytes = 1024;
    let server = serve(cfg).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    let big = format!(
        "subscription {{ graphChanges(keys: [\"{}\"]) {{ key }} }}",
        "x".repeat(2000)
    );
    c.subscribe("1", &big).await;
    c.expect_close(close_codes::TOO_BIG).await;
    server.wait_empty().await;
}

#[tokio::test]
async fn start_rate_and_per_connection_limits_refuse_the_operation() {
    let mut cfg = config();
    cfg.limits.subscription_starts_per_sec = 3;
    cfg.subscriptions.max_per_connection = 5;
    let server = serve(cfg).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    for i in 0..4 {
        c.subscribe(&i.to_string(), Q).await;
    }
    let m = c.recv_json().await;
    assert_eq!(m["type"], "error");
    assert_eq!(m["id"], "3");
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    server.wait_active(3).await;
    // After a second the bucket has refilled; the per-connection limit (5) refuses the 6th.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 10..13 {
        c.subscribe(&i.to_string(), Q).await;
    }
    let m = c.recv_json().await;
    assert_eq!(m["type"], "error");
    assert_eq!(m["id"], "12");
    assert_eq!(m["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED");
    server.wait_active(5).await;
    drop(c);
    server.wait_empty().await;
}

#[tokio::test]
async fn wrong_token_on_the_upgrade_request_is_refused_with_401() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = serve(config()).await;
    let mut req = format!("ws://{}/graphql/ws", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    req.headers_mut()
        .insert("Authorization", "Bearer wrong".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        other => panic!("upgrade with a wrong token was not refused: {other:?}"),
    }
    assert_eq!(server.state.open_sockets(), 0);
}
