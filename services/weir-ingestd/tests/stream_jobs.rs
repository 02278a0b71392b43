//! Stream jobs in `weir-ingestd`, against the real graph server and NATS: a `[[jobs.streams]]`
//! job started with the service and one started through `POST /jobs/stream` consume a
//! JetStream subject (upserts, deletes, a poison record), show in `GET /jobs` with their
//! consumer counters and on the bus's progress feed (what `ingestProgress` serves), stop on
//! `DELETE /jobs/{id}` and on shutdown with nothing left unacknowledged.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weir_app::jobs::{DeliverPolicy, StreamJobConfig};
use weir_app::settings::{Role, Settings};
use weir_bus::{Bus, BusConfig, NatsBusConfig};
use weir_config::Secret;
use weir_gateway::AuthConfig;

const KEY: &str = "stream-jobs-test-key-1";
const WAIT: Duration = Duration::from_secs(120);
const N: u64 = 5_000;
const PER_MESSAGE: u64 = 50;
const MAPPING: &str = "[input]\nformat = \"jsonl\"\noperation_field = \"op\"\n\n[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\", field = \"person_id\", type = \"int\" },\n  { name = \"name\" },\n]\n";

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn job(addr: SocketAddr, id: &str) -> Value {
    let (s, body) = http(addr, "GET", &format!("/jobs/{id}"), Some(KEY), b"").await;
    assert_eq!(s, 200, "{body}");
    body
}

