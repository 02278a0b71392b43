//! `weir ingest` killed with SIGKILL halfway through a generated file, then `--resume`: exact
//! counts, nothing doubled, and the second run really started after the checkpoint.

mod support;

use std::time::{Duration, Instant};

use support::{count, generate, nodes_mapping, run, summary_value, weir};

/// Large enough that the first periodic checkpoint (after 1 s) comes well before the end: the
/// graph server writes about 40 k of these nodes a second here.
const ROWS: u64 = 150_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_resume_gives_exact_counts() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let person = tg.label("Person");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("people.csv");
    generate(&input, ROWS, 0);
    let ckpt = dir.path().join("ckpt.json");

    let mut child = weir()
        .arg("ingest")
        .arg(&input)
        .arg("--mapping")
        .arg(nodes_mapping())
        .args([
            "--label-prefix",
            &prefix,
            "--batch-size",
            "500",
            "--quiet",
            "--checkpoint",
        ])
        .arg(&ckpt)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first checkpoint (the periodic one, a second in), then SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let line = std::fs::read(&ckpt)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["position"]["line"].as_u64())
            .unwrap_or(0);
        if line > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ingest ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no checkpoint progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = tg.count(&person).await;
    assert!(
        after_kill > 0 && (after_kill as u64) < ROWS,
        "killed run should be partial, has {after_kill}"
    );

    let out = run(weir()
        .arg("ingest")
        .arg(&input)
        .arg("--mapping")
        .arg(nodes_mapping())
        .args([
            "--label-prefix",
            &prefix,
            "--batch-size",
            "500",
            "--resume",
            "--checkpoint",
        ])
        .arg(&ckpt));
    assert_eq!(out.status.code(), Some(0));
    let read = summary_value(&out.stdout, "records read");
    assert!(
        read < ROWS,
        "resume re-read the whole file ({read} records)"
    );
    assert_eq!(tg.count(&person).await, ROWS as i64);
    let q = format!("MATCH (n:`{person}`) RETURN count(DISTINCT n.id) AS n");
    assert_eq!(count(&tg, &q).await, ROWS as i64);
    let q = format!("MATCH (n:`{person}`) WHERE n.id = 1 OR n.id = {ROWS} RETURN count(n) AS n");
    assert_eq!(count(&tg, &q).await, 2);
}
