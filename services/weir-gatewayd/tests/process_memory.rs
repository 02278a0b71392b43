//! `weir-gatewayd` as built (jemalloc as its global allocator, heap profiler built in), run as a
//! child process against the real NATS bus, with `--log-format json --memory-log-interval
//! 100ms` and heap profiling turned on (`WEIR_HEAP_PROFILING=1`): real jemalloc figures in
//! `/api/memory/stats` and `/metrics`, the periodic `memory` line as JSON, a gzipped heap
//! profile from `POST /api/memory/snapshot`
//! (`weir_test_support::process::assert_memory_observability`).

use std::net::SocketAddr;
use std::process::Command;

use weir_test_support::process::{
    ChildProcess, assert_memory_observability, free_port, service_env,
};

const TOKEN: &str = "admin-token-memory-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_stats_memory_line_and_heap_profile() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("MEM");
    let dir = tempfile::tempdir().unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-gatewayd"));
    service_env(&mut cmd, &stream)
        .env("WEIR_API_KEYS", "svc-memory-key-0123456789")
        .env("WEIR_BIND", format!("127.0.0.1:{}", free_port()))
        .env("WEIR_ADMIN_BIND", admin.to_string())
        .env("WEIR_ADMIN_TOKEN", TOKEN)
        .env("WEIR_LOG", "info")
        // One sample per 16 KiB instead of 512 KiB, so a small process surely has samples.
        .env("MALLOC_CONF", "lg_prof_sample:14")
        .env("WEIR_HEAP_PROFILING", "1")
        .current_dir(dir.path())
        .args(["--log-format", "json", "--memory-log-interval", "100ms"]);
    let child = ChildProcess::spawn(&mut cmd);
    assert_memory_observability(&child, admin, TOKEN).await;
}
