//! Graceful shutdown (paused clock): on cancel, intake stops, in-flight batches finish within
//! the grace period (or are abandoned when it runs out), and the last checkpoint covers
//! exactly the contiguous committed prefix.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{GenReader, Row, map_row};
use tokio::time::Instant;
use weir_stream::{
    CancellationToken, CheckpointFile, Pipeline, PipelineConfig, ReaderSource, RunOutcome, Sink,
    SinkBatch, SinkError,
};

/// Commits after `delay`; batches with `seq >= hang_from` never finish.
struct TimedSink {
    delay: Duration,
    hang_from: u64,
    committed: Mutex<Vec<u64>>,
}

impl Sink for TimedSink {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        if batch.seq >= self.hang_from {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        self.committed
            .lock()
            .unwrap()
            .extend(batch.items.iter().map(|s| s.item.id));
        Ok(())
    }
}

fn cfg() -> PipelineConfig {
    PipelineConfig {
        batch_records: 50,
        min_batch_records: 1,
        concurrency: 3,
        adaptive_concurrency: false,
        grace_period: Duration::from_secs(2),
        checkpoint_interval: Duration::from_secs(3600),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_drains_in_flight_batches_and_checkpoints_the_committed_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CheckpointFile::new(dir.path().join("cp.json"));
    let sink = Arc::new(TimedSink {
        delay: Duration::from_millis(100),
        hang_from: u64::MAX,
        committed: Mutex::new(Vec::new()),
    });
    let cfg = cfg();
    let source = ReaderSource::new(GenReader::new(None), "gen.csv", &cfg);
    let cancel = CancellationToken::new();
    let pipeline = Pipeline::new(cfg, map_row, sink.clone())
        .with_checkpoint(cp.clone())
        .unwrap();
    let run = tokio::spawn(pipeline.run(source, cancel.clone()));
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let summary = run.await.unwrap().unwrap();
    let took = cancelled_at.elapsed();
    assert!(took <= Duration::from_millis(150), "drain took {took:?}");
    assert_eq!(summary.outcome, RunOutcome::Cancelled);
    assert_eq!(summary.batches_abandoned, 0);
    assert!(summary.is_balanced());
    assert!(summary.records_committed >= 1000, "{summary:?}");
    // The interval was never due: this is the final checkpoint written on shutdown.
    let cp = cp.load().unwrap().unwrap();
    assert!(!cp.complete);
    assert_eq!(cp.position, summary.checkpoint);
    let committed: BTreeSet<u64> = sink.committed.lock().unwrap().iter().copied().collect();
    let prefix: BTreeSet<u64> = (0..cp.position.line - 2).collect();
    assert_eq!(
        committed, prefix,
        "committed set is exactly the lines before the checkpoint"
    );
    assert_eq!(
        summary.records_uncommitted,
        summary.records_read - committed.len() as u64
    );
}

#[tokio::test(start_paused = true)]
async fn hung_batches_are_abandoned_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CheckpointFile::new(dir.path().join("cp.json"));
    let sink = Arc::new(TimedSink {
        delay: Duration::from_millis(10),
        hang_from: 3,
        committed: Mutex::new(Vec::new()),
    });
    let cfg = cfg();
    let source = ReaderSource::new(GenReader::new(None), "gen.csv", &cfg);
    let cancel = CancellationToken::new();
    let pipeline = Pipeline::new(cfg, map_row, sink.clone())
        .with_checkpoint(cp.clone())
        .unwrap();
    let run = tokio::spawn(pipeline.run(source, cancel.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let summary = run.await.unwrap().unwrap();
    let took = cancelled_at.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
        "{took:?}"
    );
    assert_eq!(summary.batches_abandoned, 3, "concurrency 3, all hung");
    assert_eq!(summary.records_committed, 150);
    assert!(summary.is_balanced());
    // Batches 0..3 committed (lines 2..=151); the checkpoint stops before batch 3.
    let cp = cp.load().unwrap().unwrap();
    assert_eq!(cp.position.line, 152);
    let committed: BTreeSet<u64> = sink.committed.lock().unwrap().iter().copied().collect();
    assert_eq!(committed, (0..150).collect());
}
