//! Publishes change batches to NATS JetStream at a fixed rate with weir-bus's publisher.
//!
//! Each event is a node change on the run's label whose `properties.sent_us` is the publish
//! time (µs since the Unix epoch), taken just before the batch is handed to the bus.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use weir_bus::{Bus, ChangeBatch, EVENT_FORMAT_VERSION};
use weir_events::{ChangeEvent, EntityKind, Operation, SourcePosition};

use crate::clients::now_us;

/// Most batches per second; above it events are grouped into batches.
const MAX_BATCHES_PER_SEC: f64 = 100.0;

/// What one publishing run did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Published {
    /// Events published (acknowledged by JetStream).
    pub(crate) events: u64,
    /// Batches published.
    pub(crate) batches: u64,
    /// Publishes that failed.
    pub(crate) errors: u64,
    /// From the first publish to the last acknowledgement.
    pub(crate) elapsed: Duration,
}

/// `(batches per second, events per batch)` for a target event rate.
pub(crate) fn plan(events_per_sec: f64) -> (f64, u32) {
    if events_per_sec <= MAX_BATCHES_PER_SEC {
        (events_per_sec, 1)
    } else {
        let per_batch = (events_per_sec / MAX_BATCHES_PER_SEC).ceil();
        (events_per_sec / per_batch, per_batch as u32)
    }
}

fn batch(run: &str, label: &str, batch_no: u64, size: u32, first_event: u64) -> ChangeBatch {
    let batch_id = format!("{run}-{batch_no}");
    let sent = now_us();
    let events = (0..u64::from(size))
        .map(|i| {
            let n = first_event + i;
            let mut properties = BTreeMap::new();
            properties.insert("i".to_owned(), serde_json::json!(n));
            properties.insert("sent_us".to_owned(), serde_json::json!(sent));
            ChangeEvent {
                version: EVENT_FORMAT_VERSION,
                seq: 0,
                index: 0,
                kind: EntityKind::Node,
                label: label.to_owned(),
                key: n.to_string(),
                operation: Operation::Merged,
                properties,
                start: None,
                end: None,
                job_id: run.to_owned(),
                batch_id: batch_id.clone(),
                source: SourcePosition::default(),
                committed_at_ms: (sent / 1000) as i64,
            }
        })
        .collect();
    ChangeBatch {
        version: EVENT_FORMAT_VERSION,
        seq: 0,
        job_id: run.to_owned(),
        batch_id,
        events,
    }
}

/// Publishes `events_per_sec` for `duration` (batches numbered from `*next_batch`, so batch
/// ids never repeat within a run and JetStream's dedup never drops one).
pub(crate) async fn publish_for(
    bus: &Bus,
    run: &str,
    label: &str,
    events_per_sec: f64,
    duration: Duration,
    next_batch: &mut u64,
) -> Published {
    let (batches_per_sec, size) = plan(events_per_sec);
    let total_batches = (batches_per_sec * duration.as_secs_f64()).round().max(1.0) as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / batches_per_sec));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut out = Published::default();
    for _ in 0..total_batches {
        tick.tick().await;
        let b = batch(run, label, *next_batch, size, *next_batch * u64::from(size));
        *next_batch += 1;
        match bus.publish_changes(b).await {
            Ok(p) if !p.duplicate => {
                out.events += u64::from(size);
                out.batches += 1;
            }
            Ok(_) | Err(_) => out.errors += 1,
        }
    }
    out.elapsed = started.elapsed();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_batches() {
        assert_eq!(plan(10.0), (10.0, 1));
        assert_eq!(plan(100.0), (100.0, 1));
        assert_eq!(plan(1000.0), (100.0, 10));
        let (bps, size) = plan(250.0);
        assert_eq!(size, 3);
        assert!((bps * f64::from(size) - 250.0).abs() < 1e-9);
    }

    #[test]
    fn events_carry_the_publish_time_and_unique_ids() {
        let b = batch("run", "L", 4, 3, 12);
        assert_eq!(b.events.len(), 3);
        assert_eq!(b.batch_id, "run-4");
        assert_eq!(b.events[2].key, "14");
        let sent = b.events[0].properties["sent_us"].as_u64().unwrap();
        assert!(sent.abs_diff(now_us()) < 5_000_000);
    }
}
