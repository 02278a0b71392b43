//! The multi-process test: one `weir-ingestd` and two `weir-gatewayd` child processes
//! on 127.0.0.1 against the real graph server and NATS (a stream per test).
//!
//! - A client on each gateway subscribes; a dataset is ingested: each receives every
//!   matching change exactly once, in order.
//! - One gateway is killed: the other keeps delivering; the killed one is restarted and a
//!   client resubscribing with `graphChanges(since: <last seq>)` receives exactly what it
//!   missed, then goes on live with the next dataset (nothing lost or doubled at the seam);
//!   `GET /changes?since=` pages through the same history over HTTP.
//! - SIGTERM stops `weir-ingestd` cleanly (exit 0).
//!
//! NATS stopped mid-ingest across these processes: `multi_process_nats_outage.rs`. At the bus
//! level: weir-bus `tests/nats_outage.rs` and `tests/nats_publish_dedup.rs` (a publish retried
//! after a timeout is delivered once); the publisher's wait-and-retry with the same batch is
//! unit-tested in weir-service (`publisher.rs`).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_everything_once_and_catch_up_with_since() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("EV");
    let prefix = format!("{}_", graph.namespace);
    let label = graph.label("Person");
    let dir = tempfile::tempdir().unwrap();
    let ingestd_bin = ingestd_bin();

    let mut ingestd = spawn_ingestd(&ingestd_bin, &stream, free_port(), dir.path());
    let a = spawn_gatewayd(&stream, free_port());
    let b_port = free_port();
    let b = spawn_gatewayd(&stream, b_port);
    for addr in [ingestd.addr, a.addr, b.addr] {
        wait_ready(addr).await;
    }

    let mut ca = Ws::subscribe(a.addr, &label).await;
    let mut cb = Ws::subscribe(b.addr, &label).await;
    wait_subscriptions(a.addr, 1).await;
    wait_subscriptions(b.addr, 1).await;

    // 1. A dataset: both clients get every change once, in order.
    let n = 250;
    let first = people_csv(dir.path(), "first.csv", 0, n);
    let (status, job) = http(
        ingestd.addr,
        "POST",
        "/jobs",
        Some(&json!({"path": first, "mapping": MAPPING, "label_prefix": prefix, "id": "first"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let done = wait_job(ingestd.addr, "first").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["records_committed"], n);
    let got_a = ca.changes(n as usize).await;
    let got_b = cb.changes(n as usize).await;
    let keys_a = assert_once_in_order(&got_a);
    let keys_b = assert_once_in_order(&got_b);
    assert_eq!(keys_a, keys_b);
    assert_eq!(keys_a.len(), n as usize);
    assert_eq!(graph.count(&label).await, n as i64);
    let b_last_seq = got_b.last().unwrap().0;

    // 2. Gateway B dies; A keeps delivering the second dataset.
    drop(cb);
    drop(b);
    let m = 120;
    let second = people_csv(dir.path(), "second.csv", 10_000, m);
    let (status, job) = http(
        ingestd.addr,
        "POST",
        "/jobs",
        Some(&json!({"path": second, "mapping": MAPPING, "label_prefix": prefix, "id": "second"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(wait_job(ingestd.addr, "second").await["state"], "completed");
    let more_a = ca.changes(m as usize).await;
    let second_keys = assert_once_in_order(&more_a);
    assert!(more_a[0].0 > got_a.last().unwrap().0);
    ca.quiet_for(std::time::Duration::from_millis(300)).await;

    // 3. B restarts; a client resubscribes with `since`: first what it missed, then live.
    let b = spawn_gatewayd(&stream, b_port);
    wait_ready(b.addr).await;
    let mut cb = Ws::subscribe_since(b.addr, &label, b_last_seq).await;
    let replayed = cb.changes(m as usize).await;
    assert_eq!(
        assert_once_in_order(&replayed),
        second_keys,
        "graphChanges(since:) replays exactly what B's client missed"
    );
    assert_eq!(
        replayed.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        more_a.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        "same seqs and indexes as the client that never left"
    );
    let k = 40;
    let third = people_csv(dir.path(), "third.csv", 20_000, k);
    let (status, job) = http(
        ingestd.addr,
        "POST",
        "/jobs",
        Some(&json!({"path": third, "mapping": MAPPING, "label_prefix": prefix, "id": "third"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(wait_job(ingestd.addr, "third").await["state"], "completed");
    let live_b = cb.changes(k as usize).await;
    assert!(
        live_b[0].0 > replayed.last().unwrap().0,
        "live changes follow the catch-up in seq order"
    );
    assert_eq!(assert_once_in_order(&live_b).len(), k as usize);
    cb.quiet_for(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        assert_once_in_order(&ca.changes(k as usize).await),
        assert_once_in_order(&live_b)
    );

    // The HTTP twin pages through the same history B's client missed.
    let mut caught = Vec::new();
    let mut since = b_last_seq;
    loop {
        let (status, page) = http(
            b.addr,
            "GET",
            &format!("/changes?since={since}&labels={label}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            caught.push((
                e["seq"].as_u64().unwrap(),
                e["index"].as_u64().unwrap(),
                e["key"].as_str().unwrap().to_owned(),
            ));
        }
        since = page["last_seq"].as_u64().unwrap();
        if page["complete"] == true {
            break;
        }
    }
    // Pages run to the end of the stream: the missed second dataset, then the third.
    let caught_keys: BTreeSet<String> = assert_once_in_order(&caught);
    let mut expected = second_keys.clone();
    expected.extend(assert_once_in_order(&live_b));
    assert_eq!(
        caught_keys, expected,
        "GET /changes?since= pages the same history"
    );

    // 4. SIGTERM stops the ingest service cleanly.
    let status = ingestd.terminate();
    assert!(status.success(), "weir-ingestd exit {status:?}");
}
