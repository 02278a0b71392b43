//! One batch's write: retries of transient errors with backoff, isolation of bad items (by the
//! sink's indexes, else by halving) and their dead letters, and the counters of what was
//! committed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::stage::Limit;
use super::summary::Counters;
use super::{Batch, BatchReport, Errors, PipelineObserver};
use crate::{
    Contention, PipelineConfig, Position, Prepared, Sink, SinkBatch, SinkError, SourceNames, Stage,
    Staged, StreamError,
};

/// What one batch write ended with.
pub(super) struct Written {
    pub(super) seq: u64,
    pub(super) end: Position,
    pub(super) fatal: Option<StreamError>,
    /// Some write of the batch was retried (transient error or contention the sink reported).
    pub(super) contended: bool,
    /// The concurrency limit's epoch when the batch was dispatched.
    pub(super) epoch: u64,
    pub(super) records: usize,
    pub(super) took: Duration,
}

pub(super) struct WriteCtx {
    pub(super) cfg: Arc<PipelineConfig>,
    pub(super) errors: Arc<Errors>,
    pub(super) counters: Arc<Counters>,
    pub(super) names: SourceNames,
    pub(super) run_id: Arc<str>,
    pub(super) observer: Option<Arc<dyn PipelineObserver>>,
    pub(super) limit: Arc<Limit>,
    /// The concurrency limit's epoch at dispatch.
    pub(super) epoch: u64,
}

/// Writes one batch: retries transient errors with backoff, isolates bad items by the sink's
/// indexes or by halving, dead-letters them, commits the rest.
pub(super) async fn write_batch<S: Sink>(
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
        let mut first_failure: Option<tokio::time::Instant> = None;
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
                    let failing_since =
                        *first_failure.get_or_insert_with(tokio::time::Instant::now);
                    let within_budget = ctx
                        .cfg
                        .retry_budget
                        .is_some_and(|b| failing_since.elapsed() < b);
                    if !policy.may_retry(attempt) && !within_budget {
                        return Err(StreamError::RetriesExhausted {
                            attempts: attempt,
                            message: msg,
                        });
                    }
                    ctx.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = policy.jittered(attempt);
                    if attempt.is_power_of_two() && attempt >= 4 {
                        tracing::warn!(seq, attempt, failing_for = ?failing_since.elapsed(), error = %msg, "batch still failing; retrying (intake paused)");
                    }
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
