//! `weir-ingestd` in-process against the real graph server and NATS (a stream per test):
//! auth, input roots, streamed uploads, upload bound, changes published after commit,
//! readiness gating, the job bound (429), graceful shutdown writing a checkpoint that a
//! resubmitted job resumes from, and mapping validation before an upload.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use weir_app::settings::{Role, Settings};
use weir_bus::{Bus, BusConfig, NatsBusConfig};
use weir_config::Secret;
use weir_gateway::AuthConfig;

const KEY: &str = "ingestd-test-key-123";
const WAIT: Duration = Duration::from_secs(45);
const MAPPING: &str = "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\", field = \"person_id\", type = \"int\" },\n  { name = \"name\" },\n]\n";

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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
    // The server may answer (e.g. 413) before reading the whole body.
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

fn csv(from: u64, n: u64) -> String {
    let mut s = String::from("person_id,name\n");
    for i in from..from + n {
        s.push_str(&format!("{i},person {i}\n"));
    }
    s
}

fn config(stream: &str, dir: &std::path::Path) -> Settings {
    let settings = weir_test_support::settings();
    let mut c = Settings {
        graph: settings.graph,
        auth: AuthConfig::ApiKeys {
            keys: vec![Secret::new(KEY)],
        },
        bus: BusConfig::Nats(NatsBusConfig {
            url: settings.nats.url,
            stream: stream.into(),
            // Unique subjects too: a stream a killed run left behind must not overlap.
            subject_prefix: stream.to_lowercase(),
            ..NatsBusConfig::default()
        }),
        shutdown_grace: Duration::from_secs(20),
        ..Settings::defaults(Role::Ingestd)
    };
    c.jobs.input_roots = vec![dir.join("inputs")];
    c.jobs.job_dir = dir.join("jobs");
    c.jobs.spool_dir = dir.join("spool");
    c.jobs.max_upload_bytes = 8 << 10;
    std::fs::create_dir_all(dir.join("inputs")).unwrap();
    c
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), weir_app::app::AppError>>,
}

async fn start(c: Settings) -> Running {
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
    Running {
        addr,
        shutdown,
        task,
    }
}

