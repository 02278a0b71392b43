//! Kafka stream jobs in `weir-ingestd`, across real processes: a private Kafka-protocol broker
//! (tansu), `weir publish --topic` filling a fresh 3-partition topic one message per record
//! batch (see [`KafkaRig::publish`] for tansu's limitation), the real graph server.
//!
//! * A `[[jobs.streams]]` entry naming `topics` and `group` (with librdkafka properties, one of
//!   them a fake password) consumes 20,000 people and a poison record: the graph holds exactly
//!   the file's records, the poison record is in the job's dead-letter file with its topic,
//!   partition and offset, the group's committed offsets add up to every message, `/jobs`
//!   shows the job and its consumer counters, `/metrics` the job's `weir_consumer_*`.
//! * `DELETE /jobs/{id}` stops it: `cancelled`, every offset still committed.
//! * A second job through `POST /jobs/stream` (the Kafka form) on the same group reads only
//!   the messages published after it, from the group's committed offsets; bodies naming
//!   brokers or both sources are refused.
//! * The password shows nowhere: not in `/jobs`, not in the service's log. SIGTERM exits 0.
//!
//! "Done" is read from the broker (committed offsets), never from the graph.

mod consumers;
mod kafka_rig;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use consumers::*;
use kafka_rig::*;
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;
use weir_test_support::process::{ChildProcess, http_request, http_request_with_body};

const N: u64 = 20_000;
/// People published after the first job stopped.
const LATER: u64 = 300;
const SECRET: &str = "s3cret-never-shown-7781";

fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let r = match body {
        Some(b) => http_request_with_body(
            addr,
            method,
            path,
            Some(KEY),
            "application/json",
            b.to_string().as_bytes(),
        ),
        None => http_request(addr, method, path, Some(KEY)),
    }
    .expect("an HTTP answer");
    (r.status, r.json())
}

