//! The pipeline: intake (read -> decode -> map -> batch) on one task, a bounded queue, and a
//! sink stage with at most `concurrency` batches in flight, retries, isolation of bad items,
//! in-order checkpoints, progress and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_events::{EVENT_FORMAT_VERSION, JobState, PressureState, ProgressEvent};
use weir_memwatch::{MemoryGauge, ProcessGauge};

use crate::checkpoint::Committer;
use crate::pressure::Pressure;
use crate::queue::{self, QueueReceiver, QueueSender};
use crate::{
    CHECKPOINT_VERSION, Checkpoint, CheckpointFile, ConcurrencyLimit, Contention, DeadLetter,
    DeadLetterSink, Decoder, Mapper, MemoryDeadLetters, PipelineConfig, Position, Prepared,
    RawRecord, RecordKind, Sink, SinkBatch, SinkError, Source, SourceNames, Stage, Staged,
    StreamError,
};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The input ended and every record read was committed or dead-lettered.
    Completed,
    /// Cancelled: intake stopped, in-flight batches finished or were abandoned.
    Cancelled,
    /// Stopped by a fatal error (see [`StreamError::Failed`]).
    Failed,
}

/// What a run did. Every record read ends exactly one way:
/// `records_read == records_committed + records_dead_lettered + records_uncommitted`, and
/// `records_uncommitted` is 0 for a completed run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// The job.
    pub job_id: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Records read (header rows excluded, oversized records included).
    pub records_read: u64,
    /// Records the sink committed.
    pub records_committed: u64,
    /// Records sent to the dead-letter sink.
    pub records_dead_lettered: u64,
    /// Records read but neither committed nor dead-lettered (cancelled or failed runs); they
    /// lie after the final checkpoint and are read again on resume.
    pub records_uncommitted: u64,
    /// Input bytes read (terminators included).
    pub bytes_read: u64,
    /// Raw bytes of the committed records.
    pub bytes_committed: u64,
    /// Batches (or parts of split batches) written successfully.
    pub batches_written: u64,
    /// Transient sink errors that were retried.
    pub retries: u64,
    /// Batches in flight abandoned when the grace period ran out.
    pub batches_abandoned: u64,
    /// The final checkpoint position (first record not known to be done).
    pub checkpoint: Position,
    /// How long the run took.
    pub duration: Duration,
    /// Highest memory use the gauge reported during the run.
    pub peak_memory_bytes: Option<u64>,
}

impl RunSummary {
    /// Whether the accounting invariant holds.
    pub fn is_balanced(&self) -> bool {
        self.records_read
            == self.records_committed + self.records_dead_lettered + self.records_uncommitted
    }
}

/// Live counters, shared by the stages; read for progress events.
#[derive(Debug, Default)]
struct Counters {
    read: AtomicU64,
    bytes_read: AtomicU64,
    committed: AtomicU64,
    bytes_committed: AtomicU64,
    dead: AtomicU64,
    batches: AtomicU64,
    retries: AtomicU64,
    in_flight: AtomicU64,
    paused: AtomicU8,
    ratio_bits: AtomicU64,
    peak_used: AtomicU64,
    intake_failed: std::sync::atomic::AtomicBool,
}

/// A batch on its way to the sink: its items and the input position after its last record
/// (records dead-lettered before the sink count as covered).
#[derive(Debug)]
struct Batch<I> {
    seq: u64,
    items: Vec<Staged<I>>,
    end: Position,
}

/// Everything a stage needs to dead-letter a record and keep the error budget.
struct Errors {
    sink: Arc<dyn DeadLetterSink>,
    names: SourceNames,
    max_raw: usize,
    max_errors: Option<u64>,
    counters: Arc<Counters>,
}

impl Errors {
    fn dead_letter(
        &self,
        pos: Position,
        stage: Stage,
        error: String,
        raw: &[u8],
        len: u64,
    ) -> Result<(), StreamError> {
        let name = self.names.get(pos.file as usize).map_or("", |n| &**n);
        let letter = DeadLetter::new(name, pos, stage, error, raw, self.max_raw, len);
        self.sink
            .write(&letter)
            .map_err(StreamError::DeadLetterUnwritable)?;
        let dead = self.counters.dead.fetch_add(1, Ordering::Relaxed) + 1;
        match self.max_errors {
            Some(max) if dead > max => Err(StreamError::ErrorBudgetExceeded {
                dead_lettered: dead,
                max_errors: max,
            }),
            _ => Ok(()),
        }
    }
}

/// A configured pipeline: mapper, sink, and optional gauge, dead-letter sink and checkpoint.
pub struct Pipeline<M: Mapper, S: Sink<Item = M::Item>> {
    config: PipelineConfig,
    mapper: Arc<M>,
    sink: Arc<S>,
    gauge: Arc<dyn MemoryGauge>,
    dead_letters: Arc<dyn DeadLetterSink>,
    checkpoint: Option<CheckpointFile>,
    start: Position,
    run_id: Arc<str>,
    progress: watch::Sender<ProgressEvent>,
    observer: Option<Arc<dyn PipelineObserver>>,
}