async fn wait_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, body) = http(addr, "GET", "/ready", None, b"").await;
        if s == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_job(addr: SocketAddr, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, body) = http(addr, "GET", &format!("/jobs/{id}"), Some(KEY), b"").await;
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
async fn uploads_run_authenticated_bounded_and_publish_after_commit() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("JOBS");
    let label = graph.label("Person");
    let prefix = format!("{}_", graph.namespace);
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&stream, dir.path());
    c.jobs.history = 1;
    let bus_config = c.bus.clone();
    let svc = start(c).await;
    wait_ready(svc.addr).await;

    assert_eq!(http(svc.addr, "GET", "/jobs", None, b"").await.0, 401);
    assert_eq!(
        http(svc.addr, "GET", "/jobs", Some("wrong"), b"").await.0,
        401
    );
    let outside = json!({"path": "/etc/passwd", "mapping": MAPPING}).to_string();
    let (s, body) = http(svc.addr, "POST", "/jobs", Some(KEY), outside.as_bytes()).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["code"], "PATH_NOT_ALLOWED");
    let bad =
        json!({"path": dir.path().join("inputs"), "mapping": "[[nodes]]\nlabel = 1"}).to_string();
    let (s, body) = http(svc.addr, "POST", "/jobs", Some(KEY), bad.as_bytes()).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_MAPPING");

    let bus = Bus::connect(&bus_config).await.unwrap();
    let upload = format!(
        "/jobs/upload?id=up1&format=csv&label_prefix={}&mapping={}",
        encode(&prefix),
        encode(MAPPING)
    );
    let (s, body) = http(svc.addr, "POST", &upload, Some(KEY), csv(0, 40).as_bytes()).await;
    assert_eq!(s, 202, "{body}");
    let done = wait_job(svc.addr, "up1").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["records_committed"], 40);
    assert_eq!(graph.count(&label).await, 40);
    // Every committed record's change is on the bus, once.
    let mut changes = bus.subscribe_changes(Some(0)).await.unwrap();
    let mut keys = std::collections::BTreeSet::new();
    while keys.len() < 40 {
        let b = tokio::time::timeout(WAIT, changes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(b.job_id, "up1");
        for e in b.events.iter().cloned() {
            assert!(keys.insert(e.key), "duplicate change");
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), changes.next())
            .await
            .is_err(),
        "no extra batches"
    );
    // The spooled body is gone once the job ended.
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool")).unwrap().count(),
        0
    );

    // Finished jobs are kept up to `jobs.history` (1 here): the next one pushes up1 out.
    let (s, body) = http(
        svc.addr,
        "POST",
        &upload.replace("up1", "up3"),
        Some(KEY),
        csv(500, 3).as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(wait_job(svc.addr, "up3").await["state"], "completed");
    let (s, body) = http(
        svc.addr,
        "POST",
        &upload.replace("up1", "up4"),
        Some(KEY),
        csv(600, 3).as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(wait_job(svc.addr, "up4").await["state"], "completed");
    assert_eq!(
        http(svc.addr, "GET", "/jobs/up1", Some(KEY), b"").await.0,
        404
    );
    let (_, list) = http(svc.addr, "GET", "/jobs", Some(KEY), b"").await;
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.len() <= 2 && ids.contains(&"up4") && !ids.contains(&"up1"),
        "{list}"
    );

    let big = csv(1000, 2000);
    let (s, body) = http(
        svc.addr,
        "POST",
        &upload.replace("up1", "up2"),
        Some(KEY),
        big.as_bytes(),
    )
    .await;
    assert_eq!(s, 413, "{body}");

    svc.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_the_bus_and_jobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("UNUSED", dir.path());
    c.bus = BusConfig::Nats(NatsBusConfig {
        url: "nats://127.0.0.1:9".into(),
        connect_timeout: Duration::from_millis(300),
        ..NatsBusConfig::default()
    });
    let svc = start(c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, body) = http(svc.addr, "GET", "/ready", None, b"").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["components"]["bus"]["status"], "down");
    std::fs::write(dir.path().join("inputs/a.csv"), csv(0, 3)).unwrap();
    let job = json!({"path": dir.path().join("inputs/a.csv"), "mapping": MAPPING}).to_string();
    let (s, body) = http(svc.addr, "POST", "/jobs", Some(KEY), job.as_bytes()).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "NOT_READY");
    svc.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}

