//! The slow-consumer rule over real sockets: a client that reads nothing while changes flood is
//! ended once it is `max_lag` behind (a `SLOW_CONSUMER` error naming where to resume, close
//! 1008, or the socket dropped when even that cannot be written), while a client beside it that
//! reads gets every change, once, in order, with `missed` 0. Bursts far larger than any queue
//! of the old design reach the reader whole. RSS growth stays bounded while far more event
//! bytes than that pass through.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use weir_events::{EntityKind, Operation};
use weir_memwatch::procfs::Process;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reader_is_ended_while_a_reader_beside_it_gets_everything() {
    let mut cfg = config();
    cfg.subscriptions.max_lag = Duration::from_secs(2);
    cfg.websocket.outbound_queue = 4;
    let server = serve(cfg).await;
    let query =
        r#"subscription { graphChanges(labels: ["F"]) { seq index key missed properties } }"#;
    let mut slow = connect(server.addr, "graphql-transport-ws").await;
    slow.init().await;
    slow.subscribe("flood", query).await;
    let mut fast = connect(server.addr, "graphql-transport-ws").await;
    fast.init().await;
    fast.subscribe("flood", query).await;
    server.wait_active(2).await;

    // The reader counts what it gets, in the background, checking order as it goes.
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        let mut last = (0u64, 0u64);
        loop {
            let m = match tokio::time::timeout(Duration::from_secs(5), fast.recv()).await {
                Ok(Frame::Json(m)) => m,
                Ok(other) => panic!("the reader was ended: {other:?}"),
                Err(_) => return got,
            };
            assert_eq!(m["type"], "next", "{m}");
            let c = &m["payload"]["data"]["graphChanges"];
            assert_eq!(c["missed"], 0, "{c}");
            let at = (c["seq"].as_u64().unwrap(), c["index"].as_u64().unwrap());
            assert!(at > last, "out of order: {at:?} after {last:?}");
            last = at;
            got += 1;
        }
    });

    let payload = serde_json::Value::String("x".repeat(512));
    let rss_before = weir_memwatch::procfs::rss_bytes(Process::Current).unwrap();
    let mut published_bytes = 0usize;
    let mut n = 0u64;
    let mut seq = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Flood (batches of 500: bursts the old 256-item queue could not hold) until the gateway
    // has let the non-reader go, then a little more.
    let mut extra = 10;
    while extra > 0 {
        if server.state.open_sockets() < 2 || server.state.manager().stats().completed_lagged > 0 {
            extra -= 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the non-reader was never ended: {:?}",
            server.state.manager().stats()
        );
        seq += 1;
        let events = (0..500)
            .map(|_| {
                n += 1;
                let mut e = event(EntityKind::Node, "F", &n.to_string(), Operation::Created);
                e.properties = BTreeMap::from([("blob".to_owned(), payload.clone())]);
                e
            })
            .collect();
        let mut b = (*batch(events)).clone();
        b.batch_id = format!("job-{seq}");
        b.assign_seq(seq);
        server.state.manager().publish(std::sync::Arc::new(b));
        published_bytes += 500 * 512;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = reader.await.unwrap();
    let rss_after = weir_memwatch::procfs::rss_bytes(Process::Current).unwrap();
    let stats = server.state.manager().stats();
    assert_eq!(got, n, "the reader got every change: {stats:?}");
    assert_eq!(stats.completed_lagged, 1, "{stats:?}");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 64 << 20,
        "RSS grew {growth} bytes while {published_bytes} bytes of events flooded"
    );

    // The non-reader now reads what reached it: frames in order, then the SLOW_CONSUMER error
    // naming the last change it was given, and close 1008 (or the socket dropped, when the
    // gateway could not even write those within its write timeout).
    let mut last_seen = None;
    let mut told = None;
    let mut close = None;
    loop {
        match slow.recv().await {
            Frame::Json(m) if m["type"] == "next" => {
                let c = &m["payload"]["data"]["graphChanges"];
                last_seen = Some((c["seq"].as_u64().unwrap(), c["index"].as_u64().unwrap()));
            }
            Frame::Json(m) => {
                assert_eq!(m["type"], "error", "{m}");
                let ext = &m["payload"][0]["extensions"];
                assert_eq!(ext["code"], "SLOW_CONSUMER", "{m}");
                told = Some((ext["lastSeq"].as_u64(), ext["lastIndex"].as_u64()));
            }
            Frame::Close(code, _) => {
                close = Some(code);
                break;
            }
            Frame::Ended => break,
        }
    }
    eprintln!(
        "non-reader: last {last_seen:?}, told {told:?}, close {close:?}, {stats:?}, rss +{growth}"
    );
    if let Some((seq, index)) = told {
        assert_eq!(
            (seq, index),
            (last_seen.map(|l| l.0), last_seen.map(|l| l.1)),
            "the error names the last change the client received"
        );
        assert_eq!(close, Some(weir_gateway::close_codes::SLOW_CONSUMER));
    }
    server.wait_empty().await;
}
