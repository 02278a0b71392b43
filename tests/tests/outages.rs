//! Outages across real processes: the graph server SIGKILLed mid-run and restarted 60 s later,
//! NATS stopped mid-run and restarted 60 s later. Two `weir consume` workers sharing a durable
//! consumer, and `weir ingest` of a file, ride them out by themselves (no crash, no exit, no
//! `--resume`) and end with exactly the graph a clean run gives: every person, company and
//! relationship of the file once, nothing pending or unacknowledged on the consumer.
//!
//! Each test has its own ArcadeDB (`weir_test_support::graph_server`, killed with SIGKILL)
//! and, for the workers, its own nats-server; they run one at a time (each keeps two cores
//! busy).
//!
//! Known: when two workers write at once, ArcadeDB 26.10.2 now and then fails a relationship
//! MERGE with `Neo.DatabaseError.General.UnknownError` (`BrokenChunkChainException` or a
//! `DuplicatedKeyException` in its log). It is a race, not damage: the same batch succeeds when
//! retried and `CHECK DATABASE` finds nothing corrupted. weir-graph retries such unexplained
//! server errors a few times before it isolates the batch (see
//! `crates/weir-graph/tests/unexplained_failures.rs`), so the workers here ride it out; a
//! dead letter in these runs would fail the exact counts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;
use weir_test_support::TestGraph;
use weir_test_support::graph_server::PrivateGraphServer;
use weir_test_support::nats_server::PrivateNatsServer;
use weir_test_support::process::{ChildProcess, service_env, workspace_binary};

/// People in a run with the graph killed: enough that the kill lands mid-run in a debug build.
const PEOPLE: u64 = 20_000;
/// People in a run with NATS stopped: more than the 20,000 messages (`--max-ack-pending`)
/// the workers may hold, so some are pulled only after NATS is back.
const NATS_PEOPLE: u64 = 50_000;
/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(60);
/// How long a run may take after the outage ended.
const FINISH: Duration = Duration::from_secs(150);

/// One outage test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the example mapping makes of a generated file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    people: i64,
    /// Persons with their own properties (not only made as the end of a KNOWS): a batch the
    /// server lost after its commit would leave its persons without a name.
    named: i64,
    companies: i64,
    works_at: i64,
    knows: i64,
}

/// `weir generate --format jsonl --people n` into `dir`, and the counts a clean run of the
/// example mapping gives for it (computed from the file: relationship MERGE creates missing
/// end nodes, so every id named anywhere is a node, and each distinct pair one relationship).
fn generate(dir: &Path, n: u64) -> (PathBuf, Counts) {
    let out = dir.join("people.jsonl");
    let status = Command::new(workspace_binary("weir"))
        .args(["generate", "--format", "jsonl", "--people", &n.to_string()])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("running weir generate");
    assert!(status.success(), "weir generate failed");
    let text = std::fs::read_to_string(&out).unwrap();
    let (mut people, mut companies) = (HashSet::new(), HashSet::new());
    let (mut works_at, mut knows) = (HashSet::new(), HashSet::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
        let (p, c, k) = (id("person_id"), id("company_id"), id("knows_id"));
        people.insert(p);
        people.insert(k);
        companies.insert(c);
        works_at.insert((p, c));
        knows.insert((p, k));
    }
    let counts = Counts {
        people: people.len() as i64,
        named: n as i64,
        companies: companies.len() as i64,
        works_at: works_at.len() as i64,
        knows: knows.len() as i64,
    };
    assert_eq!(counts.people, n as i64);
    (out, counts)
}

fn mapping() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/people/mapping-jsonl.toml")
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

/// This test's name for a label or relationship type (the mapping's names under
/// `--label-prefix <namespace>_`). Not registered for deletion: a private server's data goes
/// with its directory.
fn name(graph: &TestGraph, base: &str) -> String {
    format!("{}_{base}", graph.namespace)
}

async fn people(graph: &TestGraph) -> i64 {
    let q = format!("MATCH (n:`{}`) RETURN count(n) AS c", name(graph, "Person"));
    scalar(graph, &q).await
}

/// The graph's counts under this test's namespace.
async fn counts(graph: &TestGraph) -> Counts {
    let person = name(graph, "Person");
    let company = name(graph, "Company");
    let rel = |t: &str| name(graph, t);
    Counts {
        people: people(graph).await,
        named: scalar(
            graph,
            &format!("MATCH (n:`{person}`) WHERE n.name IS NOT NULL RETURN count(n) AS c"),
        )
        .await,
        companies: scalar(
            graph,
            &format!("MATCH (n:`{company}`) RETURN count(n) AS c"),
        )
        .await,
        works_at: scalar(
            graph,
            &format!(
                "MATCH (:`{person}`)-[r:`{}`]->(:`{company}`) RETURN count(r) AS c",
                rel("WORKS_AT")
            ),
        )
        .await,
        knows: scalar(
            graph,
            &format!(
                "MATCH (:`{person}`)-[r:`{}`]->(:`{person}`) RETURN count(r) AS c",
                rel("KNOWS")
            ),
        )
        .await,
    }
}

