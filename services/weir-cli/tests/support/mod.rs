//! Helpers shared by the `weir` end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Output;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `weir` with the test settings in its environment.
pub fn weir() -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("weir"));
    let s = weir_test_support::settings();
    c.env("NEO4J_URI", &s.graph.uri)
        .env("NEO4J_USER", &s.graph.user)
        .env("NEO4J_PASSWORD", s.graph.password.expose())
        .env("NEO4J_DATABASE", &s.graph.database)
        .env("NATS_URL", &s.nats.url);
    c
}

/// Runs and returns the output, printing it on failure paths for diagnosis.
pub fn run(cmd: &mut std::process::Command) -> Output {
    let out = cmd.output().expect("running weir");
    eprintln!(
        "--- weir exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A number from the summary line `label: N`.
pub fn summary_value(stdout: &[u8], label: &str) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` in summary:\n{text}"));
    line.rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad `{label}` line: {line}"))
}

/// One integer from a Cypher query returning `n`.
pub async fn count(tg: &weir_test_support::TestGraph, q: &str) -> i64 {
    let mut rows = tg.graph.execute(neo4rs::query(q)).await.unwrap();
    rows.next().await.unwrap().unwrap().get::<i64>("n").unwrap()
}

/// The node-only mapping for volume tests.
pub fn nodes_mapping() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/people_nodes.toml")
}

/// Writes a generated dataset of `people` rows (with `pad` filler bytes each) to `path`.
pub fn generate(path: &Path, people: u64, pad: usize) {
    let out = run(weir()
        .args([
            "generate",
            "--people",
            &people.to_string(),
            "--pad",
            &pad.to_string(),
            "--out",
        ])
        .arg(path));
    assert!(out.status.success());
}
