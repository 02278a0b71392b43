//! A child process ingesting a file is killed with SIGKILL mid-run, then run again with
//! resume. Checks, precisely:
//! * the union of committed ids over both runs equals the input ids (nothing lost);
//! * every id committed more than once lies at or after the checkpoint the killed run left
//!   (the replayed uncommitted tail — harmless with idempotent MERGE writes), and every id
//!   before that checkpoint was committed exactly once;
//! * the second run resumed (read only the records from the checkpoint on), and ended with a
//!   complete checkpoint.
//!
//! Also: stdin input through the same binary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_stream::CheckpointFile;

const BIN: &str = env!("CARGO_BIN_EXE_weir-stream-harness");
const ROWS: u64 = 40_000;

fn write_input(path: &Path, rows: u64) {
    let mut s = String::from("id,name\n");
    for i in 0..rows {
        s.push_str(&format!("{i},name-{i}\n"));
    }
    std::fs::write(path, s).unwrap();
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

#[test]
fn sigkill_then_resume_commits_every_record_and_repeats_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let commits = dir.path().join("commits.txt");
    let cp_path = dir.path().join("cp.json");
    let dl = dir.path().join("dl.jsonl");
    write_input(&input, ROWS);
    let args = |batch: &str, delay: &str| {
        let mut c = Command::new(BIN);
        c.arg("ingest")
            .arg(&input)
            .arg(&commits)
            .arg(&cp_path)
            .arg(&dl)
            .arg(batch)
            .arg(delay);
        c
    };

    let mut child = args("200", "20").stdout(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while count_lines(&commits) < 5_000 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "child made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "child ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // SIGKILL: no chance to flush or checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = count_lines(&commits) as u64;
    assert!(
        at_kill < ROWS,
        "the run finished before the kill ({at_kill})"
    );
    let cp = CheckpointFile::new(&cp_path)
        .load()
        .unwrap()
        .expect("a checkpoint was written");
    assert!(!cp.complete);
    let cp_line = cp.position.line;
    assert!(
        cp_line > 2 && cp_line <= ROWS + 1,
        "checkpoint line {cp_line}"
    );

    let out = args("200", "0").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Rows are on lines 2..=ROWS+1; the resumed run starts at the checkpoint's line.
    assert_eq!(summary["read"], ROWS + 2 - cp_line, "{summary}");
    assert_eq!(summary["uncommitted"], 0);
    assert!(
        CheckpointFile::new(&cp_path)
            .load()
            .unwrap()
            .unwrap()
            .complete
    );

    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    for l in std::fs::read_to_string(&commits).unwrap().lines() {
        *counts.entry(l.parse().unwrap()).or_default() += 1;
    }
    assert_eq!(
        counts.len() as u64,
        ROWS,
        "committed set differs from the input"
    );
    assert_eq!(counts.keys().next_back(), Some(&(ROWS - 1)));
    let mut repeated = 0;
    for (&id, &n) in &counts {
        let line = id + 2;
        if line < cp_line {
            assert_eq!(n, 1, "id {id} before the checkpoint committed {n} times");
        } else {
            assert!(n <= 2, "id {id} committed {n} times");
        }
        if n > 1 {
            repeated += 1;
        }
    }
    // The replayed tail is at most what was in flight or queued when killed.
    assert!(repeated <= at_kill, "{repeated} repeated");
    assert!(
        std::fs::metadata(&dl).unwrap().len() == 0,
        "no dead letters expected"
    );
}

#[test]
fn stdin_is_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let commits = dir.path().join("commits.txt");
    let mut child = Command::new(BIN)
        .arg("ingest")
        .arg("-")
        .arg(&commits)
        .arg(dir.path().join("cp.json"))
        .arg(dir.path().join("dl.jsonl"))
        .arg("100")
        .arg("0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut s = String::from("id,name\n");
    for i in 0..1000 {
        s.push_str(&format!("{i},n\n"));
    }
    s.push_str("oops,n\n");
    stdin.write_all(s.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["read"], 1001);
    assert_eq!(summary["committed"], 1000);
    assert_eq!(summary["dead"], 1);
    assert_eq!(count_lines(&commits), 1000);
    let dl = std::fs::read_to_string(dir.path().join("dl.jsonl")).unwrap();
    assert!(dl.contains(r#""source":"-","line":1002"#), "{dl}");
}
