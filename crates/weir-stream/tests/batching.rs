//! Batching and concurrency (paused clock): a batch goes out at most `linger` after its first
//! record arrived, never exceeds the record or byte limit, at most `concurrency` batches are
//! in flight, and progress events report the run.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{GenReader, Row, csv, map_row};
use tokio::time::Instant;
use weir_events::JobState;
use weir_stream::{
    CancellationToken, Format, Pipeline, PipelineConfig, Position, RawRecord, ReaderSource,
    RecordKind, Sink, SinkBatch, SinkError, Source, SourceNames, StreamError,
};

/// One JSON record every `every`, `n` in all; remembers when each was handed over.
struct Trickle {
    next: u64,
    n: u64,
    every: Duration,
    sent_at: Arc<Mutex<Vec<Instant>>>,
}

impl Source for Trickle {
    async fn next_chunk(&mut self) -> Result<Option<Vec<RawRecord>>, StreamError> {
        if self.next == self.n {
            return Ok(None);
        }
        tokio::time::sleep(self.every).await;
        let i = self.next;
        self.next += 1;
        let data = Bytes::from(format!("{{\"id\":{i}}}"));
        let pos = Position {
            file: 0,
            line: i + 1,
            offset: i * 100,
        };
        self.sent_at.lock().unwrap().push(Instant::now());
        Ok(Some(vec![RawRecord {
            position: pos,
            next: Position {
                line: i + 2,
                offset: (i + 1) * 100,
                ..pos
            },
            data,
            kind: RecordKind::Data,
        }]))
    }

    fn names(&self) -> SourceNames {
        Arc::from(vec![Arc::<str>::from("trickle")])
    }
}

#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<(Instant, Vec<u64>, usize)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Duration,
}

