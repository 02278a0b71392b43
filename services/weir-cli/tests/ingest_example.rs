//! The example dataset ingested end to end against the real graph server: counts and sampled
//! values checked with Cypher; a second run changes nothing. JSON Lines and `--dry-run` too.

mod support;

use support::{count, repo, run, summary_value, weir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_csv_is_ingested_exactly_and_idempotently() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let (person, company) = (tg.label("Person"), tg.label("Company"));
    let (works, knows) = (format!("{prefix}WORKS_AT"), format!("{prefix}KNOWS"));
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.json");
    for round in 0..2 {
        let out = run(weir()
            .arg("ingest")
            .arg(repo().join("examples/people/people.csv"))
            .arg("--mapping")
            .arg(repo().join("examples/people/mapping.toml"))
            .args(["--label-prefix", &prefix, "--checkpoint"])
            .arg(&ckpt));
        assert_eq!(out.status.code(), Some(0), "round {round}");
        assert_eq!(summary_value(&out.stdout, "records committed"), 1000);
        assert_eq!(summary_value(&out.stdout, "records dead-lettered"), 0);

        assert_eq!(tg.count(&person).await, 1000, "round {round}");
        assert_eq!(tg.count(&company).await, 20);
        let q = |t: &str| format!("MATCH (:`{person}`)-[r:`{t}`]->() RETURN count(r) AS n");
        assert_eq!(count(&tg, &q(&works)).await, 1000);
        assert_eq!(count(&tg, &q(&knows)).await, 1000);
    }
    // Row 1: 1,Lena Lopez,lena.lopez1@example.com,61,1964-02-19,7.61,false,ml;web,8,Garcia Health,2022,287,2017-06-01
    let mut rows = tg
        .graph
        .execute(neo4rs::query(&format!(
            "MATCH (p:`{person}` {{id: $id}})-[w:`{works}`]->(c:`{company}`), (p)-[k:`{knows}`]->(f:`{person}`) \
             RETURN p.name AS name, p.age AS age, p.born AS born, p.score AS score, p.active AS active, \
             p.tags AS tags, c.id AS cid, c.name AS cname, w.since AS since, f.id AS fid, k.since AS ksince"
        )).param("id", 1i64))
        .await
        .unwrap();
    let row = rows.next().await.unwrap().expect("person 1");
    assert_eq!(row.get::<String>("name").unwrap(), "Lena Lopez");
    assert_eq!(row.get::<i64>("age").unwrap(), 61);
    assert_eq!(
        row.get::<chrono::NaiveDate>("born").unwrap(),
        chrono::NaiveDate::from_ymd_opt(1964, 2, 19).unwrap()
    );
    assert_eq!(row.get::<f64>("score").unwrap(), 7.61);
    assert!(!row.get::<bool>("active").unwrap());
    assert_eq!(row.get::<Vec<String>>("tags").unwrap(), vec!["ml", "web"]);
    assert_eq!(row.get::<i64>("cid").unwrap(), 8);
    assert_eq!(row.get::<String>("cname").unwrap(), "Garcia Health");
    assert_eq!(row.get::<i64>("since").unwrap(), 2022);
    assert_eq!(row.get::<i64>("fid").unwrap(), 287);
    assert_eq!(
        row.get::<chrono::NaiveDate>("ksince").unwrap(),
        chrono::NaiveDate::from_ymd_opt(2017, 6, 1).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_jsonl_gzip_from_stdin_and_dry_run() {
    let tg = weir_test_support::graph().await;
    let prefix = format!("{}_", tg.namespace);
    let person = tg.label("Person");
    tg.label("Company");
    let jsonl = repo().join("examples/people/people.jsonl");
    let mapping = repo().join("examples/people/mapping-jsonl.toml");

    // Dry run: every record mapped, nothing written.
    let out = run(weir()
        .arg("ingest")
        .arg(&jsonl)
        .arg("--mapping")
        .arg(&mapping)
        .args(["--label-prefix", &prefix, "--dry-run"]));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(summary_value(&out.stdout, "records mapped"), 200);
    assert_eq!(tg.count(&person).await, 0);

    // Gzip on stdin.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("people.jsonl.gz");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", jsonl.display(), gz.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let out = run(weir()
        .args(["ingest", "-", "--format", "jsonl", "--mapping"])
        .arg(&mapping)
        .args(["--label-prefix", &prefix])
        .stdin(std::fs::File::open(&gz).unwrap()));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tg.count(&person).await, 200);
    let q = format!("MATCH (p:`{person}` {{id: 2}}) RETURN size(p.tags) AS n");
    assert_eq!(count(&tg, &q).await, 2);
}