/// A new run's id: 8 random hex digits.
fn new_run_id() -> Arc<str> {
    format!("{:08x}", rand::random::<u32>()).into()
}

impl<M: Mapper, S: Sink<Item = M::Item>> std::fmt::Debug for Pipeline<M, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

fn progress_event(
    job_id: &str,
    state: JobState,
    c: &Counters,
    elapsed: Duration,
    rate: f64,
    bytes_total: Option<u64>,
) -> ProgressEvent {
    let bytes_read = c.bytes_read.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    let ratio = f64::from_bits(c.ratio_bits.load(Ordering::Relaxed));
    let eta = bytes_total.and_then(|t| {
        let speed = bytes_read as f64 / secs;
        (secs > 0.0 && speed > 0.0).then(|| t.saturating_sub(bytes_read) as f64 / speed)
    });
    ProgressEvent {
        version: EVENT_FORMAT_VERSION,
        job_id: job_id.to_owned(),
        state,
        records_read: c.read.load(Ordering::Relaxed),
        records_committed: c.committed.load(Ordering::Relaxed),
        records_dead_lettered: c.dead.load(Ordering::Relaxed),
        bytes_read,
        bytes_total,
        records_per_sec: rate,
        batches_in_flight: u32::try_from(c.in_flight.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
        pressure: if c.paused.load(Ordering::Relaxed) == 1 {
            PressureState::High
        } else {
            PressureState::Normal
        },
        pressure_ratio: ratio.is_finite().then_some(ratio),
        eta_secs: eta,
        elapsed_secs: secs,
        error: None,
    }
}

impl<M: Mapper, S: Sink<Item = M::Item>> Pipeline<M, S> {
    /// A pipeline with `config`, mapping with `mapper` and writing to `sink`. Defaults: the
    /// process gauge without a configured limit (cgroup limit if any), dead letters kept in
    /// memory (at most 10 000, then the run fails), no checkpoint file.
    pub fn new(config: PipelineConfig, mapper: M, sink: S) -> Self {
        let job_id = config.job_id.clone();
        let (progress, _) = watch::channel(progress_event(
            &job_id,
            JobState::Queued,
            &Counters::default(),
            Duration::ZERO,
            0.0,
            None,
        ));
        Self {
            config,
            mapper: Arc::new(mapper),
            sink: Arc::new(sink),
            gauge: Arc::new(ProcessGauge::new(None)),
            dead_letters: Arc::new(MemoryDeadLetters::new(10_000)),
            checkpoint: None,
            start: Position {
                file: 0,
                line: 1,
                offset: 0,
            },
            run_id: new_run_id(),
            progress,
            observer: None,
        }
    }

    /// The run's id (see [`SinkBatch::run_id`]).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Reports batches and pressure changes to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn PipelineObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Uses `gauge` for memory pressure (e.g. `ProcessGauge::new(Some(limit))`, or a closure in
    /// tests).
    pub fn with_gauge(mut self, gauge: Arc<dyn MemoryGauge>) -> Self {
        self.gauge = gauge;
        self
    }

    /// Sends dead letters to `sink` (e.g. [`crate::JsonlDeadLetters`]).
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = sink;
        self
    }

    /// Persists checkpoints to `file`. When it holds one, the run resumes after it: open the
    /// source with the same checkpoint (see [`crate::FileSource::open`]).
    pub fn with_checkpoint(mut self, file: CheckpointFile) -> Result<Self, StreamError> {
        if let Some(cp) = file.load()? {
            self.start = cp.position;
            if let Some(run) = cp.run_id.filter(|_| !cp.complete) {
                self.run_id = run.into();
            }
        }
        self.checkpoint = Some(file);
        Ok(self)
    }

    /// Receives progress events (the latest one; published every `progress_interval` and on
    /// every state change).
    pub fn subscribe(&self) -> watch::Receiver<ProgressEvent> {
        self.progress.subscribe()
    }

    /// Runs until the source ends, `cancel` fires, or a fatal error. `Ok` for completed and
    /// cancelled runs (see [`RunSummary::outcome`]); [`StreamError::Failed`] with the summary
    /// for fatal errors; other errors when the run could not start.
    pub async fn run(
        self,
        source: impl Source,
        cancel: CancellationToken,
    ) -> Result<RunSummary, StreamError> {
        self.config.validate()?;
        let started = Instant::now();
        let cfg = Arc::new(self.config);
        let counters = Arc::new(Counters::default());
        counters
            .ratio_bits
            .store(f64::NAN.to_bits(), Ordering::Relaxed);
        let names = source.names();
        let bytes_total = source.bytes_total();
        let errors = Arc::new(Errors {
            sink: self.dead_letters.clone(),
            names: names.clone(),
            max_raw: cfg.dead_letter_raw_bytes,
            max_errors: cfg.max_errors,
            counters: counters.clone(),
        });
        let stop = cancel.child_token();
        let (tx, rx) = queue::bounded(cfg.batch_queue, cfg.batch_queue_bytes);
        let intake = Intake {
            cfg: cfg.clone(),
            mapper: self.mapper.clone(),
            errors: errors.clone(),
            counters: counters.clone(),
            pressure: Pressure::new(self.gauge.clone(), cfg.high_watermark, cfg.low_watermark),
            stop: stop.clone(),
            tx,
            frontier: self.start,
            seq: 0,
            progress: self.progress.clone(),
            observer: self.observer.clone(),
        };
        let intake = tokio::spawn(intake.run(source));
        let stage = SinkStage {
            cfg: cfg.clone(),
            sink: self.sink.clone(),
            errors,
            counters: counters.clone(),
            names: names.clone(),
            run_id: self.run_id.clone(),
            committer: Committer::new(self.start),
            checkpoint: self.checkpoint,
            last_checkpoint: None,
            stop: stop.clone(),
            progress: self.progress.clone(),
            started,
            bytes_total,
            observer: self.observer.clone(),
            limit: Arc::new(Limit {
                state: ConcurrencyLimit::new(cfg.concurrency, cfg.adaptive_concurrency).into(),
                observer: self.observer.clone(),
            }),
        };
        let stage_result = stage.run(rx, cancel.clone()).await;
        stop.cancel();
        let intake_result = match intake.await {
            Ok(r) => r,
            Err(e) => Err(StreamError::Internal(format!("intake task: {e}"))),
        };
        let (frontier, abandoned, stage_err) = stage_result;
        let read = counters.read.load(Ordering::Relaxed);
        let committed = counters.committed.load(Ordering::Relaxed);
        let dead = counters.dead.load(Ordering::Relaxed);
        let fatal = stage_err.or(intake_result.err());
        let outcome = if fatal.is_some() {
            RunOutcome::Failed
        } else if cancel.is_cancelled() {
            RunOutcome::Cancelled
        } else {
            RunOutcome::Completed
        };
        let peak = counters.peak_used.load(Ordering::Relaxed);
        let summary = RunSummary {
            job_id: cfg.job_id.clone(),
            outcome,
            records_read: read,
            records_committed: committed,
            records_dead_lettered: dead,
            records_uncommitted: read.saturating_sub(committed + dead),
            bytes_read: counters.bytes_read.load(Ordering::Relaxed),
            bytes_committed: counters.bytes_committed.load(Ordering::Relaxed),
            batches_written: counters.batches.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            batches_abandoned: abandoned,
            checkpoint: frontier,
            duration: started.elapsed(),
            peak_memory_bytes: (peak > 0).then_some(peak),
        };
        let state = match outcome {
            RunOutcome::Completed => JobState::Completed,
            RunOutcome::Cancelled => JobState::Cancelled,
            RunOutcome::Failed => JobState::Failed,
        };
        let mut last = progress_event(
            &cfg.job_id,
            state,
            &counters,
            summary.duration,
            committed as f64 / summary.duration.as_secs_f64().max(1e-9),
            bytes_total,
        );
        last.error = fatal.as_ref().map(ToString::to_string);
        self.progress.send_replace(last);
        info!(job = %cfg.job_id, ?outcome, read, committed, dead, uncommitted = summary.records_uncommitted, "ingest run ended");
        match fatal {
            Some(cause) => Err(StreamError::Failed {
                cause: Box::new(cause),
                summary: Box::new(summary),
            }),
            None => Ok(summary),
        }
    }
}