impl Sink for Recorder {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let bytes = batch.items.iter().map(|s| s.bytes()).sum();
        self.batches.lock().unwrap().push((
            Instant::now(),
            batch.items.iter().map(|s| s.item.id).collect(),
            bytes,
        ));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn slow_source_batches_leave_after_linger_from_their_first_record() {
    let sent_at = Arc::new(Mutex::new(Vec::new()));
    let source = Trickle {
        next: 0,
        n: 40,
        every: Duration::from_millis(30),
        sent_at: sent_at.clone(),
    };
    let cfg = PipelineConfig {
        format: Format::JsonLines,
        linger: Duration::from_millis(100),
        ..Default::default()
    };
    let sink = Arc::new(Recorder::default());
    let s = Pipeline::new(cfg, map_row, sink.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.records_committed, 40);
    let sent = sent_at.lock().unwrap().clone();
    let batches = sink.batches.lock().unwrap().clone();
    assert!(
        batches.len() >= 10,
        "linger split the trickle: {}",
        batches.len()
    );
    for (at, ids, _) in &batches {
        let first = sent[ids[0] as usize];
        assert!(
            at.duration_since(first) <= Duration::from_millis(100),
            "batch starting with {} left {:?} after its first record",
            ids[0],
            at.duration_since(first)
        );
        assert!(ids.len() <= 4, "{ids:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn batches_respect_record_and_byte_limits_and_concurrency() {
    let cfg = PipelineConfig {
        batch_records: 100,
        min_batch_records: 1,
        batch_bytes: 2_000,
        batch_queue_bytes: 8_000,
        concurrency: 3,
        adaptive_concurrency: false,
        ..Default::default()
    };
    let sink = Arc::new(Recorder {
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    let source = ReaderSource::new(GenReader::new(Some(5_000)), "g.csv", &cfg);
    let pipeline = Pipeline::new(cfg, map_row, sink.clone());
    let progress = pipeline.subscribe();
    let s = pipeline
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.records_committed, 5_000);
    let batches = sink.batches.lock().unwrap().clone();
    let per_item = batches[0].2 / batches[0].1.len();
    for (_, ids, bytes) in &batches {
        assert!(ids.len() <= 100);
        // A batch closes on the record that reaches the byte limit.
        assert!(*bytes < 2_000 + per_item * 2, "{bytes} bytes");
    }
    assert!(
        batches.iter().all(|b| b.1.len() < 100),
        "byte limit binds first here"
    );
    assert_eq!(sink.max_in_flight.load(Ordering::SeqCst), 3);

    let p = progress.borrow().clone();
    assert_eq!(p.state, JobState::Completed);
    assert_eq!((p.records_read, p.records_committed), (5_000, 5_000));
    assert_eq!(p.bytes_read, s.bytes_read);
    assert_eq!(p.batches_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn progress_reports_eta_when_total_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(&path, csv(20_000)).unwrap();
    let cfg = PipelineConfig {
        batch_records: 100,
        min_batch_records: 1,
        progress_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let source = weir_stream::FileSource::open(&[path], &cfg, None).unwrap();
    let total = source.bytes_total().unwrap();
    let sink = Arc::new(Recorder {
        delay: Duration::from_millis(10),
        ..Default::default()
    });
    let pipeline = Pipeline::new(cfg, map_row, sink);
    let mut progress = pipeline.subscribe();
    let run = tokio::spawn(pipeline.run(source, CancellationToken::new()));
    let mut saw_eta = false;
    while progress.changed().await.is_ok() {
        let p = progress.borrow().clone();
        if p.state == JobState::Running && p.eta_secs.is_some() {
            assert_eq!(p.bytes_total, Some(total));
            assert!(p.records_per_sec >= 0.0);
            saw_eta = true;
        }
        if p.state.is_terminal() {
            break;
        }
    }
    assert!(saw_eta, "no running progress event with an ETA");
    run.await.unwrap().unwrap();
}

/// Batch 0 is slow; the others finish at once.
struct SlowFirst {
    seqs_before_first_done: Mutex<Vec<u64>>,
    first_done: std::sync::atomic::AtomicBool,
}

impl Sink for SlowFirst {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        if batch.seq == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.first_done.store(true, Ordering::SeqCst);
        } else if !self.first_done.load(Ordering::SeqCst) {
            self.seqs_before_first_done.lock().unwrap().push(batch.seq);
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn batches_dispatched_ahead_of_a_slow_one_are_bounded_by_the_window() {
    let cfg = PipelineConfig {
        batch_records: 10,
        min_batch_records: 1,
        concurrency: 2,
        adaptive_concurrency: false,
        ..Default::default()
    };
    let sink = Arc::new(SlowFirst {
        seqs_before_first_done: Mutex::new(Vec::new()),
        first_done: false.into(),
    });
    let source = ReaderSource::new(GenReader::new(Some(1_000)), "g.csv", &cfg);
    let s = Pipeline::new(cfg, map_row, sink.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.records_committed, 1_000);
    let ahead = sink.seqs_before_first_done.lock().unwrap().clone();
    // Window = 2 × concurrency: batches 1..=3 may finish while batch 0 is still writing.
    assert_eq!(ahead, [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_sink_slower_than_linger_still_gets_full_batches_from_a_fast_source() {
    // The source hands over 1024 records per chunk at once; the sink takes longer than the
    // linger per batch, so the intake waits on the full queue in the middle of a chunk. The
    // rest of that chunk must start a fresh batch (linger from now), not be flushed at once
    // as a runt batch because the chunk arrived long ago.
    let cfg = PipelineConfig {
        batch_records: 100,
        min_batch_records: 1,
        linger: Duration::from_millis(200),
        concurrency: 1,
        batch_queue: 1,
        ..Default::default()
    };
    let sink = Arc::new(Recorder {
        delay: Duration::from_millis(500),
        ..Default::default()
    });
    let source = ReaderSource::new(GenReader::new(Some(3_000)), "g.csv", &cfg);
    let s = Pipeline::new(cfg, map_row, sink.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.records_committed, 3_000);
    let sizes: Vec<usize> = sink
        .batches
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.1.len())
        .collect();
    assert_eq!(sizes, vec![100; 30], "one transaction per 100 records");
    assert_eq!(s.batches_written, 30);
}

/// A server that refuses concurrent writers (like ArcadeDB's MERGE): a write that overlaps
/// another reports contention, as `GraphSink` does after the writer retried a deadlock.
#[derive(Default)]
struct Serialising {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    contended: AtomicUsize,
    /// Writers it takes without contention.
    capacity: usize,
}

impl Sink for Serialising {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if self.in_flight.load(Ordering::SeqCst) > self.capacity || now > self.capacity {
            self.contended.fetch_add(1, Ordering::SeqCst);
            batch.contention.report();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Records the adaptive limit's moves.
#[derive(Default)]
struct Limits(Mutex<Vec<usize>>);

impl weir_stream::PipelineObserver for Limits {
    fn batch_finished(&self, _: &weir_stream::BatchReport) {}
    fn concurrency_changed(&self, limit: usize) {
        self.0.lock().unwrap().push(limit);
    }
}

/// Writes 4,000 records in batches of 10 (400 batches) to `sink`, at most `concurrency` at
/// once, adaptive or not. Returns the summary, the virtual time it took (paused clock) and the
/// adaptive limit's moves.
async fn run_400_batches<S: Sink<Item = Row>>(
    sink: Arc<S>,
    concurrency: usize,
    adaptive: bool,
) -> (weir_stream::RunSummary, Duration, Vec<usize>) {
    let cfg = PipelineConfig {
        batch_records: 10,
        min_batch_records: 1,
        concurrency,
        adaptive_concurrency: adaptive,
        ..Default::default()
    };
    let source = ReaderSource::new(GenReader::new(Some(4_000)), "g.csv", &cfg);
    let limits = Arc::new(Limits::default());
    let started = Instant::now();
    let s = Pipeline::new(cfg, map_row, sink)
        .with_observer(limits.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(s.records_committed, 4_000);
    let moves = limits.0.lock().unwrap().clone();
    (s, started.elapsed(), moves)
}

async fn run_serialising(capacity: usize, adaptive: bool) -> (Arc<Serialising>, u64) {
    let sink = Arc::new(Serialising {
        capacity,
        ..Default::default()
    });
    let (s, ..) = run_400_batches(sink.clone(), 4, adaptive).await;
    (sink, s.batches_written)
}

#[tokio::test(start_paused = true)]
async fn adaptive_concurrency_backs_off_from_a_server_that_refuses_concurrent_writes() {
    let (fixed, _) = run_serialising(1, false).await;
    let (adaptive, batches) = run_serialising(1, true).await;
    assert_eq!(batches, 400);
    let fixed_contended = fixed.contended.load(Ordering::SeqCst);
    let adaptive_contended = adaptive.contended.load(Ordering::SeqCst);
    // Fixed at 4, nearly every write overlaps another; adaptive, only its rare probes do.
    assert!(fixed_contended > 300, "fixed: {fixed_contended} contended");
    assert!(
        adaptive_contended <= 20,
        "adaptive: {adaptive_contended} of 400 writes contended"
    );
    assert!(adaptive.max_in_flight.load(Ordering::SeqCst) <= 2);
}

#[tokio::test(start_paused = true)]
async fn adaptive_concurrency_rises_to_the_maximum_when_writes_do_not_contend() {
    let (sink, _) = run_serialising(usize::MAX, true).await;
    assert_eq!(sink.contended.load(Ordering::SeqCst), 0);
    assert_eq!(sink.max_in_flight.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_count_as_contention() {
    // Fails a write that starts while another is in flight with a transient error (the
    // first writer wins, as with a deadlock); the pipeline retries it, and the adaptive limit
    // must come down to 1 like it does for reported contention.
    #[derive(Default)]
    struct Refusing {
        in_flight: AtomicUsize,
        refused: AtomicUsize,
    }
    impl Sink for Refusing {
        type Item = Row;
        async fn write(&self, _: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let busy = now > 1;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if busy {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(SinkError::Transient("deadlock detected".into()));
            }
            Ok(())
        }
    }
    let sink = Arc::new(Refusing::default());
    let (s, ..) = run_400_batches(sink.clone(), 4, true).await;
    let refused = sink.refused.load(Ordering::SeqCst);
    assert!(refused <= 40, "{refused} writes refused over 400 batches");
    assert_eq!(s.retries, refused as u64);
}

/// A server that serialises writers on a lock and loses 20 % per waiting writer (lock
/// thrash), without ever reporting an error: ArcadeDB's behaviour for concurrent MERGEs on the
/// people example. Only the measured throughput tells the pipeline to keep one writer.
#[derive(Default)]
struct Locking {
    lock: tokio::sync::Mutex<()>,
    in_flight: AtomicUsize,
    overlapped: AtomicUsize,
}

impl Sink for Locking {
    type Item = Row;

    async fn write(&self, _: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
            self.overlapped.fetch_add(1, Ordering::SeqCst);
        }
        {
            let _held = self.lock.lock().await;
            let waiting = self.in_flight.load(Ordering::SeqCst) - 1;
            let thrash = 1.0 + 0.2 * waiting as f64;
            tokio::time::sleep(Duration::from_millis(100).mul_f64(thrash)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Virtual time to write 400 batches, writes that overlapped another, and the limit's moves.
async fn run_locking(concurrency: usize, adaptive: bool) -> (Duration, usize, Vec<usize>) {
    let sink = Arc::new(Locking::default());
    let (_, took, moves) = run_400_batches(sink.clone(), concurrency, adaptive).await;
    (took, sink.overlapped.load(Ordering::SeqCst), moves)
}

#[tokio::test(start_paused = true)]
async fn adaptive_concurrency_keeps_one_writer_when_more_only_queue_on_the_server() {
    let (one, ..) = run_locking(1, false).await;
    let (four, ..) = run_locking(4, false).await;
    let (adaptive, overlapped, moves) = run_locking(4, true).await;
    // The model punishes concurrency: four fixed writers are much slower than one.
    assert!(
        four > one.mul_f64(1.3),
        "fixed 4: {four:?}, fixed 1: {one:?}"
    );
    // Adaptive: within 10 % of one writer, and only its probes overlapped.
    assert!(
        adaptive < one.mul_f64(1.10),
        "adaptive: {adaptive:?}, fixed 1: {one:?}"
    );
    assert!(
        overlapped <= 60,
        "{overlapped} of 400 writes overlapped; limit moves {moves:?}"
    );
}
