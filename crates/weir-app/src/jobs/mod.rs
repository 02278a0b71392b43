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
pub mod stream;
pub mod validate;

use crate::ServiceError;

pub use config::JobsConfig;
pub use config::{
    DeliverPolicy, KafkaConnection, KafkaInput, KafkaProperties, KafkaStart, StreamJobConfig,
    StreamSource,
};
pub use http::{JobsApi, jobs_router};
pub use manager::{
    ConsumerSource, ConsumerStatus, InputFormat, JobInput, JobKind, JobManager, JobSpec, JobStatus,
    StreamInput,
};

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
    /// Too many uploads being received at once.
    #[error("too many uploads at once (jobs.max_concurrent_uploads = {max}); try again later")]
    TooManyUploads {
        /// The bound.
        max: usize,
    },
    /// The spool directory would hold more than allowed.
    #[error(
        "no room to spool the upload: the spool holds {used} bytes of jobs.max_spool_bytes = {max}; try again once running jobs end"
    )]
    SpoolFull {
        /// Bytes spooled now.
        used: u64,
        /// The bound.
        max: u64,
    },
    /// The upload's body stopped arriving.
    #[error("the upload's body stopped arriving for {0:?} (jobs.upload_idle_timeout)")]
    UploadStalled(std::time::Duration),
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

/// Creates `dir` (and its parents) if missing and makes it private to this user (0700): job
/// files, dead letters and spooled uploads hold the users' data.
pub(crate) fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory (a symlink is not accepted)",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates the new file `path` for writing, private to this user (0600): exclusively (it
/// fails if anything exists there) and never through a symlink.
pub(crate) fn create_private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Where job files and spooled uploads go by default: `$XDG_STATE_HOME/weir`, else
/// `$HOME/.local/state/weir`, else `<temp dir>/weir-<uid>` (made private, 0700, when used).
pub fn default_state_dir() -> std::path::PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(x) = env("XDG_STATE_HOME") {
        return std::path::PathBuf::from(x).join("weir");
    }
    if let Some(h) = env("HOME") {
        return std::path::PathBuf::from(h).join(".local/state/weir");
    }
    use std::os::unix::fs::MetadataExt as _;
    // This process's user: the owner of /proc/self.
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir().join(format!("weir-{uid}"))
}

#[cfg(test)]
mod file_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn state_dirs_are_private_and_files_never_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/spool");
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        // A directory made open by someone else is closed again.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A symlink where the directory should be is refused.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path().join("a"), &link).unwrap();
        assert!(private_dir(&link).is_err());

        let f = dir.join("x.upload");
        drop(create_private_file(&f).unwrap());
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert!(
            create_private_file(&f).is_err(),
            "an existing file is not reused"
        );
        let target = tmp.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let planted = dir.join("planted.upload");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(
            create_private_file(&planted).is_err(),
            "a symlink is not followed"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn the_default_state_dir_is_not_a_shared_temp_dir() {
        let d = default_state_dir();
        if std::env::var_os("HOME").is_some_and(|h| !h.is_empty()) {
            assert!(!d.starts_with(std::env::temp_dir()), "{}", d.display());
        } else {
            assert!(d.to_string_lossy().contains("weir-"), "{}", d.display());
        }
    }
}
