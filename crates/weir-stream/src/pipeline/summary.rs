//! What a run did: the live counters the stages share, the progress events read from them,
//! and the summary and outcome of a finished run.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use weir_events::{EVENT_FORMAT_VERSION, JobState, PressureState, ProgressEvent};

use crate::Position;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The input ended and every record read was committed or dead-lettered.
    Completed,
    /// Cancelled: intake stopped, in-flight batches finished or were abandoned.
    Cancelled,
    /// Stopped by a fatal error (see [`StreamError::Failed`](crate::StreamError::Failed)).
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
pub(super) struct Counters {
    pub(super) read: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    pub(super) committed: AtomicU64,
    pub(super) bytes_committed: AtomicU64,
    pub(super) dead: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) paused: AtomicU8,
    pub(super) ratio_bits: AtomicU64,
    pub(super) peak_used: AtomicU64,
    pub(super) intake_failed: std::sync::atomic::AtomicBool,
}

pub(super) fn progress_event(
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
