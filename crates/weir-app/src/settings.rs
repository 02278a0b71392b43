//! One configuration for every Weir process: one file format, one set of environment
//! variables, one set of flags, applied in one order — defaults < file < environment < flags.
//!
//! [`Settings`] holds every section a Weir process can have; a [`Role`] (`weir serve`,
//! `weir-ingestd`, `weir-gatewayd`, `weir ingest` / `weir consume`) says which sections it uses
//! and what its defaults are. A file may only set the sections of its role: a `[jobs]` section
//! given to `weir-gatewayd` is an error that names the file and the section, as is any unknown
//! key (named with its file and section). [`ENV`] lists every environment variable and
//! the setting it sets. `config show` prints the resolved settings of a role with every secret
//! masked, credentials inside URLs included; `config schema` prints the JSON Schema of the
//! file (committed as `schemas/config.schema.json`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_bus::{BusConfig, InProcessConfig, NatsBusConfig};
use weir_config::{ByteSize, GraphSettings, Secret};
use weir_gateway::{AuthConfig, GatewayConfig, ListenerConfig};
use weir_pool::PoolConfig;

use crate::ServiceError;
use crate::config::Env;
use crate::gateway::config::ReplayConfig;
use crate::jobs::config::JobsConfig;

/// Which Weir process the settings are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `weir serve`: the gateway, the job API and the in-process bus in one process.
    Serve,
    /// `weir-ingestd`: the job API, publishing to NATS JetStream.
    Ingestd,
    /// `weir-gatewayd`: the gateway, fed from NATS JetStream.
    Gatewayd,
    /// `weir ingest`: one run over files or stdin.
    Ingest,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Self::Serve, Self::Ingestd, Self::Gatewayd, Self::Ingest];

    /// The process's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Serve => "weir serve",
            Self::Ingestd => "weir-ingestd",
            Self::Gatewayd => "weir-gatewayd",
            Self::Ingest => "weir ingest / weir consume",
        }
    }

    /// The top-level sections (and keys) its settings file may have.
    pub fn sections(self) -> &'static [&'static str] {
        match self {
            Self::Serve => &[
                "bind",
                "listener",
                "auth",
                "graph",
                "pool",
                "read_pool",
                "bus",
                "gateway",
                "replay",
                "jobs",
                "admin",
                "memory",
                "log",
                "shutdown_grace",
            ],
            Self::Ingestd => &[
                "bind",
                "listener",
                "auth",
                "graph",
                "pool",
                "bus",
                "jobs",
                "admin",
                "memory",
                "log",
                "shutdown_grace",
            ],
            Self::Gatewayd => &[
                "bind",
                "listener",
                "auth",
                "graph",
                "read_pool",
                "bus",
                "gateway",
                "replay",
                "admin",
                "memory",
                "log",
                "shutdown_grace",
            ],
            Self::Ingest => &["graph", "pool", "bus", "memory", "log"],
        }
    }

    /// Whether it serves the GraphQL gateway.
    pub fn has_gateway(self) -> bool {
        matches!(self, Self::Serve | Self::Gatewayd)
    }

    /// Whether it runs ingest jobs behind the job API.
    pub fn has_jobs(self) -> bool {
        matches!(self, Self::Serve | Self::Ingestd)
    }
}

/// The admin listener: `/metrics`, `/api/memory/*`, heap snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener. Default: none (off). Env `WEIR_ADMIN_BIND`, flag
    /// `--admin-bind`.
    pub bind: Option<SocketAddr>,
    /// Bearer token it requires. Default: none. Env `WEIR_ADMIN_TOKEN`.
    pub token: Option<Secret>,
    /// Serve it without a token on an address other than loopback (otherwise the process
    /// refuses to start: it serves every metric and heap snapshots). Default false. Env
    /// `WEIR_ADMIN_ALLOW_OPEN` (`1`/`true`/`yes`/`on`).
    pub allow_open: bool,
}

/// Memory: the limit intake pauses under, and the periodic memory log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The process's memory limit: ingest intake pauses above 80 % of it and resumes below
    /// 70 %, each job's pipeline buffers (and a stream job's pulls) are sized to fit it, and
    /// the memory gauges report against it. Default: the cgroup limit, if any. Env
    /// `WEIR_MEMORY_LIMIT`, flag `--memory-limit` (`64MiB`, `1GiB` or bytes).
    pub limit: Option<ByteSize>,
    /// How often the `memory` log line is written (target `weir::memory`); `0s` turns it off.
    /// Default 60 s for the long-running processes, off for `weir ingest`. Env
    /// `WEIR_MEMORY_LOG_INTERVAL`, flag `--memory-log-interval`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub log_interval: Duration,
}

