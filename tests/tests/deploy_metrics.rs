//! Every metric that `deploy/` queries is exported by the real binaries after a real job.
//!
//! The metric names come from the files themselves: every `weir_…` token of every rule's
//! `expr` in `deploy/prometheus/rules/weir-alerts.yml` (parsed as YAML, so folded and
//! multi-line expressions count too) and of every panel `expr` and template-variable `query` /
//! `definition` in `deploy/grafana/dashboards/weir.json`. Then:
//! - `weir serve` (in-process bus, a memory limit) runs an upload job; its one `/metrics`
//!   scrape must hold every name, the write pool's and the read pool's figures apart
//!   (but the `weir_consumer_*` family: serve runs no streaming consumer);
//! - `weir-ingestd` + `weir-gatewayd` on NATS JetStream, and a `weir consume` worker on a
//!   private nats-server (`--metrics-bind`): ingestd runs a job, the worker consumes a
//!   published file; ingestd must export the stream, write-pool and memory families, gatewayd
//!   the subscription, read-pool, bus and memory families, the worker the consumer, stream,
//!   write-pool and memory families, and the three scrapes together every name;
//! - a long `weir ingest` with `--metrics-bind`, scraped while it runs, exports the stream,
//!   write-pool and memory families.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weir_test_support::nats_server::PrivateNatsServer;
use weir_test_support::process::{
    ChildProcess, free_port, http_request, http_upload, service_env, url_encode, workspace_binary,
};

use support::*;