/// `POST /api/mapping/validate` needs the key, gives the verdict with line and field, and needs
/// neither the graph nor the bus (it runs before anything is uploaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_are_validated_before_upload_with_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("UNUSED", dir.path());
    c.bus = BusConfig::Nats(NatsBusConfig {
        url: "nats://127.0.0.1:9".into(),
        connect_timeout: Duration::from_millis(300),
        ..NatsBusConfig::default()
    });
    c.jobs.max_mapping_bytes = 1024;
    let svc = start(c).await;
    let path = "/api/mapping/validate";
    let good = json!({"mapping": MAPPING, "label_prefix": "t_"}).to_string();
    assert_eq!(
        http(svc.addr, "POST", path, None, good.as_bytes()).await.0,
        401
    );
    assert_eq!(
        http(svc.addr, "POST", path, Some("wrong"), good.as_bytes())
            .await
            .0,
        401
    );
    let (s, body) = http(svc.addr, "POST", path, Some(KEY), good.as_bytes()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["valid"], true, "{body}");
    assert_eq!(body["nodes"][0]["label"], "t_Person");
    let bad = json!({"mapping": MAPPING.replace("\"int\"", "\"integer\"")}).to_string();
    let (s, body) = http(svc.addr, "POST", path, Some(KEY), bad.as_bytes()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["valid"], false, "{body}");
    assert_eq!(body["errors"][0]["line"], 5, "{body}");
    assert_eq!(body["errors"][0]["field"], "nodes[0].properties[0].type");
    let (s, body) = http(svc.addr, "POST", path, Some(KEY), b"[[nodes]]").await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "BAD_REQUEST");
    let big = json!({"mapping": "#".repeat(2000)}).to_string();
    let (s, _) = http(svc.addr, "POST", path, Some(KEY), big.as_bytes()).await;
    assert_eq!(s, 400);
    svc.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_checkpoints_and_a_resubmitted_job_resumes() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("CKPT");
    let label = graph.label("Person");
    let prefix = format!("{}_", graph.namespace);
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&stream, dir.path());
    c.jobs.max_concurrent = 1;
    c.jobs.max_queued = 0;
    c.jobs.batch_size = 100;
    c.jobs.concurrency = 1;
    // Large enough that the job is still running when its first progress shows a commit
    // (20 k rows finished within a second here once batches were prepared ahead).
    let total = 100_000u64;
    let input = dir.path().join("inputs/people.csv");
    std::fs::write(&input, csv(0, total)).unwrap();
    let job =
        json!({"path": input, "mapping": MAPPING, "label_prefix": prefix, "id": "big"}).to_string();

    let svc = start(c.clone()).await;
    wait_ready(svc.addr).await;
    let (s, body) = http(svc.addr, "POST", "/jobs", Some(KEY), job.as_bytes()).await;
    assert_eq!(s, 202, "{body}");
    // One running, none may queue: the next is refused.
    let other = json!({"path": input, "mapping": MAPPING, "label_prefix": prefix, "id": "other"})
        .to_string();
    let (s, body) = http(svc.addr, "POST", "/jobs", Some(KEY), other.as_bytes()).await;
    assert_eq!(s, 429, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, st) = http(svc.addr, "GET", "/jobs/big", Some(KEY), b"").await;
        assert_ne!(
            st["state"], "completed",
            "job finished before the test could stop it"
        );
        if st["records_committed"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing committed: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    svc.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
    let ckpt = dir.path().join("jobs/big.checkpoint.json");
    assert!(ckpt.is_file(), "shutdown must leave a checkpoint");
    let committed_before = graph.count(&label).await;
    assert!(committed_before > 0 && (committed_before as u64) < total);

    let svc = start(c).await;
    wait_ready(svc.addr).await;
    let (s, body) = http(svc.addr, "POST", "/jobs", Some(KEY), job.as_bytes()).await;
    assert_eq!(s, 202, "{body}");
    let done = wait_job(svc.addr, "big").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert!(
        done["records_read"].as_u64().unwrap() < total,
        "the resumed run skips what was committed: {done}"
    );
    assert_eq!(graph.count(&label).await, total as i64);
    assert!(!ckpt.exists(), "a completed job removes its checkpoint");
    svc.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}

/// Sends an upload's header and `part` of a body announced as `len` bytes, and keeps the
/// connection open (the body stalls).
async fn stalled_upload(
    addr: SocketAddr,
    path: &str,
    len: usize,
    part: &[u8],
) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: text/csv\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(part).await.unwrap();
    s
}