impl Default for MemoryConfig {
    /// No limit (the cgroup's, if any), a memory line a minute.
    fn default() -> Self {
        Self {
            limit: None,
            log_interval: Duration::from_secs(60),
        }
    }
}

/// Log output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Which events are logged, in `tracing`'s `EnvFilter` syntax (`info`,
    /// `warn,weir_stream=debug`). Default `info`. Env `WEIR_LOG` (the one log-filter variable
    /// of every Weir binary).
    pub filter: String,
    /// `text` or `json` (one JSON object per line). Default `text`. Env `WEIR_LOG_FORMAT`,
    /// flag `--log-format`.
    pub format: LogFormat,
}

/// A log line format.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Every setting of a Weir process; see the module docs. Each field's doc names its default,
/// environment variable and flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The process's HTTP listener: the gateway (`weir serve`, `weir-gatewayd`; default
    /// `127.0.0.1:8080`) or the job API (`weir-ingestd`; default `127.0.0.1:8081`). Loopback
    /// by default. Env `WEIR_BIND`, flag `--bind`.
    pub bind: SocketAddr,
    /// Connection rules of every listener of the process (`bind` and `admin.bind`):
    /// header-read timeout (also ends idle keep-alive connections), request timeout, open
    /// connections in all and per client address.
    pub listener: ListenerConfig,
    /// Who may call this process's APIs (GraphQL, jobs, `/changes`, the console's data).
    /// Default: API keys, none configured (every request refused); `mode = "disabled"` only
    /// on a loopback `bind`. Env `WEIR_API_KEYS` (comma-separated keys).
    pub auth: AuthConfig,
    /// The graph server. Env `NEO4J_URI`, `NEO4J_USER`, `NEO4J_PASSWORD`, `NEO4J_DATABASE`.
    pub graph: GraphSettings,
    /// Graph sessions for ingest writes.
    pub pool: PoolConfig,
    /// Graph sessions for GraphQL reads, with their own size and deadlines (default 8
    /// sessions, 15 s per query), so reads and ingest writes never wait for each other.
    pub read_pool: PoolConfig,
    /// The bus change and progress events travel on: `in_process` (default of `weir serve`)
    /// or `nats` (default of the services). Env `NATS_URL`, `WEIR_BUS_STREAM`,
    /// `WEIR_BUS_SUBJECT_PREFIX`.
    pub bus: BusConfig,
    /// The GraphQL gateway: limits, subscriptions, WebSocket timeouts, introspection.
    pub gateway: GatewayConfig,
    /// `GET /changes?since=` page limits.
    pub replay: ReplayConfig,
    /// Ingest jobs: limits, directories, batches, change-event policy. Env `WEIR_MAX_JOBS`,
    /// `WEIR_INPUT_ROOTS`, `WEIR_SPOOL_DIR`, `WEIR_JOB_DIR`.
    pub jobs: JobsConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Memory limit and memory log.
    pub memory: MemoryConfig,
    /// Logging.
    pub log: LogConfig,
    /// How long shutdown waits for running jobs to finish their batches and write their
    /// checkpoints. Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    /// The defaults of `weir serve` (see [`Settings::defaults`] for the others).
    fn default() -> Self {
        Self::defaults(Role::Serve)
    }
}

