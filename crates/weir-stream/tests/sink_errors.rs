//! How sink errors end a batch: bad items isolated by index or by halving (only they are
//! dead-lettered), transient errors retried up to the policy then fatal, fatal sink errors and
//! an exceeded error budget stop the run after committing what was done, and an unwritable
//! dead-letter sink is fatal.

mod common;

use std::io::Cursor;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Row, csv, map_row};
use weir_stream::{
    Backoff, BatchReport, CancellationToken, DeadLetter, DeadLetterSink, MemoryDeadLetters,
    Pipeline, PipelineConfig, PipelineObserver, ReaderSource, RunOutcome, Sink, SinkBatch,
    SinkError, Stage, StreamError,
};

#[derive(Clone, Copy)]
enum Mode {
    BadWithIndexes,
    BadWithoutIndexes,
    AlwaysTransient,
    /// The first this many calls fail transiently (an outage), then every write works.
    TransientFor(u32),
    FatalAfter(usize),
}

struct ScriptSink {
    mode: Mode,
    calls: AtomicU32,
    committed: Mutex<Vec<u64>>,
}

fn is_bad(id: u64) -> bool {
    id % 10 == 3
}

impl Sink for ScriptSink {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let bad: Vec<usize> = (0..batch.items.len())
            .filter(|&i| is_bad(batch.items[i].item.id))
            .collect();
        match self.mode {
            Mode::AlwaysTransient => return Err(SinkError::Transient("timeout".into())),
            Mode::TransientFor(n) if call < n => {
                return Err(SinkError::Transient("connection refused".into()));
            }
            Mode::FatalAfter(n) if call as usize >= n => {
                return Err(SinkError::Fatal("database gone".into()));
            }
            Mode::BadWithIndexes if !bad.is_empty() => {
                return Err(SinkError::Data {
                    message: "constraint".into(),
                    bad_items: Some(bad),
                });
            }
            Mode::BadWithoutIndexes if !bad.is_empty() => {
                return Err(SinkError::Data {
                    message: "type error".into(),
                    bad_items: None,
                });
            }
            _ => {}
        }
        self.committed
            .lock()
            .unwrap()
            .extend(batch.items.iter().map(|s| s.item.id));
        Ok(())
    }
}

type Ran = (
    Result<weir_stream::RunSummary, StreamError>,
    Arc<ScriptSink>,
);

#[derive(Default)]
struct Reports(Mutex<Vec<BatchReport>>);

impl PipelineObserver for Reports {
    fn batch_finished(&self, report: &BatchReport) {
        self.0.lock().unwrap().push(report.clone());
    }
}

async fn run(mode: Mode, rows: u64, cfg: PipelineConfig, dl: Arc<dyn DeadLetterSink>) -> Ran {
    run_observed(mode, rows, cfg, dl, Arc::new(Reports::default())).await
}

