//! A job whose CSV header lacks a column the mapping needs fails with that error in its
//! status (naming the column and listing the header), and writes nothing; an Excel export
//! (byte-order mark, CRLF) runs to completion. In-process against the real graph server and
//! NATS.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weir_app::settings::{Role, Settings};
use weir_bus::{BusConfig, NatsBusConfig};
use weir_config::Secret;
use weir_gateway::AuthConfig;

const KEY: &str = "ingestd-header-test-key";
const WAIT: Duration = Duration::from_secs(45);
const MAPPING: &str = "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\", field = \"person_id\", type = \"int\" },\n  { name = \"name\" },\n]\n";

async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn wait_job(addr: SocketAddr, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, body) = http(addr, "GET", &format!("/jobs/{id}"), b"").await;
        assert_eq!(s, 200, "{body}");
        if ["completed", "failed", "cancelled"].contains(&body["state"].as_str().unwrap()) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never ended: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_header_missing_a_mapped_column_fails_with_that_error() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("HDR");
    let label = graph.label("Person");
    let prefix = format!("{}_", graph.namespace);
    let dir = tempfile::tempdir().unwrap();
    let settings = weir_test_support::settings();
    let mut c = Settings {
        graph: settings.graph,
        auth: AuthConfig::ApiKeys {
            keys: vec![Secret::new(KEY)],
        },
        bus: BusConfig::Nats(NatsBusConfig {
            url: settings.nats.url,
            stream: stream.clone(),
            subject_prefix: stream.to_lowercase(),
            ..NatsBusConfig::default()
        }),
        ..Settings::defaults(Role::Ingestd)
    };
    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    c.jobs.input_roots = vec![inputs.clone()];
    c.jobs.job_dir = dir.path().join("jobs");
    c.jobs.spool_dir = dir.path().join("spool");
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
    let deadline = tokio::time::Instant::now() + WAIT;
    while http(addr, "GET", "/ready", b"").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut rows = String::new();
    for i in 0..30 {
        rows.push_str(&format!("{i},person {i}\r\n"));
    }
    std::fs::write(inputs.join("bad.csv"), format!("id,name\r\n{rows}")).unwrap();
    let excel = format!("\u{feff}person_id,name\r\n{rows}");
    std::fs::write(inputs.join("excel.csv"), excel).unwrap();

    let submit = |id: &str, file: &str| {
        json!({"id": id, "path": inputs.join(file), "mapping": MAPPING, "label_prefix": prefix})
            .to_string()
    };
    let (s, body) = http(addr, "POST", "/jobs", submit("bad", "bad.csv").as_bytes()).await;
    assert_eq!(s, 202, "{body}");
    let done = wait_job(addr, "bad").await;
    assert_eq!(done["state"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("bad.csv: header row: column `person_id` read by the mapping is missing")
            && error.contains("columns are: \"id\", \"name\""),
        "{error}"
    );
    assert_eq!(done["records_committed"], 0);
    assert_eq!(graph.count(&label).await, 0);

    let (s, body) = http(
        addr,
        "POST",
        "/jobs",
        submit("excel", "excel.csv").as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let done = wait_job(addr, "excel").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["records_committed"], 30);
    assert_eq!(graph.count(&label).await, 30);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