impl Settings {
    /// The defaults of `role`.
    pub fn defaults(role: Role) -> Self {
        let bind = match role {
            Role::Ingestd => SocketAddr::from(([127, 0, 0, 1], 8081)),
            _ => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let bus = match role {
            Role::Serve => BusConfig::InProcess(InProcessConfig::default()),
            _ => BusConfig::Nats(NatsBusConfig::default()),
        };
        Self {
            bind,
            listener: ListenerConfig::default(),
            auth: AuthConfig::default(),
            graph: GraphSettings::default(),
            pool: PoolConfig::default(),
            read_pool: PoolConfig {
                max_size: 8,
                query_timeout: Duration::from_secs(15),
                ..PoolConfig::default()
            },
            bus,
            gateway: GatewayConfig::default(),
            replay: ReplayConfig::default(),
            jobs: JobsConfig::default(),
            admin: AdminConfig::default(),
            memory: MemoryConfig {
                limit: None,
                log_interval: if role == Role::Ingest {
                    Duration::ZERO
                } else {
                    Duration::from_secs(60)
                },
            },
            // A one-shot run prints its own progress: the library's info lines would be noise.
            log: if role == Role::Ingest {
                LogConfig {
                    filter: "warn,weir=info".into(),
                    ..LogConfig::default()
                }
            } else {
                LogConfig::default()
            },
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// Reads `role`'s settings: its defaults, then `file` (only `role`'s sections; unknown
    /// keys are errors naming the key), then the environment `env`. Flags are applied by the
    /// caller, then [`Settings::validate`].
    pub fn load(role: Role, file: Option<&Path>, env: &Env) -> Result<Self, ServiceError> {
        let mut s = match file {
            None => Self::defaults(role),
            Some(path) => Self::from_file(role, path)?,
        };
        s.apply_env(role, env)?;
        Ok(s)
    }

    /// `role`'s defaults under the settings in `path`.
    pub fn from_file(role: Role, path: &Path) -> Result<Self, ServiceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServiceError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(role, &text, path)
    }

    /// `role`'s defaults under the settings in `text` (read from `path`, which errors name).
    pub fn from_toml(role: Role, text: &str, path: &Path) -> Result<Self, ServiceError> {
        let table: toml::Table = crate::config::parse_toml(text, path)?;
        if let Some(k) = table
            .keys()
            .find(|k| !role.sections().contains(&k.as_str()))
        {
            return Err(ServiceError::Invalid {
                field: "config",
                reason: format!(
                    "{}: `{k}` is not a setting of {} (it takes: {})",
                    path.display(),
                    role.name(),
                    role.sections().join(", ")
                ),
            });
        }
        // Merge the file over the role's defaults, section by section, then deserialize the
        // whole (so a section's missing keys keep the role's defaults, not the type's).
        let mut merged =
            toml::Table::try_from(Self::defaults(role)).map_err(|e| ServiceError::Invalid {
                field: "config",
                reason: e.to_string(),
            })?;
        // Secrets serialize masked: leave them out, so their own defaults apply.
        strip_masked(&mut merged);
        for (k, v) in table {
            match (merged.get_mut(&k), v) {
                (Some(toml::Value::Table(base)), toml::Value::Table(over))
                    if !replaces_whole(&k, &over) =>
                {
                    merge(base, over)
                }
                (_, v) => {
                    merged.insert(k, v);
                }
            }
        }
        // The merged text is not the user's: name the file, the section and the key, not a
        // line of the merged text.
        let text = toml::to_string(&merged).unwrap_or_default();
        toml::from_str(&text).map_err(|e: toml::de::Error| {
            let section = e
                .span()
                .and_then(|span| text[..span.start].rfind("\n["))
                .and_then(|at| {
                    let rest = &text[at + 2..];
                    rest.find(']').map(|end| rest[..end].to_owned())
                });
            ServiceError::Invalid {
                field: "config",
                reason: match section {
                    Some(section) => {
                        format!("{}: in [{section}]: {}", path.display(), e.message().trim())
                    }
                    None => format!("{}: {}", path.display(), e.message().trim()),
                },
            }
        })
    }

    /// Applies the environment ([`ENV`]).
    pub fn apply_env(&mut self, role: Role, env: &Env) -> Result<(), ServiceError> {
        env.apply_graph(&mut self.graph);
        env.apply_bus(&mut self.bus);
        if let Some(b) = env.parse("WEIR_BIND")? {
            self.bind = b;
        }
        if let Some(keys) = env.secrets("WEIR_API_KEYS") {
            self.auth = AuthConfig::ApiKeys { keys };
        }
        if let Some(b) = env.parse("WEIR_ADMIN_BIND")? {
            self.admin.bind = Some(b);
        }
        if let Some(t) = env.get("WEIR_ADMIN_TOKEN") {
            self.admin.token = Some(Secret::new(t));
        }
        if env.get(crate::admin::ALLOW_OPEN_ENV).is_some() {
            self.admin.allow_open = crate::admin::allow_open_from_env(env)?;
        }
        if let Some(l) = env.parse::<ByteSize>("WEIR_MEMORY_LIMIT")? {
            self.memory.limit = Some(l);
        }
        if let Some(d) = env.duration("WEIR_MEMORY_LOG_INTERVAL")? {
            self.memory.log_interval = d;
        }
        if let Some(f) = env.get("WEIR_LOG") {
            self.log.filter = f.to_owned();
        }
        match env.get("WEIR_LOG_FORMAT") {
            Some("json") => self.log.format = LogFormat::Json,
            Some("text") => self.log.format = LogFormat::Text,
            Some(other) => {
                return Err(ServiceError::Env {
                    var: "WEIR_LOG_FORMAT",
                    reason: format!("`{other}`: use `text` or `json`"),
                });
            }
            None => {}
        }
        if role.has_jobs() {
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
            if let Some(v) = env.get("KAFKA_BROKERS") {
                self.jobs.kafka.brokers = v.to_owned();
            }
        }
        Ok(())
    }

    /// Checks every setting `role` uses, naming the first wrong one.
    pub fn validate(&self, role: Role) -> Result<(), ServiceError> {
        let invalid = |field: &'static str, e: &dyn std::fmt::Display| ServiceError::Invalid {
            field,
            reason: e.to_string(),
        };
        self.auth.validate().map_err(|e| invalid("auth", &e))?;
        self.listener
            .validate()
            .map_err(|e| invalid("listener", &e))?;
        if matches!(self.auth, AuthConfig::Disabled) && !self.bind.ip().to_canonical().is_loopback()
        {
            return Err(ServiceError::Invalid {
                field: "auth.mode",
                reason: format!(
                    "authentication is off (`--no-auth` / `auth.mode = \"disabled\"`) but `bind` ({}) is not a loopback address, so anyone who can reach it could query, subscribe and start jobs; bind 127.0.0.1 (`--bind` / WEIR_BIND), or configure keys (WEIR_API_KEYS, `auth.mode = \"api_keys\"`) or `auth.mode = \"jwt\"`",
                    self.bind
                ),
            });
        }
        if let Some(bind) = self.admin.bind {
            crate::admin::check_admin_access(
                bind,
                self.admin.token.as_ref(),
                self.admin.allow_open,
            )?;
        }
        self.bus.validate().map_err(|e| invalid("bus", &e))?;
        if role == Role::Serve && !matches!(self.bus, BusConfig::InProcess(_)) {
            return Err(ServiceError::Invalid {
                field: "bus",
                reason: "weir serve runs the in-process bus; use weir-ingestd and weir-gatewayd to share changes over NATS".into(),
            });
        }
        if role != Role::Gatewayd {
            self.pool.validate().map_err(|e| invalid("pool", &e))?;
        }
        if role.has_gateway() {
            self.read_pool
                .validate()
                .map_err(|e| invalid("read_pool", &e))?;
            let mut g = self.gateway.clone();
            g.bind = self.bind;
            g.auth = self.auth.clone();
            g.validate().map_err(|e| invalid("gateway", &e))?;
            self.replay.validate()?;
        }
        if role.has_jobs() {
            self.jobs.validate()?;
        }
        Ok(())
    }

    /// The gateway's settings with this process's `bind` and `auth`.
    pub fn gateway_config(&self) -> GatewayConfig {
        let mut g = self.gateway.clone();
        g.bind = self.bind;
        g.auth = self.auth.clone();
        g
    }

    /// The memory limit in bytes, if one is configured.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory.limit.map(ByteSize::bytes)
    }

