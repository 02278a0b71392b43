//! `weir consume --topic` through outages and memory pressure, across real processes: a private
//! tansu broker (the rig's), `weir publish --topic` into a fresh 3-partition topic (one message
//! per record batch, see `kafka_rig`), and `weir consume --topic` workers of one group.
//!
//! * **Graph server killed**: two workers on a private ArcadeDB (`weir_test_support::
//!   graph_server`), which is SIGKILLed mid-run and started again after [`OUTAGE`]. The workers
//!   ride it out without exiting (the group membership is kept meanwhile: no partition is
//!   revoked during the outage), and the run ends exactly equal to a clean one: every person
//!   (with its own properties), company and relationship of the file once, the group's
//!   committed offsets adding up to every message, no dead letter, SIGTERM exits 0.
//!
//!   The outage is 30 s, not the 60 s of the JetStream tests in `outages.rs`: those are sized
//!   past JetStream's 30 s `--ack-wait` (an ack lost in the outage comes back after it), which
//!   has no Kafka counterpart. What a Kafka worker must outlast here is its group session
//!   (6 s in these tests: five sessions pass while its writes stall) and the writer's
//!   reconnects to a server that refuses connections; 30 s covers both and keeps the file
//!   within its CI budget.
//! * **Broker killed**: tansu is SIGKILLed mid-run. Its memory store forgets every topic,
//!   offset and group when it stops, so a restarted tansu cannot show that a worker resumes
//!   from its committed offsets: full broker-restart durability is out of scope (README, Kafka
//!   "not done"). What is tested is what is promised while the broker is gone: the worker
//!   stays up, reports the outage (`weir_consumer_pull_errors_total`, its log), writes to the
//!   graph only records it read (each once: the persons written are published ones, no
//!   duplicates), never claims an offset as committed whose messages are not all in the graph,
//!   and on SIGTERM (broker still down) exits 0 within a bound, every record it read either
//!   committed to the graph or left unacknowledged.
//! * **Memory pressure**: a worker under a tight `--memory-limit` reads 2 KB records: the
//!   pipeline's intake pauses (`weir_stream_backpressure_active`), the source pauses its
//!   partitions (`weir_consumer_paused`) and receives nothing meanwhile, the worker's RSS stays
//!   under [`RSS_BOUND`], and it resumes by itself and ends with every record received and
//!   committed exactly once.
//!
//! The tests run one at a time (`.config/nextest.toml`'s `kafka-outages` group; [`SERIAL`] under
//! `cargo test`): each keeps both cores of a CI runner busy.

mod consumers;
mod kafka_rig;
mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use consumers::*;
use kafka_rig::*;
use support::labelled_metric;
use tokio::time::Instant;
use weir_test_support::TestGraph;
use weir_test_support::graph_server::PrivateGraphServer;
use weir_test_support::process::{
    ChildProcess, free_port, http_request, service_env, workspace_binary,
};

/// People (one message each) in the graph-outage and broker-outage runs: enough that the
/// outage lands mid-run in a debug build.
const PEOPLE: u64 = 20_000;
/// How long the graph server stays down (see the module doc for why not 60 s).
const OUTAGE: Duration = Duration::from_secs(30);
/// How long the broker stays down before the worker is stopped.
const BROKER_OUTAGE: Duration = Duration::from_secs(15);
/// How long a worker may take to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(60);
/// How long a run may take after the outage ended.
const FINISH: Duration = Duration::from_secs(180);
/// Records of the memory-pressure run, padded to about 2 KB each.
const WIDE_PEOPLE: u64 = 10_000;
/// The memory-pressure worker's `--memory-limit` (as `consume_memory.rs`: a debug `weir
/// consume` holds about 28 MB before it reads anything).
const LIMIT: &str = "40MiB";
/// The highest RSS the memory-pressure worker may reach: the limit plus 30 %. The limit is
/// what the pipeline steers by (its intake pauses at 80 % of it and resumes lower), not a cap,
/// so RSS overshoots it by what is in flight when a pause starts (about 5 MiB seen: a peak of
/// 44.8 MiB); without back-pressure a worker holds the whole topic's prefetch and records.
const RSS_BOUND: u64 = 52 << 20;
const LOG: &str = "warn,weir_sources=info";

