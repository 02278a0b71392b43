//! Helpers of the `weir publish` → `weir consume` tests: a private nats-server, the example
//! mapping with an operation field, workers as child processes, the durable consumer's state
//! read from the server, and what to print when a wait runs out.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::consumer::{Info, PullConsumer};
use weir_test_support::TestGraph;
use weir_test_support::nats_server::PrivateNatsServer;
use weir_test_support::process::{ChildProcess, http_request, service_env, workspace_binary};

/// The stream, subject and durable consumer every test here uses (on its own nats-server).
pub const STREAM: &str = "PEOPLE_IN";
pub const SUBJECT: &str = "people.in";
pub const CONSUMER: &str = "people";

/// What the example mapping makes of a set of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub people: i64,
    pub companies: i64,
    pub works_at: i64,
    pub knows: i64,
}

/// The counts a clean run of the example mapping gives for these JSON Lines records
/// (relationship MERGE creates missing end nodes, so every id named anywhere is a node, and each
/// distinct pair is one relationship). Lines that are not a person record are skipped.
pub fn expected_counts<'a>(lines: impl IntoIterator<Item = &'a str>) -> Counts {
    let (mut people, mut companies) = (HashSet::new(), HashSet::new());
    let (mut works_at, mut knows) = (HashSet::new(), HashSet::new());
    for line in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let id = |k: &str| v[k].as_u64();
        let (Some(p), Some(c), Some(k)) = (id("person_id"), id("company_id"), id("knows_id"))
        else {
            continue;
        };
        people.insert(p);
        people.insert(k);
        companies.insert(c);
        works_at.insert((p, c));
        knows.insert((p, k));
    }
    let n = |s: usize| i64::try_from(s).unwrap();
    Counts {
        people: n(people.len()),
        companies: n(companies.len()),
        works_at: n(works_at.len()),
        knows: n(knows.len()),
    }
}

/// One integer a query returns as `n`.
pub async fn query_n(graph: &TestGraph, q: &str) -> i64 {
    let mut rows = graph
        .graph
        .execute(neo4rs::query(q))
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
    rows.next()
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .and_then(|r| r.get::<i64>("n").ok())
        .unwrap_or(0)
}

/// A private nats-server, a temporary directory with the example mapping (plus
/// `[input] operation_field = "op"`), and the label prefix of the test's graph namespace.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub nats: PrivateNatsServer,
    pub url: String,
    pub mapping: PathBuf,
    pub prefix: String,
}

impl Rig {
    pub fn new(graph: &TestGraph) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nats = PrivateNatsServer::start_new();
        let url = nats.url();
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
            nats,
            url,
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
        self.generate_with(n, &[])
    }

    /// [`Rig::generate`] with `extra` arguments (`--pad 2000`).
    pub fn generate_with(&self, n: u64, extra: &[&str]) -> (PathBuf, Vec<String>) {
        let data = self.dir.path().join("people.jsonl");
        let status = Command::new(workspace_binary("weir"))
            .args(["generate", "--format", "jsonl", "--people", &n.to_string()])
            .args(extra)
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
            .env("NATS_URL", &self.url)
            .env("WEIR_LOG", log)
    }

    /// `weir publish FILE` into the subject; its stdout.
    pub fn publish(&self, file: &Path) -> String {
        let mut cmd = Command::new(workspace_binary("weir"));
        let out = self
            .env(&mut cmd, "warn")
            .args(["publish", "--stream", STREAM, "--subject", SUBJECT])
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

    /// A `weir consume` worker of the shared consumer with `--ack-wait ack_wait`, dead letters
    /// in `dead-<name>.jsonl`, `--metrics-bind metrics` when given, `extra` arguments, and
    /// `WEIR_LOG=log`.
    pub fn worker(
        &self,
        name: &str,
        ack_wait: &str,
        metrics: Option<SocketAddr>,
        extra: &[&str],
        log: &str,
    ) -> ChildProcess {
        let mut cmd = Command::new(workspace_binary("weir"));
        self.env(&mut cmd, log)
            .args([
                "consume",
                "--stream",
                STREAM,
                "--subject",
                SUBJECT,
                "--consumer",
                CONSUMER,
                "--ack-wait",
                ack_wait,
                "--progress",
                "none",
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

    /// The durable consumer as the server has it now.
    pub async fn info(&self) -> Result<Info, String> {
        let get = async {
            let nats = async_nats::connect(&self.url)
                .await
                .map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(nats);
            let stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
            let mut consumer: PullConsumer = stream
                .get_consumer(CONSUMER)
                .await
                .map_err(|e| e.to_string())?;
            consumer.info().await.cloned().map_err(|e| e.to_string())
        };
        tokio::time::timeout(Duration::from_secs(10), get)
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".into()))
    }

    /// Waits until the consumer has acknowledged every message up to `last` (the stream's
    /// last sequence) with nothing pending or unacknowledged. Panics with [`Rig::report`] past
    /// `within`, or at once when one of `workers` named in `live` exits.
    pub async fn wait_drained(
        &self,
        last: u64,
        within: Duration,
        workers: &[(&str, &ChildProcess, Option<SocketAddr>)],
        live: &[&str],
    ) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(i) = self.info().await
                && i.ack_floor.stream_sequence >= last
                && i.num_pending == 0
                && i.num_ack_pending == 0
            {
                return;
            }
            self.assert_alive(workers, live).await;
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the consumer did not acknowledge up to sequence {last} within {within:?}{}",
                    self.report(workers).await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Panics with [`Rig::report`] when one of `workers` named in `live` has exited.
    pub async fn assert_alive(
        &self,
        workers: &[(&str, &ChildProcess, Option<SocketAddr>)],
        live: &[&str],
    ) {
        if let Some((name, ..)) = workers
            .iter()
            .find(|(name, child, _)| live.contains(name) && exited(child))
        {
            // Its last lines.
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

    /// What to print when a wait runs out: the consumer's state on the server, each worker's
    /// exit status and stderr (its last 60 lines), its `weir_consumer_*` / `weir_stream_*`
    /// samples when it serves metrics, and the dead letters' count.
    pub async fn report(&self, workers: &[(&str, &ChildProcess, Option<SocketAddr>)]) -> String {
        let info = match self.info().await {
            Ok(i) => format!(
                "consumer: pending {} ack_pending {} redelivered {} delivered {:?} ack_floor {:?}",
                i.num_pending, i.num_ack_pending, i.num_redelivered, i.delivered, i.ack_floor
            ),
            Err(e) => format!("consumer info: {e}"),
        };
        let mut out = format!("\n--- {info}\n");
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
        out
    }
}

/// Whether the child has exited (it stays a zombie until its handle reaps it).
pub fn exited(child: &ChildProcess) -> bool {
    !weir_memwatch::procfs::is_running(child.id())
}

/// Sends `signal` (`KILL`, `TERM`) to the child; its handle keeps the collected stderr.
pub fn kill(child: &ChildProcess, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {}", child.id());
}
