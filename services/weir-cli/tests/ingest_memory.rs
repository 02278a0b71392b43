//! `weir ingest` of a generated file far larger than `--memory-limit` stays under the limit:
//! peak RSS (VmHWM) of the child sampled while it runs.

mod support;

use std::time::Duration;

use support::{generate, nodes_mapping, summary_value, weir};
use weir_memwatch::procfs::peak_rss_bytes;

const ROWS: u64 = 25_000;
const LIMIT: u64 = 48 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_rss_stays_under_the_memory_limit() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let person = tg.label("Person");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide.csv");
    generate(&input, ROWS, 4000);
    let size = std::fs::metadata(&input).unwrap().len();
    assert!(
        size > 2 * LIMIT,
        "input {size} bytes is not far larger than the limit"
    );

    let child = weir()
        .arg("ingest")
        .arg(&input)
        .arg("--mapping")
        .arg(nodes_mapping())
        .args([
            "--label-prefix",
            &prefix,
            "--memory-limit",
            "48MiB",
            "--progress",
            "none",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(hwm) = peak_rss_bytes(pid) {
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let out = child.wait_with_output().unwrap();
    let peak = sampler.join().unwrap();
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(summary_value(&out.stdout, "records committed"), ROWS);
    assert_eq!(tg.count(&person).await, ROWS as i64);
    assert!(peak > 0, "no RSS sample taken");
    assert!(
        peak < LIMIT,
        "peak RSS {peak} bytes over the {LIMIT}-byte limit"
    );
    eprintln!("input {size} bytes, peak RSS {peak} bytes, limit {LIMIT}");
}