/// One outage test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `weir consume --topic` command of the rig's group (as `KafkaRig::worker` builds it), on
/// the graph `server` when given, else the test graph server.
fn worker_cmd(
    rig: &KafkaRig,
    server: Option<&PrivateGraphServer>,
    name: &str,
    metrics: Option<SocketAddr>,
    extra: &[&str],
    log: &str,
) -> Command {
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "CONSUME_BUS")
        .env("KAFKA_BROKERS", rig.broker.brokers())
        .env("WEIR_LOG", log);
    if let Some(s) = server {
        s.env(&mut cmd);
    }
    cmd.args([
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
    .arg(&rig.mapping)
    .arg("--label-prefix")
    .arg(&rig.prefix)
    .arg("--dead-letter")
    .arg(rig.dir.path().join(format!("dead-{name}.jsonl")))
    .args(extra);
    if let Some(m) = metrics {
        cmd.arg("--metrics-bind").arg(m.to_string());
    }
    cmd
}

/// The worker's `/metrics` text (empty when it does not answer).
fn scrape(metrics: SocketAddr) -> String {
    http_request(metrics, "GET", "/metrics", None)
        .map(|r| r.text())
        .unwrap_or_default()
}

/// `weir_consumer_<name>{consumer="people"}` in `text`.
fn consumer_value(text: &str, name: &str) -> Option<f64> {
    labelled_metric(
        text,
        &format!("weir_consumer_{name}"),
        &format!("consumer=\"{GROUP}\""),
    )
}

/// An unlabelled sample in `text`.
fn plain_value(text: &str, name: &str) -> Option<f64> {
    weir_test_support::process::metric_value(text, name)
}

/// The committed offset each partition has in the worker's
/// `weir_consumer_partition_committed_offset`.
fn committed_offsets(text: &str) -> HashMap<i32, i64> {
    (0..PARTITIONS)
        .filter_map(|p| {
            let labels = format!("consumer=\"{GROUP}\",topic=\"{TOPIC}\",partition=\"{p}\"");
            labelled_metric(text, "weir_consumer_partition_committed_offset", &labels)
                .map(|o| (p, o as i64))
        })
        .collect()
}

/// A query answering one integer `c`. Retried for a while: the test's own connections to a
/// graph server that was killed and restarted fail once each before they are replaced.
async fn scalar(graph: &TestGraph, q: &str) -> i64 {
    let once = || async {
        let mut rows = graph.graph.execute(neo4rs::query(q)).await?;
        let row = rows.next().await?;
        Ok::<_, neo4rs::Error>(row.and_then(|r| r.get::<i64>("c").ok()).unwrap_or(0))
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match tokio::time::timeout(Duration::from_secs(30), once()).await {
            Ok(Ok(n)) => return n,
            Ok(Err(e)) if attempt < 20 => eprintln!("{q}: {e} (retrying)"),
            Err(_) if attempt < 20 => eprintln!("{q}: no answer within 30 s (retrying)"),
            Ok(Err(e)) => panic!("{q}: {e}"),
            Err(_) => panic!("{q}: no answer within 30 s"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Persons with their own properties (made by a record, not only as the end of a KNOWS).
async fn named(graph: &TestGraph, rig: &KafkaRig) -> i64 {
    let q = format!(
        "MATCH (n:`{}`) WHERE n.name IS NOT NULL RETURN count(n) AS c",
        rig.name("Person")
    );
    scalar(graph, &q).await
}

/// The graph's counts under the rig's prefix, and its named persons.
async fn counts(graph: &TestGraph, rig: &KafkaRig) -> (Counts, i64) {
    let (p, c) = (rig.name("Person"), rig.name("Company"));
    let (w, k) = (rig.name("WORKS_AT"), rig.name("KNOWS"));
    let counts = Counts {
        people: scalar(graph, &format!("MATCH (n:`{p}`) RETURN count(n) AS c")).await,
        companies: scalar(graph, &format!("MATCH (n:`{c}`) RETURN count(n) AS c")).await,
        works_at: scalar(
            graph,
            &format!("MATCH (:`{p}`)-[r:`{w}`]->(:`{c}`) RETURN count(r) AS c"),
        )
        .await,
        knows: scalar(
            graph,
            &format!("MATCH (:`{p}`)-[r:`{k}`]->(:`{p}`) RETURN count(r) AS c"),
        )
        .await,
    };
    (counts, named(graph, rig).await)
}

/// The published records' `weir generate` file with `extra` arguments, its lines, and the
/// counts a clean run gives.
fn generate(rig: &KafkaRig, n: u64, extra: &[&str]) -> (PathBuf, Vec<String>, Counts) {
    let data = rig.dir.path().join("people.jsonl");
    let status = Command::new(workspace_binary("weir"))
        .args(["generate", "--format", "jsonl", "--people", &n.to_string()])
        .args(extra)
        .arg("--out")
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success(), "weir generate failed");
    let lines: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len() as u64, n);
    let want = expected_counts(lines.iter().map(String::as_str));
    (data, lines, want)
}

fn publish(rig: &KafkaRig, data: &Path, n: u64) {
    let out = rig.publish(data, &[]);
    assert!(
        out.contains(&format!("published {n} records in {n} messages")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_killed_mid_consume_two_workers_ride_it_out() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let mut server = PrivateGraphServer::start_new().await;
    let graph = server.graph().await;
    let rig = KafkaRig::new(&graph);
    let (data, _, want) = generate(&rig, PEOPLE, &[]);
    publish(&rig, &data, PEOPLE);
    phase("published");

    let ma = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mb = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut a = ChildProcess::spawn(&mut worker_cmd(
        &rig,
        Some(&server),
        "a",
        Some(ma),
        &[],
        LOG,
    ));
    let mut b = ChildProcess::spawn(&mut worker_cmd(
        &rig,
        Some(&server),
        "b",
        Some(mb),
        &[],
        LOG,
    ));
    let revoked = || {
        [ma, mb]
            .iter()
            .map(|m| consumer_value(&scrape(*m), "partitions_revoked_total").unwrap_or(0.0))
            .sum::<f64>()
    };
    let before = {
        let workers = [("a", &a, Some(ma)), ("b", &b, Some(mb))];
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let n = named(&graph, &rig).await;
            // Both in the group and reading (so no rebalance is left to come), and a tenth
            // written.
            let both = [ma, mb].iter().all(|m| {
                consumer_value(&scrape(*m), "messages_received_total").unwrap_or(0.0) > 0.0
            });
            if n >= PEOPLE as i64 / 10 && both {
                assert!(
                    n < PEOPLE as i64,
                    "the run finished ({n} persons) before the outage: use more people"
                );
                break n;
            }
            rig.assert_alive(&workers, &["a", "b"]).await;
            if Instant::now() >= deadline {
                panic!(
                    "only {n} persons written after 180 s{}",
                    rig.report(&workers).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let revoked_before = revoked();
    server.kill();
    phase(&format!(
        "graph SIGKILLed with at least {before} persons written"
    ));
    let end = Instant::now() + OUTAGE;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let workers = [("a", &a, Some(ma)), ("b", &b, Some(mb))];
        rig.assert_alive(&workers, &["a", "b"]).await;
    }
    // The poll threads served the group all along: nobody's session ran out.
    let revoked_during = revoked();
    server.start().await;
    let after = named(&graph, &rig).await;
    phase(&format!(
        "graph back: {after} persons after recovery (at least {before} before the kill)"
    ));
    assert!(
        after >= before,
        "ArcadeDB lost committed nodes over SIGKILL: {before} seen before, {after} after"
    );
    {
        let workers = [("a", &a, Some(ma)), ("b", &b, Some(mb))];
        assert_eq!(
            revoked_during,
            revoked_before,
            "partitions were revoked while the graph was down (a session ran out){}",
            rig.report(&workers).await
        );
        rig.wait_committed(PEOPLE as i64, FINISH, &workers, &["a", "b"])
            .await;
    }
    phase("every partition committed to its end");
    let (have, named_now) = counts(&graph, &rig).await;
    assert_eq!(have, want, "the graph of a clean run");
    assert_eq!(
        named_now, PEOPLE as i64,
        "every record's person was written"
    );
    assert!(
        rig.dead_letters(&["a", "b"]).is_empty(),
        "{:?}",
        rig.dead_letters(&["a", "b"])
    );
    let text = a.stderr() + &b.stderr();
    assert!(
        text.contains("retrying"),
        "the workers saw the outage:\n{text}"
    );

    kill(&a, "TERM");
    kill(&b, "TERM");
    for (name, w) in [("a", &mut a), ("b", &mut b)] {
        let status = w.wait(STOP_WITHIN);
        assert_eq!(status.code(), Some(0), "worker {name}: {}", w.stderr());
    }
    let offsets = rig.offsets().unwrap();
    assert_eq!(
        offsets.iter().map(|o| o.1.unwrap_or(0)).sum::<i64>(),
        PEOPLE as i64,
        "{offsets:?}"
    );
    assert_eq!(counts(&graph, &rig).await, (want, PEOPLE as i64));
    phase("done");
}

/// A worker whose stdout (the summary) and stderr go to files; killed on drop.
struct Logged {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Logged {
    fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> Self {
        let (out, err) = (
            dir.join(format!("{name}.stdout")),
            dir.join(format!("{name}.stderr")),
        );
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Self { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Its stderr's last lines and stdout.
    fn report(&self) -> String {
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().collect();
        format!(
            "\n--- stderr (last 80 of {} lines):\n{}\n--- stdout:\n{}",
            lines.len(),
            lines[lines.len().saturating_sub(80)..].join("\n"),
            self.stdout()
        )
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for its exit up to `within`: its status, or `None` when it still runs.
    async fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A number in the summary's line `label: N`.
fn summary_value(stdout: &str, label: &str) -> Option<i64> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label)?.trim().strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Every message of the topic as (partition, offset) -> person id, read from the broker.
fn topic_contents(rig: &KafkaRig, n: u64) -> HashMap<(i32, i64), i64> {
    use rdkafka::Message as _;
    use rdkafka::consumer::Consumer as _;
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", rig.broker.brokers())
        .set("group.id", "contents")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (out.len() as u64) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of the topic's {n} messages",
            out.len()
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                out.insert(
                    (m.partition(), m.offset()),
                    v["person_id"].as_i64().unwrap(),
                );
            }
            Some(Err(e)) => eprintln!("reading the topic: {e}"),
            None => {}
        }
    }
    out
}

/// The ids of the named persons under the rig's prefix, and how many such nodes there are.
async fn named_ids(graph: &TestGraph, rig: &KafkaRig) -> (Vec<(i64, String)>, i64) {
    let q = format!(
        "MATCH (n:`{}`) WHERE n.name IS NOT NULL RETURN n.id AS id, n.name AS name",
        rig.name("Person")
    );
    let mut rows = graph.graph.execute(neo4rs::query(&q)).await.unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        out.push((row.get("id").unwrap(), row.get("name").unwrap()));
    }
    let n = out.len() as i64;
    (out, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_consume_the_worker_stays_up_and_stops_cleanly() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let graph = weir_test_support::graph().await;
    let mut rig = KafkaRig::new(&graph);
    let (data, lines, _) = generate(&rig, PEOPLE, &[]);
    publish(&rig, &data, PEOPLE);
    let contents = topic_contents(&rig, PEOPLE);
    let names: HashMap<i64, String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["person_id"].as_i64().unwrap(),
                v["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    phase("published and read back");

    // At most 1,000 messages in flight: most of the topic is still on the broker when it dies.
    let m = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = rig.dir.path().to_owned();
    let mut w = Logged::spawn(
        &mut worker_cmd(&rig, None, "a", Some(m), &["--max-in-flight", "1000"], LOG),
        &dir,
        "a",
    );
    // The broker dies with the run under way and messages in flight (received, not committed).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = scrape(m);
        let acked = consumer_value(&text, "messages_acked_total").unwrap_or(0.0);
        if acked >= 1_000.0
            && consumer_value(&text, "messages_received_total").unwrap_or(0.0) > acked
        {
            break;
        }
        assert!(w.running(), "the worker exited{}", w.report());
        assert!(
            Instant::now() < deadline,
            "the worker did not commit 1,000 messages with more in flight within 120 s{}",
            w.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = scrape(m);
    rig.broker.stop();
    let acked_at_kill = consumer_value(&at_kill, "messages_acked_total").unwrap_or(0.0);
    phase(&format!(
        "broker SIGKILLed; the worker had received {} messages and committed {acked_at_kill}",
        consumer_value(&at_kill, "messages_received_total").unwrap_or(0.0)
    ));

    // The outage: the worker stays up and says so.
    let end = Instant::now() + BROKER_OUTAGE;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            w.running(),
            "the worker exited while the broker was down{}",
            w.report()
        );
    }
    let during = scrape(m);
    assert!(
        consumer_value(&during, "pull_errors_total").unwrap_or(0.0) > 0.0,
        "the broker outage is not in weir_consumer_pull_errors_total:\n{during}{}",
        w.report()
    );
    assert!(
        w.stderr().contains("Kafka consumer error"),
        "the broker outage is not in the log{}",
        w.report()
    );
    assert!(
        consumer_value(&during, "messages_received_total").unwrap() < PEOPLE as f64,
        "the worker had read the whole topic before the broker died: nothing was left to miss"
    );
    phase(&format!(
        "outage of {BROKER_OUTAGE:?} ridden out ({} consumer errors)",
        consumer_value(&during, "pull_errors_total").unwrap_or(0.0)
    ));

    // SIGTERM with the broker still down: exit 0 within a bound.
    w.signal("TERM");
    let stopped = Instant::now();
    let status = w.wait(STOP_WITHIN).await;
    let Some(status) = status else {
        panic!(
            "the worker did not exit within {STOP_WITHIN:?} of SIGTERM with the broker down{}",
            w.report()
        );
    };
    assert_eq!(status.code(), Some(0), "{}", w.report());
    phase(&format!(
        "SIGTERM: exit 0 after {:.1}s",
        stopped.elapsed().as_secs_f64()
    ));

    // What reached the graph: persons of published records (their own names), each once,
    // no more than the worker read, exactly the records its summary counts as committed.
    let out = w.stdout();
    let value = |label: &str| {
        summary_value(&out, label).unwrap_or_else(|| panic!("no `{label}` in\n{out}"))
    };
    let received = value("messages received") as f64;
    let (read, committed, dead) = (
        value("records read"),
        value("records committed"),
        value("records dead-lettered"),
    );
    assert_eq!(dead, 0, "{}", w.report());
    assert!(
        read as f64 <= received,
        "{read} records read from {received} messages (one record each){}",
        w.report()
    );
    let (ids, nodes) = named_ids(&graph, &rig).await;
    let distinct: HashSet<i64> = ids.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct.len() as i64, nodes, "a person written twice");
    for (id, name) in &ids {
        assert_eq!(
            names.get(id),
            Some(name),
            "person {id} in the graph is not a published record"
        );
    }
    assert_eq!(
        nodes,
        committed,
        "the graph holds exactly the records the worker committed{}",
        w.report()
    );
    assert!(
        (nodes as f64) <= received,
        "{nodes} persons written, {received} messages received"
    );
    assert!(
        (nodes as f64) < PEOPLE as f64,
        "every record reached the graph: the broker died too late to show anything"
    );
    // Every offset the worker counted as committed (before the broker died, or queued since)
    // covers only messages whose records are in the graph.
    let final_offsets = committed_offsets(scrape_last(&at_kill, &during));
    assert!(!final_offsets.is_empty(), "no committed offsets:\n{during}");
    for (p, next) in &final_offsets {
        for offset in 0..*next {
            let id = contents[&(*p, offset)];
            assert!(
                distinct.contains(&id),
                "partition {p}'s committed offset {next} passes offset {offset} (person {id}), \
                 which is not in the graph{}",
                w.report()
            );
        }
    }
    assert!(
        rig.dead_letters(&["a"]).is_empty(),
        "{:?}",
        rig.dead_letters(&["a"])
    );
    phase(&format!(
        "{nodes} persons written of {received} messages received; committed offsets {final_offsets:?}"
    ));
}

/// The later of two scrapes when it carries committed offsets, else the earlier.
fn scrape_last<'a>(earlier: &'a str, later: &'a str) -> &'a str {
    if committed_offsets(later).is_empty() {
        earlier
    } else {
        later
    }
}

/// One scrape of the memory-pressure worker.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// The pipeline's intake paused on memory pressure.
    pressure: bool,
    /// The source's partitions paused.
    paused: bool,
    received: f64,
    committed: f64,
    rss: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_memory_limit_pauses_fetching_and_every_record_is_committed_once() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let graph = weir_test_support::graph().await;
    let rig = KafkaRig::new(&graph);
    let (data, _, want) = generate(&rig, WIDE_PEOPLE, &["--pad", "2000"]);
    publish(&rig, &data, WIDE_PEOPLE);
    phase("published");

    let m = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut worker = ChildProcess::spawn(&mut worker_cmd(
        &rig,
        None,
        "a",
        Some(m),
        &["--memory-limit", LIMIT],
        "warn,weir_stream=info,weir_sources=info",
    ));
    let pid = worker.id();
    let sample = || {
        let text = scrape(m);
        Some(Sample {
            at: Instant::now(),
            pressure: plain_value(&text, "weir_stream_backpressure_active")? == 1.0,
            paused: consumer_value(&text, "paused")? == 1.0,
            received: consumer_value(&text, "messages_received_total")?,
            committed: plain_value(&text, "weir_stream_records_committed_total")?,
            rss: weir_memwatch::procfs::rss_bytes(pid)?,
        })
    };
    let mut samples: Vec<Sample> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(s) = sample() {
            samples.push(s);
            if s.committed >= WIDE_PEOPLE as f64 {
                break;
            }
        }
        let workers = [("a", &worker, Some(m))];
        rig.assert_alive(&workers, &["a"]).await;
        if Instant::now() >= deadline {
            panic!("not committed within 240 s{}", rig.report(&workers).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    phase("every record committed");
    {
        let workers = [("a", &worker, Some(m))];
        rig.wait_committed(
            WIDE_PEOPLE as i64,
            Duration::from_secs(60),
            &workers,
            &["a"],
        )
        .await;
    }
    let shown = || {
        samples
            .iter()
            .map(|s| {
                format!(
                    "{:>6.1}s pressure={} paused={} received={} committed={} rss={:.1}MiB",
                    (s.at - samples[0].at).as_secs_f64(),
                    u8::from(s.pressure),
                    u8::from(s.paused),
                    s.received,
                    s.committed,
                    s.rss as f64 / f64::from(1 << 20)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Back-pressure reached the broker: a stretch of at least 1 s in which the intake was
    // paused on memory pressure, the source's partitions were paused and nothing was received
    // (the stream gauge follows progress events sent once a second, so the stretch's ends may
    // be late; its middle is not).
    let held = (0..samples.len())
        .filter(|&i| samples[i].pressure && samples[i].paused)
        .any(|i| {
            samples[i..]
                .iter()
                .take_while(|s| s.pressure && s.paused)
                .any(|s| {
                    s.at - samples[i].at >= Duration::from_secs(1)
                        && s.received == samples[i].received
                })
        });
    assert!(
        held,
        "no pause of fetching on memory pressure under {LIMIT}:\n{}",
        shown()
    );
    // Resumed by itself: after the first such pause, a scrape with fetching on and more received.
    let first = samples.iter().position(|s| s.pressure && s.paused).unwrap();
    assert!(
        samples[first..]
            .iter()
            .any(|s| !s.paused && s.received > samples[first].received),
        "fetching never resumed:\n{}",
        shown()
    );
    let peak = samples.iter().map(|s| s.rss).max().unwrap();
    assert!(
        peak <= RSS_BOUND,
        "RSS reached {:.1} MiB, over {} MiB under --memory-limit {LIMIT}:\n{}",
        peak as f64 / f64::from(1 << 20),
        RSS_BOUND >> 20,
        shown()
    );
    let log = worker.stderr();
    for line in [
        "memory pressure high: intake paused",
        "memory pressure back to normal: intake resumed",
    ] {
        assert!(log.contains(line), "no \"{line}\" in\n{log}");
    }

    // Every record exactly once: received once, committed once, the file's graph, nothing
    // dead-lettered, every offset committed.
    let text = scrape(m);
    assert_eq!(
        consumer_value(&text, "messages_received_total"),
        Some(WIDE_PEOPLE as f64),
        "{text}"
    );
    assert_eq!(
        plain_value(&text, "weir_stream_records_committed_total"),
        Some(WIDE_PEOPLE as f64),
        "{text}"
    );
    assert_eq!(
        consumer_value(&text, "messages_acked_total"),
        Some(WIDE_PEOPLE as f64),
        "{text}"
    );
    assert_eq!(rig.graph_counts(&graph).await, want);
    assert!(rig.dead_letters(&["a"]).is_empty());
    kill(&worker, "TERM");
    let status = worker.wait(STOP_WITHIN);
    assert_eq!(status.code(), Some(0), "{}", worker.stderr());
    let offsets = rig.offsets().unwrap();
    assert_eq!(
        offsets.iter().map(|o| o.1.unwrap_or(0)).sum::<i64>(),
        WIDE_PEOPLE as i64,
        "{offsets:?}"
    );
    phase(&format!(
        "{} scrapes, {} paused on pressure, peak RSS {:.1} MiB",
        samples.len(),
        samples.iter().filter(|s| s.pressure && s.paused).count(),
        peak as f64 / f64::from(1 << 20)
    ));
}
