//! With an injected gauge crossing the watermarks (paused clock): intake pauses at the high
//! watermark, stays paused between the watermarks (hysteresis), resumes below the low one;
//! batches shrink under pressure and grow back; progress events show state and ratio.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{GenReader, Row, map_row};
use weir_events::{JobState, PressureState};
use weir_memwatch::UsageSource;
use weir_stream::{
    CancellationToken, MemoryUsage, Pipeline, PipelineConfig, ReaderSource, RunOutcome, Sink,
    SinkBatch, SinkError,
};

#[derive(Default)]
struct PressureLog(Mutex<Vec<PressureState>>);

impl weir_stream::PipelineObserver for PressureLog {
    fn batch_finished(&self, _: &weir_stream::BatchReport) {}

    fn pressure_changed(&self, state: PressureState, _: Option<f64>) {
        self.0.lock().unwrap().push(state);
    }
}

#[derive(Default)]
struct SlowSink {
    sizes: Mutex<Vec<usize>>,
}

impl Sink for SlowSink {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.sizes.lock().unwrap().push(batch.items.len());
        Ok(())
    }
}

/// A gauge reading `used` (starting at `start`) of a 100-byte limit.
fn injected_gauge(start: u64) -> (Arc<AtomicU64>, Arc<impl weir_memwatch::MemoryGauge>) {
    let used = Arc::new(AtomicU64::new(start));
    let u = used.clone();
    let gauge = Arc::new(move || MemoryUsage {
        used_bytes: u.load(Ordering::SeqCst),
        limit_bytes: Some(100),
        source: UsageSource::Injected,
    });
    (used, gauge)
}

/// Batches of 64 rows (4 under pressure), one writer, the gauge read every 100 ms.
fn small_batches() -> PipelineConfig {
    PipelineConfig {
        batch_records: 64,
        min_batch_records: 4,
        chunk_records: 8,
        concurrency: 1,
        pressure_sample_interval: Duration::from_millis(100),
        progress_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn intake_pauses_and_resumes_with_hysteresis_and_batches_shrink_and_recover() {
    let (used, gauge) = injected_gauge(50);
    let cfg = PipelineConfig {
        linger: Duration::from_secs(5),
        ..small_batches()
    };
    let sink = Arc::new(SlowSink::default());
    let source = ReaderSource::new(GenReader::new(None), "gen.csv", &cfg);
    let log = Arc::new(PressureLog::default());
    let pipeline = Pipeline::new(cfg, map_row, sink.clone())
        .with_gauge(gauge)
        .with_observer(log.clone());
    let progress = pipeline.subscribe();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(source, cancel.clone()));
    let read = || progress.borrow().records_read;
    let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));

    sleep(1000).await;
    let before = sink.sizes.lock().unwrap().len();
    assert!(before > 50, "running: {before} batches");
    assert_eq!(progress.borrow().pressure, PressureState::Normal);

    // Above the high watermark: intake pauses within a sample interval.
    used.store(85, Ordering::SeqCst);
    sleep(300).await;
    let paused_at = read();
    {
        let p = progress.borrow();
        assert_eq!(p.state, JobState::Paused);
        assert_eq!(p.pressure, PressureState::High);
        assert_eq!(p.pressure_ratio, Some(0.85));
    }
    sleep(1000).await;
    assert_eq!(read(), paused_at, "intake went on above the high watermark");

    // Between the watermarks: still paused (no flapping).
    used.store(75, Ordering::SeqCst);
    sleep(1000).await;
    assert_eq!(read(), paused_at, "intake resumed above the low watermark");
    assert_eq!(progress.borrow().state, JobState::Paused);
    let at_resume = sink.sizes.lock().unwrap().len();

    // Below the low watermark: resumes.
    used.store(60, Ordering::SeqCst);
    sleep(2000).await;
    assert!(read() > paused_at, "intake did not resume");
    {
        let p = progress.borrow();
        assert_eq!(p.state, JobState::Running);
        assert_eq!(p.pressure, PressureState::Normal);
    }
    cancel.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.outcome, RunOutcome::Cancelled);
    assert!(summary.is_balanced());
    assert_eq!(summary.peak_memory_bytes, Some(85));

    assert_eq!(
        *log.0.lock().unwrap(),
        [PressureState::High, PressureState::Normal],
        "one pause, one resume: no flapping"
    );
    let sizes = sink.sizes.lock().unwrap().clone();
    assert!(
        sizes[..before].iter().all(|&n| n == 64),
        "full batches before pressure"
    );
    let after = &sizes[at_resume..];
    assert!(after.len() > 20, "{after:?}");
    assert!(
        after[..5].iter().all(|&n| n <= 32),
        "batches shrank: {after:?}"
    );
    assert!(
        after[after.len() - 5..].iter().all(|&n| n == 64),
        "batches grew back: {after:?}"
    );
}

/// Memory stuck above the high watermark that draining cannot bring down (the rest of the
/// process holds it): intake pauses, and once nothing is queued or in flight for
/// `pressure_stall_after` it goes on with the smallest batches instead of waiting forever;
/// it pauses again when usage grows by the watermark gap above that floor.
#[tokio::test(start_paused = true)]
async fn memory_the_pipeline_cannot_free_does_not_stall_the_run() {
    let (used, gauge) = injected_gauge(85);
    let cfg = PipelineConfig {
        linger: Duration::from_millis(50),
        pressure_stall_after: Duration::from_secs(2),
        ..small_batches()
    };
    let sink = Arc::new(SlowSink::default());
    let source = ReaderSource::new(GenReader::new(Some(2_000)), "gen.csv", &cfg);
    let log = Arc::new(PressureLog::default());
    let pipeline = Pipeline::new(cfg, map_row, sink.clone())
        .with_gauge(gauge)
        .with_observer(log.clone());
    let progress = pipeline.subscribe();
    let run = tokio::spawn(pipeline.run(source, CancellationToken::new()));
    let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));

    // Paused from the first sample, and still paused short of the stall time.
    sleep(1500).await;
    assert_eq!(progress.borrow().state, JobState::Paused);
    let paused_at = progress.borrow().records_read;
    assert!(paused_at < 100, "read {paused_at} rows under pressure");

    // Past it: the run goes on, with the smallest batches.
    sleep(2000).await;
    assert!(
        progress.borrow().records_read > paused_at,
        "intake still waits for memory it cannot free"
    );
    assert_eq!(progress.borrow().state, JobState::Running);

    // Usage grows by the watermark gap above the floor: paused again.
    used.store(96, Ordering::SeqCst);
    sleep(300).await;
    assert_eq!(progress.borrow().state, JobState::Paused);
    // And the run still finishes (the same rule applies at the new level).
    let summary = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the run stalled")
        .unwrap()
        .unwrap();
    assert_eq!(summary.outcome, RunOutcome::Completed);
    assert_eq!(summary.records_committed, 2_000);
    assert!(summary.is_balanced());
    let sizes = sink.sizes.lock().unwrap().clone();
    let small = sizes.iter().filter(|&&n| n <= 4).count();
    assert!(
        small * 2 > sizes.len(),
        "mostly smallest batches: {sizes:?}"
    );
    assert_eq!(
        log.0.lock().unwrap()[..3],
        [
            PressureState::High,
            PressureState::Normal,
            PressureState::High
        ]
    );
}
