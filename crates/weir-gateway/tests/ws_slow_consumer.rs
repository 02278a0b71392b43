//! A client that reads nothing while events flood: the subscription's queue never holds more
//! than its capacity, events are dropped oldest-first and counted, the client is told what it
//! missed (`missed` on the next event it gets) and is disconnected when it stays behind
//! (close 1008, or dropped when a write cannot complete). RSS growth stays bounded while
//! far more event bytes than that pass through.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use weir_events::{EntityKind, Operation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_non_reader_is_bounded_told_and_disconnected() {
    let mut cfg = config();
    cfg.subscriptions.queue_capacity = 16;
    cfg.subscriptions.max_lag = Duration::from_millis(500);
    cfg.websocket.outbound_queue = 4;
    cfg.websocket.write_timeout = Duration::from_secs(2);
    let server = serve(cfg).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.subscribe(
        "flood",
        r#"subscription { graphChanges(labels: ["F"]) { key missed properties } }"#,
    )
    .await;
    server.wait_active(1).await;

    let payload = serde_json::Value::String("x".repeat(2048));
    let rss_before = weir_memwatch::gauge::rss_bytes().unwrap();
    let mut max_queued = 0;
    let mut published_bytes = 0usize;
    let mut n = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Flood until the gateway has let the client go.
    while server.state.open_sockets() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow client was never disconnected: {:?}",
            server.state.manager().stats()
        );
        let events = (0..100)
            .map(|_| {
                n += 1;
                let mut e = event(EntityKind::Node, "F", &n.to_string(), Operation::Created);
                e.properties = BTreeMap::from([("blob".to_owned(), payload.clone())]);
                e
            })
            .collect();
        server.state.manager().publish(&batch(events));
        published_bytes += 100 * 2048;
        max_queued = max_queued.max(server.state.manager().snapshot().queued_items);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss_after = weir_memwatch::gauge::rss_bytes().unwrap();
    let stats = server.state.manager().stats();
    assert!(max_queued <= 16, "queue held {max_queued} items");
    assert!(stats.dropped_events > 0, "{stats:?}");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 48 << 20,
        "RSS grew {growth} bytes while {published_bytes} bytes of events flooded"
    );
    server.wait_empty().await;

    // Now the client reads what reached it: it was told what it missed, or closed with 1008.
    let mut missed = 0u64;
    let mut close = None;
    loop {
        match c.recv().await {
            Frame::Json(m) if m["type"] == "next" => {
                missed += m["payload"]["data"]["graphChanges"]["missed"]
                    .as_u64()
                    .unwrap();
            }
            Frame::Json(m) => assert_eq!(m["payload"][0]["extensions"]["code"], "SLOW_CONSUMER"),
            Frame::Close(code, _) => {
                close = Some(code);
                break;
            }
            Frame::Ended => break,
        }
    }
    eprintln!("missed {missed}, close {close:?}, stats {stats:?}, rss growth {growth}");
    assert!(
        missed > 0 || close == Some(weir_gateway::close_codes::SLOW_CONSUMER),
        "client neither told of missed events nor closed for lag (missed {missed}, close {close:?})"
    );
}
