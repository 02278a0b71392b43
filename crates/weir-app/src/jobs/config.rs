//! The `[jobs]` settings: limits, directories, batches, the change-event policy.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use weir_stream::Format;

use crate::ServiceError;
use crate::pipeline::JobTuning;

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
    /// Bytes the spool directory may hold in all (uploads being received and those whose jobs
    /// wait or run); an upload that would go past it is refused with 507 and its part deleted.
    /// Default 8 GiB.
    pub max_spool_bytes: u64,
    /// Uploads received at once; more are refused with 429 before a byte is spooled. Default 4.
    pub max_concurrent_uploads: usize,
    /// Longest pause in an upload's body before it is abandoned (408). Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub upload_idle_timeout: std::time::Duration,
    /// Records a job may dead-letter before it fails (its error budget). Default 100,000.
    pub max_dead_letters: u64,
    /// Bytes a job's dead-letter file may grow to before the job fails. Default 1 GiB.
    pub max_dead_letter_bytes: u64,
    /// Bytes one gzip input may decompress to before the job fails. Default 64 GiB.
    pub max_decompressed_bytes: u64,
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
    /// How long a batch keeps retrying transient graph errors (server down or restarting,
    /// circuit open) before its job fails. Meanwhile the job's intake pauses: its queues are
    /// full, nothing more is read or pulled. Default 5 min.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_for: std::time::Duration,
    /// Stream jobs (JetStream consumers) running at once; they do not take the file jobs'
    /// `max_concurrent` slots, since they never end by themselves. Default 4.
    pub max_stream_jobs: usize,
    /// Stream jobs started with the service, each `[[jobs.streams]]`. More can be started
    /// through `POST /jobs/stream`.
    pub streams: Vec<StreamJobConfig>,
}

/// A stream job started with the service: a JetStream durable consumer whose messages go
/// through a mapping into the graph, acknowledged after commit (see `weir consume`, the same
/// worker as a CLI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamJobConfig {
    /// Job id (letters, digits, `-`, `_`; at most 64); also the name of its dead-letter file.
    pub id: String,
    /// The mapping file (TOML). Messages hold one JSON object or JSON Lines.
    pub mapping: PathBuf,
    /// Prefix for every label and relationship type. Default none.
    #[serde(default)]
    pub label_prefix: String,
    /// The JetStream stream (created with `subject` when missing).
    pub stream: String,
    /// The consumer's subject filter.
    pub subject: String,
    /// Durable consumer name: every worker (process or job) with this name shares the work.
    pub consumer: String,
    /// Where a new consumer starts: `all` (default), `new` or `last`.
    #[serde(default)]
    pub deliver: DeliverPolicy,
    /// NATS URL. Default: the bus's (`bus.url`) with the NATS bus, else
    /// `nats://127.0.0.1:4222`.
    #[serde(default)]
    pub url: Option<String>,
    /// How long the server waits for an ack before it redelivers. Default 30 s.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ack_wait: std::time::Duration,
    /// Most messages delivered and not acknowledged across every worker. Default 20,000.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
}

fn default_ack_wait() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_max_ack_pending() -> usize {
    20_000
}

/// Where a new durable consumer starts in its stream (an existing one keeps its place).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    /// Every message the stream holds.
    #[default]
    All,
    /// Messages published after the consumer is created.
    New,
    /// The last message, then new ones.
    Last,
}

impl JobsConfig {
    /// The tuning of job `job_id` reading `format`: `batch_size`, `concurrency`,
    /// `adaptive_concurrency`, `max_dead_letters` as its error budget,
    /// `max_decompressed_bytes`, `retry_for` and the process's memory limit.
    pub fn tuning(&self, job_id: &str, format: Format) -> JobTuning {
        JobTuning {
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            adaptive_concurrency: self.adaptive_concurrency,
            max_errors: Some(self.max_dead_letters),
            max_decompressed_bytes: Some(self.max_decompressed_bytes),
            retry_for: self.retry_for,
            memory_limit: self.memory_limit,
            ..JobTuning::new(job_id, format)
        }
    }

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
        if self.max_concurrent_uploads == 0 || self.upload_idle_timeout.is_zero() {
            return bad(
                "jobs.max_concurrent_uploads",
                "uploads at once and the upload idle timeout must be above zero",
            );
        }
        if self.max_spool_bytes < self.max_upload_bytes {
            return bad(
                "jobs.max_spool_bytes",
                "must be at least jobs.max_upload_bytes (one largest upload must fit)",
            );
        }
        if self.max_dead_letter_bytes < 64 << 10 || self.max_decompressed_bytes == 0 {
            return bad(
                "jobs.max_dead_letter_bytes",
                "the dead-letter cap must be at least 64 KiB and the decompressed bound above zero",
            );
        }
        if self.max_upload_bytes == 0 || self.max_mapping_bytes == 0 {
            return bad("jobs.max_upload_bytes", "must be above zero");
        }
        if self.retry_for.is_zero() {
            return bad("jobs.retry_for", "must be above zero");
        }
        if self.streams.len() > self.max_stream_jobs {
            return bad(
                "jobs.streams",
                &format!(
                    "{} stream jobs configured, jobs.max_stream_jobs allows {}",
                    self.streams.len(),
                    self.max_stream_jobs
                ),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for s in &self.streams {
            if !ids.insert(s.id.as_str()) {
                return bad("jobs.streams.id", &format!("`{}` is used twice", s.id));
            }
        }
        Ok(())
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        let base = crate::jobs::default_state_dir();
        Self {
            max_concurrent: 2,
            max_queued: 16,
            history: 100,
            input_roots: Vec::new(),
            spool_dir: base.join("spool"),
            job_dir: base.join("jobs"),
            max_upload_bytes: 4 << 30,
            max_spool_bytes: 8 << 30,
            max_concurrent_uploads: 4,
            upload_idle_timeout: std::time::Duration::from_secs(30),
            max_dead_letters: 100_000,
            max_dead_letter_bytes: 1 << 30,
            max_decompressed_bytes: 64 << 30,
            max_mapping_bytes: 64 << 10,
            batch_size: 1000,
            concurrency: 1,
            adaptive_concurrency: true,
            memory_limit: None,
            events: crate::EventsConfig::default(),
            retry_for: std::time::Duration::from_secs(300),
            max_stream_jobs: 4,
            streams: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_tuning_comes_from_these_settings() {
        let c = JobsConfig {
            batch_size: 10,
            concurrency: 3,
            adaptive_concurrency: false,
            memory_limit: Some(48 << 20),
            ..JobsConfig::default()
        };
        let cfg = c.tuning("j", Format::JsonLines).pipeline_config();
        assert_eq!((cfg.batch_records, cfg.min_batch_records), (10, 10));
        assert_eq!((cfg.concurrency, cfg.adaptive_concurrency), (3, false));
        assert_eq!(cfg.max_errors, Some(c.max_dead_letters));
        assert_eq!(cfg.max_decompressed_bytes, Some(c.max_decompressed_bytes));
        assert_eq!(cfg.retry_budget, Some(c.retry_for));
        // The process's memory limit sizes the buffers, as it does for `weir ingest`.
        assert!(cfg.memory_bound_bytes() <= (48 << 20) * 2 / 5);
    }

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