/// Exported only by `weir consume`.
const CONSUMER_FAMILY: &str = "weir_consumer_";

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every `weir_…` token in `text`.
fn tokens(text: &str, out: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(i) = rest.find("weir_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
}

fn collect_exprs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    // Panel targets, and template variables (`query` is a string or an
                    // object holding one; `definition` repeats it).
                    ("expr" | "query" | "definition", Value::String(e)) => tokens(e, out),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names the alert rules and the dashboard query.
fn deploy_metric_names() -> BTreeSet<String> {
    let rules = repo().join("deploy/prometheus/rules/weir-alerts.yml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    let mut exprs = 0;
    let groups = doc["groups"].as_sequence().expect("rules: a `groups` list");
    for rule in groups.iter().flat_map(|g| {
        g["rules"]
            .as_sequence()
            .expect("every group has `rules`")
            .iter()
    }) {
        let e = rule["expr"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: a rule without `expr`: {rule:?}", rules.display()));
        exprs += 1;
        tokens(e, &mut names);
    }
    assert!(exprs >= 5, "{}: only {exprs} expressions", rules.display());
    let dash = repo().join("deploy/grafana/dashboards/weir.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(dash).unwrap()).unwrap();
    let before = names.len();
    collect_exprs(&dash, &mut names);
    assert!(
        names.len() > before + 10,
        "the dashboard's queries: {names:?}"
    );
    names
}

/// The sample names in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn scrape(admin: SocketAddr) -> String {
    let r = http_request(admin, "GET", "/metrics", Some(KEY)).expect("an answer from /metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

fn missing<'a>(want: impl IntoIterator<Item = &'a String>, have: &BTreeSet<String>) -> Vec<String> {
    want.into_iter()
        .filter(|n| !have.contains(*n))
        .cloned()
        .collect()
}

/// The example dataset uploaded as job `id` under `prefix`, run to completion.
async fn upload_example(addr: SocketAddr, prefix: &str, id: &str) {
    let csv = repo().join("examples/people/people.csv");
    let path = format!(
        "/jobs/upload?id={id}&label_prefix={}&mapping={}",
        url_encode(prefix),
        url_encode(&mapping())
    );
    let up = http_upload(addr, &path, Some(KEY), &csv).expect("upload");
    assert_eq!(up.status, 202, "{}", up.text());
    let job = wait_job(addr, id).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["records_committed"], 1000, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_serve_exports_every_metric_deploy_queries() {
    let graph = weir_test_support::graph().await;
    let prefix = format!("{}_", graph.namespace);
    // Registered, so the 1,000 people and their companies are deleted when `graph` drops.
    let _ = (graph.label("Person"), graph.label("Company"));
    let want = deploy_metric_names();
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "UNUSED")
        .env("WEIR_LOG", "warn")
        .env("WEIR_JOB_DIR", dir.path().join("jobs"))
        .env("WEIR_SPOOL_DIR", dir.path().join("spool"))
        .env("WEIR_MEMORY_LIMIT", "2GiB")
        .env("WEIR_ADMIN_TOKEN", KEY)
        .args(["serve", "--api-key", KEY, "--bind"])
        .arg(addr.to_string())
        .arg("--admin-bind")
        .arg(admin.to_string());
    let serve = ChildProcess::spawn(&mut cmd);
    wait_ready(addr, &serve).await;
    upload_example(addr, &prefix, "metrics").await;

    let text = scrape(admin);
    // The admin listener's `/health` runs the same checks as the main listener's.
    let health = http_request(admin, "GET", "/health", None)
        .expect("/health")
        .json();
    for c in ["graph", "graph_reads", "bus", "memory"] {
        assert!(
            health["components"][c]["status"].is_string(),
            "{c}: {health}"
        );
    }
    assert_eq!(health["components"]["graph"]["status"], "up", "{health}");
    assert_eq!(
        health["components"]["graph_reads"]["status"], "up",
        "{health}"
    );
    let have = exported(&text);
    let gone = missing(
        want.iter().filter(|n| !n.starts_with(CONSUMER_FAMILY)),
        &have,
    );
    assert!(
        gone.is_empty(),
        "weir serve does not export {gone:?}, which deploy/ queries"
    );
    // The job's figures, not only the names.
    assert_eq!(
        weir_test_support::process::metric_value(&text, "weir_stream_records_committed_total"),
        Some(1000.0),
        "{text}"
    );
    // Both pools, told apart.
    for pool in ["write", "read"] {
        assert!(
            labelled_metric(
                &text,
                "weir_pool_max_connections",
                &format!("pool=\"{pool}\"")
            )
            .is_some(),
            "no {pool} pool in\n{text}"
        );
    }
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestd_and_gatewayd_export_every_metric_deploy_queries() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("METRICS");
    let prefix = format!("{}_", graph.namespace);
    // Registered, so the 1,000 people and their companies are deleted when `graph` drops.
    let _ = (graph.label("Person"), graph.label("Company"));
    let want = deploy_metric_names();
    let dir = tempfile::tempdir().unwrap();
    let limit = [("WEIR_MEMORY_LIMIT", "2GiB".to_owned())];
    let (ingest, ingest_admin, ingestd) = spawn_ingestd(&stream, dir.path(), &limit);
    let (gate, gate_admin, gatewayd) = spawn_gatewayd(&stream, &limit);
    wait_ready(ingest, &ingestd).await;
    wait_ready(gate, &gatewayd).await;
    upload_example(ingest, &prefix, "metrics").await;
    // The gateway consumes the job's batches (2,000 changes in parts) before it is scraped.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let gate_text = loop {
        let t = scrape(gate_admin);
        if weir_test_support::process::metric_value(&t, "weir_bus_consumed_batches_total")
            .is_some_and(|n| n >= 1.0)
        {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gatewayd consumed nothing:\n{t}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let ingest_text = scrape(ingest_admin);
    let (ingest_have, gate_have) = (exported(&ingest_text), exported(&gate_text));
    let (consume_text, consumer) = consume_example(&graph).await;
    let consume_have = exported(&consume_text);

    let family =
        |prefix: &str| -> Vec<&String> { want.iter().filter(|n| n.starts_with(prefix)).collect() };
    for (who, have, families) in [
        (
            "weir-ingestd",
            &ingest_have,
            &["weir_stream_", "weir_pool_", "weir_memory_"][..],
        ),
        (
            "weir-gatewayd",
            &gate_have,
            &[
                "weir_subscriptions_",
                "weir_pool_",
                "weir_bus_",
                "weir_memory_",
            ][..],
        ),
        (
            "weir consume",
            &consume_have,
            &[
                CONSUMER_FAMILY,
                "weir_stream_",
                "weir_pool_",
                "weir_memory_",
            ][..],
        ),
    ] {
        for f in families {
            let gone = missing(family(f), have);
            assert!(gone.is_empty(), "{who} does not export {gone:?}");
        }
    }
    assert!(
        !family(CONSUMER_FAMILY).is_empty(),
        "deploy/ queries no {CONSUMER_FAMILY}* metric"
    );
    let union: BTreeSet<String> = ingest_have
        .union(&gate_have)
        .chain(&consume_have)
        .cloned()
        .collect();
    let gone = missing(&want, &union);
    assert!(gone.is_empty(), "no binary exports {gone:?}");
    assert_eq!(
        weir_test_support::process::metric_value(
            &ingest_text,
            "weir_stream_records_committed_total"
        ),
        Some(1000.0),
        "{ingest_text}"
    );
    assert!(labelled_metric(&ingest_text, "weir_pool_max_connections", "pool=\"write\"").is_some());
    assert!(labelled_metric(&gate_text, "weir_pool_max_connections", "pool=\"read\"").is_some());
    // The worker's figures: every message acknowledged, every record committed.
    assert_eq!(
        labelled_metric(
            &consume_text,
            "weir_consumer_messages_acked_total",
            "consumer=\"deploy\""
        ),
        Some(EXAMPLE_JSONL as f64),
        "{consume_text}"
    );
    assert_eq!(
        weir_test_support::process::metric_value(
            &consume_text,
            "weir_stream_records_committed_total"
        ),
        Some(EXAMPLE_JSONL as f64),
        "{consume_text}"
    );
    drop((ingestd, gatewayd, consumer));
}

/// Records of `examples/people/people.jsonl`.
const EXAMPLE_JSONL: u64 = 200;

/// `examples/people/people.jsonl` published to a private nats-server and consumed by a
/// `weir consume` worker with `--metrics-bind` and a memory limit, under the graph's namespace
/// plus `c_`. Returns the worker's `/metrics` once it has acknowledged every message and its
/// consumer's lag has been read (scraped again after that), and the worker, still running.
async fn consume_example(
    graph: &weir_test_support::TestGraph,
) -> (String, (ChildProcess, PrivateNatsServer)) {
    let _ = (graph.label("c_Person"), graph.label("c_Company"));
    let prefix = format!("{}_c_", graph.namespace);
    let nats = PrivateNatsServer::start_new();
    let jsonl = repo().join("examples/people/people.jsonl");
    let mapping = repo().join("examples/people/mapping-jsonl.toml");
    let env = |cmd: &mut Command| {
        service_env(cmd, "UNUSED")
            .env("NATS_URL", nats.url())
            .env("WEIR_LOG", "warn")
            .env("WEIR_ADMIN_TOKEN", KEY);
    };
    let mut publish = Command::new(workspace_binary("weir"));
    env(&mut publish);
    let out = publish
        .args(["publish", "--stream", "DEPLOY", "--subject", "deploy.in"])
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("weir"));
    env(&mut cmd);
    cmd.args([
        "consume",
        "--stream",
        "DEPLOY",
        "--subject",
        "deploy.in",
        "--consumer",
        "deploy",
        "--memory-limit",
        "2GiB",
        "--progress",
        "none",
        "--label-prefix",
        &prefix,
    ])
    .arg("--mapping")
    .arg(&mapping)
    .arg("--metrics-bind")
    .arg(admin.to_string());
    let worker = ChildProcess::spawn(&mut cmd);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Ok(r) = http_request(admin, "GET", "/metrics", Some(KEY))
            && r.status == 200
        {
            let t = r.text();
            let acked = labelled_metric(
                &t,
                "weir_consumer_messages_acked_total",
                "consumer=\"deploy\"",
            );
            // The lag is read from the server every 5 s: 0 once it was read after the pulls.
            let lag = labelled_metric(&t, "weir_consumer_pending_messages", "consumer=\"deploy\"");
            if acked == Some(EXAMPLE_JSONL as f64) && lag == Some(0.0) {
                return (t, (worker, nats));
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "weir consume did not acknowledge the example's {EXAMPLE_JSONL} messages:\n{}",
            worker.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A long `weir ingest` with `--metrics-bind` and a memory limit, scraped while it runs:
/// the stream, write-pool and memory families deploy/ queries are there, with the run's
/// figures, and the run then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_ingest_with_metrics_bind_exports_the_pipeline_families_while_it_runs() {
    const ROWS: u64 = 50_000;
    let graph = weir_test_support::graph().await;
    let _ = (graph.label("i_Person"), graph.label("i_Company"));
    let prefix = format!("{}_i_", graph.namespace);
    let want = deploy_metric_names();
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), ROWS);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "UNUSED")
        .env("WEIR_LOG", "warn")
        .env("WEIR_ADMIN_TOKEN", KEY);
    cmd.arg("ingest")
        .arg(&csv)
        .arg("--mapping")
        .arg(mapping_path())
        .args([
            "--label-prefix",
            &prefix,
            "--progress",
            "none",
            "--memory-limit",
            "2GiB",
        ])
        .arg("--metrics-bind")
        .arg(admin.to_string());
    let mut ingest = ChildProcess::spawn(&mut cmd);
    // Mid-run: some records committed, not all.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    let text = loop {
        if let Ok(r) = http_request(admin, "GET", "/metrics", Some(KEY))
            && r.status == 200
        {
            let t = r.text();
            let committed =
                weir_test_support::process::metric_value(&t, "weir_stream_records_committed_total")
                    .unwrap_or(0.0);
            if committed > 0.0 {
                assert!(
                    committed < ROWS as f64,
                    "scraped only after the run: {committed}"
                );
                break t;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "weir ingest committed nothing visible on /metrics:\n{}",
            ingest.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The listener's `/health` knows the graph, not only memory.
    let health = http_request(admin, "GET", "/health", None).expect("/health");
    let body = health.json();
    assert_eq!(body["components"]["graph"]["status"], "up", "{body}");
    assert!(body["components"]["memory"].is_object(), "{body}");
    let have = exported(&text);
    for f in ["weir_stream_", "weir_pool_", "weir_memory_"] {
        let gone = missing(want.iter().filter(|n| n.starts_with(f)), &have);
        assert!(gone.is_empty(), "weir ingest does not export {gone:?}");
    }
    assert!(labelled_metric(&text, "weir_pool_max_connections", "pool=\"write\"").is_some());
    assert_eq!(
        weir_test_support::process::metric_value(&text, "weir_memory_limit_bytes"),
        Some((2u64 << 30) as f64),
        "{text}"
    );
    let status = ingest.wait(std::time::Duration::from_secs(600));
    assert!(status.success(), "{}", ingest.stderr());
}
