//! The `weir` binary as built (jemalloc as its global allocator, heap profiler built in), run
//! as a child process (`weir serve` with an admin listener):
//!
//! - `/api/memory/stats` and `/metrics` carry real jemalloc figures (allocated and resident
//!   bytes present and above zero), behind the admin token;
//! - `--memory-log-interval 100ms --log-format json` writes the periodic `memory` line as one
//!   JSON object with the memory fields;
//! - `POST /api/memory/snapshot` answers the documented 503 JSON when profiling is off, and with
//!   `--heap-profiling` a gzipped pprof `Profile` (sample type `inuse_space`, samples whose
//!   locations exist, the `weir` binary among the mappings).
//!
//! Nothing here needs the graph server: the admin listener and the allocator do not.

use std::io::Read;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_test_support::process::{
    ChildProcess, HttpResponse, WAIT, free_port, http_request, is_memory_line, metric_value,
};

const TOKEN: &str = "admin-token-memory-0123";

/// `weir serve` with an admin listener, killed on drop; its stderr lines are collected.
struct Serve {
    child: ChildProcess,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WEIR_ADMIN_TOKEN", TOKEN)
            .env("WEIR_LOG", "warn,weir=info")
            .current_dir(dir.path())
            .args([
                "serve",
                "--no-auth",
                "--bind",
                "127.0.0.1:0",
                "--admin-bind",
                &admin.to_string(),
            ])
            .args(extra_args)
            .envs(extra_env.iter().copied());
        let serve = Serve {
            child: ChildProcess::spawn(&mut cmd),
            admin,
            _dir: dir,
        };
        serve.wait_admin();
        serve
    }

    /// Waits until the admin listener answers with a first memory sample.
    fn wait_admin(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.request("GET", "/api/memory/stats", true)
                && r.status == 200
                && !r.json()["current"].is_null()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "admin listener of weir serve did not answer; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        self.child.stderr()
    }

    fn request(&self, method: &str, path: &str, auth: bool) -> std::io::Result<HttpResponse> {
        http_request(self.admin, method, path, auth.then_some(TOKEN))
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self.request("GET", path, true).unwrap();
        (r.status, r.body)
    }

    fn json(&self, method: &str, path: &str, auth: bool) -> (u16, Value) {
        let r = self.request(method, path, auth).unwrap();
        (r.status, r.json())
    }
}

#[test]
fn allocator_stats_are_real_and_the_memory_line_is_json() {
    let serve = Serve::start(
        &["--log-format", "json", "--memory-log-interval", "100ms"],
        &[],
    );

    // Admin auth holds on the memory routes.
    assert_eq!(serve.json("GET", "/api/memory/stats", false).0, 401);
    assert_eq!(serve.json("POST", "/api/memory/snapshot", false).0, 401);

    let (status, stats) = serve.json("GET", "/api/memory/stats", true);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["allocator_stats_enabled"], true, "{stats}");
    let alloc = &stats["current"]["allocator"];
    for field in [
        "allocated_bytes",
        "active_bytes",
        "resident_bytes",
        "mapped_bytes",
    ] {
        assert!(alloc[field].as_u64().unwrap_or(0) > 0, "{field}: {stats}");
    }
    assert!(
        alloc["resident_bytes"].as_u64() >= alloc["allocated_bytes"].as_u64(),
        "{stats}"
    );

    let (status, body) = serve.get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for name in [
        "weir_memory_allocator_allocated_bytes",
        "weir_memory_allocator_resident_bytes",
    ] {
        let v = metric_value(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(v > 0.0, "{name} = {v}");
    }

    // The periodic memory line: one JSON object per line, with the memory fields.
    let line = serve.child.wait_memory_line();
    let f = &line["fields"];
    assert_eq!(line["level"], "INFO", "{line}");
    for field in [
        "used_bytes",
        "rss_bytes",
        "allocated_bytes",
        "resident_bytes",
    ] {
        assert!(f[field].as_u64().unwrap_or(0) > 0, "{field}: {line}");
    }
    assert!(
        f["level"].is_string() && f["leak_verdict"].is_string(),
        "{line}"
    );
    // More than one line: it is periodic.
    let deadline = Instant::now() + WAIT;
    while serve.child.memory_lines().len() < 3 {
        assert!(Instant::now() < deadline, "memory line not repeated");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Profiling is built in but not turned on: the documented 503 saying how.
    let (status, err) = serve.json("POST", "/api/memory/snapshot", true);
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"], "profiling_unavailable", "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("--heap-profiling") && msg.contains("WEIR_HEAP_PROFILING=1"),
        "{msg}"
    );
    assert_eq!(err.as_object().unwrap().len(), 2, "{err}");
    let (_, report) = serve.json("GET", "/api/memory/report", true);
    assert_eq!(report["profiling"]["available"], false, "{report}");
}

