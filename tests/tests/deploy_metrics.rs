//! Every metric that `deploy/` queries is exported by the real binaries after a real job.
//!
//! The metric names come from the files themselves: every `weir_…` token of every `expr:` in
//! `deploy/prometheus/rules/weir-alerts.yml` and of every `expr` in
//! `deploy/grafana/dashboards/weir.json`. Then:
//! - `weir serve` (in-process bus, a memory limit) runs an upload job; its one `/metrics`
//!   scrape must hold every name, the write pool's and the read pool's figures apart;
//! - `weir-ingestd` + `weir-gatewayd` on NATS JetStream: ingestd runs a job; ingestd must export
//!   the stream, write-pool and memory families, gatewayd the subscription, read-pool, bus and
//!   memory families, and the two scrapes together every name.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weir_test_support::process::{
    ChildProcess, free_port, http_request, http_upload, service_env, url_encode, workspace_binary,
};

use support::*;

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
                    ("expr", Value::String(e)) => tokens(e, out),
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
    let text = std::fs::read_to_string(&rules).unwrap();
    let mut names = BTreeSet::new();
    let mut exprs = 0;
    for line in text.lines() {
        if let Some(e) = line.trim_start().strip_prefix("expr:") {
            exprs += 1;
            tokens(e, &mut names);
        }
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
    let have = exported(&text);
    let gone = missing(&want, &have);
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
    ] {
        for f in families {
            let gone = missing(family(f), have);
            assert!(gone.is_empty(), "{who} does not export {gone:?}");
        }
    }
    let union: BTreeSet<String> = ingest_have.union(&gate_have).cloned().collect();
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
    drop((ingestd, gatewayd));
}
