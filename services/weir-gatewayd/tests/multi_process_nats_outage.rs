//! The multi-process NATS outage: `weir-ingestd` and `weir-gatewayd` child processes
//! on a private `nats-server` (started and stopped by this test) and the real graph server.
//! NATS stops mid-ingest: the job pauses (its commits stop while the committed batches wait to
//! be published, nothing buffered beyond the pipeline's bounds), no error ends it; NATS comes
//! back: the job completes and the subscribed client receives every change exactly once, in
//! order.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use weir_test_support::nats_server::PrivateNatsServer;

async fn job(addr: std::net::SocketAddr, id: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", &format!("/jobs/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_mid_ingest_pauses_it_and_nothing_is_lost_or_doubled() {
    let graph = weir_test_support::graph().await;
    let mut nats = PrivateNatsServer::start_new();
    let stream = format!("OUTAGE_{}", graph.namespace.to_uppercase());
    let prefix = format!("{}_", graph.namespace);
    let label = graph.label("Person");
    let dir = tempfile::tempdir().unwrap();
    // Small batches so the job is still running when NATS goes away.
    let config = dir.path().join("ingestd.toml");
    std::fs::write(&config, "[jobs]\nbatch_size = 20\nconcurrency = 2\n").unwrap();
    let env = [("NATS_URL", nats.url())];
    let ingestd_bin = ingestd_bin();
    let mut ingestd = spawn_ingestd_with(
        &ingestd_bin,
        &stream,
        free_port(),
        dir.path(),
        &env,
        &["--config".into(), config.display().to_string()],
    );
    // Default settings: the catch-up burst after NATS returns must reach the client whole.
    let gw = spawn_gatewayd_with(&stream, free_port(), &env, &[]);
    wait_ready(ingestd.addr).await;
    wait_ready(gw.addr).await;
    let mut client = Ws::subscribe(gw.addr, &label).await;
    wait_subscriptions(gw.addr, 1).await;

    // Enough rows that the job cannot end between two looks at its progress (reported once a
    // second): on a quiet machine 12,000 did.
    let n: u64 = 40_000;
    let csv = people_csv(dir.path(), "people.csv", 0, n);
    // The client reads in the background (it answers the gateway's pings meanwhile).
    let reader = tokio::spawn(async move {
        let got = client.changes(n as usize).await;
        (client, got)
    });
    let (status, body) = http(
        ingestd.addr,
        "POST",
        "/jobs",
        Some(&json!({"path": csv, "mapping": MAPPING, "label_prefix": prefix, "id": "outage"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    // Stop NATS as soon as the job reports a commit.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let j = job(ingestd.addr, "outage").await;
        assert_ne!(
            j["state"], "completed",
            "the job finished before NATS could be stopped: {j}"
        );
        if j["records_committed"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never started: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.stop();

    // While NATS is away the job pauses: commits stop within the pipeline's bounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_a = job(ingestd.addr, "outage").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_b = job(ingestd.addr, "outage").await;
    assert_eq!(during_b["state"], "running", "{during_b}");
    assert_eq!(
        during_a["records_committed"], during_b["records_committed"],
        "commits go on while NATS is down: {during_a} then {during_b}"
    );
    let paused_at = during_b["records_committed"].as_u64().unwrap();
    assert!(paused_at < n, "nothing left to do while NATS was down");

    nats.start();
    let done = wait_job(ingestd.addr, "outage").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["records_committed"], n);
    assert_eq!(done["records_dead_lettered"], 0);

    let (mut client, got) = reader.await.unwrap();
    let keys = assert_once_in_order(&got);
    assert_eq!(keys.len(), n as usize, "every change delivered once");
    client.quiet_for(Duration::from_millis(500)).await;
    assert_eq!(graph.count(&label).await, n as i64);

    let status = ingestd.terminate();
    assert!(status.success(), "weir-ingestd exit {status:?}");
}
