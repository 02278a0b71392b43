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
    /// Stream jobs (JetStream or Kafka consumers) running at once; they do not take the file
    /// jobs' `max_concurrent` slots, since they never end by themselves. Default 4.
    pub max_stream_jobs: usize,
    /// The Kafka cluster of Kafka stream jobs that name no brokers (`[jobs.kafka]`: `brokers`,
    /// `properties`).
    pub kafka: KafkaConnection,
    /// Stream jobs started with the service, each `[[jobs.streams]]`. More can be started
    /// through `POST /jobs/stream`.
    pub streams: Vec<StreamJobConfig>,
}

/// A stream job started with the service: a JetStream durable consumer (`stream`, `subject`,
/// `consumer`) or a Kafka consumer group (`topics`, `group`), whose messages go through a
/// mapping into the graph, acknowledged (JetStream) or their offsets committed (Kafka) after
/// the graph commit (see `weir consume`, the same worker as a CLI). An entry names the fields
/// of one source; a field of the other is refused by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamJobConfig {
    /// Job id (letters, digits, `-`, `_`; at most 64); also the name of its dead-letter file.
    pub id: String,
    /// The mapping file (TOML). Messages hold one JSON object or JSON Lines.
    pub mapping: PathBuf,
    /// Prefix for every label and relationship type. Default none.
    #[serde(default)]
    pub label_prefix: String,
    /// JetStream: the stream (created with `subject` when missing).
    #[serde(default)]
    pub stream: Option<String>,
    /// JetStream: the consumer's subject filter.
    #[serde(default)]
    pub subject: Option<String>,
    /// JetStream: durable consumer name; every worker (process or job) with this name shares
    /// the work.
    #[serde(default)]
    pub consumer: Option<String>,
    /// JetStream: where a new consumer starts: `all` (default), `new` or `last`.
    #[serde(default)]
    pub deliver: Option<DeliverPolicy>,
    /// JetStream: NATS URL. Default: the bus's (`bus.url`) with the NATS bus, else
    /// `nats://127.0.0.1:4222`.
    #[serde(default)]
    pub url: Option<String>,
    /// JetStream: how long the server waits for an ack before it redelivers. Default 30 s.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub ack_wait: Option<std::time::Duration>,
    /// JetStream: most messages delivered and not acknowledged across every worker. Default
    /// 20,000.
    #[serde(default)]
    pub max_ack_pending: Option<usize>,
    /// Kafka: the topics to read (one starting with `^` is a regular expression of topic
    /// names). Naming topics makes the job a Kafka consumer.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Kafka: the consumer group; every worker (process or job) of the group shares the
    /// topics' partitions, and the group's committed offsets are where a job started again
    /// goes on.
    #[serde(default)]
    pub group: Option<String>,
    /// Kafka: bootstrap brokers (`host:port,...`). Default `jobs.kafka.brokers`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: librdkafka properties (security, tuning), over `jobs.kafka.properties` when the
    /// entry names no `brokers`, alone when it does (credentials of one cluster are never sent
    /// to another). Values are strings; secret ones are masked in `config show` and never
    /// logged.
    #[serde(default)]
    pub properties: KafkaProperties,
    /// Kafka: where a partition the group has no committed offset for starts: `earliest`
    /// (default) or `latest`.
    #[serde(default)]
    pub start: Option<KafkaStart>,
    /// Kafka: most messages handed to the pipeline and not yet committed; fetching pauses at
    /// it. Default 20,000.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

/// Where a Kafka consumer group without a committed offset starts reading a partition.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum KafkaStart {
    /// The oldest message the partition holds.
    #[default]
    Earliest,
    /// Only messages produced after the group joined.
    Latest,
}

/// The service's Kafka cluster (`[jobs.kafka]`): where Kafka stream jobs that name no brokers
/// connect (every job of `POST /jobs/stream`: a request cannot name brokers or properties).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConnection {
    /// Bootstrap brokers, `host:port[,host:port...]`. Default `127.0.0.1:9092`. Env
    /// `KAFKA_BROKERS`.
    pub brokers: String,
    /// librdkafka properties passed through (`security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, `ssl.ca.location`, ...). Default none. Secret values
    /// are masked in `config show` and never logged.
    pub properties: KafkaProperties,
}

impl Default for KafkaConnection {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            properties: KafkaProperties::default(),
        }
    }
}

/// librdkafka properties, passed through as given. Their `Debug` and serialized forms mask
/// the values of secret keys ([`KafkaProperties::is_secret`]); [`KafkaProperties::redact`]
/// takes every value out of a text (an error of librdkafka's may quote one).
#[derive(Clone, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct KafkaProperties(pub std::collections::BTreeMap<String, String>);

