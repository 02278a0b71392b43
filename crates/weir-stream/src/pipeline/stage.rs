//! The sink stage: takes batches off the queue (one prepared ahead), dispatches at most the
//! adaptive limit of writes at once, moves the checkpoint over the finished prefix, and
//! publishes progress.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_events::{JobState, ProgressEvent};

use super::summary::{Counters, progress_event};
use super::write::{WriteCtx, Written, write_batch};
use super::{Batch, Errors, PipelineObserver};
use crate::checkpoint::Committer;
use crate::queue::QueueReceiver;
use crate::{
    CHECKPOINT_VERSION, Checkpoint, CheckpointFile, ConcurrencyLimit, Contention, PipelineConfig,
    Position, Prepared, Sink, SinkBatch, SourceNames, StreamError,
};

/// A batch being prepared by the sink ahead of its write (`Sink::prepare`).
type PrepareTask<I> = tokio::task::JoinHandle<(Batch<I>, Option<Prepared>)>;

/// Dispatches batches to the sink, at most `concurrency` at once, and moves the checkpoint.
pub(super) struct SinkStage<S: Sink> {
    pub(super) cfg: Arc<PipelineConfig>,
    pub(super) sink: Arc<S>,
    pub(super) errors: Arc<Errors>,
    pub(super) counters: Arc<Counters>,
    pub(super) names: SourceNames,
    pub(super) run_id: Arc<str>,
    pub(super) committer: Committer,
    pub(super) checkpoint: Option<CheckpointFile>,
    pub(super) last_checkpoint: Option<(Instant, Position)>,
    pub(super) stop: CancellationToken,
    pub(super) progress: watch::Sender<ProgressEvent>,
    pub(super) started: Instant,
    pub(super) bytes_total: Option<u64>,
    pub(super) observer: Option<Arc<dyn PipelineObserver>>,
    pub(super) commit_watch: Option<tokio::sync::watch::Sender<Position>>,
    /// Dead letters counted when the sink was last flushed for the commit watch.
    pub(super) dead_flushed: u64,
    pub(super) limit: Arc<Limit>,
}

/// The adaptive in-flight limit, shared by the sink stage (which reads it before taking a
/// batch) and the write tasks (which lower it the moment a write contends).
pub(super) struct Limit {
    pub(super) state: std::sync::Mutex<ConcurrencyLimit>,
    pub(super) observer: Option<Arc<dyn PipelineObserver>>,
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
    pub(super) fn contended(&self, epoch: u64) {
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
    pub(super) async fn run(
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
        self.announce(frontier);
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

    /// Tells the commit watcher (a message source acking what is done) that everything before
    /// `frontier` is committed or dead-lettered, dead letters on disk first.
    fn announce(&mut self, frontier: Position) {
        let Some(w) = &self.commit_watch else {
            return;
        };
        if *w.borrow() == frontier {
            return;
        }
        let dead = self.counters.dead.load(Ordering::Relaxed);
        let flushed = if dead == self.dead_flushed {
            Ok(())
        } else {
            self.errors.sink.flush()
        };
        match flushed {
            Ok(()) => {
                self.dead_flushed = dead;
                w.send_replace(frontier);
            }
            // Not announced: the next batch's finish tries again.
            Err(e) => warn!(error = %e, "dead letters not flushed; holding acks back"),
        }
    }

    fn finish(&mut self, seq: u64, end: Position) {
        if let Some(frontier) = self.committer.finish(seq, end) {
            self.announce(frontier);
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
