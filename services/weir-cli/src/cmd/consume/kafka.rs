//! `weir consume --topic ...`: the same worker over a Kafka consumer group instead of a
//! JetStream consumer. Workers started with the same `--group` share the topics' partitions;
//! each partition's offset is committed once everything before it is committed to the graph
//! (or dead-lettered).

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use weir_sources::{KafkaMetrics, KafkaSource, KafkaSourceConfig, StartFrom};

use super::{ConsumeArgs, Worker, WorkerConsumer, prepare};

/// `--kafka-start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum KafkaStartArg {
    /// The oldest message of a partition the group has no offset for.
    Earliest,
    /// Only messages produced after the worker joined.
    Latest,
}

/// The Kafka arguments of `weir consume` (any `--topic` selects Kafka instead of JetStream).
#[derive(Debug, Args)]
#[command(next_help_heading = "Kafka source (selected by --topic)")]
pub(crate) struct KafkaArgs {
    /// Kafka topic to read, or a `^regex` of topic names; repeat or separate by commas for
    /// several. Selects Kafka as the source.
    #[arg(long = "topic", value_delimiter = ',', conflicts_with_all = ["nats_url", "stream", "subject", "consumer", "deliver", "ack_wait", "max_ack_pending"])]
    pub(crate) topics: Vec<String>,
    /// Bootstrap brokers (`host:port,...`). Default: `KAFKA_BROKERS`, else 127.0.0.1:9092.
    #[arg(long, requires = "topics")]
    pub(crate) kafka_brokers: Option<String>,
    /// Consumer group id: workers with the same group share the partitions.
    #[arg(long, default_value = "weir", requires = "topics")]
    pub(crate) group: String,
    /// Where a partition without a committed offset starts.
    #[arg(long, value_enum, default_value = "earliest", requires = "topics")]
    pub(crate) kafka_start: KafkaStartArg,
    /// A librdkafka property `KEY=VALUE`, passed through (repeatable): security
    /// (`security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=...`,
    /// `sasl.password=...`, `ssl.ca.location=...`) and tuning (`session.timeout.ms=...`).
    #[arg(long = "kafka-property", short = 'X', value_parser = parse_property, requires = "topics")]
    pub(crate) properties: Vec<(String, String)>,
    /// Most messages handed to the pipeline and not yet committed; fetching pauses at it.
    #[arg(long, default_value_t = 20_000, requires = "topics")]
    pub(crate) max_in_flight: usize,
    /// Longest a rebalance waits for the revoked partitions' records in flight to commit
    /// before they are left to the partition's next owner (read again there).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "topics")]
    pub(crate) revoke_wait: Duration,
}

impl KafkaArgs {
    /// Whether Kafka is the source.
    pub(crate) fn selected(&self) -> bool {
        !self.topics.is_empty()
    }
}

/// `KEY=VALUE`.
pub(crate) fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// The brokers from `--kafka-brokers`, else `KAFKA_BROKERS`, else 127.0.0.1:9092.
pub(crate) fn brokers(arg: Option<&str>) -> anyhow::Result<String> {
    let env = weir_app::config::Env::load().context("reading settings")?;
    Ok(arg
        .map(str::to_owned)
        .or_else(|| env.get("KAFKA_BROKERS").map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1:9092".into()))
}

impl WorkerConsumer for KafkaMetrics {
    fn backlog(&self) -> Option<u64> {
        self.lag()
    }

    fn summary_lines(&self) -> [(&'static str, u64); 4] {
        [
            ("messages received", self.received()),
            ("messages committed", self.committed()),
            ("partitions revoked", self.revoked()),
            ("messages left to next", self.abandoned()),
        ]
    }
}

/// Runs `weir consume` with Kafka as the source: the same pipeline as JetStream's
/// ([`JobPipeline`]), the commit frontier turned into committed offsets instead of acks.
pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<u8> {
    let k = &args.kafka;
    let Some((settings, job)) = prepare(&args)? else {
        return Ok(0);
    };
    let source_cfg = job.kafka_source(KafkaSourceConfig {
        brokers: brokers(k.kafka_brokers.as_deref())?,
        group: k.group.clone(),
        topics: k.topics.clone(),
        properties: k.properties.clone(),
        start: match k.kafka_start {
            KafkaStartArg::Earliest => StartFrom::Earliest,
            KafkaStartArg::Latest => StartFrom::Latest,
        },
        max_in_flight_messages: k.max_in_flight,
        revoke_wait: k.revoke_wait,
        ..KafkaSourceConfig::default()
    });
    source_cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    // The key constraints exist before the group is joined.
    let worker = Worker::build(&args, settings, job).await?;
    let (source, commits, committer, consumer) =
        KafkaSource::start(&source_cfg, worker.stop.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !args.quiet {
        eprintln!(
            "consuming Kafka topics {} as group `{}` from {} (Ctrl-C or SIGTERM to stop)",
            k.topics.join(","),
            k.group,
            source_cfg.brokers
        );
    }
    worker
        .run(
            &args,
            source,
            commits,
            committer.into(),
            consumer,
            "uncommitted offsets are read again by the partition's next owner",
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::parse_property;

    #[test]
    fn properties_are_key_value() {
        assert_eq!(
            parse_property("sasl.password=a=b").unwrap(),
            ("sasl.password".into(), "a=b".into())
        );
        assert!(parse_property("nokey").is_err());
        assert!(parse_property("=v").is_err());
    }
}