impl KafkaProperties {
    /// Whether the value of property `key` is secret (passwords, keys, tokens, JAAS and
    /// OAUTHBEARER configurations, PEM material): every key naming one of those.
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "key",
            "token",
            "jaas",
            "oauthbearer.config",
            "pem",
            "credential",
        ]
        .iter()
        .any(|w| k.contains(w))
    }

    /// The properties as `(key, value)` pairs for the client.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// `self` with `over` on top (a key in both takes `over`'s value).
    pub fn overlaid(&self, over: &Self) -> Self {
        let mut m = self.0.clone();
        m.extend(over.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self(m)
    }

    /// `text` with every property value replaced by `***`: a value of 4 characters or more
    /// wherever it occurs, a shorter one where it stands alone (between spaces, quotes,
    /// brackets, `=`, `,`, `;`, `:` or the ends), so that "1" does not mangle an address.
    pub fn redact(&self, text: &str) -> String {
        let mut values: Vec<&str> = self
            .0
            .values()
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .collect();
        // Longer first, so a value containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_owned();
        for v in values {
            if v.chars().count() >= 4 {
                out = out.replace(v, "***");
            } else {
                out = replace_standalone(&out, v);
            }
        }
        out
    }
}

/// `text` with every occurrence of `v` that stands alone replaced by `***`.
fn replace_standalone(text: &str, v: &str) -> String {
    let apart =
        |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || "\"'`()[]{}<>=,;:".contains(c));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(v) {
        let (before, after) = (&rest[..at], &rest[at + v.len()..]);
        let prev = if before.is_empty() && !out.is_empty() {
            out.chars().next_back()
        } else {
            before.chars().next_back()
        };
        out.push_str(before);
        if apart(prev) && apart(after.chars().next()) {
            out.push_str("***");
        } else {
            out.push_str(v);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            let shown = if Self::is_secret(k) {
                "***"
            } else {
                v.as_str()
            };
            m.serialize_entry(k, shown)?;
        }
        m.end()
    }
}

/// Which source a stream job reads, with its settings resolved (defaults applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamSource {
    /// A JetStream durable consumer.
    JetStream(crate::jobs::manager::StreamInput),
    /// A Kafka consumer group.
    Kafka(KafkaInput),
}

/// The Kafka side of a stream job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaInput {
    /// Topics or `^patterns`.
    pub topics: Vec<String>,
    /// The consumer group.
    pub group: String,
    /// Bootstrap brokers.
    pub brokers: String,
    /// librdkafka properties (never shown: see [`KafkaProperties`]).
    pub properties: KafkaProperties,
    /// Where a partition without a committed offset starts.
    pub start: KafkaStart,
    /// Most messages handed to the pipeline and not yet committed.
    pub max_in_flight: usize,
}

/// The default of `max_in_flight` (Kafka) and `max_ack_pending` (JetStream).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 20_000;

/// Refuses the fields of the other source: `named` lists (field, whether it is set).
pub(crate) fn refuse_fields(
    source: &str,
    named: &[(&'static str, bool)],
) -> Result<(), (&'static str, String)> {
    match named.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err((
            field,
            format!("`{field}` is not a setting of a {source} stream job"),
        )),
        None => Ok(()),
    }
}

impl StreamJobConfig {
    /// The source this entry names, its defaults applied (`kafka` for the brokers and
    /// properties of a Kafka entry that names no brokers). Fails naming the field that is
    /// missing, or set for the other source.
    pub fn source(&self, kafka: &KafkaConnection) -> Result<StreamSource, ServiceError> {
        let bad = |field: &'static str, reason: String| ServiceError::Invalid {
            field,
            reason: format!("jobs.streams `{}`: {reason}", self.id),
        };
        if !self.topics.is_empty() {
            refuse_fields(
                "Kafka",
                &[
                    ("jobs.streams.stream", self.stream.is_some()),
                    ("jobs.streams.subject", self.subject.is_some()),
                    ("jobs.streams.consumer", self.consumer.is_some()),
                    ("jobs.streams.deliver", self.deliver.is_some()),
                    ("jobs.streams.url", self.url.is_some()),
                    ("jobs.streams.ack_wait", self.ack_wait.is_some()),
                    (
                        "jobs.streams.max_ack_pending",
                        self.max_ack_pending.is_some(),
                    ),
                ],
            )
            .map_err(|(f, r)| bad(f, r))?;
            let group = self.group.clone().ok_or_else(|| {
                bad(
                    "jobs.streams.group",
                    "a Kafka stream job needs `group` (the consumer group)".into(),
                )
            })?;
            let (brokers, properties) = match &self.brokers {
                Some(b) => (b.clone(), self.properties.clone()),
                None => (
                    kafka.brokers.clone(),
                    kafka.properties.overlaid(&self.properties),
                ),
            };
            return Ok(StreamSource::Kafka(KafkaInput {
                topics: self.topics.clone(),
                group,
                brokers,
                properties,
                start: self.start.unwrap_or_default(),
                max_in_flight: self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            }));
        }
        refuse_fields(
            "JetStream",
            &[
                ("jobs.streams.group", self.group.is_some()),
                ("jobs.streams.brokers", self.brokers.is_some()),
                ("jobs.streams.properties", !self.properties.0.is_empty()),
                ("jobs.streams.start", self.start.is_some()),
                ("jobs.streams.max_in_flight", self.max_in_flight.is_some()),
            ],
        )
        .map_err(|(f, r)| bad(f, r))?;
        let need = |v: &Option<String>, field: &'static str| {
            v.clone().ok_or_else(|| {
                bad(
                    field,
                    "a stream job names either `stream`, `subject` and `consumer` (JetStream) or `topics` and `group` (Kafka)".into(),
                )
            })
        };
        Ok(StreamSource::JetStream(crate::jobs::manager::StreamInput {
            stream: need(&self.stream, "jobs.streams.stream")?,
            subject: need(&self.subject, "jobs.streams.subject")?,
            consumer: need(&self.consumer, "jobs.streams.consumer")?,
            deliver: self.deliver.unwrap_or_default(),
            url: self.url.clone(),
            ack_wait: self.ack_wait.unwrap_or_else(default_ack_wait),
            max_ack_pending: self.max_ack_pending.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        }))
    }
}