/// Polls `GET /jobs/{id}` until `done` holds.
async fn wait_job(addr: SocketAddr, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = job(addr, id).await;
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// JSON Lines bodies of `PER_MESSAGE` people each, ids `from..from + n`.
fn bodies(from: u64, n: u64) -> Vec<bytes::Bytes> {
    (from..from + n)
        .collect::<Vec<_>>()
        .chunks(PER_MESSAGE as usize)
        .map(|ids| {
            ids.iter()
                .map(|i| json!({"person_id": i, "name": format!("person {i}")}).to_string() + "\n")
                .collect::<String>()
                .into()
        })
        .collect()
}

async fn publish(client: &async_nats::Client, stream: &str, subject: &str, b: Vec<bytes::Bytes>) {
    weir_sources::publish_records(client, stream, subject, b.into_iter().map(Ok), 64)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_jobs_consume_show_in_jobs_and_progress_and_stop_with_nothing_unacked() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let bus_stream = nats.name("SJOBS");
    let in_stream = nats.name("SIN");
    let subject = format!("{}.in", in_stream.to_lowercase());
    let label = graph.label("Person");
    let prefix = format!("{}_", graph.namespace);
    let dir = tempfile::tempdir().unwrap();
    let mapping_file = dir.path().join("mapping.toml");
    std::fs::write(&mapping_file, MAPPING).unwrap();

    let settings = weir_test_support::settings();
    let client = async_nats::connect(&settings.nats.url).await.unwrap();
    let mut c = Settings {
        graph: settings.graph,
        auth: AuthConfig::ApiKeys {
            keys: vec![Secret::new(KEY)],
        },
        bus: BusConfig::Nats(NatsBusConfig {
            url: settings.nats.url.clone(),
            stream: bus_stream.clone(),
            subject_prefix: bus_stream.to_lowercase(),
            ..NatsBusConfig::default()
        }),
        shutdown_grace: Duration::from_secs(30),
        ..Settings::defaults(Role::Ingestd)
    };
    let admin = SocketAddr::from(([127, 0, 0, 1], weir_test_support::process::free_port()));
    c.admin.bind = Some(admin);
    c.jobs.job_dir = dir.path().join("jobs");
    c.jobs.spool_dir = dir.path().join("spool");
    c.jobs.streams = vec![StreamJobConfig {
        id: "cfg".into(),
        mapping: mapping_file.clone(),
        label_prefix: prefix.clone(),
        stream: Some(in_stream.clone()),
        subject: Some(subject.clone()),
        consumer: Some("c1".into()),
        deliver: Some(DeliverPolicy::All),
        ack_wait: Some(Duration::from_secs(30)),
        max_ack_pending: Some(20_000),
        ..StreamJobConfig::default()
    }];
    let bus = Bus::connect(&c.bus).await.unwrap();
    let mut progress = bus.subscribe_progress().await.unwrap();

    // The records are in the stream before the service starts: the configured job takes
    // them from the start. One message carries a poison record among good ones.
    let mut b = bodies(0, N);
    let poison = r#"{"person_id":"not-a-number","name":"poison"}"#;
    b[10] = format!("{}{poison}\n", String::from_utf8_lossy(&b[10])).into();
    let messages = b.len() as u64;
    publish(&client, &in_stream, &subject, b).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(weir_app::app::run_on(
        Role::Ingestd,
        c,
        listener,
        None,
        shutdown.clone(),
    ));

    let cfg = wait_job(addr, "cfg", "committed everything", |j| {
        j["records_committed"] == N
            && j["records_dead_lettered"] == 1
            && j["consumer"]["messages_acked"] == messages
    })
    .await;
    assert_eq!(cfg["kind"], "stream", "{cfg}");
    assert_eq!(cfg["state"], "running", "{cfg}");
    assert_eq!(cfg["checkpoint"], Value::Null, "{cfg}");
    assert_eq!(cfg["consumer"]["consumer"], "c1", "{cfg}");
    assert_eq!(graph.count(&label).await, N as i64);
    let (s, list) = http(addr, "GET", "/jobs", Some(KEY), b"").await;
    assert_eq!(s, 200);
    assert!(
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == "cfg" && j["kind"] == "stream"),
        "{list}"
    );
    // The progress feed (what the gateway's ingestProgress serves) carries the stream job.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let p = tokio::time::timeout_at(deadline, progress.next())
            .await
            .expect("progress of the stream job")
            .unwrap()
            .unwrap();
        if p.job_id == "cfg" && p.records_committed == N {
            assert_eq!(p.records_dead_lettered, 1);
            break;
        }
    }
    // The poison record is dead-lettered with its reason and stream sequence (message 11).
    let dead = std::fs::read_to_string(cfg["dead_letters"].as_str().unwrap()).unwrap();
    let dead: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["raw"].as_str().unwrap().contains("poison"));
    assert!(dead[0]["error"].as_str().unwrap().contains("person_id"));
    assert_eq!(dead[0]["line"], 11, "{dead:?}");

    // `/metrics` carries the running stream job's consumer.
    let (s, text) = {
        let r = weir_test_support::process::http_request(admin, "GET", "/metrics", None)
            .expect("an answer from /metrics");
        (r.status, r.text())
    };
    assert_eq!(s, 200, "{text}");
    for line in [
        format!("weir_consumer_messages_acked_total{{consumer=\"c1\"}} {messages}"),
        "# TYPE weir_consumer_pending_messages gauge".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }

    // A job through the API, on a second durable consumer from new messages on.
    let api = json!({
        "id": "api", "stream": in_stream, "subject": subject, "consumer": "c2",
        "deliver": "new", "mapping": MAPPING, "label_prefix": prefix,
    });
    let (s, body) = http(
        addr,
        "POST",
        "/jobs/stream",
        Some(KEY),
        api.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["kind"], "stream");
    let (s, body) = http(
        addr,
        "POST",
        "/jobs/stream",
        Some(KEY),
        api.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 409, "the same id again: {body}");
    // A request cannot point the service at another NATS server.
    let mut elsewhere = api.clone();
    elsewhere["id"] = json!("other");
    elsewhere["url"] = json!("nats://203.0.113.1:4222");
    let (s, body) = http(
        addr,
        "POST",
        "/jobs/stream",
        Some(KEY),
        elsewhere.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    let mut bad = api.clone();
    bad["id"] = json!("bad");
    bad["consumer"] = json!("no spaces");
    let (s, body) = http(
        addr,
        "POST",
        "/jobs/stream",
        Some(KEY),
        bad.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("consumer"),
        "{body}"
    );
    assert_eq!(
        http(
            addr,
            "POST",
            "/jobs/stream",
            None,
            api.to_string().as_bytes()
        )
        .await
        .0,
        401
    );
    wait_job(addr, "api", "started", |j| j["state"] == "running").await;

    // Deletes reach both consumers: people 0..10 and a key never written.
    let mut deletes: String = (0..10)
        .map(|i| json!({"op": "delete", "person_id": i}).to_string() + "\n")
        .collect();
    deletes.push_str(&json!({"op": "delete", "person_id": 99_999_999}).to_string());
    publish(&client, &in_stream, &subject, vec![deletes.into()]).await;
    let api_job = wait_job(addr, "api", "applied the deletes", |j| {
        j["records_committed"] == 11 && j["consumer"]["messages_acked"] == 1
    })
    .await;
    assert_eq!(api_job["records_read"], 11, "{api_job}");
    wait_job(addr, "cfg", "applied the deletes", |j| {
        j["records_committed"] == N + 11
    })
    .await;
    assert_eq!(graph.count(&label).await, (N - 10) as i64);

    // DELETE stops a stream job; it ends cancelled, its messages all acknowledged.
    let (s, _) = http(addr, "DELETE", "/jobs/api", Some(KEY), b"").await;
    assert_eq!(s, 202);
    let stopped = wait_job(addr, "api", "stopped", |j| j["state"] == "cancelled").await;
    assert_eq!(stopped["error"], Value::Null, "{stopped}");

    // Shutdown stops the configured one the same way.
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let js = async_nats::jetstream::new(client);
    let mut st = js.get_stream(&in_stream).await.unwrap();
    for name in ["c1", "c2"] {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            st.get_consumer(name).await.unwrap();
        let info = consumer.info().await.unwrap();
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "{name}: {info:?}"
        );
    }
    let _ = st.info().await;
    js.delete_stream(&in_stream).await.unwrap();
}
