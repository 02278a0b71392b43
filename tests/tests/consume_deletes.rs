//! Relationship deletes end to end: delete records carrying both end keys of KNOWS
//! relationships go through `weir publish` → `weir consume` (several records per message, as
//! JSON Lines bodies); those relationships are gone, their end nodes and every other
//! relationship stay, and deletes naming relationships never written (between existing people,
//! and between keys never written) delete nothing and are not errors.

mod consumers;

use std::collections::HashSet;
use std::time::Duration;

use consumers::*;

const PEOPLE: u64 = 2_000;
/// KNOWS relationships deleted: those of the first `GONE` records.
const GONE: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relationship_deletes_through_publish_and_consume_keep_the_end_nodes() {
    let graph = weir_test_support::graph().await;
    let rig = Rig::new(&graph);
    let (data, lines) = rig.generate(PEOPLE);
    let want = expected_counts(lines.iter().map(String::as_str));
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pair = |v: &serde_json::Value| {
        (
            v["person_id"].as_u64().unwrap(),
            v["knows_id"].as_u64().unwrap(),
        )
    };
    let knows: HashSet<(u64, u64)> = records.iter().map(pair).collect();
    assert!(
        rig.publish(&data)
            .contains(&format!("published {PEOPLE} records"))
    );

    let mut worker = rig.worker("a", "30s", None, &[], "warn");
    let workers = [("a", &worker, None)];
    rig.wait_drained(PEOPLE, Duration::from_secs(300), &workers, &["a"])
        .await;
    let (p, c) = (rig.name("Person"), rig.name("Company"));
    let (w, k) = (rig.name("WORKS_AT"), rig.name("KNOWS"));
    let count = |q: String| {
        let graph = &graph;
        async move { query_n(graph, &q).await }
    };
    let knows_count = || {
        count(format!(
            "MATCH (:`{p}`)-[r:`{k}`]->(:`{p}`) RETURN count(r) AS n"
        ))
    };
    let works_count = || {
        count(format!(
            "MATCH (:`{p}`)-[r:`{w}`]->(:`{c}`) RETURN count(r) AS n"
        ))
    };
    let people_count = || count(format!("MATCH (n:`{p}`) RETURN count(n) AS n"));
    assert_eq!(knows_count().await, want.knows);
    assert_eq!(works_count().await, want.works_at);
    assert_eq!(people_count().await, want.people);

    // Deletes carrying both end keys of the first GONE records' KNOWS (and only those keys:
    // no company_id, so WORKS_AT is not named); one between two existing people who do not
    // know each other; one between keys never written.
    let gone: Vec<(u64, u64)> = records[..GONE].iter().map(pair).collect();
    let (never_a, never_b) = (1..=PEOPLE)
        .flat_map(|a| (1..=PEOPLE).map(move |b| (a, b)))
        .find(|&(a, b)| a != b && !knows.contains(&(a, b)))
        .unwrap();
    let mut body: Vec<String> = gone
        .iter()
        .map(|(a, b)| format!(r#"{{"op":"delete","person_id":{a},"knows_id":{b}}}"#))
        .collect();
    body.push(format!(
        r#"{{"op":"delete","person_id":{never_a},"knows_id":{never_b}}}"#
    ));
    body.push(r#"{"op":"DELETE","person_id":987654321,"knows_id":987654322}"#.to_owned());
    let deletes = rig.write("deletes.jsonl", &body);
    let mut cmd = std::process::Command::new(weir_test_support::process::workspace_binary("weir"));
    let out = weir_test_support::process::service_env(&mut cmd, "CONSUME_BUS")
        .env("NATS_URL", &rig.url)
        .args([
            "publish",
            "--stream",
            STREAM,
            "--subject",
            SUBJECT,
            "--records-per-message",
            "10",
        ])
        .arg(&deletes)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages = body.len().div_ceil(10) as u64;
    rig.wait_drained(
        PEOPLE + messages,
        Duration::from_secs(120),
        &workers,
        &["a"],
    )
    .await;

    // Exactly those relationships are gone.
    let gone_set: HashSet<(u64, u64)> = gone.iter().copied().collect();
    assert_eq!(knows_count().await, want.knows - gone_set.len() as i64);
    for (a, b) in &gone {
        let q = format!(
            "MATCH (:`{p}` {{id: {a}}})-[r:`{k}`]->(:`{p}` {{id: {b}}}) RETURN count(r) AS n"
        );
        assert_eq!(count(q).await, 0, "KNOWS {a} -> {b} is still there");
    }
    // Their end nodes stay, with their properties and their other relationships.
    for (i, (a, b)) in gone.iter().enumerate() {
        let q = format!(
            "MATCH (x:`{p}` {{id: {a}}}), (y:`{p}` {{id: {b}}}) \
             WHERE x.name IS NOT NULL RETURN count(*) AS n"
        );
        assert_eq!(count(q).await, 1, "person {a} or {b} is gone");
        let q = format!(
            "MATCH (:`{p}` {{id: {a}}})-[r:`{w}`]->(:`{c}` {{id: {}}}) RETURN count(r) AS n",
            records[i]["company_id"]
        );
        assert_eq!(count(q).await, 1, "person {a}'s WORKS_AT is gone");
    }
    // The other relationships and nodes are all there (a sample by key, and the counts).
    for v in records.iter().skip(GONE).step_by(97) {
        let (a, b) = pair(v);
        if gone_set.contains(&(a, b)) {
            continue;
        }
        let q = format!(
            "MATCH (:`{p}` {{id: {a}}})-[r:`{k}`]->(:`{p}` {{id: {b}}}) RETURN count(r) AS n"
        );
        assert_eq!(count(q).await, 1, "KNOWS {a} -> {b} was deleted");
    }
    assert_eq!(works_count().await, want.works_at);
    assert_eq!(people_count().await, want.people);
    assert_eq!(
        count(format!("MATCH (n:`{c}`) RETURN count(n) AS n")).await,
        want.companies
    );
    // The deletes of relationships never written: nothing deleted, nothing created, no error.
    assert_eq!(
        count(format!(
            "MATCH (n:`{p}`) WHERE n.id IN [{never_a}, {never_b}] RETURN count(n) AS n"
        ))
        .await,
        2
    );
    assert_eq!(
        count(format!(
            "MATCH (n:`{p}`) WHERE n.id >= 987654321 RETURN count(n) AS n"
        ))
        .await,
        0
    );
    assert!(
        rig.dead_letters(&["a"]).is_empty(),
        "{:?}",
        rig.dead_letters(&["a"])
    );
    kill(&worker, "TERM");
    let status = worker.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", worker.stderr());
}
