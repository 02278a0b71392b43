//! The crate's error type.

/// What can go wrong in memory monitoring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemwatchError {
    /// A setting is out of range; `field` names it.
    #[error("invalid memory-watch setting `{field}`: {reason}")]
    InvalidConfig {
        /// The setting's name, e.g. `thresholds.warning`.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A heap profile was asked for but profiling is not available in this process.
    #[error("heap profiling unavailable: {reason}")]
    ProfilingUnavailable {
        /// Why, and how to turn it on where that is possible.
        reason: String,
    },
    /// Profiling is available but taking or converting a heap profile failed.
    #[error("heap profile failed: {reason}")]
    Profile {
        /// What failed.
        reason: String,
    },
}
