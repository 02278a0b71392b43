//! Ingest jobs behind an HTTP API (`weir-ingestd`, `weir serve`).
//!
//! An HTTP job API ([`http`]) over the stream pipeline: jobs name a server-side file (inside
//! the configured input roots) or stream their records in the request body, with the
//! mapping; at most `jobs.max_concurrent` run at once and at most `jobs.max_queued` wait.
//! Each committed batch's changes are published to the bus after the commit (retried with
//! the same batch id while the bus is away, which pauses the job instead of buffering), and
//! progress events go to the bus as well. Jobs are refused (503) until the graph pool and the
//! bus are reachable; `/ready` says the same. On shutdown running jobs finish their in-flight
//! batches and write their checkpoints; a job submitted again with the same id resumes.
//!
//! The process around it is put together by [`crate::app`].

pub mod config;
pub mod http;
pub mod manager;
pub mod validate;

use crate::ServiceError;

pub use config::JobsConfig;
pub use http::{JobsApi, jobs_router};
pub use manager::{InputFormat, JobInput, JobManager, JobSpec, JobStatus};

/// Errors of the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum IngestdError {
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The mapping does not parse or validate.
    #[error("invalid mapping: {0}")]
    InvalidMapping(String),
    /// No or a wrong bearer token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A server-side path outside every input root.
    #[error("path {0} is outside the configured input roots")]
    PathNotAllowed(String),
    /// The input cannot be opened.
    #[error("input not found or unreadable: {0}")]
    InputNotFound(String),
    /// No such job.
    #[error("no job {0}")]
    NotFound(String),
    /// A job with this id is queued or running.
    #[error("job {0} is already queued or running")]
    Conflict(String),
    /// The upload is larger than allowed.
    #[error("upload larger than {max} bytes")]
    UploadTooLarge {
        /// The bound, bytes.
        max: u64,
    },
    /// Too many jobs queued or running.
    #[error("too many jobs ({active} queued or running); try again later")]
    Busy {
        /// Jobs queued or running.
        active: usize,
    },
    /// The graph pool or the bus is not reachable yet.
    #[error("not ready: the graph server or the bus is not reachable yet")]
    NotReady,
    /// The service is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// Settings are wrong.
    #[error(transparent)]
    Config(#[from] ServiceError),
    /// Listening or file I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Something else failed (the cause is logged; clients see a correlation id).
    #[error("{0}")]
    Internal(String),
}