/// Read -> decode -> map -> batch, on one task.
struct Intake<M: Mapper> {
    cfg: Arc<PipelineConfig>,
    mapper: Arc<M>,
    errors: Arc<Errors>,
    counters: Arc<Counters>,
    pressure: Pressure,
    stop: CancellationToken,
    tx: QueueSender<Batch<M::Item>>,
    frontier: Position,
    seq: u64,
    progress: watch::Sender<ProgressEvent>,
    observer: Option<Arc<dyn PipelineObserver>>,
}

struct Building<I> {
    items: Vec<Staged<I>>,
    bytes: usize,
    started: Option<Instant>,
    dirty: bool,
}

impl<M: Mapper> Intake<M> {
    async fn run(mut self, source: impl Source) -> Result<(), StreamError> {
        let r = self.run_inner(source).await;
        if r.is_err() {
            // Set before the queue's sender drops with `self`, so the sink stage sees it
            // when it finds the queue closed.
            self.counters.intake_failed.store(true, Ordering::SeqCst);
        }
        r
    }

    async fn run_inner(&mut self, mut source: impl Source) -> Result<(), StreamError> {
        let mut decoder = Decoder::new(self.cfg.format.clone());
        // Every header the source can tell ahead is checked before anything is mapped.
        for (file, raw) in source.header_rows() {
            let input = self.errors.names.get(file as usize).map_or("", |n| &**n);
            crate::map::take_header(&mut decoder, &*self.mapper, input, &raw)?;
        }
        let mut b = Building {
            items: Vec::with_capacity(self.cfg.batch_records),
            bytes: 0,
            started: None,
            dirty: false,
        };
        let mut next_sample = Instant::now();
        loop {
            if Instant::now() >= next_sample {
                self.sample();
                if self.pressure.state() == PressureState::High {
                    // Flush what we hold so the sink can drain it, then wait below the low
                    // watermark.
                    if !self.flush(&mut b).await {
                        return Ok(());
                    }
                    if !self.wait_for_relief().await {
                        return Ok(());
                    }
                }
                next_sample = Instant::now() + self.cfg.pressure_sample_interval;
            }
            let deadline = b.started.map(|s| s + self.cfg.linger);
            let chunk = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(()),
                () = sleep_until_opt(deadline) => {
                    if !self.flush(&mut b).await {
                        return Ok(());
                    }
                    continue;
                }
                c = source.next_chunk() => c?,
            };
            let Some(chunk) = chunk else {
                b.dirty = true;
                self.flush(&mut b).await;
                return Ok(());
            };
            // Linger runs from when the batch took its first record (`take_records` stamps
            // it), not from when the chunk arrived: a flush in the middle of a chunk can wait
            // long on a full queue, and the rest of the chunk then starts a fresh batch.
            if !self.take_chunk(chunk, &mut decoder, &mut b).await? {
                return Ok(());
            }
        }
    }

    fn sample(&mut self) {
        let state = self.pressure.sample();
        let c = &self.counters;
        c.paused
            .store(u8::from(state == PressureState::High), Ordering::Relaxed);
        let ratio = self.pressure.ratio().unwrap_or(f64::NAN);
        c.ratio_bits.store(ratio.to_bits(), Ordering::Relaxed);
        if let Some(p) = self.pressure.peak_used() {
            c.peak_used.fetch_max(p, Ordering::Relaxed);
        }
    }

    /// Paused: samples until the gauge is at or below the low watermark. `false` when stopped.
    async fn wait_for_relief(&mut self) -> bool {
        warn!(ratio = ?self.pressure.ratio(), "memory pressure high: intake paused");
        if let Some(o) = &self.observer {
            o.pressure_changed(PressureState::High, self.pressure.ratio());
        }
        self.progress.send_modify(|p| {
            p.state = JobState::Paused;
            p.pressure = PressureState::High;
            p.pressure_ratio = self.pressure.ratio();
        });
        let mut drained_since: Option<Instant> = None;
        while self.pressure.state() == PressureState::High {
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(self.cfg.pressure_sample_interval) => self.sample(),
            }
            let drained =
                self.tx.is_empty() && self.counters.in_flight.load(Ordering::Relaxed) == 0;
            if !drained {
                drained_since = None;
                continue;
            }
            let since = *drained_since.get_or_insert_with(Instant::now);
            if self.pressure.state() == PressureState::High
                && since.elapsed() >= self.cfg.pressure_stall_after
            {
                // Nothing of ours is left to free: waiting longer would wait forever.
                self.pressure.accept_floor();
                self.sample();
                warn!(
                    ratio = ?self.pressure.ratio(),
                    floor = ?self.pressure.floor(),
                    "memory stays above the low watermark with nothing queued or in flight: \
                     the memory limit is below what the process holds outside the pipeline \
                     (raise it); intake goes on with the smallest batches and pauses again if \
                     usage grows further"
                );
            }
        }
        info!(ratio = ?self.pressure.ratio(), "memory pressure back to normal: intake resumed");
        if let Some(o) = &self.observer {
            o.pressure_changed(PressureState::Normal, self.pressure.ratio());
        }
        self.progress.send_modify(|p| {
            p.state = JobState::Running;
            p.pressure = PressureState::Normal;
            p.pressure_ratio = self.pressure.ratio();
        });
        true
    }

    /// Decodes, maps and batches one chunk. `Ok(false)` when stopped.
    async fn take_chunk(
        &mut self,
        chunk: Vec<RawRecord>,
        decoder: &mut Decoder,
        b: &mut Building<M::Item>,
    ) -> Result<bool, StreamError> {
        let (mut read, mut bytes_read) = (0u64, 0u64);
        let r = self
            .take_records(chunk, decoder, b, &mut read, &mut bytes_read)
            .await;
        // Counted on every path, errors included, so the summary balances.
        self.counters.read.fetch_add(read, Ordering::Relaxed);
        self.counters
            .bytes_read
            .fetch_add(bytes_read, Ordering::Relaxed);
        r
    }

    async fn take_records(
        &mut self,
        chunk: Vec<RawRecord>,
        decoder: &mut Decoder,
        b: &mut Building<M::Item>,
        read: &mut u64,
        bytes_read: &mut u64,
    ) -> Result<bool, StreamError> {
        let limit = self
            .pressure
            .batch_limit(self.cfg.batch_records, self.cfg.min_batch_records);
        for rec in chunk {
            *bytes_read += rec.span_bytes();
            match rec.kind {
                RecordKind::Header => {
                    let input = self.errors.names.get(rec.position.file as usize);
                    let input = input.map_or("", |n| &**n);
                    crate::map::take_header(decoder, &*self.mapper, input, &rec.data)?;
                }
                RecordKind::Oversized { len } => {
                    *read += 1;
                    self.errors.dead_letter(
                        rec.position,
                        Stage::Read,
                        format!(
                            "record exceeds {} bytes ({len} bytes)",
                            self.cfg.max_record_bytes
                        ),
                        &rec.data,
                        len,
                    )?;
                }
                RecordKind::Data => {
                    *read += 1;
                    let mapped = match decoder.decode(rec.position, &rec.data) {
                        Err(e) => Err((Stage::Decode, e.to_string())),
                        Ok(d) => self.mapper.map(&d).map_err(|e| (Stage::Map, e.to_string())),
                    };
                    match mapped {
                        Ok(item) => {
                            let bytes = self.mapper.item_bytes(&item, rec.data.len());
                            b.bytes += bytes;
                            b.items.push(Staged {
                                item,
                                position: rec.position,
                                raw: rec.data,
                                bytes,
                            });
                        }
                        Err((stage, msg)) => {
                            self.errors.dead_letter(
                                rec.position,
                                stage,
                                msg,
                                &rec.data,
                                rec.data.len() as u64,
                            )?;
                        }
                    }
                }
            }
            self.frontier = rec.next;
            b.dirty = true;
            if b.started.is_none() {
                b.started = Some(Instant::now());
            }
            if b.items.len() >= limit || b.bytes >= self.cfg.batch_bytes {
                // Count before the batch can be committed, so progress never shows more
                // committed than read.
                self.counters.read.fetch_add(*read, Ordering::Relaxed);
                self.counters
                    .bytes_read
                    .fetch_add(*bytes_read, Ordering::Relaxed);
                (*read, *bytes_read) = (0, 0);
                if !self.flush(b).await {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Sends the batch being built (even without items when the frontier moved over dead
    /// letters). `false` when stopped.
    async fn flush(&mut self, b: &mut Building<M::Item>) -> bool {
        b.started = None;
        if !b.dirty {
            return true;
        }
        b.dirty = false;
        let cap = self
            .pressure
            .batch_limit(self.cfg.batch_records, self.cfg.min_batch_records);
        let items = std::mem::replace(&mut b.items, Vec::with_capacity(cap));
        let bytes = std::mem::take(&mut b.bytes);
        let batch = Batch {
            seq: self.seq,
            items,
            end: self.frontier,
        };
        self.seq += 1;
        tokio::select! {
            biased;
            () = self.stop.cancelled() => false,
            r = self.tx.send(batch, bytes) => r.is_ok(),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What one batch write ended with.
struct Written {
    seq: u64,
    end: Position,
    fatal: Option<StreamError>,
    /// Some write of the batch was retried (transient error or contention the sink reported).
    contended: bool,
    /// The concurrency limit's epoch when the batch was dispatched.
    epoch: u64,
    records: usize,
    took: Duration,
}

/// A batch being prepared by the sink ahead of its write (`Sink::prepare`).
type PrepareTask<I> = tokio::task::JoinHandle<(Batch<I>, Option<Prepared>)>;

/// Dispatches batches to the sink, at most `concurrency` at once, and moves the checkpoint.
struct SinkStage<S: Sink> {
    cfg: Arc<PipelineConfig>,
    sink: Arc<S>,
    errors: Arc<Errors>,
    counters: Arc<Counters>,
    names: SourceNames,
    run_id: Arc<str>,
    committer: Committer,
    checkpoint: Option<CheckpointFile>,
    last_checkpoint: Option<(Instant, Position)>,
    stop: CancellationToken,
    progress: watch::Sender<ProgressEvent>,
    started: Instant,
    bytes_total: Option<u64>,
    observer: Option<Arc<dyn PipelineObserver>>,
    limit: Arc<Limit>,
}

/// The adaptive in-flight limit, shared by the sink stage (which reads it before taking a
/// batch) and the write tasks (which lower it the moment a write contends).
struct Limit {
    state: std::sync::Mutex<ConcurrencyLimit>,
    observer: Option<Arc<dyn PipelineObserver>>,
}

impl Limit {
    fn get(&self) -> usize {
        self.lock().limit()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConcurrencyLimit> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn epoch(&self) -> u64 {
        self.lock().epoch()
    }

    /// A write of a batch dispatched in `epoch` contended.
    fn contended(&self, epoch: u64) {
        let changed = self.lock().on_contention(epoch);
        self.changed(changed, true);
    }

    /// A batch dispatched in `epoch` was written without a retry.
    fn clean(&self, epoch: u64, records: usize, took: Duration) {
        let changed = self.lock().on_clean_batch(epoch, records, took);
        self.changed(changed, false);
    }

    fn changed(&self, changed: Option<usize>, contended: bool) {
        if let Some(limit) = changed {
            debug!(limit, contended, "write concurrency limit changed");
            if let Some(o) = &self.observer {
                o.concurrency_changed(limit);
            }
        }
    }
}

impl<S: Sink> SinkStage<S> {
    /// Returns the final frontier, batches abandoned, and the fatal error if any.
    async fn run(
        mut self,
        mut rx: QueueReceiver<Batch<S::Item>>,
        cancel: CancellationToken,
    ) -> (Position, u64, Option<StreamError>) {
        let mut tasks: JoinSet<Written> = JoinSet::new();
        let mut next_seq = 0u64;
        // Batches dispatched ahead of the oldest unfinished one: bounds the committer's map.
        let window = 2 * self.cfg.concurrency as u64;
        let mut input_done = false;
        let mut fatal: Option<StreamError> = None;
        // The next batch, taken off the queue and being (or done being) prepared by the sink
        // while the writes in flight go on: at most one.
        let mut ahead: Option<PrepareTask<S::Item>> = None;
        let mut tick = tokio::time::interval(self.cfg.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rate = (Instant::now(), 0u64, 0.0f64);
        self.publish(JobState::Running, &mut last_rate);
        while !(input_done && tasks.is_empty() && ahead.is_none()) {
            let can_write = tasks.len() < self.limit.get();
            let can_take = !input_done
                && ahead.is_none()
                && next_seq < self.committer.oldest_pending() + window;
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // Stop taking batches; drain what is in flight below.
                    break;
                }
                _ = tick.tick() => self.publish(JobState::Running, &mut last_rate),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    match done {
                        Ok(w) => {
                            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                            if let Some(e) = w.fatal {
                                fatal.get_or_insert(e);
                                self.stop.cancel();
                                break;
                            }
                            if !w.contended {
                                self.limit.clean(w.epoch, w.records, w.took);
                            }
                            self.finish(w.seq, w.end);
                        }
                        Err(e) => {
                            fatal.get_or_insert(StreamError::Internal(format!("sink task: {e}")));
                            self.stop.cancel();
                            break;
                        }
                    }
                }
                prepared = async { ahead.as_mut().expect("guarded").await }, if ahead.is_some() && can_write => {
                    ahead = None;
                    match prepared {
                        Ok((batch, prepared)) => self.dispatch(&mut tasks, batch, prepared),
                        Err(e) => {
                            fatal.get_or_insert(StreamError::Internal(format!("prepare task: {e}")));
                            self.stop.cancel();
                            break;
                        }
                    }
                }
                batch = rx.recv(), if can_take => {
                    let Some(batch) = batch else {
                        input_done = true;
                        continue;
                    };
                    next_seq = batch.seq + 1;
                    if batch.items.is_empty() {
                        self.finish(batch.seq, batch.end);
                        continue;
                    }
                    let (sink, names) = (self.sink.clone(), self.names.clone());
                    let run_id = self.run_id.clone();
                    ahead = Some(tokio::spawn(async move {
                        let contention = Contention::default();
                        let prepared = sink.prepare(&SinkBatch {
                            seq: batch.seq,
                            run_id: &run_id,
                            attempt: 1,
                            items: &batch.items,
                            sources: &names,
                            contention: &contention,
                        });
                        (batch, prepared)
                    }));
                }
            }
        }
        // A batch prepared but not dispatched is not done: like the queued ones, it lies after
        // the checkpoint and is read again on resume.
        if let Some(a) = ahead.take() {
            a.abort();
        }
        // Stopping (cancelled, fatal) or done: let in-flight batches finish within the grace
        // period, then abandon the rest.
        drop(rx);
        self.stop.cancel();
        let mut abandoned = 0;
        if !tasks.is_empty() {
            self.publish(JobState::Draining, &mut last_rate);
            let deadline = Instant::now() + self.cfg.grace_period;
            loop {
                tokio::select! {
                    done = tasks.join_next() => match done {
                        None => break,
                        Some(Ok(w)) => {
                            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                            match w.fatal {
                                Some(e) => { fatal.get_or_insert(e); }
                                None => self.finish(w.seq, w.end),
                            }
                        }
                        Some(Err(e)) => {
                            fatal.get_or_insert(StreamError::Internal(format!("sink task: {e}")));
                        }
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        abandoned = tasks.len() as u64;
                        warn!(abandoned, grace = ?self.cfg.grace_period, "grace period over: abandoning in-flight batches");
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        self.counters.in_flight.store(0, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        let complete = fatal.is_none()
            && !cancel.is_cancelled()
            && input_done
            && !self.counters.intake_failed.load(Ordering::SeqCst);
        let frontier = self.committer.frontier();
        if let Err(e) = self.write_checkpoint(frontier, complete) {
            fatal.get_or_insert(e);
        }
        (frontier, abandoned, fatal)
    }

    /// Starts writing `batch` (with what the sink prepared of it).
    fn dispatch(
        &self,
        tasks: &mut JoinSet<Written>,
        batch: Batch<S::Item>,
        prepared: Option<Prepared>,
    ) {
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let sink = self.sink.clone();
        let ctx = WriteCtx {
            cfg: self.cfg.clone(),
            errors: self.errors.clone(),
            counters: self.counters.clone(),
            names: self.names.clone(),
            run_id: self.run_id.clone(),
            observer: self.observer.clone(),
            limit: self.limit.clone(),
            epoch: self.limit.epoch(),
        };
        tasks.spawn(async move { write_batch(&*sink, &ctx, batch, prepared).await });
    }

    fn finish(&mut self, seq: u64, end: Position) {
        if let Some(frontier) = self.committer.finish(seq, end) {
            let due = self
                .last_checkpoint
                .is_none_or(|(at, _)| at.elapsed() >= self.cfg.checkpoint_interval);
            if due && let Err(e) = self.write_checkpoint(frontier, false) {
                // Keep going: the next write retries; the final one is reported.
                warn!(error = %e, "checkpoint write failed");
            }
        }
    }

    fn write_checkpoint(&mut self, frontier: Position, complete: bool) -> Result<(), StreamError> {
        let Some(file) = &self.checkpoint else {
            return Ok(());
        };
        if !complete && self.last_checkpoint.is_some_and(|(_, p)| p == frontier) {
            return Ok(());
        }
        // Dead letters before the checkpoint must be on disk before it moves past them.
        self.errors
            .sink
            .flush()
            .map_err(StreamError::DeadLetterUnwritable)?;
        let cp = Checkpoint {
            version: CHECKPOINT_VERSION,
            job_id: self.cfg.job_id.clone(),
            source: self
                .names
                .get(frontier.file as usize)
                .map_or_else(String::new, |n| n.to_string()),
            position: frontier,
            complete,
            run_id: Some(self.run_id.to_string()),
        };
        file.store(&cp)?;
        debug!(?frontier, "checkpoint written");
        self.last_checkpoint = Some((Instant::now(), frontier));
        Ok(())
    }

    fn publish(&self, state: JobState, last: &mut (Instant, u64, f64)) {
        let now = Instant::now();
        let committed = self.counters.committed.load(Ordering::Relaxed);
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt > 0.0 {
            last.2 = (committed - last.1) as f64 / dt;
        }
        *last = (now, committed, last.2);
        let paused = self.counters.paused.load(Ordering::Relaxed) == 1;
        let state = if paused && state == JobState::Running {
            JobState::Paused
        } else {
            state
        };
        self.progress.send_replace(progress_event(
            &self.cfg.job_id,
            state,
            &self.counters,
            self.started.elapsed(),
            last.2,
            self.bytes_total,
        ));
    }
}

struct WriteCtx {
    cfg: Arc<PipelineConfig>,
    errors: Arc<Errors>,
    counters: Arc<Counters>,
    names: SourceNames,
    run_id: Arc<str>,
    observer: Option<Arc<dyn PipelineObserver>>,
    limit: Arc<Limit>,
    /// The concurrency limit's epoch at dispatch.
    epoch: u64,
}

/// One finished batch, as reported to a [`PipelineObserver`].
#[derive(Clone, Debug, PartialEq)]
pub struct BatchReport {
    /// The batch's sequence number in the run.
    pub seq: u64,
    /// Records in the batch.
    pub records: usize,
    /// Records committed.
    pub committed: usize,
    /// Records dead-lettered as bad data.
    pub dead_lettered: usize,
    /// Sink calls made (retries and split parts included).
    pub writes: u32,
    /// From the first write to the end of the last.
    pub duration: Duration,
    /// Whether the batch ended in a fatal error.
    pub failed: bool,
}

/// Hooks for metrics: called per batch and per pressure change, never per record. Keep them
/// cheap; they run on the pipeline's tasks.
pub trait PipelineObserver: Send + Sync + 'static {
    /// A batch finished (committed, isolated, or failed).
    fn batch_finished(&self, report: &BatchReport);

    /// Intake paused (`High`) or resumed (`Normal`) on memory pressure.
    fn pressure_changed(&self, _state: PressureState, _ratio: Option<f64>) {}

    /// The adaptive limit of batches in flight moved (see [`crate::ConcurrencyLimit`]).
    fn concurrency_changed(&self, _limit: usize) {}
}

/// Writes one batch: retries transient errors with backoff, isolates bad items by the sink's
/// indexes or by halving, dead-letters them, commits the rest.
async fn write_batch<S: Sink>(
    sink: &S,
    ctx: &WriteCtx,
    batch: Batch<S::Item>,
    prepared: Option<Prepared>,
) -> Written {
    let Batch { seq, items, end } = batch;
    let started = Instant::now();
    let mut report = BatchReport {
        seq,
        records: items.len(),
        committed: 0,
        dead_lettered: 0,
        writes: 0,
        duration: Duration::ZERO,
        failed: false,
    };
    let mut contended = false;
    let records = items.len();
    let fatal = write_parts(sink, ctx, seq, items, prepared, &mut report, &mut contended)
        .await
        .err();
    let took = started.elapsed();
    if let Some(o) = &ctx.observer {
        report.duration = took;
        report.failed = fatal.is_some();
        o.batch_finished(&report);
    }
    Written {
        seq,
        end,
        fatal,
        contended,
        epoch: ctx.epoch,
        records,
        took,
    }
}

async fn write_parts<S: Sink>(
    sink: &S,
    ctx: &WriteCtx,
    seq: u64,
    items: Vec<Staged<S::Item>>,
    mut prepared: Option<Prepared>,
    report: &mut BatchReport,
    contended: &mut bool,
) -> Result<(), StreamError> {
    let policy = &ctx.cfg.retry;
    let mut stack = vec![items];
    while let Some(mut part) = stack.pop() {
        let mut attempt = 1u32;
        loop {
            report.writes += 1;
            let contention = Contention::default();
            let sb = SinkBatch {
                seq,
                run_id: &ctx.run_id,
                attempt,
                items: &part,
                sources: &ctx.names,
                contention: &contention,
            };
            // What was prepared covers the whole batch's first write only.
            let res = match prepared.take() {
                Some(p) => sink.write_prepared(&sb, p).await,
                None => sink.write(&sb).await,
            };
            if contention.reported() || matches!(res, Err(SinkError::Transient(_))) {
                *contended = true;
                ctx.limit.contended(ctx.epoch);
            }
            match res {
                Ok(()) => {
                    let raw: u64 = part.iter().map(|s| s.raw.len() as u64).sum();
                    ctx.counters
                        .committed
                        .fetch_add(part.len() as u64, Ordering::Relaxed);
                    ctx.counters
                        .bytes_committed
                        .fetch_add(raw, Ordering::Relaxed);
                    ctx.counters.batches.fetch_add(1, Ordering::Relaxed);
                    report.committed += part.len();
                    break;
                }
                Err(SinkError::Transient(msg)) => {
                    if attempt >= policy.max_attempts {
                        return Err(StreamError::RetriesExhausted {
                            attempts: attempt,
                            message: msg,
                        });
                    }
                    ctx.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = policy.backoff(attempt, rand::random::<f64>());
                    debug!(seq, attempt, ?wait, error = %msg, "transient sink error: retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(SinkError::Data { message, bad_items }) => {
                    let mut bad: Vec<usize> = bad_items
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|&i| i < part.len())
                        .collect();
                    bad.sort_unstable();
                    bad.dedup();
                    if bad.is_empty() && part.len() > 1 {
                        let second = part.split_off(part.len() / 2);
                        stack.push(second);
                        stack.push(part);
                    } else {
                        if bad.is_empty() {
                            bad.push(0);
                        }
                        let mut good = Vec::with_capacity(part.len() - bad.len());
                        let mut bi = bad.iter().peekable();
                        for (i, s) in part.into_iter().enumerate() {
                            if bi.peek() == Some(&&i) {
                                bi.next();
                                report.dead_lettered += 1;
                                ctx.errors.dead_letter(
                                    s.position,
                                    Stage::Sink,
                                    message.clone(),
                                    &s.raw,
                                    s.raw.len() as u64,
                                )?;
                            } else {
                                good.push(s);
                            }
                        }
                        if !good.is_empty() {
                            stack.push(good);
                        }
                    }
                    break;
                }
                Err(SinkError::Fatal(msg)) => return Err(StreamError::SinkFatal(msg)),
            }
        }
    }
    Ok(())
}
