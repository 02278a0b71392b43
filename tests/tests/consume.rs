//! Streaming ingestion across real processes: `weir publish` puts a file's records into a
//! private nats-server's JetStream, two `weir consume` workers share one durable consumer, one
//! is SIGKILLed mid-stream; the other takes over its unacknowledged messages after `ack_wait`
//! and the graph ends equal to a clean run (counts of every label and relationship type, and
//! the sampled people's properties and relationships against a `weir ingest` of them). A
//! poison record is dead-lettered with its stream sequence, deletes (nodes, and keys never
//! written) apply, SIGTERM stops a worker with exit 0 and nothing left pending, and `/metrics`
//! carries the `weir_consumer_*` families.
//!
//! "Done" is read from the server, never from the graph: a relationship MERGE creates its end
//! nodes bare, so the people count reaches the file's while records are still to be written
//! (or redelivered), and deletes published then would race those writes.

mod consumers;
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use consumers::*;
use support::*;
use tokio::time::Instant;
use weir_test_support::TestGraph;
use weir_test_support::process::{free_port, http_request, workspace_binary};

const N: u64 = 100_000;
const DELETED: u64 = 100;
/// Long enough that a live worker acknowledges what it pulled before the server hands it to
/// the other one (see the report); short enough that the killed worker's messages come back
/// soon.
const ACK_WAIT: &str = "10s";
const LOG: &str = "warn,weir_sources=info";

/// A worker's `weir_consumer_<name>` sample (0 when it does not answer).
fn consumer_metric(metrics: SocketAddr, name: &str) -> f64 {
    http_request(metrics, "GET", "/metrics", None)
        .ok()
        .and_then(|r| {
            labelled_metric(
                &r.text(),
                &format!("weir_consumer_{name}"),
                &format!("consumer=\"{CONSUMER}\""),
            )
        })
        .unwrap_or(0.0)
}

fn acked(metrics: SocketAddr) -> f64 {
    consumer_metric(metrics, "messages_acked_total")
}

