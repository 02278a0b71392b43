//! The observer trait for metrics, and the per-batch report it receives.

use std::time::Duration;

use weir_events::PressureState;

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
