//! The `[jobs]` settings: limits, directories, batches, the change-event policy.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ServiceError;

/// Job limits and where job files go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs running at once. Default 2. Env `WEIR_MAX_JOBS`.
    pub max_concurrent: usize,
    /// Jobs waiting for a slot; beyond this a submission is refused with 429. Default 16.
    pub max_queued: usize,
    /// Finished jobs whose status is kept (oldest forgotten first). Default 100.
    pub history: usize,
    /// Directories server-side input files may be read from (a path outside them is refused
    /// with 403). Default: none, so only uploads are accepted. Env `WEIR_INPUT_ROOTS`
    /// (`:`-separated).
    pub input_roots: Vec<PathBuf>,
    /// Where uploaded request bodies are spooled while their job runs. Default
    /// `<temp dir>/weir-ingestd/spool`. Env `WEIR_SPOOL_DIR`.
    pub spool_dir: PathBuf,
    /// Where checkpoints and dead letters go (`<job id>.checkpoint.json`,
    /// `<job id>.dead-letters.jsonl`). Default `<temp dir>/weir-ingestd/jobs`. Env
    /// `WEIR_JOB_DIR`.
    pub job_dir: PathBuf,
    /// Largest upload, bytes (413 beyond). Default 4 GiB.
    pub max_upload_bytes: u64,
    /// Largest mapping, bytes. Default 64 KiB.
    pub max_mapping_bytes: usize,
    /// Records per batch (one write transaction each). Default 1000.
    pub batch_size: usize,
    /// Most batches written at once per job (adaptive up to this when above 1). Default 1, as
    /// for `weir ingest --concurrency` (see there: ArcadeDB is slower, and has corrupted
    /// records, with concurrent writers; on Neo4j try 4).
    pub concurrency: usize,
    /// Whether the batches in flight adapt between 1 and `concurrency` (fewer when writes
    /// contend: deadlocks, refused concurrent transactions). Default true.
    pub adaptive_concurrency: bool,
    /// The process's memory limit in bytes, which jobs pause their intake under: set from
    /// `memory.limit` (not a setting of its own).
    #[serde(skip)]
    pub memory_limit: Option<u64>,
    /// What jobs do with their change events when the bus cannot take them (`[jobs.events]`:
    /// `policy = "required" | "best_effort" | "off"`, `max_wait`). Default `required`, 10 min.
    pub events: crate::EventsConfig,
}

impl JobsConfig {
    /// Checks the limits, naming the first wrong field.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ServiceError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.max_concurrent == 0 {
            return bad("jobs.max_concurrent", "must be at least 1");
        }
        if self.history == 0 {
            return bad("jobs.history", "must be at least 1");
        }
        if self.batch_size == 0 || self.concurrency == 0 {
            return bad(
                "jobs.batch_size",
                "batch size and concurrency must be at least 1",
            );
        }
        if self.max_upload_bytes == 0 || self.max_mapping_bytes == 0 {
            return bad("jobs.max_upload_bytes", "must be above zero");
        }
        Ok(())
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        let base = std::env::temp_dir().join("weir-ingestd");
        Self {
            max_concurrent: 2,
            max_queued: 16,
            history: 100,
            input_roots: Vec::new(),
            spool_dir: base.join("spool"),
            job_dir: base.join("jobs"),
            max_upload_bytes: 4 << 30,
            max_mapping_bytes: 64 << 10,
            batch_size: 1000,
            concurrency: 1,
            adaptive_concurrency: true,
            memory_limit: None,
            events: crate::EventsConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_jobs_is_refused_by_name() {
        JobsConfig::default().validate().unwrap();
        let c = JobsConfig {
            max_concurrent: 0,
            ..JobsConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("jobs.max_concurrent")
        );
    }
}
