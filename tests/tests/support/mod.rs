//! Helpers of the cross-process change-feed tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use weir_test_support::process::{
    ChildProcess, free_port, http_request, service_env, workspace_binary,
};

pub const KEY: &str = "change-feed-key-0123456789";
pub const PEOPLE: u64 = 100_000;
/// Generous: a debug build on a shared 2-core machine.
pub const JOB_DEADLINE: Duration = Duration::from_secs(600);

/// `examples/people/mapping.toml`.
pub fn mapping_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/people/mapping.toml")
}

/// The text of [`mapping_path`].
pub fn mapping() -> String {
    let p = mapping_path();
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `weir generate --people n` into `dir`.
pub fn generate(dir: &Path, n: u64) -> PathBuf {
    let out = dir.join("people.csv");
    let status = Command::new(workspace_binary("weir"))
        .args(["generate", "--people", &n.to_string(), "--out"])
        .arg(&out)
        .status()
        .expect("running weir generate");
    assert!(status.success(), "weir generate failed");
    out
}

pub fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = http_request(addr, "GET", path, Some(KEY)).expect("an HTTP answer");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

pub async fn wait_ready(addr: SocketAddr, child: &ChildProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http_request(addr, "GET", "/ready", None)
            && r.status == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} not ready; its log:\n{}",
            child.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn wait_subscriptions(addr: SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get_json(addr, "/health");
        if body["subscriptions"].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions never {n}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_job(addr: SocketAddr, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + JOB_DEADLINE;
    loop {
        let (status, body) = get_json(addr, &format!("/jobs/{id}"));
        assert_eq!(status, 200, "{body}");
        if ["completed", "failed", "cancelled"].contains(&body["state"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not end: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts `weir-ingestd` on a free port with the bus stream `stream`, input root, job and
/// spool directories under `dir`, an admin listener, and `extra` environment.
pub fn spawn_ingestd(
    stream: &str,
    dir: &Path,
    extra: &[(&str, String)],
) -> (SocketAddr, SocketAddr, ChildProcess) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("weir-ingestd"));
    service_env(&mut cmd, stream)
        .env("WEIR_API_KEYS", KEY)
        .env("WEIR_LOG", "warn")
        .env("WEIR_BIND", addr.to_string())
        .env("WEIR_ADMIN_BIND", admin.to_string())
        .env("WEIR_ADMIN_TOKEN", KEY)
        .env("WEIR_INPUT_ROOTS", dir)
        .env("WEIR_JOB_DIR", dir.join("jobs"))
        .env("WEIR_SPOOL_DIR", dir.join("spool"));
    cmd.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
    (addr, admin, ChildProcess::spawn(&mut cmd))
}

/// Starts `weir-gatewayd` on a free port with the bus stream `stream`, an admin listener, and
/// `extra` environment.
pub fn spawn_gatewayd(
    stream: &str,
    extra: &[(&str, String)],
) -> (SocketAddr, SocketAddr, ChildProcess) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(workspace_binary("weir-gatewayd"));
    service_env(&mut cmd, stream)
        .env("WEIR_API_KEYS", KEY)
        .env("WEIR_LOG", "warn")
        .env("WEIR_BIND", addr.to_string())
        .env("WEIR_ADMIN_BIND", admin.to_string())
        .env("WEIR_ADMIN_TOKEN", KEY);
    cmd.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
    (addr, admin, ChildProcess::spawn(&mut cmd))
}

/// `POST /jobs` for the file `path` with the example mapping under `prefix`, as job `id`.
pub fn submit_file(addr: SocketAddr, path: &Path, prefix: &str, id: &str) {
    let body = serde_json::json!({
        "path": path,
        "mapping": mapping(),
        "label_prefix": prefix,
        "id": id,
    });
    let r = weir_test_support::process::http_request_with_body(
        addr,
        "POST",
        "/jobs",
        Some(KEY),
        "application/json",
        body.to_string().as_bytes(),
    )
    .expect("an HTTP answer");
    assert_eq!(r.status, 202, "{}", r.text());
}

/// The value of the sample `name{labels}` in Prometheus text (labels as written, e.g.
/// `reason="decode"`).
pub fn labelled_metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}
