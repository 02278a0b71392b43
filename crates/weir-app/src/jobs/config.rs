//! Settings of `weir-ingestd`: defaults, a TOML file (`--config`), the environment, flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ServiceError;
use crate::config::Env;
use serde::{Deserialize, Serialize};
use weir_bus::{BusConfig, NatsBusConfig};
use weir_config::GraphSettings;
use weir_gateway::AuthConfig;
use weir_pool::PoolConfig;

/// Everything `weir-ingestd` can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestdConfig {
    /// Address of the job API. Default `127.0.0.1:8081` (loopback only). Env `WEIR_BIND`.
    pub bind: SocketAddr,
    /// Who may call, as in the gateway. Default: API keys, none configured (every request
    /// refused). Env `WEIR_API_KEYS` (comma-separated keys).
    pub auth: AuthConfig,
    /// The graph server. Env `NEO4J_URI`, `NEO4J_USER`, `NEO4J_PASSWORD`, `NEO4J_DATABASE`.
    pub graph: GraphSettings,
    /// The graph session pool.
    pub pool: PoolConfig,
    /// The bus changes and progress go to. Default NATS JetStream at `nats://127.0.0.1:4222`,
    /// stream `WEIR_EVENTS`. Env `NATS_URL`, `WEIR_BUS_STREAM`.
    pub bus: BusConfig,
    /// Jobs.
    pub jobs: JobsConfig,
    /// Address of the admin listener (`/metrics`, `/api/memory/*`). Default: none (off).
    /// Env `WEIR_ADMIN_BIND`.
    pub admin_bind: Option<std::net::SocketAddr>,
    /// Bearer token the admin listener requires. Default: none. Env `WEIR_ADMIN_TOKEN`.
    pub admin_token: Option<weir_config::Secret>,
    /// How long shutdown waits for running jobs to write their checkpoints and for
    /// publishes to finish before it stops them hard. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for IngestdConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            auth: AuthConfig::default(),
            graph: GraphSettings::default(),
            pool: PoolConfig::default(),
            bus: BusConfig::Nats(NatsBusConfig::default()),
            jobs: JobsConfig::default(),
            admin_bind: None,
            admin_token: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Job limits and where job files go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Memory limit in bytes for backpressure (intake pauses above 80 % of it). Default: the
    /// cgroup limit, if any. Env `WEIR_MEMORY_LIMIT` (bytes).
    pub memory_limit: Option<u64>,
    /// What jobs do with their change events when the bus cannot take them (`[jobs.events]`:
    /// `policy = "required" | "best_effort" | "off"`, `max_wait`). Default `required`, 10 min.
    pub events: crate::EventsConfig,
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

/// Environment variables `weir-ingestd` reads beyond the common ones.
pub const ENV_VARS: &[&str] = &[
    "WEIR_MAX_JOBS",
    "WEIR_INPUT_ROOTS",
    "WEIR_SPOOL_DIR",
    "WEIR_JOB_DIR",
    "WEIR_MEMORY_LIMIT",
];

impl IngestdConfig {
    /// Applies the environment (see each field).
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ServiceError> {
        env.apply_graph(&mut self.graph);
        env.apply_bus(&mut self.bus);
        if let Some(b) = env.parse("WEIR_ADMIN_BIND")? {
            self.admin_bind = Some(b);
        }
        if let Some(t) = env.get("WEIR_ADMIN_TOKEN") {
            self.admin_token = Some(weir_config::Secret::new(t));
        }
        if let Some(b) = env.parse("WEIR_BIND")? {
            self.bind = b;
        }
        if let Some(keys) = env.secrets("WEIR_API_KEYS") {
            self.auth = AuthConfig::ApiKeys { keys };
        }
        if let Some(n) = env.parse("WEIR_MAX_JOBS")? {
            self.jobs.max_concurrent = n;
        }
        if let Some(v) = env.get("WEIR_INPUT_ROOTS") {
            self.jobs.input_roots = std::env::split_paths(v).collect();
        }
        if let Some(v) = env.get("WEIR_SPOOL_DIR") {
            self.jobs.spool_dir = v.into();
        }
        if let Some(v) = env.get("WEIR_JOB_DIR") {
            self.jobs.job_dir = v.into();
        }
        if let Some(n) = env.parse("WEIR_MEMORY_LIMIT")? {
            self.jobs.memory_limit = Some(n);
        }
        Ok(())
    }

    /// Checks the settings, naming the first wrong field.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ServiceError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        let j = &self.jobs;
        if j.max_concurrent == 0 {
            return bad("jobs.max_concurrent", "must be at least 1");
        }
        if j.history == 0 {
            return bad("jobs.history", "must be at least 1");
        }
        if j.batch_size == 0 || j.concurrency == 0 {
            return bad(
                "jobs.batch_size",
                "batch size and concurrency must be at least 1",
            );
        }
        if j.max_upload_bytes == 0 || j.max_mapping_bytes == 0 {
            return bad("jobs.max_upload_bytes", "must be above zero");
        }
        self.pool.validate().map_err(|e| ServiceError::Invalid {
            field: "pool",
            reason: e.to_string(),
        })?;
        self.bus.validate().map_err(|e| ServiceError::Invalid {
            field: "bus",
            reason: e.to_string(),
        })?;
        self.auth.validate().map_err(|e| ServiceError::Invalid {
            field: "auth",
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_valid() {
        let c = IngestdConfig::default();
        assert!(c.bind.ip().is_loopback());
        c.validate().unwrap();
    }

    #[test]
    fn env_overrides() {
        let mut c = IngestdConfig::default();
        c.apply_env(&Env::from_pairs([
            ("WEIR_BIND", "127.0.0.1:9999"),
            ("WEIR_API_KEYS", "k1,k2"),
            ("WEIR_MAX_JOBS", "5"),
            ("WEIR_INPUT_ROOTS", "/data:/more"),
        ]))
        .unwrap();
        assert_eq!(c.bind.port(), 9999);
        assert_eq!(c.jobs.max_concurrent, 5);
        assert_eq!(c.jobs.input_roots.len(), 2);
        assert!(matches!(c.auth, AuthConfig::ApiKeys { ref keys } if keys.len() == 2));
        let e = c
            .apply_env(&Env::from_pairs([("WEIR_MAX_JOBS", "many")]))
            .unwrap_err();
        assert!(e.to_string().contains("WEIR_MAX_JOBS"));
    }

    #[test]
    fn zero_jobs_is_refused_by_name() {
        let mut c = IngestdConfig::default();
        c.jobs.max_concurrent = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("jobs.max_concurrent")
        );
    }

    #[test]
    fn file_round_trips() {
        let text = "bind = \"127.0.0.1:7000\"\n[jobs]\nmax_concurrent = 3\n[bus]\nkind = \"nats\"\nstream = \"S1\"\n";
        let c: IngestdConfig =
            crate::config::parse_toml(text, std::path::Path::new("t.toml")).unwrap();
        assert_eq!(c.jobs.max_concurrent, 3);
        assert!(matches!(c.bus, BusConfig::Nats(ref n) if n.stream == "S1"));
    }
}