/// A person's properties, its one KNOWS and one WORKS_AT (the far end's key and the
/// relationship's properties) and its company's name, under `prefix`, as Bolt values.
async fn person_view(graph: &TestGraph, prefix: &str, id: i64) -> Vec<neo4rs::BoltType> {
    let q = format!(
        "MATCH (p:`{prefix}Person` {{id: $id}}) \
         OPTIONAL MATCH (p)-[k:`{prefix}KNOWS`]->(f:`{prefix}Person`) \
         OPTIONAL MATCH (p)-[w:`{prefix}WORKS_AT`]->(c:`{prefix}Company`) \
         RETURN properties(p) AS p, f.id AS f, properties(k) AS k, c.id AS c, c.name AS cn, \
         properties(w) AS w"
    );
    let mut rows = graph
        .graph
        .execute(neo4rs::query(&q).param("id", id))
        .await
        .unwrap();
    let row = rows
        .next()
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no person {id} under {prefix}"));
    let view: Vec<neo4rs::BoltType> = ["p", "f", "k", "c", "cn", "w"]
        .iter()
        .map(|c| row.get::<neo4rs::BoltType>(c).unwrap())
        .collect();
    assert!(
        rows.next().await.unwrap().is_none(),
        "person {id} under {prefix}: more than one KNOWS or WORKS_AT"
    );
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_killed_end_with_the_graph_a_clean_run_gives() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let graph = weir_test_support::graph().await;
    let rig = Rig::new(&graph);
    let (_, mut lines) = rig.generate(N);
    let want = expected_counts(lines.iter().map(String::as_str));
    // A poison record in the middle of the stream.
    lines.insert(
        (N / 2) as usize,
        r#"{"person_id":"not-a-number","name":"poison"}"#.to_owned(),
    );
    let data = rig.write("people.jsonl", &lines);
    let out = rig.publish(&data);
    assert!(
        out.contains(&format!("published {} records", N + 1)),
        "{out}"
    );
    phase("published");

    let ma = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mb = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut a = rig.worker("a", ACK_WAIT, Some(ma), &[], LOG);
    let b = rig.worker("b", ACK_WAIT, Some(mb), &[], LOG);
    // Kill b mid-stream, once it has acknowledged a sixth of the messages (both take about
    // as much, so about a third is done): its batches in flight and pulled messages are left
    // unacknowledged.
    let deadline = Instant::now() + JOB_DEADLINE;
    while acked(mb) < (N / 6) as f64 {
        rig.assert_alive(&[("a", &a, Some(ma)), ("b", &b, Some(mb))], &["a", "b"])
            .await;
        if Instant::now() >= deadline {
            panic!(
                "worker b never acknowledged {} messages{}",
                N / 6,
                rig.report(&[("a", &a, Some(ma)), ("b", &b, Some(mb))])
                    .await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (b_received, b_acked) = (consumer_metric(mb, "messages_received_total"), acked(mb));
    kill(&b, "KILL");
    phase(&format!(
        "killed b: it had received {b_received} messages and acked {b_acked}; a acked {}",
        acked(ma)
    ));
    rig.wait_drained(
        N + 1,
        JOB_DEADLINE,
        &[("a", &a, Some(ma)), ("b", &b, None)],
        &["a"],
    )
    .await;
    phase("drained");

    // Everything acknowledged is committed: the graph is the file's, exactly.
    let have = rig.graph_counts(&graph).await;
    assert_eq!(
        have,
        want,
        "{}",
        rig.report(&[("a", &a, Some(ma)), ("b", &b, None)]).await
    );

    // A sample of the people equals a clean run of their records (`weir ingest` under
    // another prefix): properties, KNOWS and WORKS_AT with theirs, the company's name.
    let sample: Vec<String> = lines
        .iter()
        .step_by(997)
        .filter(|l| !l.contains("poison"))
        .cloned()
        .collect();
    let sample_file = rig.write("sample.jsonl", &sample);
    let reference = format!("{}ref_", rig.prefix);
    let _ = (graph.label("ref_Person"), graph.label("ref_Company"));
    let mut cmd = Command::new(workspace_binary("weir"));
    weir_test_support::process::service_env(&mut cmd, "UNUSED");
    let ingest = cmd
        .args(["ingest", "--progress", "none", "--label-prefix", &reference])
        .arg("--mapping")
        .arg(&rig.mapping)
        .arg(&sample_file)
        .output()
        .unwrap();
    assert!(
        ingest.status.success(),
        "weir ingest: {}",
        String::from_utf8_lossy(&ingest.stderr)
    );
    for line in &sample {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["person_id"].as_i64().unwrap();
        let (got, clean) = (
            person_view(&graph, &rig.prefix, id).await,
            person_view(&graph, &reference, id).await,
        );
        assert_eq!(got, clean, "person {id}: {line}");
        assert!(
            format!("{:?}", got[0]).contains(v["email"].as_str().unwrap()),
            "person {id}: {got:?}"
        );
    }
    phase(&format!(
        "{} sampled people equal a clean run",
        sample.len()
    ));

    // Deletes: people 1..=100 (their relationships with them) and a key never written.
    let mut body: Vec<String> = (1..=DELETED)
        .map(|id| format!(r#"{{"op":"delete","person_id":{id}}}"#))
        .collect();
    body.push(r#"{"op":"delete","person_id":987654321}"#.to_owned());
    let deletes = rig.write("deletes.jsonl", &body);
    rig.publish(&deletes);
    let last = N + 1 + DELETED + 1;
    rig.wait_drained(
        last,
        Duration::from_secs(120),
        &[("a", &a, Some(ma)), ("b", &b, None)],
        &["a"],
    )
    .await;
    let person = rig.name("Person");
    assert_eq!(graph.count(&person).await, want.people - DELETED as i64);
    assert_eq!(
        query_n(
            &graph,
            &format!("MATCH (p:`{person}`) WHERE p.id <= {DELETED} RETURN count(p) AS n")
        )
        .await,
        0
    );
    phase("deleted");

    // The worker's metrics.
    let text = http_request(ma, "GET", "/metrics", None)
        .expect("metrics")
        .text();
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
        &format!("consumer=\"{CONSUMER}\""),
    )
    .unwrap_or(0.0);
    assert!(
        redelivered > 0.0,
        "the killed worker's messages came back:\n{text}"
    );
    phase(&format!(
        "a: received {} messages, {redelivered} of them redelivered",
        consumer_metric(ma, "messages_received_total")
    ));

    // SIGTERM: exit 0, nothing left pending or unacknowledged.
    kill(&a, "TERM");
    let status = a.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", a.stderr());
    let info = rig.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");

    // The poison record: dead-lettered once or more (by whichever worker had it; b may have
    // written it before it was killed), with its sequence, and nothing else.
    let dead = rig.dead_letters(&["a", "b"]);
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
    assert_eq!(graph.count(&person).await, want.people - DELETED as i64);
    phase("done");
}
