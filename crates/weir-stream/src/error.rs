//! The crate's error type.

use std::path::PathBuf;

/// Everything that can stop or refuse a pipeline run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A configuration value is out of range; names the field.
    #[error("invalid pipeline setting `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An input could not be opened or read.
    #[error("cannot read input {path}: {source}")]
    Input {
        /// The input (`-` for stdin).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A CSV header row cannot be read, or its columns do not fit the mapping (see
    /// [`crate::Mapper::check_header`]): the run stops before any record under it is mapped.
    #[error("input {path}: header row: {reason}")]
    Header {
        /// The input.
        path: PathBuf,
        /// What is wrong, naming the columns.
        reason: String,
    },
    /// The checkpoint does not match the inputs (another file list or an offset past the end).
    #[error("checkpoint does not match the input: {0}")]
    CheckpointMismatch(String),
    /// The checkpoint file could not be read or written.
    #[error("checkpoint file {path}: {source}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The dead-letter sink refused a record: the run stops, since the record would be lost.
    #[error("dead-letter sink unwritable: {0}")]
    DeadLetterUnwritable(#[source] std::io::Error),
    /// More records were dead-lettered than `max_errors` allows.
    #[error(
        "error budget exceeded: {dead_lettered} records dead-lettered, the budget is {max_errors} (`weir ingest --max-errors`, `jobs.max_dead_letters`)"
    )]
    ErrorBudgetExceeded {
        /// Records dead-lettered so far.
        dead_lettered: u64,
        /// The configured budget.
        max_errors: u64,
    },
    /// A batch kept failing with transient errors after every allowed attempt.
    #[error("sink still failing after {attempts} attempts: {message}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// The sink reported a fatal error.
    #[error("sink failed: {0}")]
    SinkFatal(String),
    /// A pipeline task panicked or was lost.
    #[error("pipeline task failed: {0}")]
    Internal(String),
    /// The run stopped on a fatal error after committing what it could; the summary says what
    /// was committed, dead-lettered and left uncommitted.
    #[error("run failed after {} committed, {} dead-lettered, {} uncommitted: {cause}",
        summary.records_committed, summary.records_dead_lettered, summary.records_uncommitted)]
    Failed {
        /// Why it stopped.
        #[source]
        cause: Box<StreamError>,
        /// What was done.
        summary: Box<crate::RunSummary>,
    },
}

impl StreamError {
    /// The underlying cause of a [`StreamError::Failed`], else `self`.
    pub fn cause(&self) -> &StreamError {
        match self {
            Self::Failed { cause, .. } => cause,
            other => other,
        }
    }
}
