//! Helpers of the `weir publish --topic` → `weir consume --topic` tests: a private Kafka
//! broker (tansu), the example mapping with an operation field, workers as child processes,
//! and the group's committed offsets against the partitions' high watermarks, read from the
//! broker.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use weir_test_support::TestGraph;
use weir_test_support::kafka_broker::PrivateKafkaBroker;
use weir_test_support::process::{ChildProcess, http_request, service_env, workspace_binary};

use crate::consumers::{Counts, exited, query_n};

pub const TOPIC: &str = "people-in";
pub const GROUP: &str = "people";
pub const PARTITIONS: i32 = 3;

/// A private broker, a temporary directory with the example mapping (plus
/// `[input] operation_field = "op"`), and the label prefix of the test's graph namespace.
pub struct KafkaRig {
    pub dir: tempfile::TempDir,
    pub broker: PrivateKafkaBroker,
    pub mapping: PathBuf,
    pub prefix: String,
}

/// Each partition's (committed offset, high watermark) as the broker has them.
pub type Offsets = Vec<(i32, Option<i64>, i64)>;

impl KafkaRig {
    pub fn new(graph: &TestGraph) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = PrivateKafkaBroker::start_new();
        let mapping = dir.path().join("mapping.toml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/people/mapping-jsonl.toml"),
        )
        .unwrap();
        let with_op = text.replace(
            "[input]\nformat = \"jsonl\"",
            "[input]\nformat = \"jsonl\"\noperation_field = \"op\"",
        );
        assert_ne!(with_op, text, "the example mapping's [input] changed");
        std::fs::write(&mapping, with_op).unwrap();
        // Registered, so the nodes (and their relationships) are deleted when `graph` drops.
        let _ = (graph.label("Person"), graph.label("Company"));
        Self {
            dir,
            broker,
            mapping,
            prefix: format!("{}_", graph.namespace),
        }
    }

    /// A label or relationship type of the mapping under the test's prefix.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// The people, companies, WORKS_AT and KNOWS under the test's prefix.
    pub async fn graph_counts(&self, graph: &TestGraph) -> Counts {
        let (p, c) = (self.name("Person"), self.name("Company"));
        let (w, k) = (self.name("WORKS_AT"), self.name("KNOWS"));
        Counts {
            people: query_n(graph, &format!("MATCH (n:`{p}`) RETURN count(n) AS n")).await,
            companies: query_n(graph, &format!("MATCH (n:`{c}`) RETURN count(n) AS n")).await,
            works_at: query_n(
                graph,
                &format!("MATCH (:`{p}`)-[r:`{w}`]->(:`{c}`) RETURN count(r) AS n"),
            )
            .await,
            knows: query_n(
                graph,
                &format!("MATCH (:`{p}`)-[r:`{k}`]->(:`{p}`) RETURN count(r) AS n"),
            )
            .await,
        }
    }

    /// `weir generate --format jsonl --people n` into the directory, and its lines.
    pub fn generate(&self, n: u64) -> (PathBuf, Vec<String>) {
        let data = self.dir.path().join("people.jsonl");
        let status = Command::new(workspace_binary("weir"))
            .args(["generate", "--format", "jsonl", "--people", &n.to_string()])
            .arg("--out")
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success(), "weir generate failed");
        let lines = std::fs::read_to_string(&data)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        (data, lines)
    }

    /// Writes `lines` to `name` in the directory.
    pub fn write(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    fn env<'a>(&self, cmd: &'a mut Command, log: &str) -> &'a mut Command {
        service_env(cmd, "CONSUME_BUS")
            .env("KAFKA_BROKERS", self.broker.brokers())
            .env("WEIR_LOG", log)
    }

    /// `weir publish FILE --topic TOPIC` (created with [`PARTITIONS`] partitions), keyed by
    /// `person_id`, one message per record batch, with `extra` arguments; its stdout.
    ///
    /// One message per batch (`-X batch.num.messages=1`) because tansu 0.6.0 answers a fetch
    /// from an offset inside a stored record batch with the batches after it, skipping the rest
    /// of that batch: a consumer resuming there (after a commit, a rebalance, or a pause) would
    /// never see those records. A Kafka broker returns the whole batch, and librdkafka drops
    /// the offsets before the one asked for.
    pub fn publish(&self, file: &Path, extra: &[&str]) -> String {
        self.publish_to(TOPIC, PARTITIONS, file, extra)
    }

    /// [`Self::publish`] to `topic`, created with `partitions` partitions.
    pub fn publish_to(&self, topic: &str, partitions: i32, file: &Path, extra: &[&str]) -> String {
        let mut cmd = Command::new(workspace_binary("weir"));
        let out = self
            .env(&mut cmd, "warn")
            .args(["publish", "--topic", topic, "--partitions"])
            .arg(partitions.to_string())
            .args(["--key-field", "person_id", "-X", "batch.num.messages=1"])
            .args(extra)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weir publish: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `weir consume --topic` worker of the group, dead letters in `dead-<name>.jsonl`,
    /// `--metrics-bind metrics` when given, `extra` arguments, and `WEIR_LOG=log`. The group's
    /// session times out after 6 s, so a killed worker's partitions move soon.
    pub fn worker(
        &self,
        name: &str,
        metrics: Option<SocketAddr>,
        extra: &[&str],
        log: &str,
    ) -> ChildProcess {
        let mut cmd = Command::new(workspace_binary("weir"));
        self.env(&mut cmd, log)
            .args([
                "consume",
                "--topic",
                TOPIC,
                "--group",
                GROUP,
                "--progress",
                "none",
            ])
            .args([
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=500",
            ])
            .arg("--mapping")
            .arg(&self.mapping)
            .arg("--label-prefix")
            .arg(&self.prefix)
            .arg("--dead-letter")
            .arg(self.dir.path().join(format!("dead-{name}.jsonl")))
            .args(extra);
        if let Some(m) = metrics {
            cmd.arg("--metrics-bind").arg(m.to_string());
        }
        ChildProcess::spawn(&mut cmd)
    }

    /// The group's committed offset and the high watermark of each partition.
    pub fn offsets(&self) -> Result<Offsets, String> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.brokers())
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(TOPIC, p);
        }
        let committed = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for p in 0..PARTITIONS {
            let (_, high) = c
                .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            let off = committed
                .find_partition(TOPIC, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            out.push((p, off, high));
        }
        Ok(out)
    }

    /// Waits until the group's committed offsets add up to `messages` (offsets start at 0 and
    /// are contiguous, so every message of every partition is committed then). tansu's high
    /// watermark is not used: it reports the base offset of a partition's last record batch,
    /// below the end. Panics with [`KafkaRig::report`] past `within`, or at once when one of
    /// `workers` named in `live` exits.
    pub async fn wait_committed(
        &self,
        messages: i64,
        within: Duration,
        workers: &[(&str, &ChildProcess, Option<SocketAddr>)],
        live: &[&str],
    ) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(o) = self.offsets()
                && o.iter().map(|p| p.1.unwrap_or(0)).sum::<i64>() == messages
            {
                return;
            }
            self.assert_alive(workers, live).await;
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the group did not commit every partition's {messages} messages within {within:?}{}",
                    self.report(workers).await
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Panics with [`KafkaRig::report`] when one of `workers` named in `live` has exited.
    pub async fn assert_alive(
        &self,
        workers: &[(&str, &ChildProcess, Option<SocketAddr>)],
        live: &[&str],
    ) {
        if let Some((name, ..)) = workers
            .iter()
            .find(|(name, child, _)| live.contains(name) && exited(child))
        {
            std::thread::sleep(Duration::from_millis(200));
            panic!("worker {name} exited{}", self.report(workers).await);
        }
    }

    /// Every dead letter written by the workers named `workers`.
    pub fn dead_letters(&self, workers: &[&str]) -> Vec<serde_json::Value> {
        workers
            .iter()
            .filter_map(|w| {
                std::fs::read_to_string(self.dir.path().join(format!("dead-{w}.jsonl"))).ok()
            })
            .flat_map(|t| {
                t.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// What to print when a wait runs out: offsets, each worker's status, stderr tail and
    /// `weir_consumer_*` samples.
    pub async fn report(&self, workers: &[(&str, &ChildProcess, Option<SocketAddr>)]) -> String {
        let mut out = format!(
            "\n--- offsets (partition, committed, high): {:?}\n",
            self.offsets()
        );
        let names: Vec<&str> = workers.iter().map(|w| w.0).collect();
        out += &format!("--- dead letters: {}\n", self.dead_letters(&names).len());
        for (name, child, metrics) in workers {
            let status = if exited(child) {
                "exited".to_owned()
            } else {
                format!("running, pid {}", child.id())
            };
            let lines = child.lines();
            let tail = &lines[lines.len().saturating_sub(60)..];
            out += &format!(
                "--- worker {name} ({status}), stderr ({} lines, last {}):\n{}\n",
                lines.len(),
                tail.len(),
                tail.join("\n")
            );
            if let Some(m) = metrics
                && let Ok(r) = http_request(*m, "GET", "/metrics", None)
            {
                let text = r.text();
                let samples: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        (l.starts_with("weir_consumer_")
                            || l.starts_with("weir_stream_records")
                            || l.starts_with("weir_stream_backpressure"))
                            && !l.starts_with('#')
                    })
                    .collect();
                out += &format!("--- worker {name} metrics:\n{}\n", samples.join("\n"));
            }
        }
        let log = self.broker.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        out += &format!(
            "--- broker log (last {}):\n{}\n",
            tail.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        out
    }
}
