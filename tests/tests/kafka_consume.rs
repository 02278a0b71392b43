//! Kafka as a streaming source across real processes: `weir publish --topic` puts a file's
//! records into a 3-partition topic of a private Kafka-protocol broker (tansu), keyed by
//! `person_id`; `weir consume --topic` workers share one consumer group.
//!
//! * Two workers, one SIGKILLed mid-stream and started again (as a supervisor would): its
//!   partitions are read again from their committed offsets and the graph ends equal to a clean
//!   run (every label and type counted against the file; sampled people against a `weir
//!   ingest` of their records). A poison record is dead-lettered with its topic, partition and
//!   offset and committed past; deletes apply; every partition's committed offset ends at its
//!   high watermark; SIGTERM exits 0; `/metrics` carries the per-partition families.
//! * Per-key order: many updates of few keys, a second worker joining mid-stream (a rebalance
//!   revokes partitions with records in flight): every key ends with its last value.
//!
//! * Topics by pattern: a worker given its topic and `^pattern` reads every partition of the
//!   topics the pattern names as well.
//!
//! "Done" is read from the broker (committed offsets), never from the graph.
//!
//! tansu 0.6.0 limitation: when a member's session expires, the rebalance that follows gives
//! the survivors only their own share (the expired member's partitions stay unassigned until
//! another member joins), so the killed worker is replaced here rather than left to the
//! survivor alone; a Kafka broker reassigns them to the survivor.

mod consumers;
mod kafka_rig;
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use consumers::*;
use kafka_rig::*;
use support::*;
use tokio::time::Instant;
use weir_test_support::TestGraph;
use weir_test_support::process::{free_port, http_request, workspace_binary};

const N: u64 = 100_000;
const DELETED: u64 = 100;
const LOG: &str = "warn,weir_sources=info";

/// A worker's `weir_consumer_<name>{consumer="people"}` sample (0 when it does not answer).
fn consumer_metric(metrics: SocketAddr, name: &str) -> f64 {
    http_request(metrics, "GET", "/metrics", None)
        .ok()
        .and_then(|r| {
            labelled_metric(
                &r.text(),
                &format!("weir_consumer_{name}"),
                &format!("consumer=\"{GROUP}\""),
            )
        })
        .unwrap_or(0.0)
}

fn committed(metrics: SocketAddr) -> f64 {
    consumer_metric(metrics, "messages_acked_total")
}

