//! A file with malformed rows: every good row is committed, every bad one dead-lettered with
//! its line number and reason, and the exit code says so.

mod support;

use std::io::Write as _;

use support::{repo, run, summary_value, weir};

const HEADER: &str =
    "person_id,name,email,age,born,score,active,tags,company_id,company,since,knows_id,knows_since";

fn good(id: u32) -> String {
    format!("{id},P{id},p{id}@x,30,1990-01-01,1.5,true,a;b,1,Acme,2020,1,2015-01-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_dead_lettered_with_line_and_reason() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let person = tg.label("Person");
    tg.label("Company");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.csv");
    let mut f = std::fs::File::create(&input).unwrap();
    writeln!(f, "{HEADER}").unwrap(); // line 1
    writeln!(f, "{}", good(1)).unwrap(); // 2
    writeln!(
        f,
        "2,\"Al\"ice,p2@x,30,1990-01-01,1.5,true,a,1,Acme,2020,1,2015-01-01"
    )
    .unwrap(); // 3 bad quoting
    writeln!(f, "{}", good(3)).unwrap(); // 4
    writeln!(f, "4,P4,p4@x,30").unwrap(); // 5 wrong column count
    f.write_all(b"5,P\xff\xfe5,p5@x,30,1990-01-01,1.5,true,a,1,Acme,2020,1,2015-01-01\n")
        .unwrap(); // 6 invalid UTF-8
    writeln!(
        f,
        "6,P6,p6@x,thirty,1990-01-01,1.5,true,a,1,Acme,2020,1,2015-01-01"
    )
    .unwrap(); // 7 not an int
    writeln!(f, "{}", good(7)).unwrap(); // 8
    writeln!(
        f,
        "8,{},p8@x,30,1990-01-01,1.5,true,a,1,Acme,2020,1,2015-01-01",
        "x".repeat(10 << 20)
    )
    .unwrap(); // 9: 10 MB field
    writeln!(
        f,
        ",P9,p9@x,30,1990-01-01,1.5,true,a,1,Acme,2020,1,2015-01-01"
    )
    .unwrap(); // 10 empty key
    writeln!(f, "{}", good(10)).unwrap(); // 11
    drop(f);
    let dead = dir.path().join("dead.jsonl");
    let out = run(weir()
        .arg("ingest")
        .arg(&input)
        .arg("--mapping")
        .arg(repo().join("examples/people/mapping.toml"))
        .args(["--label-prefix", &prefix, "--dead-letter"])
        .arg(&dead));
    assert_eq!(out.status.code(), Some(3), "dead-letter exit code");
    assert_eq!(summary_value(&out.stdout, "records read"), 10);
    assert_eq!(summary_value(&out.stdout, "records committed"), 4);
    assert_eq!(summary_value(&out.stdout, "records dead-lettered"), 6);
    assert_eq!(tg.count(&person).await, 4);

    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<(u64, String)> = letters
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["error"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    got.sort();
    let want = [
        (3, "quot"),
        (5, "fields"),
        (6, "utf-8"),
        (7, "age"),
        (9, "exceeds"),
        (10, "person_id"),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((line, err), (wl, wr)) in got.iter().zip(want) {
        assert_eq!(*line, wl, "{got:?}");
        assert!(err.contains(wr), "line {line}: `{err}` lacks `{wr}`");
    }
    // The dead-letter copy of the 10 MB record is bounded.
    let big = letters.iter().find(|l| l["line"] == 9).unwrap();
    assert!(big["raw"].as_str().unwrap().len() <= 4096);

    // --max-errors below the number of bad rows: fatal exit.
    let out = run(weir()
        .arg("ingest")
        .arg(&input)
        .arg("--mapping")
        .arg(repo().join("examples/people/mapping.toml"))
        .args(["--label-prefix", &prefix, "--max-errors", "2", "--quiet"]));
    assert_eq!(out.status.code(), Some(1));
}
