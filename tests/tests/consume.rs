//! Streaming ingestion across real processes: `weir publish` puts a file's records into a
//! private nats-server's JetStream, two `weir consume` workers share one durable consumer, one
//! is SIGKILLed mid-stream; the other takes over its unacknowledged messages after `ack_wait`
//! and the graph ends equal to the file (counts and properties). A poison record is
//! dead-lettered with its stream sequence, deletes (nodes, and keys never written) apply,
//! SIGTERM stops a worker with exit 0 and nothing left pending, and `/metrics` carries the
//! `weir_consumer_*` families.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::*;
use weir_test_support::nats_server::PrivateNatsServer;
use weir_test_support::process::{
    ChildProcess, free_port, http_request, service_env, workspace_binary,
};

const N: u64 = 30_000;
const DELETED: u64 = 100;

async fn wait_count(graph: &weir_test_support::TestGraph, label: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + JOB_DEADLINE;
    loop {
        let n = graph.count(label).await;
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: {n} of {want}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_killed_end_with_the_graph_a_clean_run_gives() {
    let graph = weir_test_support::graph().await;
    let prefix = format!("{}_", graph.namespace);
    let person = graph.label("Person");
    graph.label("Company");
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateNatsServer::start_new();
    let url = server.url();

    // The example mapping, with an operation field.
    let mapping = dir.path().join("mapping.toml");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/people/mapping-jsonl.toml"),
    )
    .unwrap();
    std::fs::write(
        &mapping,
        text.replace(
            "[input]\nformat = \"jsonl\"",
            "[input]\nformat = \"jsonl\"\noperation_field = \"op\"",
        ),
    )
    .unwrap();
    let data = dir.path().join("people.jsonl");
    let status = Command::new(workspace_binary("weir"))
        .args([
            "generate",
            "--format",
            "jsonl",
            "--people",
            &N.to_string(),
            "--out",
        ])
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    // A poison record in the middle of the stream.
    let mut lines: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.insert(
        (N / 2) as usize,
        r#"{"person_id":"not-a-number","name":"poison"}"#.to_owned(),
    );
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();

    let env = |cmd: &mut Command| {
        service_env(cmd, "CONSUME_BUS")
            .env("NATS_URL", &url)
            .env("WEIR_LOG", "warn");
    };
    let publish = |file: &std::path::Path| {
        let mut cmd = Command::new(workspace_binary("weir"));
        env(&mut cmd);
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
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let worker = |name: &str, metrics: Option<SocketAddr>| {
        let mut cmd = Command::new(workspace_binary("weir"));
        env(&mut cmd);
        cmd.args([
            "consume",
            "--stream",
            "PEOPLE_IN",
            "--subject",
            "people.in",
            "--consumer",
            "people",
            "--ack-wait",
            "3s",
            "--progress",
            "none",
        ])
        .arg("--mapping")
        .arg(&mapping)
        .arg("--label-prefix")
        .arg(&prefix)
        .arg("--dead-letter")
        .arg(dir.path().join(format!("dead-{name}.jsonl")));
        if let Some(m) = metrics {
            cmd.arg("--metrics-bind").arg(m.to_string());
        }
        ChildProcess::spawn(&mut cmd)
    };

    let out = publish(&data);
    assert!(
        out.contains(&format!("published {} records", N + 1)),
        "{out}"
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut survivor = worker("a", Some(metrics));
    let doomed = worker("b", None);
    // Kill one worker mid-stream (its batches in flight and pulled messages unacknowledged).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while graph.count(&person).await < (N / 3) as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing committed: {}\n{}",
            survivor.stderr(),
            doomed.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(doomed); // SIGKILL
    wait_count(&graph, &person, N as i64).await;

    // Properties equal the file's (a sample), after redeliveries.
    for line in lines.iter().step_by(997).filter(|l| !l.contains("poison")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["person_id"].as_i64().unwrap();
        let mut rows = graph
            .graph
            .execute(neo4rs::query(&format!(
                "MATCH (p:`{person}` {{id: $id}}) RETURN p.name AS name, p.email AS email, p.age AS age"
            )).param("id", id))
            .await
            .unwrap();
        let row = rows.next().await.unwrap().expect("the person");
        assert_eq!(
            row.get::<String>("name").unwrap(),
            v["name"].as_str().unwrap()
        );
        assert_eq!(
            row.get::<String>("email").unwrap(),
            v["email"].as_str().unwrap()
        );
        assert_eq!(row.get::<i64>("age").unwrap(), v["age"].as_i64().unwrap());
    }

    // Deletes, once the upserts are in (several workers give no order across messages):
    // people 1..=100 (their relationships with them) and a key never written.
    let deletes = dir.path().join("deletes.jsonl");
    let mut body: Vec<String> = (1..=DELETED)
        .map(|id| format!(r#"{{"op":"delete","person_id":{id}}}"#))
        .collect();
    body.push(r#"{"op":"delete","person_id":987654321}"#.to_owned());
    std::fs::write(&deletes, body.join("\n")).unwrap();
    publish(&deletes);
    wait_count(&graph, &person, (N - DELETED) as i64).await;
    let mut rows = graph
        .graph
        .execute(neo4rs::query(&format!(
            "MATCH (p:`{person}`) WHERE p.id <= {DELETED} RETURN count(p) AS n"
        )))
        .await
        .unwrap();
    assert_eq!(
        rows.next().await.unwrap().unwrap().get::<i64>("n").unwrap(),
        0
    );

    // The worker's metrics.
    let m = http_request(metrics, "GET", "/metrics", None).expect("metrics");
    let text = m.text();
    for name in [
        "weir_consumer_messages_received_total",
        "weir_consumer_messages_acked_total",
        "weir_consumer_redeliveries_total",
        "weir_consumer_pending_messages",
        "weir_stream_records_committed_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let redelivered = labelled_metric(
        &text,
        "weir_consumer_redeliveries_total",
        "consumer=\"people\"",
    )
    .unwrap_or(0.0);
    assert!(
        redelivered > 0.0,
        "the killed worker's messages came back:\n{text}"
    );

    // SIGTERM: exit 0, nothing left pending or unacknowledged.
    let term = Command::new("kill")
        .args(["-TERM", &survivor.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = survivor.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", survivor.stderr());
    let nats = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream("PEOPLE_IN").await.unwrap();
    let _ = stream.info().await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("people").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");

    // The poison record: dead-lettered once, by whichever worker had it, with its sequence.
    let dead: Vec<serde_json::Value> = ["a", "b"]
        .iter()
        .filter_map(|w| std::fs::read_to_string(dir.path().join(format!("dead-{w}.jsonl"))).ok())
        .flat_map(|t| {
            t.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!dead.is_empty(), "the poison record is dead-lettered");
    assert!(
        dead.iter()
            .all(|d| d["raw"].as_str().unwrap().contains("poison")),
        "{dead:?}"
    );
    assert!(
        dead.iter().all(|d| d["line"] == N / 2 + 1),
        "its stream sequence: {dead:?}"
    );
    assert!(
        dead[0]["error"].as_str().unwrap().contains("person_id"),
        "{dead:?}"
    );
    assert_eq!(graph.count(&person).await, (N - DELETED) as i64);
}
