//! The pipeline: intake (read -> decode -> map -> batch) on one task, a bounded queue, and a
//! sink stage with at most `concurrency` batches in flight, retries, isolation of bad items,
//! in-order checkpoints, progress and graceful shutdown.
//!
//! - this module: the public [`Pipeline`] builder and [`Pipeline::run`], which wires the
//!   stages together and assembles the [`RunSummary`];
//! - `intake`: the intake task (read -> decode -> map -> batch, memory pressure);
//! - `stage`: the sink stage (dispatch, prepare-ahead, adaptive limit, checkpoints, progress);
//! - `write`: one batch's write with retries and isolation of bad items;
//! - `summary`: live counters, progress events, [`RunSummary`] and [`RunOutcome`];
//! - `observer`: [`PipelineObserver`] and [`BatchReport`].

mod intake;
mod observer;
mod stage;
mod summary;
mod write;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weir_events::{JobState, ProgressEvent};
use weir_memwatch::{MemoryGauge, ProcessGauge};

pub use observer::{BatchReport, PipelineObserver};
pub use summary::{RunOutcome, RunSummary};

use self::intake::Intake;
use self::stage::{Limit, SinkStage};
use self::summary::{Counters, progress_event};
use crate::checkpoint::Committer;
use crate::pressure::Pressure;
use crate::queue;
use crate::{
    CheckpointFile, ConcurrencyLimit, DeadLetter, DeadLetterSink, Mapper, MemoryDeadLetters,
    PipelineConfig, Position, Sink, Source, SourceNames, Stage, Staged, StreamError,
};

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
    commit_watch: Option<watch::Sender<Position>>,
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
            commit_watch: None,
        }
    }

    /// Sends the commit frontier to `watch` each time it moves: every record before it (by
    /// [`Position`]) is committed or dead-lettered, and dead letters are flushed to their sink
    /// before it is sent. A message source acks by it ("ack after commit"); it moves as the
    /// checkpoint does, but on every finished batch, whether or not there is a checkpoint file.
    pub fn with_commit_watch(mut self, watch: watch::Sender<Position>) -> Self {
        self.commit_watch = Some(watch);
        self
    }

    /// The run's id (see [`SinkBatch::run_id`](crate::SinkBatch::run_id)).
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
            commit_watch: self.commit_watch,
            dead_flushed: 0,
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