    /// `role`'s settings as TOML, with every secret masked (`***`), credentials inside URLs
    /// included; only the sections `role` uses.
    pub fn show(&self, role: Role) -> String {
        let mut value = match serde_json::to_value(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot print the settings: {e}\n"),
        };
        if let serde_json::Value::Object(m) = &mut value {
            m.retain(|k, _| role.sections().contains(&k.as_str()));
        }
        mask_url_credentials(&mut value);
        crate::config::show(&value)
    }

    /// The JSON Schema of a settings file (every role's sections; see [`Role::sections`]).
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(Settings);
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Sections a file replaces whole instead of merging into the defaults: an externally tagged
/// choice whose variant the file picks (`[bus] kind = "nats"`, `[auth] mode = "jwt"`).
fn replaces_whole(section: &str, over: &toml::Table) -> bool {
    matches!(section, "bus" | "auth") && (over.contains_key("kind") || over.contains_key("mode"))
}

/// Removes every value that is a masked secret (`***`).
fn strip_masked(t: &mut toml::Table) {
    t.retain(|_, v| v.as_str() != Some("***"));
    for (_, v) in t.iter_mut() {
        if let toml::Value::Table(inner) = v {
            strip_masked(inner);
        }
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Replaces `user:password@` in every string that looks like a URL (or a list of them) with
/// `***@` ([`weir_config::redact_url`]).
fn mask_url_credentials(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.contains("://") => *s = weir_config::redact_url(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(mask_url_credentials),
        serde_json::Value::Object(m) => m.values_mut().for_each(mask_url_credentials),
        _ => {}
    }
}

/// Every environment variable a Weir process reads, and the setting it sets.
pub const ENV: &[(&str, &str)] = &[
    ("WEIR_CONFIG", "the settings file (`--config`)"),
    ("NEO4J_URI", "graph.uri"),
    ("NEO4J_USER", "graph.user"),
    ("NEO4J_PASSWORD", "graph.password"),
    ("NEO4J_DATABASE", "graph.database"),
    ("NATS_URL", "bus.url (NATS bus only)"),
    ("WEIR_BUS_STREAM", "bus.stream (NATS bus only)"),
    (
        "WEIR_BUS_SUBJECT_PREFIX",
        "bus.subject_prefix (NATS bus only; one per Weir installation sharing a NATS)",
    ),
    ("WEIR_BIND", "bind"),
    (
        "WEIR_API_KEYS",
        "auth = api_keys with these comma-separated keys",
    ),
    (
        "WEIR_ADMIN_BIND",
        "admin.bind: /metrics and /api/memory/* listener (off when unset)",
    ),
    (
        "WEIR_ADMIN_TOKEN",
        "admin.token: bearer token for /metrics and /api/memory/*",
    ),
    (
        "WEIR_ADMIN_ALLOW_OPEN",
        "admin.allow_open: serve the admin listener off loopback without a token",
    ),
    ("WEIR_MEMORY_LIMIT", "memory.limit (64MiB, 1GiB, or bytes)"),
    (
        "WEIR_MEMORY_LOG_INTERVAL",
        "memory.log_interval (60s, 0 = off)",
    ),
    (
        "WEIR_HEAP_PROFILING",
        "turn the heap profiler on (1/true/yes/on)",
    ),
    ("WEIR_LOG", "log.filter (tracing EnvFilter syntax)"),
    ("WEIR_LOG_FORMAT", "log.format (text or json)"),
    ("WEIR_MAX_JOBS", "jobs.max_concurrent"),
    ("WEIR_INPUT_ROOTS", "jobs.input_roots (`:`-separated)"),
    ("WEIR_SPOOL_DIR", "jobs.spool_dir"),
    ("WEIR_JOB_DIR", "jobs.job_dir"),
    (
        "KAFKA_BROKERS",
        "jobs.kafka.brokers (Kafka stream jobs naming no brokers)",
    ),
];

/// The settings file: `--config`, else `WEIR_CONFIG`.
pub fn config_path(flag: Option<PathBuf>, env: &Env) -> Option<PathBuf> {
    flag.or_else(|| env.get("WEIR_CONFIG").map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("weir.toml")
    }

    #[test]
    fn every_roles_defaults_are_valid_and_loopback() {
        for role in Role::ALL {
            let s = Settings::defaults(role);
            s.validate(role).unwrap_or_else(|e| panic!("{role:?}: {e}"));
            assert!(s.bind.ip().is_loopback());
        }
        assert!(matches!(
            Settings::defaults(Role::Serve).bus,
            BusConfig::InProcess(_)
        ));
        assert!(matches!(
            Settings::defaults(Role::Gatewayd).bus,
            BusConfig::Nats(_)
        ));
        assert_eq!(Settings::defaults(Role::Ingestd).bind.port(), 8081);
    }

    #[test]
    fn a_file_sets_only_its_roles_sections_and_keeps_the_other_defaults() {
        let text =
            "bind = \"127.0.0.1:9000\"\n[jobs]\nmax_concurrent = 7\n[bus]\nstream = \"MINE\"\n";
        let s = Settings::from_toml(Role::Ingestd, text, path()).unwrap();
        assert_eq!(s.bind.port(), 9000);
        assert_eq!(s.jobs.max_concurrent, 7);
        assert_eq!(s.jobs.max_queued, JobsConfig::default().max_queued);
        match &s.bus {
            BusConfig::Nats(n) => {
                assert_eq!(n.stream, "MINE");
                assert_eq!(
                    n.url,
                    NatsBusConfig::default().url,
                    "the role's default kept"
                );
            }
            other => panic!("{other:?}"),
        }
        let e = Settings::from_toml(Role::Gatewayd, "[jobs]\nmax_concurrent = 7\n", path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("weir.toml") && e.contains("`jobs`") && e.contains("weir-gatewayd"),
            "{e}"
        );
        let e = Settings::from_toml(Role::Gatewayd, "[gateway]\nintrospectoin = true\n", path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("introspectoin") && e.contains("weir.toml") && e.contains("[gateway]"),
            "{e}"
        );
        // The line of the merged text means nothing to the user: none is shown.
        assert!(!e.contains("line "), "{e}");
        let e = Settings::from_toml(
            Role::Ingest,
            "[graph]
bogus = 1
",
            path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("weir.toml: in [graph]: unknown field `bogus`"),
            "{e}"
        );
    }

    #[test]
    fn environment_beats_the_file_and_sizes_take_units() {
        let mut s =
            Settings::from_toml(Role::Ingestd, "bind = \"127.0.0.1:9000\"\n", path()).unwrap();
        s.apply_env(
            Role::Ingestd,
            &Env::from_pairs([
                ("WEIR_BIND", "127.0.0.1:9100"),
                ("WEIR_MEMORY_LIMIT", "1GiB"),
                ("WEIR_LOG", "debug"),
                ("WEIR_API_KEYS", "k1,k2"),
            ]),
        )
        .unwrap();
        assert_eq!(s.bind.port(), 9100);
        assert_eq!(s.memory_limit(), Some(1 << 30));
        assert_eq!(s.log.filter, "debug");
        let e = s
            .apply_env(
                Role::Ingestd,
                &Env::from_pairs([("WEIR_MEMORY_LIMIT", "lots")]),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEIR_MEMORY_LIMIT"), "{e}");
    }

    #[test]
    fn show_masks_secrets_and_url_credentials_and_prints_only_the_roles_sections() {
        let mut s = Settings::defaults(Role::Gatewayd);
        s.graph.password = Secret::new("graph-password-123");
        s.graph.uri = "neo4j+s://neo:hunter2@db.example:7687".into();
        s.auth = AuthConfig::ApiKeys {
            keys: vec![Secret::new("api-key-456")],
        };
        if let BusConfig::Nats(n) = &mut s.bus {
            n.url = "nats://alice:s3cret@nats.example:4222,nats://bob:pw2@n2:4222".into();
        }
        let shown = s.show(Role::Gatewayd);
        for secret in [
            "graph-password-123",
            "hunter2",
            "api-key-456",
            "s3cret",
            "alice",
            "bob",
            "pw2",
        ] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
        assert!(
            shown.contains("nats://***@nats.example:4222,nats://***@n2:4222"),
            "{shown}"
        );
        assert!(!shown.contains("[jobs]"), "{shown}");
        assert!(shown.contains("[gateway"), "{shown}");
    }

    #[test]
    fn disabled_auth_is_refused_off_loopback() {
        let mut s = Settings::defaults(Role::Gatewayd);
        s.auth = AuthConfig::Disabled;
        s.validate(Role::Gatewayd).unwrap();
        s.bind = "0.0.0.0:8080".parse().unwrap();
        let e = s.validate(Role::Gatewayd).unwrap_err().to_string();
        assert!(e.contains("loopback") && e.contains("WEIR_API_KEYS"), "{e}");
    }

    #[test]
    fn the_committed_schema_is_current() {
        let committed =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/config.schema.json");
        let now = Settings::json_schema();
        if std::env::var_os("WEIR_UPDATE_SCHEMA").is_some() {
            std::fs::write(&committed, &now).unwrap();
        }
        let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
        assert!(
            on_disk == now,
            "schemas/config.schema.json is stale: regenerate it with `WEIR_UPDATE_SCHEMA=1 cargo test -p weir-app settings`"
        );
    }
}
