//! Bus limits and poison, against real nats-servers:
//!
//! - On a server with a 64 KiB `max_payload`, change batches of several hundred KiB go out as
//!   parts and arrive whole, in order, for live subscribers, for `since` replays and for a
//!   consumer that starts in the middle of a batch; a republished batch is a duplicate.
//! - Garbage and a change batch of a future event-format version put on the stream by hand are
//!   skipped and counted once each; the batches after them flow on, live and replayed.

mod common;

use std::sync::Arc;

use weir_bus::{Bus, BusConfig, ChangeBatch};
use weir_events::EVENT_FORMAT_VERSION;

/// A batch of `n` events, each with a 400-byte property: about `n` × 0.7 KiB as JSON.
fn big(batch_id: &str, n: usize) -> ChangeBatch {
    let mut b = common::batch("j", batch_id);
    let template = b.events[0].clone();
    b.events = (0..n)
        .map(|i| {
            let mut e = template.clone();
            e.key = format!("{batch_id}-{i}");
            e.properties
                .insert("blob".into(), serde_json::json!("x".repeat(400)));
            e
        })
        .collect();
    b
}

fn assert_whole(got: &Arc<ChangeBatch>, want: &ChangeBatch) {
    assert_eq!(got.batch_id, want.batch_id);
    assert_eq!(got.events.len(), want.events.len(), "{}", want.batch_id);
    for (i, (g, w)) in got.events.iter().zip(&want.events).enumerate() {
        assert_eq!(g.key, w.key, "event {i} of {}", want.batch_id);
        assert_eq!((g.seq, g.index), (got.seq, i as u32));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_max_payload_arrive_whole_and_in_order_everywhere() {
    let server =
        weir_test_support::nats_server::PrivateNatsServer::start_new_with("max_payload: 65536\n");
    let bus = Bus::connect(&BusConfig::Nats(common::nats_config(
        &server.url(),
        "PARTS",
    )))
    .await
    .unwrap();
    let mut live = bus.subscribe_changes(None).await.unwrap();
    let batches = [
        common::batch("j", "small-1"),
        big("big-2", 500),
        common::batch("j", "small-3"),
        big("big-4", 300),
    ];
    let mut seqs = Vec::new();
    for b in &batches {
        let p = bus.publish_changes(b.clone()).await.unwrap();
        assert!(!p.duplicate);
        seqs.push(p.seq);
    }
    let parts = bus.metrics().snapshot().parts_published;
    assert!(parts >= 8, "the big batches went out in parts: {parts}");
    // Seqs grow by the parts: big-2 ends more than one message after small-1.
    assert!(seqs[1] > seqs[0] + 1, "{seqs:?}");

    for (b, seq) in batches.iter().zip(&seqs) {
        let got = common::next(&mut live).await.unwrap();
        assert_eq!(got.seq, *seq, "a batch carries its last part's seq");
        assert_whole(&got, b);
    }
    common::assert_quiet(&mut live, 300).await;

    // A `since` replay after small-1: big-2 whole, then the rest.
    let mut replay = bus.subscribe_changes(Some(seqs[0])).await.unwrap();
    for b in &batches[1..] {
        assert_whole(&common::next(&mut replay).await.unwrap(), b);
    }
    // A consumer that starts inside big-2 (after its first part) fetches the parts before.
    let mut middle = bus.subscribe_changes(Some(seqs[0] + 1)).await.unwrap();
    assert_whole(&common::next(&mut middle).await.unwrap(), &batches[1]);
    assert_whole(&common::next(&mut middle).await.unwrap(), &batches[2]);

    // Published again (a retry after a lost ack): recognised, delivered once.
    let again = bus.publish_changes(batches[1].clone()).await.unwrap();
    assert!(again.duplicate, "{again:?}");
    common::assert_quiet(&mut live, 300).await;
    assert_eq!(bus.metrics().snapshot().incomplete, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_larger_than_a_message_is_refused_with_a_clear_error() {
    let server =
        weir_test_support::nats_server::PrivateNatsServer::start_new_with("max_payload: 16384\n");
    let bus = Bus::connect(&BusConfig::Nats(common::nats_config(&server.url(), "HUGE")))
        .await
        .unwrap();
    let mut b = common::batch("j", "huge");
    b.events[0]
        .properties
        .insert("blob".into(), serde_json::json!("x".repeat(40_000)));
    let err = bus.publish_changes(b).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("exceeds the bus limit"), "{err}");
}

#[tokio::test]
async fn garbage_and_future_versions_are_skipped_counted_and_later_batches_flow() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("POISON");
    let config = common::nats_config(&nats.settings.url, &stream);
    let subject = config.changes_subject();
    let bus = Bus::connect(&BusConfig::Nats(config)).await.unwrap();
    let mut live = bus.subscribe_changes(None).await.unwrap();
    let first = bus
        .publish_changes(common::batch("j", "good-1"))
        .await
        .unwrap();
    for payload in [
        b"this is not json".to_vec(),
        serde_json::to_vec(&serde_json::json!({
            "version": EVENT_FORMAT_VERSION + 1,
            "seq": 0,
            "job_id": "j",
            "batch_id": "from-the-future",
            "events": [{"shape": "unknown"}],
        }))
        .unwrap(),
    ] {
        nats.jetstream
            .publish(subject.clone(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let last = bus
        .publish_changes(common::batch("j", "good-2"))
        .await
        .unwrap();
    assert_eq!(last.seq, first.seq + 3);
    let got = common::take(&mut live, 2).await;
    assert_eq!(
        got,
        [
            (first.seq, "good-1".to_owned()),
            (last.seq, "good-2".to_owned())
        ]
    );
    // Replayed: the same two, the poison skipped again.
    let mut replay = bus.subscribe_changes(Some(0)).await.unwrap();
    assert_eq!(common::take(&mut replay, 2).await, got);
    common::assert_quiet(&mut live, 300).await;
    let m = bus.metrics().snapshot();
    // Each message counted once, though two subscriptions read it.
    assert_eq!((m.skipped_decode, m.skipped_version), (1, 1), "{m:?}");
}
