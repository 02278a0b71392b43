//! CSV files as people have them, end to end against the real graph server: an Excel export
//! (byte-order mark, CRLF) is ingested whole; a header that lacks a mapped column or repeats
//! a name stops `weir ingest` and `weir ingest --dry-run` (exit 1) before anything is
//! written, naming the column and listing the header; a stray quote costs one record.

mod support;

use std::path::{Path, PathBuf};

use support::{count, repo, run, summary_value, weir};

/// The header and the first `n` rows of the example dataset.
fn example(n: usize) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(repo().join("examples/people/people.csv")).unwrap();
    let mut lines = text.lines().map(str::to_owned);
    let header = lines.next().unwrap();
    (header, lines.take(n).collect())
}

fn ingest(input: &Path, prefix: &str, extra: &[&str]) -> std::process::Output {
    run(weir()
        .arg("ingest")
        .arg(input)
        .arg("--mapping")
        .arg(repo().join("examples/people/mapping.toml"))
        .args(["--label-prefix", prefix, "--progress", "none"])
        .args(extra))
}

/// People written from a row (relationship ends without a row of their own have no e-mail).
async fn people_with_rows(tg: &weir_test_support::TestGraph, person: &str) -> i64 {
    let q = format!("MATCH (p:`{person}`) WHERE p.email IS NOT NULL RETURN count(p) AS n");
    count(tg, &q).await
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excel_export_with_bom_and_crlf_is_ingested_whole() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let person = tg.label("Person");
    tg.label("Company");
    let (header, rows) = example(50);
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    for l in std::iter::once(&header).chain(&rows) {
        bytes.extend_from_slice(l.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "excel.csv", &bytes);
    let out = ingest(&input, &prefix, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(summary_value(&out.stdout, "records committed"), 50);
    assert_eq!(summary_value(&out.stdout, "records dead-lettered"), 0);
    assert_eq!(people_with_rows(&tg, &person).await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_does_not_fit_the_mapping_stops_the_run_before_anything_is_written() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let person = tg.label("Person");
    tg.label("Company");
    let (header, rows) = example(20);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, header: &str| {
        let text = format!("{header}\n{}\n", rows.join("\n"));
        write(dir.path(), name, text.as_bytes())
    };
    let renamed = file("renamed.csv", &header.replacen("person_id", "id", 1));
    let repeated = file("repeated.csv", &header.replacen("email", "name", 1));
    for dry_run in [false, true] {
        let extra: &[&str] = if dry_run { &["--dry-run"] } else { &[] };
        let out = ingest(&renamed, &prefix, extra);
        assert_eq!(out.status.code(), Some(1), "dry run {dry_run}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "renamed.csv: header row: column `person_id` read by the mapping is missing"
            ) && err.contains("the header's columns are: \"id\", \"name\", \"email\""),
            "{err}"
        );
        let out = ingest(&repeated, &prefix, extra);
        assert_eq!(out.status.code(), Some(1), "dry run {dry_run}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("column `name` appears more than once"),
            "{err}"
        );
    }
    assert_eq!(tg.count(&person).await, 0);

    // A directory: the bad header of its last file stops the run before the first is written.
    let d = dir.path().join("dir");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(file("a.csv", &header), d.join("a.csv")).unwrap();
    std::fs::copy(&renamed, d.join("b.csv")).unwrap();
    let out = ingest(&d, &prefix, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("b.csv: header row"));
    assert_eq!(tg.count(&person).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_quote_costs_one_record() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let person = tg.label("Person");
    tg.label("Company");
    let (header, mut rows) = example(101);
    // Row 1's name gets an opening quote that never closes; later rows quote their e-mail.
    rows[0] = rows[0].replacen(",Lena", ",\"Lena", 1);
    for (i, r) in rows.iter_mut().enumerate().skip(1).step_by(7) {
        let email = r.split(',').nth(2).unwrap().to_owned();
        *r = r.replacen(&email, &format!("\"{email}\""), 1);
        assert!(i > 0);
    }
    let text = format!("{header}\n{}\n", rows.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "stray.csv", text.as_bytes());
    let dead = dir.path().join("dead.jsonl");
    let out = ingest(&input, &prefix, &["--dead-letter", dead.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(summary_value(&out.stdout, "records committed"), 100);
    assert_eq!(summary_value(&out.stdout, "records dead-lettered"), 1);
    assert_eq!(people_with_rows(&tg, &person).await, 100);
    let letter: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&dead).unwrap().trim()).unwrap();
    assert_eq!(letter["line"], 2);
    assert_eq!(letter["raw"], rows[0].as_str());
    assert_eq!(letter["len"], rows[0].len());
}
