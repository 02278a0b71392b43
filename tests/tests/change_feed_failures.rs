//! The change feed when things go wrong, across real processes:
//!
//! - poison on the bus (garbage, a future event-format version, put on the stream by hand):
//!   the gateway skips each, counts it once (`weir_bus_messages_skipped_total`), and keeps
//!   delivering later changes live, in `since` replays and in `GET /changes`;
//! - the bus stream deleted mid-job: the job ends `failed` with an error naming the stream (in
//!   `/jobs`), and `weir ingest --bus nats` exits 1 the same way;
//! - NATS down mid-run: `weir ingest --bus nats` waits and completes once NATS is back (exit
//!   0, every change delivered to a gateway's client once), and fails (exit 1) when it stays
//!   away longer than `--events-max-wait`;
//! - a second run under a job id used before is not taken for a duplicate of the first.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::*;
use weir_events::EVENT_FORMAT_VERSION;
use weir_test_support::nats_server::PrivateNatsServer;
use weir_test_support::process::{
    ChildProcess, free_port, http_request, http_upload, service_env, url_encode, workspace_binary,
};
use weir_test_support::ws::{Frame, GraphqlWs, assert_in_order};

/// People in the failure tests: 20 batches of the default 1,000 rows.
const N: u64 = 20_000;