fn default_ack_wait() -> std::time::Duration {
    std::time::Duration::from_secs(30)
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
        if self.kafka.brokers.trim().is_empty() {
            return bad("jobs.kafka.brokers", "at least one host:port");
        }
        let mut ids = std::collections::HashSet::new();
        for s in &self.streams {
            if !ids.insert(s.id.as_str()) {
                return bad("jobs.streams.id", &format!("`{}` is used twice", s.id));
            }
            s.source(&self.kafka)?;
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
            kafka: KafkaConnection::default(),
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

    use crate::settings::{Role, Settings};

    fn parse(jobs: &str) -> Result<Settings, ServiceError> {
        let s = Settings::from_toml(Role::Ingestd, jobs, std::path::Path::new("weir.toml"))?;
        s.jobs.validate()?;
        Ok(s)
    }

    fn err(jobs: &str) -> String {
        parse(jobs).unwrap_err().to_string()
    }

    const ENTRY: &str = "[[jobs.streams]]\nid = \"k\"\nmapping = \"m.toml\"\n";

    #[test]
    fn a_jetstream_entry_parses_as_before_with_its_defaults() {
        let s = parse(&format!(
            "{ENTRY}stream = \"S\"\nsubject = \"s.in\"\nconsumer = \"c\"\n"
        ))
        .unwrap();
        let StreamSource::JetStream(js) = s.jobs.streams[0].source(&s.jobs.kafka).unwrap() else {
            panic!("not JetStream");
        };
        assert_eq!((js.stream.as_str(), js.consumer.as_str()), ("S", "c"));
        assert_eq!(js.deliver, DeliverPolicy::All);
        assert_eq!(js.ack_wait, std::time::Duration::from_secs(30));
        assert_eq!(js.max_ack_pending, 20_000);
    }

    #[test]
    fn a_kafka_entry_takes_the_services_cluster_unless_it_names_brokers() {
        let s = parse(&format!(
            "[jobs.kafka]\nbrokers = \"k1:9092\"\nproperties = {{ \"security.protocol\" = \"SASL_SSL\", \"sasl.password\" = \"pw\" }}\n\n{ENTRY}topics = [\"t\", \"^t-.*\"]\ngroup = \"g\"\nstart = \"latest\"\nmax_in_flight = 10\nproperties = {{ \"session.timeout.ms\" = \"6000\", \"security.protocol\" = \"SSL\" }}\n"
        ))
        .unwrap();
        let StreamSource::Kafka(k) = s.jobs.streams[0].source(&s.jobs.kafka).unwrap() else {
            panic!("not Kafka");
        };
        assert_eq!(k.topics, ["t", "^t-.*"]);
        assert_eq!((k.group.as_str(), k.brokers.as_str()), ("g", "k1:9092"));
        assert_eq!((k.start, k.max_in_flight), (KafkaStart::Latest, 10));
        // The service's properties, the entry's over them.
        let p = &k.properties.0;
        assert_eq!(p["security.protocol"], "SSL");
        assert_eq!(p["sasl.password"], "pw");
        assert_eq!(p["session.timeout.ms"], "6000");

        // An entry naming brokers gets none of the service's properties (its credentials).
        let mut own = s.jobs.streams[0].clone();
        own.brokers = Some("elsewhere:9092".into());
        let StreamSource::Kafka(k) = own.source(&s.jobs.kafka).unwrap() else {
            panic!("not Kafka");
        };
        assert_eq!(k.brokers, "elsewhere:9092");
        assert!(!k.properties.0.contains_key("sasl.password"), "{k:?}");

        // Defaults: earliest, 20,000 in flight, 127.0.0.1:9092.
        let s = parse(&format!("{ENTRY}topics = [\"t\"]\ngroup = \"g\"\n")).unwrap();
        let StreamSource::Kafka(k) = s.jobs.streams[0].source(&s.jobs.kafka).unwrap() else {
            panic!("not Kafka");
        };
        assert_eq!(
            (k.start, k.max_in_flight, k.brokers.as_str()),
            (KafkaStart::Earliest, 20_000, "127.0.0.1:9092")
        );
    }

    #[test]
    fn fields_of_the_other_source_or_missing_ones_are_refused_by_name() {
        let e = err(&format!(
            "{ENTRY}topics = [\"t\"]\ngroup = \"g\"\nconsumer = \"c\"\n"
        ));
        assert!(
            e.contains("jobs.streams.consumer") && e.contains("Kafka"),
            "{e}"
        );
        let e = err(&format!(
            "{ENTRY}topics = [\"t\"]\ngroup = \"g\"\nack_wait = \"5s\"\n"
        ));
        assert!(e.contains("jobs.streams.ack_wait"), "{e}");
        let e = err(&format!("{ENTRY}topics = [\"t\"]\n"));
        assert!(e.contains("jobs.streams.group"), "{e}");
        let e = err(&format!(
            "{ENTRY}stream = \"S\"\nsubject = \"s\"\nconsumer = \"c\"\ngroup = \"g\"\n"
        ));
        assert!(
            e.contains("jobs.streams.group") && e.contains("JetStream"),
            "{e}"
        );
        let e = err(&format!(
            "{ENTRY}stream = \"S\"\nsubject = \"s\"\nconsumer = \"c\"\nproperties = {{ a = \"b\" }}\n"
        ));
        assert!(e.contains("jobs.streams.properties"), "{e}");
        let e = err(&format!("{ENTRY}stream = \"S\"\nsubject = \"s\"\n"));
        assert!(e.contains("jobs.streams.consumer"), "{e}");
        let e = err(ENTRY);
        assert!(e.contains("jobs.streams.stream"), "{e}");
        // Unknown keys are still refused.
        let e = err(&format!(
            "{ENTRY}topics = [\"t\"]\ngroup = \"g\"\npartitions = 3\n"
        ));
        assert!(e.contains("partitions"), "{e}");
        let e = err("[jobs.kafka]\nbrokers = \" \"\n");
        assert!(e.contains("jobs.kafka.brokers"), "{e}");
    }

    #[test]
    fn secret_property_values_are_masked_and_redacted() {
        let p = KafkaProperties(
            [
                ("sasl.password", "hunter2-long"),
                ("ssl.key.password", "k3y"),
                ("sasl.username", "weir"),
                ("security.protocol", "SASL_SSL"),
                ("sasl.oauthbearer.client.secret", "cs"),
                ("session.timeout.ms", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        let shown = serde_json::to_string(&p).unwrap();
        let debug = format!("{p:?}");
        for text in [&shown, &debug] {
            assert!(!text.contains("hunter2") && !text.contains("k3y"), "{text}");
            assert!(text.contains("SASL_SSL") && text.contains("weir"), "{text}");
        }
        // librdkafka may quote any value in an error (a misspelt key is not known as secret).
        let e = "Client config error: No such configuration property: \"sasl.pasword\" sasl.pasword hunter2-long; k3y at 127.0.0.1:9092 \"cs\" x1y";
        let r = p.redact(e);
        assert!(
            !r.contains("hunter2") && !r.contains("k3y") && !r.contains("\"cs\""),
            "{r}"
        );
        // Short values only where they stand alone: the address and `x1y` stay.
        assert!(r.contains("127.0.0.1:9092") && r.contains("x1y"), "{r}");
        assert_eq!(p.redact("1"), "***");
    }

    #[test]
    fn config_show_masks_kafka_passwords() {
        let s = parse(&format!(
            "[jobs.kafka]\nproperties = {{ \"sasl.password\" = \"pw-123456\" }}\n\n{ENTRY}topics = [\"t\"]\ngroup = \"g\"\nproperties = {{ \"sasl.jaas.config\" = \"jaas-secret\", \"client.id\" = \"weir-1\" }}\n"
        ))
        .unwrap();
        let shown = s.show(Role::Ingestd);
        assert!(
            !shown.contains("pw-123456") && !shown.contains("jaas-secret"),
            "{shown}"
        );
        assert!(shown.contains("weir-1"), "{shown}");
    }
}
