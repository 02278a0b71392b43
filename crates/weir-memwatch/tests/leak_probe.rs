//! The leak detector against a real process: a child that keeps 256 KiB per tick is flagged
//! as leaking; the same child allocating and freeing 256 KiB per tick is not.
//!
//! The child's RSS is read from `/proc/<pid>/statm` on each tick. The leak configuration is
//! scaled to the test's time span (seconds, not an hour): the analysis itself is the one the
//! watcher uses.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_memwatch::procfs::rss_bytes;
use weir_memwatch::{LeakConfig, LeakVerdict, analyze};

const TICK_MS: u64 = 40;
const TICKS: u64 = 60;

fn sample_child(mode: &str) -> Vec<(f64, f64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir-memwatch-leak-probe"))
        .args([
            mode,
            "256",
            "--tick-ms",
            &TICK_MS.to_string(),
            "--ticks",
            &TICKS.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the leak probe");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read ready");
    assert_eq!(line.trim(), "ready");
    let pid = child.id();
    let start = Instant::now();
    let mut points = Vec::new();
    // Sample while the child runs (it exits after TICKS ticks).
    for _ in 0..TICKS - 5 {
        std::thread::sleep(Duration::from_millis(TICK_MS));
        match rss_bytes(pid) {
            Some(rss) => points.push((start.elapsed().as_secs_f64(), rss as f64)),
            None => break,
        }
    }
    let status = child.wait().expect("wait for the probe");
    assert!(status.success(), "probe failed: {status}");
    assert!(points.len() >= 30, "only {} samples", points.len());
    points
}

fn config() -> LeakConfig {
    LeakConfig {
        window: Duration::from_secs(60),
        min_samples: 20,
        min_span: Duration::from_secs(1),
        min_growth_bytes: 4 << 20,
        ..LeakConfig::default()
    }
}

#[test]
fn a_planted_leak_in_a_child_process_is_flagged() {
    let points = sample_child("--leak-kb");
    let a = analyze(&points, &config());
    assert_eq!(a.verdict, LeakVerdict::Leaking, "{a:?}");
    // ~256 KiB per 40 ms tick, i.e. ~6.4 MiB/s; accept a wide band (scheduling jitter).
    let per_sec = a.slope_bytes_per_hour / 3600.0;
    assert!(
        per_sec > 2.0 * 1024.0 * 1024.0,
        "slope {per_sec} B/s too low: {a:?}"
    );
}

#[test]
fn the_same_child_without_the_leak_is_not_flagged() {
    let points = sample_child("--churn-kb");
    let a = analyze(&points, &config());
    assert_eq!(a.verdict, LeakVerdict::Stable, "{a:?}");
}