async fn wait_committed(graph: &weir_test_support::TestGraph, label: &str, at_least: i64) {
    let deadline = tokio::time::Instant::now() + JOB_DEADLINE;
    while graph.count(label).await < at_least {
        assert!(tokio::time::Instant::now() < deadline, "nothing committed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_skips_poison_counts_it_once_and_keeps_delivering() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("POISON");
    let prefix = format!("{}_", graph.namespace);
    let person = graph.label("Person");
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), 2_000);
    let (ingestd_addr, _, ingestd) = spawn_ingestd(&stream, dir.path(), &[]);
    let (gw, gw_admin, gateway) = spawn_gatewayd(&stream, &[]);
    wait_ready(ingestd_addr, &ingestd).await;
    wait_ready(gw, &gateway).await;
    let mut client = GraphqlWs::connect(gw, KEY).await;
    client
        .subscribe_changes("p", &format!("labels: [\"{person}\"]"))
        .await;
    wait_subscriptions(gw, 1).await;

    // Poison, by hand, on the subject the services use (`service_env`: the stream's name,
    // lower-cased, as the prefix).
    let subject = format!("{}.changes", stream.to_lowercase());
    for payload in [
        b"\x00\x01 garbage, not a change batch".to_vec(),
        serde_json::to_vec(&serde_json::json!({
            "version": EVENT_FORMAT_VERSION + 1,
            "seq": 0,
            "job_id": "newer-ingestd",
            "batch_id": "newer-ingestd-1",
            "events": [{"a": "shape this build does not know"}],
        }))
        .unwrap(),
    ] {
        nats.jetstream
            .publish(subject.clone(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    submit_file(ingestd_addr, &csv, &prefix, "after-poison");
    assert_eq!(
        wait_job(ingestd_addr, "after-poison").await["state"],
        "completed"
    );
    let got = client
        .changes_until(Duration::from_secs(60), |g| g.len() >= 2_000)
        .await;
    assert_eq!(got.len(), 2_000, "later changes flow live");
    assert_in_order(&got);

    // A `since` replay from the start reads past the poison too.
    let mut replay = GraphqlWs::connect(gw, KEY).await;
    replay
        .subscribe_changes("r", &format!("labels: [\"{person}\"], since: 0"))
        .await;
    let replayed = replay
        .changes_until(Duration::from_secs(30), |g| g.len() >= 2_000)
        .await;
    assert_eq!(replayed, got, "the replay equals the live feed");

    // So does `GET /changes`, page by page.
    let mut since = 0;
    let mut paged = 0;
    loop {
        let (status, page) = get_json(
            gw,
            &format!("/changes?since={since}&labels={}", url_encode(&person)),
        );
        assert_eq!(status, 200, "{page}");
        paged += page["events"].as_array().unwrap().len();
        since = page["last_seq"].as_u64().unwrap();
        if page["complete"] == true {
            break;
        }
    }
    assert_eq!(paged, 2_000);

    let metrics = http_request(gw_admin, "GET", "/metrics", Some(KEY))
        .unwrap()
        .text();
    for reason in ["decode", "version"] {
        assert_eq!(
            labelled_metric(
                &metrics,
                "weir_bus_messages_skipped_total",
                &format!("reason=\"{reason}\"")
            ),
            Some(1.0),
            "{reason} poison counted once (live, replay and /changes all read it)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_fails_the_job_and_the_cli_run_with_a_clear_error() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let prefix = format!("{}_", graph.namespace);
    let person = format!("{prefix}Person");
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), N);

    // ingestd: the job fails, and /jobs says why. A gateway's client watches throughout.
    let stream = nats.name("GONE");
    let (addr, _, ingestd) = spawn_ingestd(&stream, dir.path(), &[]);
    let (gw, _, gateway) = spawn_gatewayd(&stream, &[]);
    wait_ready(addr, &ingestd).await;
    wait_ready(gw, &gateway).await;
    let mut client = GraphqlWs::connect(gw, KEY).await;
    client
        .subscribe_changes("p", &format!("labels: [\"{person}\"]"))
        .await;
    wait_subscriptions(gw, 1).await;
    submit_file(addr, &csv, &prefix, "gone");
    wait_committed(&graph, &person, 1).await;
    nats.jetstream.delete_stream(&stream).await.unwrap();
    let job = wait_job(addr, "gone").await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("does not exist") && error.contains(&stream),
        "{job}"
    );
    let committed = job["records_committed"].as_u64().unwrap();
    assert!(
        committed < N,
        "the job stopped at the batch it could not publish: {job}"
    );
    // The gateway's client is told that changes were lost with the stream, not left to
    // wonder (what the stream held that the gateway had not read went with it).
    let told = loop {
        match client.recv(Duration::from_secs(60)).await {
            Some(Frame::Json(v)) if v["type"] == "next" => continue,
            other => break other,
        }
    };
    let Some(Frame::Json(err)) = told else {
        panic!("no CHANGES_LOST: {told:?}")
    };
    assert_eq!(
        err["payload"][0]["extensions"]["code"], "CHANGES_LOST",
        "{err}"
    );
    // The checkpoint stayed before the batch that was not published: a restarted ingestd
    // (which creates the stream again) resumes the job and publishes that batch and the rest:
    // every person after the ones the failed job committed, each once.
    drop(ingestd);
    let (addr, _, ingestd) = spawn_ingestd(&stream, dir.path(), &[]);
    wait_ready(addr, &ingestd).await;
    let mut client = GraphqlWs::connect(gw, KEY).await;
    client
        .subscribe_changes("p", &format!("labels: [\"{person}\"], since: 0"))
        .await;
    submit_file(addr, &csv, &prefix, "gone");
    assert_eq!(wait_job(addr, "gone").await["state"], "completed");
    let got = client
        .changes_until(Duration::from_secs(60), |g| g.len() as u64 >= N - committed)
        .await;
    assert_in_order(&got);
    let keys: std::collections::BTreeSet<u64> =
        got.iter().map(|c| c.key.parse().unwrap()).collect();
    assert_eq!(keys.len() as u64, N - committed, "each once");
    assert_eq!(
        (keys.first().copied(), keys.last().copied()),
        (Some(committed + 1), Some(N)),
        "from the first unpublished batch to the end"
    );
    assert_eq!(graph.count(&person).await, N as i64);
    drop((ingestd, gateway));

    // weir ingest --bus nats: exit 1, the same reason on stderr.
    let stream = nats.name("GONE_CLI");
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, &stream)
        .args([
            "ingest",
            "--bus",
            "nats",
            "--progress",
            "plain",
            "--job-id",
            "gone-cli",
        ])
        .arg("--label-prefix")
        .arg(format!("{prefix}cli_"))
        .arg("--mapping")
        .arg(mapping_path())
        .arg(&csv);
    let mut run = ChildProcess::spawn(&mut cmd);
    wait_committed(&graph, &format!("{prefix}cli_Person"), 1).await;
    nats.jetstream.delete_stream(&stream).await.unwrap();
    let status = run.wait(JOB_DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    assert!(run.stderr().contains("does not exist"), "{}", run.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_ingest_waits_out_a_nats_outage_and_fails_past_its_max_wait() {
    let graph = weir_test_support::graph().await;
    let prefix = format!("{}_", graph.namespace);
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), N);
    let mut server = PrivateNatsServer::start_new();
    let stream = "OUTAGE";
    let url = server.url();
    let env = |cmd: &mut Command| {
        service_env(cmd, stream).env("NATS_URL", &url);
    };

    // A gateway on the same NATS, with a client, sees every change once after the outage.
    let (gw, _, gateway) = {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(workspace_binary("weir-gatewayd"));
        env(&mut cmd);
        cmd.env("WEIR_API_KEYS", KEY)
            .env("WEIR_LOG", "warn")
            .env("WEIR_BIND", addr.to_string());
        (addr, (), ChildProcess::spawn(&mut cmd))
    };
    wait_ready(gw, &gateway).await;
    let person = format!("{prefix}ok_Person");
    let mut client = GraphqlWs::connect(gw, KEY).await;
    client
        .subscribe_changes("p", &format!("labels: [\"{person}\"]"))
        .await;
    wait_subscriptions(gw, 1).await;
    let reader = tokio::spawn(async move {
        let got = client
            .changes_until(Duration::from_secs(120), |g| g.len() as u64 >= N)
            .await;
        (client, got)
    });

    let ingest = |label_prefix: String, extra: &[&str]| {
        let mut cmd = Command::new(workspace_binary("weir"));
        env(&mut cmd);
        cmd.args(["ingest", "--bus", "nats", "--progress", "plain"])
            .args(extra)
            .arg("--label-prefix")
            .arg(label_prefix)
            .arg("--mapping")
            .arg(mapping_path())
            .arg(&csv);
        ChildProcess::spawn(&mut cmd)
    };

    // Back after 5 s: the run pauses, then completes.
    let mut run = ingest(format!("{prefix}ok_"), &["--job-id", "ok"]);
    wait_committed(&graph, &person, 1).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.start();
    let status = run.wait(JOB_DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    let (_client, got) = reader.await.unwrap();
    assert_eq!(got.len() as u64, N, "every change, once");
    assert_in_order(&got);
    assert_eq!(graph.count(&person).await, N as i64);

    // Away for good: the run fails after --events-max-wait, with exit 1.
    let mut run = ingest(
        format!("{prefix}gone_"),
        &["--job-id", "gone", "--events-max-wait", "3s"],
    );
    wait_committed(&graph, &format!("{prefix}gone_Person"), 1).await;
    server.stop();
    let status = run.wait(Duration::from_secs(120));
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    assert!(run.stderr().contains("events.max_wait"), "{}", run.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_under_the_same_job_id_is_delivered_too() {
    let graph = weir_test_support::graph().await;
    let prefix = format!("{}_", graph.namespace);
    let person = graph.label("Person");
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), 1_500);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("weir"));
    service_env(&mut cmd, "UNUSED").args(["serve", "--api-key", KEY, "--bind", &addr.to_string()]);
    let serve = ChildProcess::spawn(&mut cmd);
    wait_ready(addr, &serve).await;
    let mut client = GraphqlWs::connect(addr, KEY).await;
    client
        .subscribe_changes("p", &format!("labels: [\"{person}\"]"))
        .await;
    wait_subscriptions(addr, 1).await;
    let path = format!(
        "/jobs/upload?id=same&label_prefix={}&mapping={}",
        url_encode(&prefix),
        url_encode(&mapping())
    );
    for _ in 0..2 {
        let up = http_upload(addr, &path, Some(KEY), &csv).unwrap();
        assert_eq!(up.status, 202, "{}", up.text());
        assert_eq!(wait_job(addr, "same").await["state"], "completed");
    }
    let got = client
        .changes_until(Duration::from_secs(60), |g| g.len() >= 3_000)
        .await;
    assert_eq!(got.len(), 3_000, "both runs' changes were delivered");
    assert_in_order(&got);
}