#[test]
fn without_the_flag_the_memory_line_of_serve_is_not_written_before_its_interval() {
    // Default interval for serve is 60 s: a fresh process has written none yet.
    let serve = Serve::start(&["--log-format", "json"], &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !serve.stderr().contains("\"message\":\"memory\""),
        "{}",
        serve.stderr()
    );
    // 0 turns it off.
    let off = Serve::start(&["--memory-log-interval", "0"], &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!off.stderr().contains("weir::memory"), "{}", off.stderr());
}

/// The parts of pprof's `perftools.profiles.Profile` this test checks.
#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(uint64, tag = "3")]
    address: u64,
}

fn decode_pprof(gz: &[u8]) -> Profile {
    use prost::Message as _;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("the snapshot is gzip");
    Profile::decode(raw.as_slice()).expect("the snapshot is a pprof Profile protobuf")
}

fn check_heap_profile(serve: &Serve) {
    let (_, report) = serve.json("GET", "/api/memory/report", true);
    assert_eq!(report["profiling"]["available"], true, "{report}");
    assert_eq!(report["profiling"]["format"], "pprof", "{report}");

    let r = serve.request("POST", "/api/memory/snapshot", true).unwrap();
    assert_eq!(
        r.status,
        200,
        "{}\n{}\nstderr:\n{}",
        r.head,
        r.text(),
        serve.stderr()
    );
    assert!(r.head.contains("heap.pb.gz"), "{}", r.head);
    let p = decode_pprof(&r.body);
    let s = |i: i64| p.string_table[usize::try_from(i).unwrap()].as_str();
    assert_eq!(p.string_table.first().map(String::as_str), Some(""));
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert!(types.contains(&("inuse_space", "bytes")), "{types:?}");
    assert!(!p.sample.is_empty(), "no samples in the heap profile");
    let ids: std::collections::HashSet<u64> = p.location.iter().map(|l| l.id).collect();
    for sample in &p.sample {
        assert_eq!(sample.value.len(), p.sample_type.len());
        assert!(!sample.location_id.is_empty());
        assert!(sample.location_id.iter().all(|id| ids.contains(id)));
    }
    let inuse = types.iter().position(|t| t.0 == "inuse_space").unwrap();
    let total: i64 = p.sample.iter().map(|x| x.value[inuse]).sum();
    assert!(total > 0, "inuse_space total {total}");
    assert!(
        p.mapping.iter().any(|m| s(m.filename).ends_with("/weir")),
        "the weir binary is among the mappings (for symbolisation): {:?}",
        p.mapping.iter().map(|m| s(m.filename)).collect::<Vec<_>>()
    );
}

#[test]
fn heap_profiling_flag_gives_a_pprof_heap_profile() {
    // One sample per 16 KiB instead of 512 KiB, so a small process surely has samples.
    let serve = Serve::start(
        &["--heap-profiling"],
        &[("MALLOC_CONF", "lg_prof_sample:14")],
    );
    check_heap_profile(&serve);
    // A second snapshot works too (the profiler stays active).
    check_heap_profile(&serve);
}

#[test]
fn heap_profiling_env_turns_it_on_too() {
    let serve = Serve::start(
        &[],
        &[
            ("WEIR_HEAP_PROFILING", "1"),
            ("MALLOC_CONF", "lg_prof_sample:14"),
        ],
    );
    check_heap_profile(&serve);
}

/// `weir ingest` writes the memory line only when asked (`--memory-log-interval`); a dry run
/// needs no graph server.
#[test]
fn ingest_writes_the_memory_line_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("people.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["generate", "--people", "100000"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&csv, &out.stdout).unwrap();
    let mapping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/people/mapping.toml"
    );
    let ingest = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WEIR_LOG", "warn,weir=info")
            .current_dir(dir.path())
            .args(["--log-format", "json", "ingest"])
            .arg(&csv)
            .args(["--mapping", mapping, "--dry-run"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(is_memory_line)
            .collect::<Vec<_>>()
    };
    let lines = ingest(&["--memory-log-interval", "10ms"]);
    assert!(!lines.is_empty(), "no memory line from weir ingest");
    assert!(lines[0]["fields"]["allocated_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(ingest(&[]).is_empty(), "ingest logs memory only when asked");
}