fn assert_alive(children: &[&ChildProcess], when: &str) {
    for c in children {
        assert!(
            weir_memwatch::procfs::is_running(c.id()),
            "pid {} exited {when}; its stderr:\n{}",
            c.id(),
            c.stderr()
        );
    }
}

fn stderr_of(children: &[&ChildProcess]) -> String {
    children
        .iter()
        .map(|c| format!("--- pid {} ---\n{}", c.id(), c.stderr()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until at least `min` persons are committed (the run is under way), and checks that
/// the run is not over yet, so the outage lands mid-run.
async fn wait_mid_run(graph: &TestGraph, min: i64, total: u64, children: &[&ChildProcess]) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = people(graph).await;
        if n >= min {
            assert!(
                n < total as i64,
                "the run finished ({n} persons) before the outage: use more people"
            );
            return n;
        }
        assert_alive(children, "before the outage");
        assert!(
            Instant::now() < deadline,
            "only {n} persons committed after 120 s:\n{}",
            stderr_of(children)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits `OUTAGE`, checking every second that `children` keep running.
async fn ride_out(children: &[&ChildProcess]) {
    let end = Instant::now() + OUTAGE;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_alive(children, "during the outage");
    }
}

/// Waits until the graph holds `want` (the workers keep running meanwhile).
async fn wait_counts(graph: &TestGraph, want: Counts, children: &[&ChildProcess]) {
    let deadline = Instant::now() + FINISH;
    loop {
        let now = counts(graph).await;
        if now == want {
            return;
        }
        assert_alive(children, "after the outage");
        assert!(
            Instant::now() < deadline,
            "the graph holds {now:?}, a clean run gives {want:?} ({FINISH:?} after the outage):\n{}",
            stderr_of(children)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn publish(url: &str, file: &Path, records: u64) {
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "OUTAGE_BUS").env("NATS_URL", url);
    let out = cmd
        .args(["publish", "--stream", "PEOPLE_IN", "--subject", "people.in"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("published {records} records")),
        "{text}"
    );
}

/// A `weir consume` worker on NATS `url` and the graph `server`.
fn worker(url: &str, server: &PrivateGraphServer, prefix: &str) -> ChildProcess {
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "OUTAGE_BUS")
        .env("NATS_URL", url)
        .env("WEIR_LOG", "warn");
    server.env(&mut cmd);
    cmd.args([
        "consume",
        "--stream",
        "PEOPLE_IN",
        "--subject",
        "people.in",
        "--consumer",
        "people",
        "--progress",
        "none",
        "--label-prefix",
        prefix,
    ])
    .arg("--mapping")
    .arg(mapping());
    ChildProcess::spawn(&mut cmd)
}

/// SIGTERM: each worker exits 0.
fn stop_workers(workers: &mut [ChildProcess]) {
    for w in workers.iter() {
        let term = Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
    }
    for w in workers.iter_mut() {
        let status = w.wait(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", w.stderr());
    }
}

/// The durable consumer's (messages not yet delivered, delivered and not acknowledged).
async fn consumer_pending(url: &str) -> (u64, usize) {
    let nats = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream = js.get_stream("PEOPLE_IN").await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("people").await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

/// Waits until every message is acknowledged (a message whose ack was lost in the outage
/// comes back after `ack_wait`, 30 s, is written again and acknowledged).
async fn wait_consumer_drained(url: &str, children: &[&ChildProcess]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pending = consumer_pending(url).await;
        if pending == (0, 0) {
            return;
        }
        assert_alive(children, "while the consumer drains");
        assert!(
            Instant::now() < deadline,
            "(pending, unacknowledged) stays {pending:?}:\n{}",
            stderr_of(children)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_killed_for_60s_two_workers_ride_it_out() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut server = PrivateGraphServer::start_new().await;
    let graph = server.graph().await;
    let prefix = format!("{}_", graph.namespace);
    let nats = PrivateNatsServer::start_new();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let (file, want) = generate(dir.path(), PEOPLE);
    publish(&url, &file, PEOPLE);

    let mut workers = vec![
        worker(&url, &server, &prefix),
        worker(&url, &server, &prefix),
    ];
    let refs: Vec<&ChildProcess> = workers.iter().collect();
    let before = wait_mid_run(&graph, PEOPLE as i64 / 10, PEOPLE, &refs).await;
    server.kill();
    eprintln!(
        "graph SIGKILLed with at least {before} persons committed, {:?} in",
        started.elapsed()
    );
    ride_out(&refs).await;
    server.start().await;
    let after = people(&graph).await;
    eprintln!(
        "graph back {:?} in: {after} persons after recovery (at least {before} seen before the kill)",
        started.elapsed()
    );
    assert!(
        after >= before,
        "ArcadeDB lost committed nodes over SIGKILL: {before} seen before, {after} after"
    );
    wait_counts(&graph, want, &refs).await;
    wait_consumer_drained(&url, &refs).await;
    drop(refs);
    stop_workers(&mut workers);
    assert_eq!(consumer_pending(&url).await, (0, 0));
    eprintln!("{}", stderr_of(&workers.iter().collect::<Vec<_>>()));
    assert_eq!(counts(&graph).await, want);
    let text = workers.iter().map(ChildProcess::stderr).collect::<String>();
    assert!(
        text.contains("retrying"),
        "the workers saw the outage:\n{text}"
    );
    eprintln!("done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_for_60s_two_workers_ride_it_out() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // A graph of its own: out of the way of other tests' load, and its data goes with it.
    let server = PrivateGraphServer::start_new().await;
    let graph = server.graph().await;
    let prefix = format!("{}_", graph.namespace);
    let mut nats = PrivateNatsServer::start_new();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let (file, want) = generate(dir.path(), NATS_PEOPLE);
    publish(&url, &file, NATS_PEOPLE);

    let mut workers = vec![
        worker(&url, &server, &prefix),
        worker(&url, &server, &prefix),
    ];
    let refs: Vec<&ChildProcess> = workers.iter().collect();
    let before = wait_mid_run(&graph, NATS_PEOPLE as i64 / 20, NATS_PEOPLE, &refs).await;
    nats.stop();
    eprintln!(
        "NATS stopped with at least {before} persons committed, {:?} in",
        started.elapsed()
    );
    ride_out(&refs).await;
    let during = people(&graph).await;
    nats.start();
    eprintln!(
        "NATS back {:?} in ({during} persons committed while it was down)",
        started.elapsed()
    );
    wait_counts(&graph, want, &refs).await;
    wait_consumer_drained(&url, &refs).await;
    drop(refs);
    stop_workers(&mut workers);
    assert_eq!(consumer_pending(&url).await, (0, 0));
    eprintln!("{}", stderr_of(&workers.iter().collect::<Vec<_>>()));
    assert_eq!(counts(&graph).await, want);
    eprintln!("done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_killed_for_60s_weir_ingest_completes() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut server = PrivateGraphServer::start_new().await;
    let graph = server.graph().await;
    let prefix = format!("{}_", graph.namespace);
    let dir = tempfile::tempdir().unwrap();
    let (file, want) = generate(dir.path(), PEOPLE);

    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "OUTAGE_BUS").env("WEIR_LOG", "warn");
    server.env(&mut cmd);
    cmd.arg("ingest")
        .arg(&file)
        .arg("--mapping")
        .arg(mapping())
        .args(["--label-prefix", &prefix, "--quiet"])
        .arg("--dead-letter")
        .arg(dir.path().join("dead.jsonl"));
    let mut ingest = ChildProcess::spawn(&mut cmd);
    let before = wait_mid_run(&graph, PEOPLE as i64 / 10, PEOPLE, &[&ingest]).await;
    server.kill();
    eprintln!(
        "graph SIGKILLed with at least {before} persons committed, {:?} in",
        started.elapsed()
    );
    ride_out(&[&ingest]).await;
    server.start().await;
    let after = people(&graph).await;
    eprintln!(
        "graph back {:?} in: {after} persons after recovery (at least {before} seen before the kill)",
        started.elapsed()
    );
    assert!(
        after >= before,
        "ArcadeDB lost committed nodes over SIGKILL: {before} seen before, {after} after"
    );
    let status = ingest.wait(FINISH);
    assert_eq!(status.code(), Some(0), "{}", ingest.stderr());
    eprintln!("{}", ingest.stderr());
    assert_eq!(counts(&graph).await, want);
    assert!(
        !dir.path().join("dead.jsonl").exists()
            || std::fs::read_to_string(dir.path().join("dead.jsonl"))
                .unwrap()
                .trim()
                .is_empty(),
        "nothing dead-lettered"
    );
    eprintln!("done in {:?}", started.elapsed());
}