async fn run_observed(
    mode: Mode,
    rows: u64,
    cfg: PipelineConfig,
    dl: Arc<dyn DeadLetterSink>,
    observer: Arc<Reports>,
) -> Ran {
    let sink = Arc::new(ScriptSink {
        mode,
        calls: AtomicU32::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let source = ReaderSource::new(Cursor::new(csv(rows).into_bytes()), "e.csv", &cfg);
    let r = Pipeline::new(cfg, map_row, sink.clone())
        .with_dead_letters(dl)
        .with_observer(observer)
        .run(source, CancellationToken::new())
        .await;
    (r, sink)
}

fn cfg(batch: usize) -> PipelineConfig {
    PipelineConfig {
        batch_records: batch,
        min_batch_records: 1,
        concurrency: 2,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn bad_items_are_isolated_with_and_without_indexes() {
    for mode in [Mode::BadWithIndexes, Mode::BadWithoutIndexes] {
        let dl = Arc::new(MemoryDeadLetters::new(100));
        let reports = Arc::new(Reports::default());
        let (r, sink) = run_observed(mode, 100, cfg(16), dl.clone(), reports.clone()).await;
        let s = r.unwrap();
        let reports = reports.0.lock().unwrap().clone();
        assert_eq!(reports.len(), 7, "one report per batch of 16");
        assert_eq!(reports.iter().map(|r| r.committed).sum::<usize>(), 90);
        assert_eq!(reports.iter().map(|r| r.dead_lettered).sum::<usize>(), 10);
        assert!(reports.iter().all(|r| !r.failed));
        assert!(
            reports
                .iter()
                .all(|r| r.dead_lettered == 0 || r.writes >= 2)
        );
        let last = reports.iter().find(|r| r.seq == 6).unwrap();
        assert_eq!(
            (last.records, last.writes),
            (4, 1),
            "ids 96..99 hold no bad item"
        );
        assert_eq!((s.records_committed, s.records_dead_lettered), (90, 10));
        let mut committed = sink.committed.lock().unwrap().clone();
        committed.sort_unstable();
        assert_eq!(
            committed,
            (0..100).filter(|&i| !is_bad(i)).collect::<Vec<_>>()
        );
        let mut lines: Vec<u64> = dl.letters().iter().map(|l| l.line).collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            (0..100)
                .filter(|&i| is_bad(i))
                .map(|i| i + 2)
                .collect::<Vec<_>>()
        );
        assert!(dl.letters().iter().all(|l| l.stage == Stage::Sink));
    }
}

#[tokio::test(start_paused = true)]
async fn transient_errors_retry_with_backoff_then_fail_the_run() {
    let mut c = cfg(10);
    c.retry = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
        .with_max_attempts(4);
    let start = tokio::time::Instant::now();
    let (r, sink) = run(
        Mode::AlwaysTransient,
        5,
        c,
        Arc::new(MemoryDeadLetters::new(1)),
    )
    .await;
    let err = r.unwrap_err();
    assert!(
        matches!(
            err.cause(),
            StreamError::RetriesExhausted { attempts: 4, .. }
        ),
        "{err}"
    );
    // 100 + 200 + 400 ms of backoff between the 4 attempts.
    assert_eq!(start.elapsed(), Duration::from_millis(700));
    assert_eq!(sink.calls.load(Ordering::SeqCst), 4);
    let StreamError::Failed { summary, .. } = err else {
        panic!()
    };
    assert_eq!(summary.outcome, RunOutcome::Failed);
    assert_eq!(summary.retries, 3);
    assert_eq!(summary.records_uncommitted, 5);
    assert!(summary.is_balanced());
}

#[tokio::test(start_paused = true)]
async fn a_retry_budget_rides_out_an_outage_longer_than_the_attempts_and_then_gives_up() {
    let mut c = cfg(10);
    c.retry = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
        .with_max_attempts(3);
    c.retry_budget = Some(Duration::from_secs(60));
    // 30 failed writes (about 27 s of waiting) then the server is back: nothing fails.
    let (r, sink) = run(
        Mode::TransientFor(30),
        25,
        c.clone(),
        Arc::new(MemoryDeadLetters::new(1)),
    )
    .await;
    let summary = r.unwrap();
    assert_eq!(summary.outcome, RunOutcome::Completed);
    assert_eq!(summary.records_committed, 25);
    assert_eq!(summary.retries, 30);
    assert_eq!(sink.committed.lock().unwrap().len(), 25);
    // An outage longer than the budget fails the run, after the budget and not before.
    c.retry_budget = Some(Duration::from_secs(5));
    let start = tokio::time::Instant::now();
    let (r, _) = run(
        Mode::AlwaysTransient,
        5,
        c,
        Arc::new(MemoryDeadLetters::new(1)),
    )
    .await;
    let err = r.unwrap_err();
    assert!(
        matches!(err.cause(), StreamError::RetriesExhausted { attempts, .. } if *attempts > 3),
        "{err}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn fatal_sink_error_stops_after_committing_what_was_done() {
    let mut c = cfg(10);
    c.concurrency = 1;
    let (r, sink) = run(
        Mode::FatalAfter(3),
        100,
        c,
        Arc::new(MemoryDeadLetters::new(1)),
    )
    .await;
    let err = r.unwrap_err();
    assert!(matches!(err.cause(), StreamError::SinkFatal(_)), "{err}");
    let StreamError::Failed { summary, .. } = err else {
        panic!()
    };
    assert_eq!(summary.records_committed, 30);
    assert_eq!(sink.committed.lock().unwrap().len(), 30);
    assert_eq!(summary.checkpoint.line, 32);
    assert!(summary.is_balanced());
}

#[tokio::test(start_paused = true)]
async fn error_budget_exceeded_is_fatal() {
    let mut c = cfg(10);
    c.max_errors = Some(4);
    let (r, _) = run(
        Mode::BadWithIndexes,
        100,
        c,
        Arc::new(MemoryDeadLetters::new(100)),
    )
    .await;
    let err = r.unwrap_err();
    let StreamError::Failed { summary, .. } = &err else {
        panic!("{err}")
    };
    assert!(summary.is_balanced(), "{summary:?}");
    // In-flight batches drain after the budget trips, and may dead-letter a few more.
    assert!(summary.records_dead_lettered >= 5);
    assert!(
        matches!(
            err.cause(),
            StreamError::ErrorBudgetExceeded {
                dead_lettered: 5,
                max_errors: 4
            }
        ),
        "{err}"
    );
}

struct BrokenDeadLetters;

impl DeadLetterSink for BrokenDeadLetters {
    fn write(&self, _: &DeadLetter) -> std::io::Result<()> {
        Err(std::io::Error::other("disk full"))
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn unwritable_dead_letter_sink_is_fatal() {
    // A decode-stage dead letter (intake) ...
    let cfg0 = cfg(10);
    let mut input = csv(20);
    input.push_str("1,2,3\n");
    let source = ReaderSource::new(Cursor::new(input.into_bytes()), "e.csv", &cfg0);
    let sink = Arc::new(ScriptSink {
        mode: Mode::FatalAfter(usize::MAX),
        calls: AtomicU32::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let dir = tempfile::tempdir().unwrap();
    let cp = weir_stream::CheckpointFile::new(dir.path().join("cp.json"));
    let err = Pipeline::new(cfg0, map_row, sink)
        .with_dead_letters(Arc::new(BrokenDeadLetters))
        .with_checkpoint(cp.clone())
        .unwrap()
        .run(source, CancellationToken::new())
        .await
        .unwrap_err();
    let cp = cp.load().unwrap().expect("final checkpoint written");
    assert!(
        !cp.complete,
        "a failed intake must not mark the input complete"
    );
    assert_eq!(
        cp.position.line, 22,
        "rows on lines 2..=21 committed, line 22 not"
    );
    assert!(
        matches!(err.cause(), StreamError::DeadLetterUnwritable(_)),
        "{err}"
    );
    // ... and a sink-stage one.
    let (r, _) = run(
        Mode::BadWithIndexes,
        20,
        cfg(10),
        Arc::new(BrokenDeadLetters),
    )
    .await;
    assert!(matches!(
        r.unwrap_err().cause(),
        StreamError::DeadLetterUnwritable(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn error_budget_exceeded_in_intake_still_balances() {
    let mut c = cfg(10);
    c.max_errors = Some(3);
    let mut input = String::from("id,name\n");
    for i in 0..100 {
        if i % 7 == 0 {
            input.push_str("not-a-number,x\n");
        } else {
            input.push_str(&format!("{i},x\n"));
        }
    }
    let source = ReaderSource::new(Cursor::new(input.into_bytes()), "e.csv", &c);
    let sink = Arc::new(ScriptSink {
        mode: Mode::FatalAfter(usize::MAX),
        calls: AtomicU32::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let err = Pipeline::new(c, map_row, sink.clone())
        .with_dead_letters(Arc::new(MemoryDeadLetters::new(100)))
        .run(source, CancellationToken::new())
        .await
        .unwrap_err();
    let StreamError::Failed { cause, summary } = &err else {
        panic!("{err}")
    };
    assert!(matches!(
        **cause,
        StreamError::ErrorBudgetExceeded {
            dead_lettered: 4,
            max_errors: 3
        }
    ));
    assert!(summary.is_balanced(), "{summary:?}");
    // The 4th bad row is line 23 (i = 21): 22 rows read, 4 dead-lettered.
    assert_eq!(summary.records_read, 22);
    assert_eq!(summary.records_dead_lettered, 4);
    assert_eq!(
        summary.records_committed,
        sink.committed.lock().unwrap().len() as u64
    );
}

/// Counts writes and flushes.
#[derive(Default)]
struct CountingDeadLetters {
    written: std::sync::atomic::AtomicU64,
    flushed: std::sync::atomic::AtomicU64,
}

impl DeadLetterSink for CountingDeadLetters {
    fn write(&self, _: &DeadLetter) -> std::io::Result<()> {
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.flushed
            .store(self.written.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn the_commit_watch_moves_forward_to_the_end_with_dead_letters_flushed_first() {
    let cfg = cfg(7);
    let sink = Arc::new(ScriptSink {
        mode: Mode::BadWithIndexes,
        calls: AtomicU32::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let dl = Arc::new(CountingDeadLetters::default());
    let (tx, mut rx) = tokio::sync::watch::channel(weir_stream::Position::default());
    let seen = tokio::spawn({
        let dl = dl.clone();
        async move {
            let mut seen = Vec::new();
            while rx.changed().await.is_ok() {
                let p = *rx.borrow_and_update();
                // Every dead letter written before this announcement was flushed: the
                // announcement follows a flush, and letters are written before their batch ends.
                seen.push((p, dl.flushed.load(Ordering::SeqCst)));
            }
            seen
        }
    });
    let source = ReaderSource::new(Cursor::new(csv(100).into_bytes()), "e.csv", &cfg);
    let summary = Pipeline::new(cfg, map_row, sink)
        .with_dead_letters(dl.clone())
        .with_commit_watch(tx)
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    let seen = seen.await.unwrap();
    assert!(seen.len() > 1, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0.offset < w[1].0.offset),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap().0, summary.checkpoint);
    assert_eq!(summary.records_dead_lettered, 10);
    assert_eq!(
        seen.last().unwrap().1,
        10,
        "all dead letters flushed before the end is announced"
    );
}