/// Polls `GET /jobs/{id}` until `done` holds; panics with the job and the service's log past
/// [`JOB_DEADLINE`].
async fn wait_job(
    addr: SocketAddr,
    ingestd: &ChildProcess,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        let (status, body) = request(addr, "GET", &format!("/jobs/{id}"), None);
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline && !exited(ingestd),
            "job {id} never {what}: {body}\n--- ingestd log:\n{}",
            ingestd.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts `weir-ingestd` with one Kafka stream job, `cfg`, on the rig's topic and group, with
/// librdkafka properties (a fake password among them) and `more` properties (TOML pairs, each
/// followed by a comma); brokers from KAFKA_BROKERS.
fn start_ingestd(rig: &KafkaRig, more: &str) -> (SocketAddr, SocketAddr, ChildProcess) {
    let config = rig.dir.path().join("ingestd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[jobs]
max_stream_jobs = 2

[[jobs.streams]]
id = "cfg"
mapping = "{}"
label_prefix = "{}"
topics = ["{TOPIC}"]
group = "{GROUP}"
start = "earliest"
max_in_flight = 5000
properties = {{ {more} "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500", "sasl.password" = "{SECRET}" }}
"#,
            rig.mapping.display(),
            rig.prefix
        ),
    )
    .unwrap();
    let bus = format!("KSJ_{}", weir_test_support::unique_namespace()).to_uppercase();
    spawn_ingestd(
        &bus,
        rig.dir.path(),
        &[
            ("WEIR_CONFIG", config.display().to_string()),
            ("KAFKA_BROKERS", rig.broker.brokers()),
            ("WEIR_LOG", "info".to_owned()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stream_jobs_consume_commit_after_the_graph_stop_and_resume_from_the_group() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let graph = weir_test_support::graph().await;
    let rig = KafkaRig::new(&graph);
    let (_, mut lines) = rig.generate(N);
    let want = expected_counts(lines.iter().map(String::as_str));
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

    // The service, with one Kafka stream job configured. Its brokers come from
    // KAFKA_BROKERS (`jobs.kafka.brokers`); the properties go to librdkafka.
    let mapping = std::fs::read_to_string(&rig.mapping).unwrap();
    let (addr, admin, ingestd) = start_ingestd(&rig, "");
    wait_ready(addr, &ingestd).await;
    phase("ingestd ready");

    let workers = [("ingestd", &ingestd, None)];
    rig.wait_committed((N + 1) as i64, JOB_DEADLINE, &workers, &["ingestd"])
        .await;
    phase("the group committed every message");
    assert_eq!(
        rig.graph_counts(&graph).await,
        want,
        "{}",
        rig.report(&workers).await
    );

    // `/jobs`: the job, its records and its consumer's counters.
    let cfg = wait_job(addr, &ingestd, "cfg", "counted every message", |j| {
        j["consumer"]["messages_acked"] == N + 1 && j["records_committed"] == N
    })
    .await;
    assert_eq!(cfg["kind"], "stream", "{cfg}");
    assert_eq!(cfg["state"], "running", "{cfg}");
    assert_eq!(cfg["records_dead_lettered"], 1, "{cfg}");
    assert_eq!(cfg["checkpoint"], Value::Null, "{cfg}");
    assert_eq!(cfg["error"], Value::Null, "{cfg}");
    let consumer = &cfg["consumer"];
    assert_eq!(consumer["source"], "kafka", "{cfg}");
    assert_eq!(consumer["consumer"], GROUP, "{cfg}");
    assert_eq!(consumer["topics"], json!([TOPIC]), "{cfg}");
    assert_eq!(consumer["messages_received"], N + 1, "{cfg}");
    assert!(consumer.get("stream").is_none(), "{cfg}");
    let input = cfg["input"].as_str().unwrap();
    assert!(
        input.contains(TOPIC) && input.contains(GROUP) && input.contains(&rig.broker.brokers()),
        "{cfg}"
    );
    let (s, list) = request(addr, "GET", "/jobs", None);
    assert_eq!(s, 200);
    assert!(
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == "cfg" && j["consumer"]["source"] == "kafka"),
        "{list}"
    );
    assert!(!list.to_string().contains(SECRET), "{list}");

    // The poison record: in the job's dead-letter file, with topic, partition and offset.
    let dead: Vec<Value> = std::fs::read_to_string(cfg["dead_letters"].as_str().unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["raw"].as_str().unwrap().contains("poison"),
        "{dead:?}"
    );
    assert!(
        dead[0]["error"].as_str().unwrap().contains("person_id"),
        "{dead:?}"
    );
    let source = dead[0]["source"].as_str().unwrap();
    let partition: i32 = source
        .strip_prefix(&format!("kafka:{TOPIC}/"))
        .unwrap_or_else(|| panic!("source names topic and partition: {dead:?}"))
        .parse()
        .unwrap();
    assert!((0..PARTITIONS).contains(&partition), "{dead:?}");
    let offset = dead[0]["line"].as_i64().unwrap();
    let offsets = rig.offsets().unwrap();
    let (_, committed, _) = offsets.iter().find(|o| o.0 == partition).unwrap();
    assert!(
        offset < committed.unwrap(),
        "committed past the poison record: {offsets:?} {dead:?}"
    );

    // `/metrics` (admin listener): the running job's consumer.
    let r = http_request(admin, "GET", "/metrics", Some(KEY)).expect("/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    for line in [
        format!(
            "weir_consumer_messages_acked_total{{consumer=\"{GROUP}\"}} {}",
            N + 1
        ),
        format!(
            "weir_consumer_messages_received_total{{consumer=\"{GROUP}\"}} {}",
            N + 1
        ),
        "# TYPE weir_consumer_partition_committed_offset ".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    for (p, committed, _) in &offsets {
        let line = format!(
            "weir_consumer_partition_committed_offset{{consumer=\"{GROUP}\",topic=\"{TOPIC}\",partition=\"{p}\"}} {}",
            committed.unwrap()
        );
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    phase("/jobs, dead letters and /metrics checked");

    // DELETE stops it: cancelled, nothing lost, and it left the group.
    let (s, body) = request(addr, "DELETE", "/jobs/cfg", None);
    assert_eq!(s, 202, "{body}");
    let stopped = wait_job(addr, &ingestd, "cfg", "stopped", |j| {
        j["state"] == "cancelled"
    })
    .await;
    assert_eq!(stopped["error"], Value::Null, "{stopped}");
    assert_eq!(stopped["records_committed"], N, "{stopped}");
    assert_eq!(stopped["consumer"]["messages_acked"], N + 1, "{stopped}");
    let sum = |o: &Offsets| o.iter().map(|p| p.1.unwrap_or(0)).sum::<i64>();
    assert_eq!(sum(&rig.offsets().unwrap()), (N + 1) as i64);
    let text = http_request(admin, "GET", "/metrics", Some(KEY))
        .expect("/metrics")
        .text();
    assert!(
        !text.contains("weir_consumer_messages_acked_total{"),
        "a stopped job's consumer leaves /metrics:\n{text}"
    );
    phase("cfg stopped");

    // The API refuses what a request may not name.
    let api = json!({
        "id": "api", "topics": [TOPIC], "group": GROUP, "mapping": mapping,
        "label_prefix": rig.prefix,
    });
    for (field, value) in [
        ("brokers", json!("203.0.113.1:9092")),
        ("properties", json!({"plugin.library.paths": "/tmp/x.so"})),
        ("stream", json!("PEOPLE")),
    ] {
        let mut bad = api.clone();
        bad[field] = value;
        let (s, body) = request(addr, "POST", "/jobs/stream", Some(&bad));
        assert_eq!(s, 400, "{field}: {body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    let mut no_group = api.clone();
    no_group.as_object_mut().unwrap().remove("group");
    let (s, body) = request(addr, "POST", "/jobs/stream", Some(&no_group));
    assert_eq!(s, 400, "{body}");
    assert!(body.to_string().contains("group"), "{body}");

    // A job through the API on the same group goes on from its committed offsets: it reads
    // only what is published afterwards.
    let (s, body) = request(addr, "POST", "/jobs/stream", Some(&api));
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["kind"], "stream", "{body}");
    assert_eq!(body["consumer"]["source"], "kafka", "{body}");
    wait_job(addr, &ingestd, "api", "started", |j| {
        j["state"] == "running"
    })
    .await;
    let later: Vec<String> = (1..=LATER)
        .map(|i| {
            json!({
                "person_id": 50_000_000 + i, "name": format!("later {i}"),
                "email": format!("later{i}@example.com"), "company_id": 1, "knows_id": 1,
            })
            .to_string()
        })
        .collect();
    let later_file = rig.write("later.jsonl", &later);
    rig.publish(&later_file, &[]);
    let total = (N + 1 + LATER) as i64;
    rig.wait_committed(total, JOB_DEADLINE, &workers, &["ingestd"])
        .await;
    // The status's record counts follow the job's progress events, a moment behind.
    let api_job = wait_job(addr, &ingestd, "api", "counted the later messages", |j| {
        j["consumer"]["messages_acked"] == LATER && j["records_committed"] == LATER
    })
    .await;
    assert_eq!(api_job["records_read"], LATER, "{api_job}");
    assert_eq!(api_job["records_committed"], LATER, "{api_job}");
    assert_eq!(api_job["records_dead_lettered"], 0, "{api_job}");
    let want_all = expected_counts(lines.iter().chain(&later).map(String::as_str));
    assert_eq!(rig.graph_counts(&graph).await, want_all);
    phase("api consumed the later messages");

    // SIGTERM: the service stops the job (committing, leaving the group) and exits 0.
    let mut ingestd = ingestd;
    kill(&ingestd, "TERM");
    let status = ingestd.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", ingestd.stderr());
    assert_eq!(sum(&rig.offsets().unwrap()), total);
    let log = ingestd.stderr();
    assert!(
        log.contains("stream job started") && log.contains(GROUP),
        "the service logs its Kafka jobs:\n{log}"
    );
    assert!(!log.contains(SECRET), "the password is logged:\n{log}");
    phase("done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_stream_job_waits_queued_until_the_broker_answers() {
    const PEOPLE: u64 = 500;
    let graph = weir_test_support::graph().await;
    let mut rig = KafkaRig::new(&graph);
    rig.broker.stop();
    // A short metadata refresh: the job may join before `weir publish` creates the topic.
    let (addr, _, ingestd) =
        start_ingestd(&rig, r#""topic.metadata.refresh.interval.ms" = "500","#);
    wait_ready(addr, &ingestd).await;
    let waiting = wait_job(addr, &ingestd, "cfg", "waited for the broker", |j| {
        j["state"] == "queued"
            && j["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("waiting: Kafka"))
    })
    .await;
    assert!(!waiting.to_string().contains(SECRET), "{waiting}");

    rig.broker.start();
    let (data, lines) = rig.generate(PEOPLE);
    rig.publish(&data, &[]);
    let workers = [("ingestd", &ingestd, None)];
    rig.wait_committed(PEOPLE as i64, JOB_DEADLINE, &workers, &["ingestd"])
        .await;
    let running = wait_job(addr, &ingestd, "cfg", "committed everything", |j| {
        j["records_committed"] == PEOPLE
    })
    .await;
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(running["error"], Value::Null, "{running}");
    assert_eq!(
        rig.graph_counts(&graph).await,
        expected_counts(lines.iter().map(String::as_str))
    );
    let log = ingestd.stderr();
    assert!(log.contains("stream job waiting for Kafka"), "{log}");
    assert!(!log.contains(SECRET), "the password is logged:\n{log}");
}