/// A person's properties, KNOWS and WORKS_AT ends and properties, and its company's name.
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
    ["p", "f", "k", "c", "cn", "w"]
        .iter()
        .map(|c| row.get::<neo4rs::BoltType>(c).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_killed_end_with_a_clean_runs_graph_and_every_offset_committed() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let graph = weir_test_support::graph().await;
    let rig = KafkaRig::new(&graph);
    let (_, mut lines) = rig.generate(N);
    let want = expected_counts(lines.iter().map(String::as_str));
    // A poison record in the middle of the stream.
    lines.insert(
        (N / 2) as usize,
        r#"{"person_id":"not-a-number","name":"poison"}"#.to_owned(),
    );
    let data = rig.write("people.jsonl", &lines);
    let out = rig.publish(&data, &[]);
    assert!(
        out.contains(&format!(
            "published {} records in {} messages",
            N + 1,
            N + 1
        )),
        "{out}"
    );
    phase(&format!("published: {}", out.trim()));

    let ma = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mb = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut a = rig.worker("a", Some(ma), &[], LOG);
    let b = rig.worker("b", Some(mb), &[], LOG);
    // Kill b mid-stream, once it has committed a sixth of the messages: what it has in flight
    // and read is left uncommitted, for a to read again from b's last commit.
    let deadline = Instant::now() + JOB_DEADLINE;
    while committed(mb) < (N / 6) as f64 {
        let both = [("a", &a, Some(ma)), ("b", &b, Some(mb))];
        rig.assert_alive(&both, &["a", "b"]).await;
        if Instant::now() >= deadline {
            panic!(
                "worker b never committed {} messages{}",
                N / 6,
                rig.report(&both).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (b_received, b_committed) = (
        consumer_metric(mb, "messages_received_total"),
        committed(mb),
    );
    kill(&b, "KILL");
    phase(&format!(
        "killed b: it had received {b_received} messages and committed {b_committed}; a committed {}",
        committed(ma)
    ));
    // Its replacement joins once b's session has expired (see the module doc).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let c = rig.worker("c", Some(mc), &[], LOG);
    let both = |_: Option<SocketAddr>| [("a", &a, Some(ma)), ("b", &b, None), ("c", &c, Some(mc))];
    rig.wait_committed((N + 1) as i64, JOB_DEADLINE, &both(None), &["a", "c"])
        .await;
    phase("every partition committed to its end");

    // Everything committed is in the graph: exactly the file's.
    let have = rig.graph_counts(&graph).await;
    assert_eq!(have, want, "{}", rig.report(&both(None)).await);
    let revoked = consumer_metric(ma, "partitions_revoked_total");
    assert!(
        revoked > 0.0,
        "a's partitions were revoked when b's session ended and when c joined"
    );

    // A sample of the people equals a clean run of their records (`weir ingest` under
    // another prefix).
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

    // Deletes: people 1..=100 and a key never written.
    let mut body: Vec<String> = (1..=DELETED)
        .map(|id| format!(r#"{{"op":"delete","person_id":{id}}}"#))
        .collect();
    body.push(r#"{"op":"delete","person_id":987654321}"#.to_owned());
    let deletes = rig.write("deletes.jsonl", &body);
    rig.publish(&deletes, &[]);
    let total = (N + 1 + DELETED + 1) as i64;
    rig.wait_committed(total, Duration::from_secs(120), &both(None), &["a", "c"])
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

    // The workers' metrics: per-partition lag (a and c together hold every partition, each
    // at lag 0) and committed offsets.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = [ma, mc]
            .iter()
            .map(|m| {
                http_request(*m, "GET", "/metrics", None)
                    .expect("metrics")
                    .text()
            })
            .collect::<Vec<_>>()
            .join("\n");
        let lags: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("weir_consumer_partition_lag_messages{"))
            .collect();
        if lags.len() == PARTITIONS as usize && lags.iter().all(|l| l.ends_with(" 0")) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the lag of every partition is not 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for name in [
        "weir_consumer_messages_received_total",
        "weir_consumer_messages_acked_total",
        "weir_consumer_pending_messages",
        "weir_consumer_partition_committed_offset",
        "weir_consumer_partitions_revoked_total",
        "weir_stream_records_committed_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let offsets = rig.offsets().unwrap();
    for (p, committed, _) in &offsets {
        let committed = committed.unwrap();
        let line = format!(
            "weir_consumer_partition_committed_offset{{consumer=\"{GROUP}\",topic=\"{TOPIC}\",partition=\"{p}\"}} {committed}"
        );
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }

    // SIGTERM: exit 0, every partition committed to its end.
    let mut c = c;
    kill(&a, "TERM");
    kill(&c, "TERM");
    let status = a.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", a.stderr());
    let status = c.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", c.stderr());
    let offsets = rig.offsets().unwrap();
    assert_eq!(
        offsets.iter().map(|o| o.1.unwrap_or(0)).sum::<i64>(),
        total,
        "{offsets:?}"
    );

    // The poison record: dead-lettered (by a, or by b before it was killed, or both) with its
    // topic, partition and offset, and nothing else.
    let dead = rig.dead_letters(&["a", "b", "c"]);
    assert!(!dead.is_empty(), "the poison record is dead-lettered");
    assert!(
        dead.iter()
            .all(|d| d["raw"].as_str().unwrap().contains("poison")),
        "{dead:?}"
    );
    let source = dead[0]["source"].as_str().unwrap().to_owned();
    let partition: i32 = source
        .strip_prefix(&format!("kafka:{TOPIC}/"))
        .unwrap_or_else(|| panic!("source names topic and partition: {dead:?}"))
        .parse()
        .unwrap();
    assert!((0..PARTITIONS).contains(&partition), "{dead:?}");
    let offset = dead[0]["line"].as_i64().unwrap();
    assert!(
        dead.iter()
            .all(|d| d["source"] == source.as_str() && d["line"] == offset),
        "one record: {dead:?}"
    );
    assert!(
        dead[0]["error"].as_str().unwrap().contains("person_id"),
        "{dead:?}"
    );
    // That offset of that partition holds the poison record.
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", rig.broker.brokers())
        .set("group.id", "check")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, partition, rdkafka::Offset::Offset(offset))
        .unwrap();
    rdkafka::consumer::Consumer::assign(&c, &tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            break String::from_utf8_lossy(rdkafka::Message::payload(&m).unwrap()).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no message at {partition}/{offset}"
        );
    };
    assert!(body.contains("poison"), "{partition}/{offset}: {body}");
    assert_eq!(graph.count(&person).await, want.people - DELETED as i64);
    phase("done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_one_key_end_with_its_last_value_across_a_rebalance() {
    const KEYS: u64 = 300;
    const VERSIONS: u64 = 40;
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let graph = weir_test_support::graph().await;
    let rig = KafkaRig::new(&graph);
    // Version v of every key, then v + 1 of every key, ...: a key's updates are spread over
    // the whole stream, in order within its partition.
    let mut lines = Vec::new();
    for v in 0..VERSIONS {
        for k in 1..=KEYS {
            lines.push(format!(
                r#"{{"person_id":{k},"name":"p{k}-v{v}","email":"p{k}@x","company_id":{},"knows_id":{}}}"#,
                k % 7 + 1,
                k % KEYS + 1
            ));
        }
    }
    let data = rig.write("updates.jsonl", &lines);
    rig.publish(&data, &[]);
    let total = (KEYS * VERSIONS) as i64;
    phase("published");

    // Small batches (many commits, many batches in flight over the stream); b joins once a
    // has committed some: the rebalance revokes a's partitions with records in flight.
    let ma = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mb = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let small = ["--batch-size", "25", "--linger", "20ms"];
    let a = rig.worker("a", Some(ma), &small, LOG);
    let deadline = Instant::now() + JOB_DEADLINE;
    while committed(ma) < (total / 10) as f64 {
        rig.assert_alive(&[("a", &a, Some(ma))], &["a"]).await;
        assert!(
            Instant::now() < deadline,
            "a never committed a tenth{}",
            rig.report(&[("a", &a, Some(ma))]).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = rig.worker("b", Some(mb), &small, LOG);
    phase(&format!("b joins; a committed {}", committed(ma)));
    let both = [("a", &a, Some(ma)), ("b", &b, Some(mb))];
    rig.wait_committed(total, JOB_DEADLINE, &both, &["a", "b"])
        .await;
    phase("every partition committed to its end");
    assert!(
        consumer_metric(ma, "partitions_revoked_total") > 0.0,
        "b's joining revoked a's partitions{}",
        rig.report(&both).await
    );
    assert!(
        consumer_metric(mb, "messages_acked_total") > 0.0,
        "b did some of the work{}",
        rig.report(&both).await
    );

    let person = rig.name("Person");
    let q = format!("MATCH (p:`{person}`) WHERE p.id <= {KEYS} RETURN p.id AS id, p.name AS name");
    let mut rows = graph.graph.execute(neo4rs::query(&q)).await.unwrap();
    let mut seen = 0u64;
    let mut wrong = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        let id: i64 = row.get("id").unwrap();
        let name: String = row.get("name").unwrap();
        seen += 1;
        if name != format!("p{id}-v{}", VERSIONS - 1) {
            wrong.push((id, name));
        }
    }
    assert_eq!(seen, KEYS);
    assert!(
        wrong.is_empty(),
        "keys not at their last value: {wrong:?}{}",
        rig.report(&both).await
    );
    phase("every key at its last value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscribes_to_every_topic_it_names() {
    const PER_TOPIC: u64 = 200;
    let graph = weir_test_support::graph().await;
    let rig = KafkaRig::new(&graph);
    let person = |k: u64| {
        format!(r#"{{"person_id":{k},"name":"p{k}","email":"p{k}@x","company_id":1,"knows_id":1}}"#)
    };
    let a: Vec<String> = (1..=PER_TOPIC).map(person).collect();
    let b: Vec<String> = (PER_TOPIC + 1..=2 * PER_TOPIC).map(person).collect();
    let c: Vec<String> = (2 * PER_TOPIC + 1..=3 * PER_TOPIC).map(person).collect();
    rig.publish(&rig.write("a.jsonl", &a), &[]);
    // Named by the pattern: read. Not named: left alone.
    rig.publish_to("extra-people", 2, &rig.write("b.jsonl", &b), &[]);
    rig.publish_to("other-people", 2, &rig.write("c.jsonl", &c), &[]);

    let m = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let w = rig.worker("p", Some(m), &["--topic", "^extra-.*"], LOG);
    let deadline = Instant::now() + JOB_DEADLINE;
    let want = (2 * PER_TOPIC) as f64;
    while committed(m) < want {
        rig.assert_alive(&[("p", &w, Some(m))], &["p"]).await;
        assert!(
            Instant::now() < deadline,
            "the worker never committed {want} messages{}",
            rig.report(&[("p", &w, Some(m))]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing beyond the two topics arrives later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        committed(m),
        want,
        "messages committed beyond the two topics"
    );
    let label = rig.name("Person");
    let q = format!("MATCH (p:`{label}`) RETURN min(p.id) AS lo, max(p.id) AS hi, count(p) AS n");
    let mut rows = graph.graph.execute(neo4rs::query(&q)).await.unwrap();
    let row = rows.next().await.unwrap().unwrap();
    let (lo, hi, n): (i64, i64, i64) = (
        row.get("lo").unwrap(),
        row.get("hi").unwrap(),
        row.get("n").unwrap(),
    );
    assert_eq!(
        (lo, hi, n),
        (1, 2 * PER_TOPIC as i64, 2 * PER_TOPIC as i64),
        "the people of the listed topic and of the pattern's topic, and no others"
    );
    let offsets = rig.offsets().unwrap();
    assert!(
        offsets.iter().all(|(_, c, hw)| *c == Some(*hw)),
        "the listed topic committed to its end: {offsets:?}"
    );
}
