//! Millions of generated records (far more than the memory bound) through a slow sink at the
//! default settings, in a child process so other tests' memory does not count: the child's
//! peak RSS growth stays under `PipelineConfig::memory_bound_bytes()`, and its absolute peak
//! under 64 MiB.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weir-stream-harness");

#[test]
fn peak_rss_stays_under_the_documented_bound() {
    let rows = 3_000_000u64;
    let out = Command::new(BIN)
        .args(["rss", &rows.to_string(), "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (baseline, peak, bound, read) = (
        v["baseline"].as_u64().unwrap(),
        v["peak"].as_u64().unwrap(),
        v["bound"].as_u64().unwrap(),
        v["bytes_read"].as_u64().unwrap(),
    );
    eprintln!("baseline {baseline} peak {peak} bound {bound} input {read}");
    assert!(
        read > 4 * bound,
        "input ({read}) must dwarf the bound ({bound})"
    );
    assert!(
        peak - baseline <= bound,
        "RSS grew by {} bytes, over the documented bound of {bound}",
        peak - baseline
    );
    assert!(peak <= 64 << 20, "peak RSS {peak} over 64 MiB");
}
