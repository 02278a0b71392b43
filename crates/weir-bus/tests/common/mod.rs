//! Helpers shared by the bus integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::StreamExt;
use weir_bus::{BusError, ChangeBatch, ChangeStream, NatsBusConfig};
use weir_events::fixture::{self, EventFixture, event, node_ref};
use weir_events::{EntityKind, Operation};

/// A batch with one node event and one relationship event.
pub fn batch(job: &str, batch_id: &str) -> ChangeBatch {
    let ev = |kind, label: &str, key: &str| {
        event(kind, label, key, Operation::Merged)
            .with_property("name", serde_json::json!(batch_id))
            .with_source("people.csv", 2, 17)
            .committed_at(1_700_000_000_000)
    };
    let rel = ev(EntityKind::Relationship, "KNOWS", "a->b")
        .with_ends(node_ref("Person", "a"), node_ref("Person", "b"));
    fixture::batch(
        job,
        batch_id,
        vec![ev(EntityKind::Node, "Person", batch_id), rel],
    )
}

/// Bus settings for a per-test stream and subject prefix on `url`.
pub fn nats_config(url: &str, stream: &str) -> NatsBusConfig {
    NatsBusConfig {
        url: url.to_owned(),
        stream: stream.to_owned(),
        subject_prefix: stream.to_owned(),
        storage: weir_bus::StorageKind::File,
        max_age: Duration::from_secs(600),
        max_bytes: 16 << 20,
        duplicate_window: Duration::from_secs(120),
        publish_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        reconnect_max_delay: Duration::from_millis(250),
        ..NatsBusConfig::default()
    }
}

/// The next item of a subscription, within 20 s.
pub async fn next(s: &mut ChangeStream) -> Result<std::sync::Arc<ChangeBatch>, BusError> {
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("a batch within 20 s")
        .expect("subscription still open")
}

/// Reads `n` batches and returns their (seq, batch_id).
pub async fn take(s: &mut ChangeStream, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let b = next(s).await.unwrap();
        assert!(
            b.events.iter().all(|e| e.seq == b.seq),
            "events carry the batch seq"
        );
        out.push((b.seq, b.batch_id.clone()));
    }
    out
}

/// Asserts nothing more arrives within `ms` milliseconds.
pub async fn assert_quiet(s: &mut ChangeStream, ms: u64) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(ms), s.next()).await {
        panic!(
            "expected no more batches, got {:?}",
            item.map(|r| r.map(|b| b.seq))
        );
    }
}