async fn read_status(s: &mut tokio::net::TcpStream) -> (u16, Value) {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("spool")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_before_spooling_when_the_disk_budget_says_so() {
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("QUOTA");
    let prefix = format!("{}_", graph.namespace);
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&stream, dir.path());
    c.jobs.max_upload_bytes = 64 << 10;
    c.jobs.max_spool_bytes = 128 << 10;
    c.jobs.max_concurrent_uploads = 1;
    c.jobs.upload_idle_timeout = Duration::from_secs(2);
    let svc = start(c).await;
    wait_ready(svc.addr).await;
    let upload = |id: &str| {
        format!(
            "/jobs/upload?id={id}&format=csv&label_prefix={}&mapping={}",
            encode(&prefix),
            encode(MAPPING)
        )
    };

    // Announced larger than allowed: 413 before anything is spooled.
    let mut big = stalled_upload(svc.addr, &upload("big"), 1 << 20, b"person_id,name\n").await;
    let (s, body) = read_status(&mut big).await;
    assert_eq!(s, 413, "{body}");
    assert_eq!(spool_files(dir.path()), 0);

    // One upload at a time: while one stalls, a second is refused with 429 at once.
    let mut first =
        stalled_upload(svc.addr, &upload("first"), 1000, b"person_id,name\n1,a\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        spool_files(dir.path()),
        1,
        "the first upload is being spooled"
    );
    let (s, body) = http(
        svc.addr,
        "POST",
        &upload("second"),
        Some(KEY),
        csv(0, 3).as_bytes(),
    )
    .await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"]["code"], "TOO_MANY_UPLOADS");
    assert_eq!(
        spool_files(dir.path()),
        1,
        "the refused upload spooled nothing"
    );
    // The stalled one is abandoned after jobs.upload_idle_timeout (408), its part deleted.
    let (s, body) = read_status(&mut first).await;
    assert_eq!(s, 408, "{body}");
    assert_eq!(body["error"]["code"], "UPLOAD_STALLED");
    assert_eq!(spool_files(dir.path()), 0);

    // A spool already holding its budget refuses the next upload with 507.
    std::fs::write(dir.path().join("spool/held.upload"), vec![b'x'; 128 << 10]).unwrap();
    let (s, body) = http(
        svc.addr,
        "POST",
        &upload("full"),
        Some(KEY),
        csv(0, 3).as_bytes(),
    )
    .await;
    assert_eq!(s, 507, "{body}");
    assert_eq!(body["error"]["code"], "SPOOL_FULL");
    std::fs::remove_file(dir.path().join("spool/held.upload")).unwrap();
    let (s, body) = http(
        svc.addr,
        "POST",
        &upload("fits"),
        Some(KEY),
        csv(0, 3).as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(wait_job(svc.addr, "fits").await["state"], "completed");
    svc.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
    drop(graph.label("Person"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stops_at_its_dead_letter_budget_byte_cap_and_decompressed_bound() {
    use std::io::Write as _;
    let graph = weir_test_support::graph().await;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("BUDGET");
    let prefix = format!("{}_", graph.namespace);
    let _ = graph.label("Person");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&stream, dir.path());
    c.jobs.max_upload_bytes = 4 << 20;
    c.jobs.max_dead_letters = 50;
    c.jobs.max_dead_letter_bytes = 64 << 10;
    c.jobs.max_decompressed_bytes = 1 << 20;
    let svc = start(c).await;
    wait_ready(svc.addr).await;
    let inputs = dir.path().join("inputs");
    let submit = |id: &str, file: &str| {
        json!({"id": id, "path": inputs.join(file), "mapping": MAPPING, "label_prefix": prefix, "format": "csv"})
            .to_string()
    };
    // 200 rows whose key is not a number: dead letters past the budget of 50.
    let mut bad = String::from("person_id,name\n");
    for i in 0..200 {
        bad.push_str(&format!("x{i},n\n"));
    }
    std::fs::write(inputs.join("bad.csv"), &bad).unwrap();
    let (s, body) = http(
        svc.addr,
        "POST",
        "/jobs",
        Some(KEY),
        submit("budget", "bad.csv").as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let done = wait_job(svc.addr, "budget").await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("error budget"),
        "{done}"
    );

    // Bad rows with long fields: the dead-letter file reaches its 64 KiB cap first.
    let mut long = String::from("person_id,name\n");
    for i in 0..40 {
        long.push_str(&format!("y{i},{}\n", "z".repeat(4000)));
    }
    std::fs::write(inputs.join("long.csv"), &long).unwrap();
    let (s, body) = http(
        svc.addr,
        "POST",
        "/jobs",
        Some(KEY),
        submit("bytes", "long.csv").as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let done = wait_job(svc.addr, "bytes").await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("cap of 65536 bytes"),
        "{done}"
    );
    let letters = std::fs::metadata(dir.path().join("jobs/bytes.dead-letters.jsonl")).unwrap();
    assert!(letters.len() <= 64 << 10, "{} bytes", letters.len());

    // A small gzip that expands past 1 MiB: the input stops with a clear error.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(b"person_id,name\n").unwrap();
    for i in 0..200_000u32 {
        gz.write_all(format!("{i},aaaaaaaaaaaaaaaaaaaa\n").as_bytes())
            .unwrap();
    }
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20);
    std::fs::write(inputs.join("bomb.csv.gz"), &gz).unwrap();
    let (s, body) = http(
        svc.addr,
        "POST",
        "/jobs",
        Some(KEY),
        submit("bomb", "bomb.csv.gz").as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let done = wait_job(svc.addr, "bomb").await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("decompresses to more than"),
        "{done}"
    );
    svc.shutdown.cancel();
    svc.task.await.unwrap().unwrap();
}
