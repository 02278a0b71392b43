//! The graph writer against the real graph server: schema, idempotent MERGE, typed values,
//! change events, data-error isolation and concurrent batches.

use std::sync::Arc;

use weir_events::{EntityKind, SourcePosition};
use weir_graph::{Batch, GraphWriter, Mapping, MemoryPublisher, NoopPublisher, WriterConfig};

const MAPPING: &str = r#"
[[nodes]]
label = "Person"
key = ["id"]
properties = [
  { name = "id", field = "person_id", type = "int" },
  { name = "name" },
  { name = "email" },
  { name = "score", type = "float" },
  { name = "active", type = "bool", default = true },
  { name = "born", type = "date" },
  { name = "seen", type = "datetime" },
  { name = "tags", type = "list", item = "string" },
]

[[nodes]]
label = "Company"
key = ["id"]
properties = [{ name = "id", field = "company_id", type = "int" }, { name = "name", field = "company" }]

[[relationships]]
type = "WORKS_AT"
start = { label = "Person", key = { id = "person_id" } }
end = { label = "Company", key = { id = "company_id" } }
properties = [{ name = "since", type = "int" }]
"#;

fn mapping(tg: &weir_test_support::TestGraph) -> Arc<Mapping> {
    // Register the labels so they are cleaned up on drop.
    tg.label("Person");
    tg.label("Company");
    Arc::new(
        Mapping::parse(MAPPING, "test.toml")
            .unwrap()
            .with_label_prefix(&format!("{}_", tg.namespace))
            .unwrap(),
    )
}

fn person(
    m: &Mapping,
    id: i64,
    company: i64,
    email: &str,
) -> (SourcePosition, weir_graph::MappedRecord) {
    let id_s = id.to_string();
    let c_s = company.to_string();
    let name = format!("P{id}");
    let rec: Vec<(&str, &str)> = vec![
        ("person_id", &id_s),
        ("name", &name),
        ("email", email),
        ("score", "1.5"),
        ("active", ""),
        ("born", "1990-05-17"),
        ("seen", "2024-01-02T03:04:05Z"),
        ("tags", "a;b"),
        ("company_id", &c_s),
        ("company", "Acme"),
        ("since", "2019"),
    ];
    let pos = SourcePosition {
        source: Some("test".into()),
        line: Some(id as u64 + 1),
        offset: None,
    };
    (pos, m.map_record(rec.as_slice()).unwrap())
}

async fn scalar(tg: &weir_test_support::TestGraph, q: &str) -> neo4rs::Row {
    let mut rows = tg.graph.execute(neo4rs::query(q)).await.unwrap();
    rows.next().await.unwrap().expect("one row")
}

#[tokio::test]
async fn writes_are_idempotent_typed_and_publish_events() {
    let tg = weir_test_support::graph().await;
    let m = mapping(&tg);
    let publisher = Arc::new(MemoryPublisher::new(16));
    let w = GraphWriter::new(
        tg.graph.clone(),
        m.clone(),
        publisher.clone(),
        WriterConfig {
            job_id: "job1".into(),
            ..WriterConfig::default()
        },
    );
    let applied = w.ensure_schema().await.unwrap();
    assert_eq!(applied.len(), 2, "{applied:?}");
    // Schema creation is idempotent.
    w.ensure_schema().await.unwrap();

    let batch = Batch {
        id: 1,
        records: (0..50)
            .map(|i| person(&m, i, i % 3, &format!("p{i}@x")))
            .collect(),
    };
    let out = w.write(&batch).await.unwrap();
    assert_eq!((out.nodes, out.relationships), (53, 50));
    let (p, c) = (tg.label("Person"), tg.label("Company"));
    for _ in 0..2 {
        assert_eq!(tg.count(&p).await, 50);
        assert_eq!(tg.count(&c).await, 3);
        let row = scalar(
            &tg,
            &format!("MATCH (:`{p}`)-[r]->(:`{c}`) RETURN count(r) AS n"),
        )
        .await;
        assert_eq!(row.get::<i64>("n").unwrap(), 50);
        // Again: nothing changes.
        w.write(&batch).await.unwrap();
    }
    let row = scalar(
        &tg,
        &format!(
            "MATCH (n:`{p}` {{id: 7}})-[r]->(c:`{c}`) RETURN n.name AS name, n.score AS score, \
             n.active AS active, n.born AS born, n.tags AS tags, r.since AS since, c.id AS cid"
        ),
    )
    .await;
    assert_eq!(row.get::<String>("name").unwrap(), "P7");
    assert_eq!(row.get::<f64>("score").unwrap(), 1.5);
    assert!(row.get::<bool>("active").unwrap());
    assert_eq!(
        row.get::<chrono::NaiveDate>("born").unwrap(),
        chrono::NaiveDate::from_ymd_opt(1990, 5, 17).unwrap()
    );
    assert_eq!(row.get::<Vec<String>>("tags").unwrap(), vec!["a", "b"]);
    assert_eq!(row.get::<i64>("since").unwrap(), 2019);
    assert_eq!(row.get::<i64>("cid").unwrap(), 1);

    let batches = publisher.drain();
    assert_eq!(batches.len(), 3);
    let b = &batches[0];
    assert_eq!(b.batch_id, "job1-1");
    assert_eq!(b.events.len(), 103);
    let ev = b
        .events
        .iter()
        .find(|e| e.key == "7" && e.kind == EntityKind::Node && e.label == p)
        .unwrap();
    assert_eq!(ev.properties["name"], serde_json::json!("P7"));
    assert_eq!(ev.source.line, Some(8));
    let rel = b
        .events
        .iter()
        .find(|e| e.kind == EntityKind::Relationship && e.key == "7->1")
        .unwrap();
    assert_eq!(rel.end.as_ref().unwrap().label, c);
}

#[tokio::test]
async fn refused_records_are_isolated() {
    let tg = weir_test_support::graph().await;
    let m = mapping(&tg);
    let w = GraphWriter::new(
        tg.graph.clone(),
        m.clone(),
        Arc::new(NoopPublisher),
        WriterConfig::default(),
    );
    w.ensure_schema().await.unwrap();
    let p = tg.label("Person");
    // A second unique property makes the server refuse a duplicate email.
    tg.graph
        .run(neo4rs::query(&format!(
            "CREATE CONSTRAINT `{p}_email` IF NOT EXISTS FOR (n:`{p}`) REQUIRE n.email IS UNIQUE"
        )))
        .await
        .unwrap();
    let batch = Batch {
        id: 2,
        records: vec![
            person(&m, 1, 1, "a@x"),
            person(&m, 2, 1, "a@x"),
            person(&m, 3, 1, "c@x"),
        ],
    };
    let err = w.write(&batch).await.unwrap_err();
    assert!(err.is_data_error(), "{err:?}");
    let out = w.write_isolating(&batch).await.unwrap();
    assert_eq!(out.committed, 2);
    assert_eq!(out.failed.len(), 1);
    assert_eq!(out.failed[0].0, 1);
    assert_eq!(tg.count(&p).await, 2);
}

#[tokio::test]
async fn concurrent_batches_sharing_end_points_all_commit() {
    let tg = weir_test_support::graph().await;
    let m = mapping(&tg);
    let w = Arc::new(GraphWriter::new(
        tg.graph.clone(),
        m.clone(),
        Arc::new(NoopPublisher),
        WriterConfig::default(),
    ));
    w.ensure_schema().await.unwrap();
    let mut tasks = Vec::new();
    for b in 0..4i64 {
        let (w, m) = (w.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let batch = Batch {
                id: b as u64,
                records: (0..100)
                    .map(|i| person(&m, b * 100 + i, i % 5, &format!("{b}-{i}")))
                    .collect(),
            };
            w.write(&batch).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(tg.count(&tg.label("Person")).await, 400);
    assert_eq!(tg.count(&tg.label("Company")).await, 5);
}

const OPS: &str = r#"
[input]
operation_field = "op"

[[nodes]]
label = "Person"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }]

[[relationships]]
type = "KNOWS"
start = { label = "Person", key = { id = "id" } }
end = { label = "Person", key = { id = "friend" } }
"#;

#[tokio::test]
async fn deletes_apply_in_record_order_within_a_batch_and_publish_deleted_events() {
    use weir_events::Operation;
    let tg = weir_test_support::graph().await;
    let p = tg.label("Person");
    // The mapping's prefix, as on the labels (not `rel_type`'s upper-case form).
    let knows = format!("{}_KNOWS", tg.namespace);
    let m = Arc::new(
        Mapping::parse(OPS, "ops.toml")
            .unwrap()
            .with_label_prefix(&format!("{}_", tg.namespace))
            .unwrap(),
    );
    let publisher = Arc::new(MemoryPublisher::new(16));
    let w = GraphWriter::new(
        tg.graph.clone(),
        m.clone(),
        publisher.clone(),
        WriterConfig::default(),
    );
    w.ensure_schema().await.unwrap();
    let rec = |i: u64, fields: &[(&str, &str)]| {
        let pos = SourcePosition {
            source: Some("ops".into()),
            line: Some(i),
            offset: None,
        };
        (pos, m.map_record(fields).unwrap())
    };
    let records = vec![
        rec(1, &[("id", "1"), ("name", "one"), ("friend", "2")]),
        rec(2, &[("id", "2"), ("name", "two"), ("friend", "3")]),
        rec(3, &[("id", "3"), ("name", "three"), ("friend", "1")]),
        // The relationship 1->2 only (its start node stays).
        rec(4, &[("op", "delete"), ("id", "1"), ("friend", "2")]),
        // Person 3 and its relationships (2->3, 3->1); then 99, which never existed.
        rec(5, &[("op", "DELETE"), ("id", "3")]),
        rec(6, &[("op", "delete"), ("id", "99")]),
        // Written anew after its delete, in the same batch.
        rec(
            7,
            &[
                ("op", "upsert"),
                ("id", "3"),
                ("name", "again"),
                ("friend", "4"),
            ],
        ),
        rec(8, &[("op", ""), ("id", "4"), ("friend", "1")]),
    ];
    w.write(&Batch { id: 1, records }).await.unwrap();
    assert_eq!(tg.count(&p).await, 4);
    let row = scalar(
        &tg,
        &format!("MATCH (:`{p}`)-[r:`{knows}`]->(:`{p}`) RETURN count(r) AS n"),
    )
    .await;
    assert_eq!(row.get::<i64>("n").unwrap(), 2, "only 3->4 and 4->1");
    let row = scalar(
        &tg,
        &format!("MATCH (n:`{p}` {{id: 3}}) RETURN n.name AS name"),
    )
    .await;
    assert_eq!(row.get::<String>("name").unwrap(), "again");
    // Deleting again, and deleting what was never there, are no errors.
    let again = vec![
        rec(9, &[("op", "delete"), ("id", "4")]),
        rec(10, &[("op", "delete"), ("id", "4")]),
        rec(11, &[("op", "delete"), ("id", "12345"), ("friend", "6789")]),
    ];
    w.write(&Batch {
        id: 2,
        records: again,
    })
    .await
    .unwrap();
    assert_eq!(tg.count(&p).await, 3);
    let row = scalar(
        &tg,
        &format!("MATCH (:`{p}`)-[r:`{knows}`]->(:`{p}`) RETURN count(r) AS n"),
    )
    .await;
    assert_eq!(
        row.get::<i64>("n").unwrap(),
        0,
        "4's relationships went with it"
    );

    let batches = publisher.drain();
    let deleted: Vec<(EntityKind, String, Option<u64>)> = batches[0]
        .events
        .iter()
        .filter(|e| e.operation == Operation::Deleted)
        .map(|e| (e.kind, e.key.clone(), e.source.line))
        .collect();
    assert_eq!(
        deleted,
        // Within a run of deletes, like a run of upserts: nodes, then relationships.
        vec![
            (EntityKind::Node, "3".into(), Some(5)),
            (EntityKind::Node, "99".into(), Some(6)),
            (EntityKind::Relationship, "1->2".into(), Some(4)),
        ]
    );
    // Events in record order: the re-written 3 comes after its delete.
    let keys: Vec<(String, Operation)> = batches[0]
        .events
        .iter()
        .filter(|e| e.kind == EntityKind::Node && e.key == "3")
        .map(|e| (e.key.clone(), e.operation))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("3".into(), Operation::Merged),
            ("3".into(), Operation::Deleted),
            ("3".into(), Operation::Merged),
        ]
    );
    // A value other than upsert/delete is refused, naming the field.
    let e = m
        .map_record([("op", "drop"), ("id", "1")].as_slice())
        .unwrap_err();
    assert!(e.to_string().contains("`op`"), "{e}");
    let e = m.map_record([("op", "delete")].as_slice()).unwrap_err();
    assert_eq!(e, weir_graph::RecordError::NothingToDelete);
}

const VERSIONED: &str = r#"
[input]
operation_field = "op"
version_field = "ts"

[[nodes]]
label = "Person"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }, { name = "city" }]

[[relationships]]
type = "KNOWS"
start = { label = "Person", key = { id = "id" } }
end = { label = "Person", key = { id = "friend" } }
properties = [{ name = "since", type = "int" }]
"#;

/// A person's name, city and stored version, or `None` when there is no such person.
async fn person_state(
    tg: &weir_test_support::TestGraph,
    p: &str,
    id: i64,
) -> Option<(Option<String>, Option<String>, Option<i64>)> {
    let mut rows = tg
        .graph
        .execute(
            neo4rs::query(&format!(
                "MATCH (n:`{p}` {{id: $id}}) RETURN n.name AS name, n.city AS city, n._version AS v"
            ))
            .param("id", id),
        )
        .await
        .unwrap();
    let row = rows.next().await.unwrap()?;
    assert!(rows.next().await.unwrap().is_none(), "one person {id}");
    Some((
        row.get::<Option<String>>("name").unwrap(),
        row.get::<Option<String>>("city").unwrap(),
        row.get::<Option<i64>>("v").unwrap(),
    ))
}

/// The `since` and stored version of the relationship `a -> b`, if there is one.
async fn knows_state(
    tg: &weir_test_support::TestGraph,
    p: &str,
    knows: &str,
    a: i64,
    b: i64,
) -> Option<(Option<i64>, Option<i64>)> {
    let mut rows = tg
        .graph
        .execute(
            neo4rs::query(&format!(
                "MATCH (:`{p}` {{id: $a}})-[r:`{knows}`]->(:`{p}` {{id: $b}}) \
                 RETURN r.since AS since, r._version AS v"
            ))
            .param("a", a)
            .param("b", b),
        )
        .await
        .unwrap();
    let row = rows.next().await.unwrap()?;
    Some((
        row.get::<Option<i64>>("since").unwrap(),
        row.get::<Option<i64>>("v").unwrap(),
    ))
}

fn s(x: &str) -> Option<String> {
    Some(x.to_owned())
}

#[tokio::test]
async fn versioned_records_never_take_the_graph_back() {
    use weir_events::Operation;
    let tg = weir_test_support::graph().await;
    let p = tg.label("Person");
    let knows = format!("{}_KNOWS", tg.namespace);
    let m = Arc::new(
        Mapping::parse(VERSIONED, "versioned.toml")
            .unwrap()
            .with_label_prefix(&format!("{}_", tg.namespace))
            .unwrap(),
    );
    let publisher = Arc::new(MemoryPublisher::new(64));
    let w = GraphWriter::new(
        tg.graph.clone(),
        m.clone(),
        publisher.clone(),
        WriterConfig::default(),
    );
    w.ensure_schema().await.unwrap();
    let rec = |line: u64, fields: &[(&str, &str)]| {
        let pos = SourcePosition {
            source: Some("versioned".into()),
            line: Some(line),
            offset: None,
        };
        (pos, m.map_record(fields).unwrap())
    };
    let mut batch_id = 0;
    let mut write = async |records: Vec<(SourcePosition, weir_graph::MappedRecord)>| {
        batch_id += 1;
        w.write(&Batch {
            id: batch_id,
            records,
        })
        .await
        .unwrap();
    };

    // Out of order across batches: v2, then v1 of the same person and relationship.
    write(vec![rec(
        1,
        &[
            ("id", "1"),
            ("name", "v2"),
            ("friend", "2"),
            ("since", "2"),
            ("ts", "2"),
        ],
    )])
    .await;
    write(vec![rec(
        2,
        &[
            ("id", "1"),
            ("name", "v1"),
            ("city", "old"),
            ("friend", "2"),
            ("since", "1"),
            ("ts", "1"),
        ],
    )])
    .await;
    assert_eq!(
        person_state(&tg, &p, 1).await,
        Some((s("v2"), None, Some(2)))
    );
    assert_eq!(
        knows_state(&tg, &p, &knows, 1, 2).await,
        Some((Some(2), Some(2)))
    );
    // The end node merged by key has no version of its own.
    assert_eq!(person_state(&tg, &p, 2).await, Some((None, None, None)));

    // An equal version applies again (a redelivery is harmless, a correction at the same
    // version lands).
    write(vec![rec(
        3,
        &[
            ("id", "1"),
            ("name", "v2 again"),
            ("friend", "2"),
            ("since", "22"),
            ("ts", "2"),
        ],
    )])
    .await;
    assert_eq!(
        person_state(&tg, &p, 1).await,
        Some((s("v2 again"), None, Some(2)))
    );
    assert_eq!(
        knows_state(&tg, &p, &knows, 1, 2).await,
        Some((Some(22), Some(2)))
    );

    // Within one batch the highest version wins whatever the order: 3 gets v3 then v1, 4
    // gets v1 then v3 (v3 merged over v1 property by property, as applied one by one).
    publisher.drain();
    write(vec![
        rec(
            4,
            &[
                ("id", "3"),
                ("name", "three v3"),
                ("friend", "1"),
                ("since", "3"),
                ("ts", "3"),
            ],
        ),
        rec(
            5,
            &[
                ("id", "4"),
                ("name", "four v1"),
                ("city", "c1"),
                ("friend", "1"),
                ("since", "1"),
                ("ts", "1"),
            ],
        ),
        rec(
            6,
            &[
                ("id", "3"),
                ("name", "three v1"),
                ("city", "c1"),
                ("friend", "1"),
                ("since", "1"),
                ("ts", "1"),
            ],
        ),
        rec(
            7,
            &[
                ("id", "4"),
                ("name", "four v3"),
                ("friend", "1"),
                ("since", "3"),
                ("ts", "3"),
            ],
        ),
    ])
    .await;
    assert_eq!(
        person_state(&tg, &p, 3).await,
        Some((s("three v3"), None, Some(3)))
    );
    assert_eq!(
        person_state(&tg, &p, 4).await,
        Some((s("four v3"), s("c1"), Some(3)))
    );
    assert_eq!(
        knows_state(&tg, &p, &knows, 3, 1).await,
        Some((Some(3), Some(3)))
    );
    assert_eq!(
        knows_state(&tg, &p, &knows, 4, 1).await,
        Some((Some(3), Some(3)))
    );
    // The events say what was written: v3's properties, from v3's record.
    let batches = publisher.drain();
    let node = |key: &str| {
        batches[0]
            .events
            .iter()
            .find(|e| e.kind == EntityKind::Node && e.key == key && e.label == p)
            .unwrap()
            .clone()
    };
    let three = node("3");
    assert_eq!(three.properties["name"], serde_json::json!("three v3"));
    assert!(!three.properties.contains_key("city"));
    assert_eq!(three.source.line, Some(4));
    let four = node("4");
    assert_eq!(four.properties["name"], serde_json::json!("four v3"));
    assert_eq!(four.properties["city"], serde_json::json!("c1"));
    assert_eq!(four.source.line, Some(7));

    // Versions in one batch are each guarded against the stored one, as if applied one by
    // one: with v2 stored, v1 is skipped (its city too) and v3 sets only its name.
    write(vec![rec(
        19,
        &[
            ("id", "8"),
            ("name", "eight v2"),
            ("city", "c2"),
            ("friend", "1"),
            ("since", "2"),
            ("ts", "2"),
        ],
    )])
    .await;
    write(vec![
        rec(
            20,
            &[
                ("id", "8"),
                ("name", "eight v1"),
                ("city", "c1"),
                ("friend", "1"),
                ("since", "1"),
                ("ts", "1"),
            ],
        ),
        rec(
            21,
            &[
                ("id", "8"),
                ("name", "eight v3"),
                ("friend", "1"),
                ("ts", "3"),
            ],
        ),
    ])
    .await;
    assert_eq!(
        person_state(&tg, &p, 8).await,
        Some((s("eight v3"), s("c2"), Some(3)))
    );
    assert_eq!(
        knows_state(&tg, &p, &knows, 8, 1).await,
        Some((Some(2), Some(3)))
    );

    // A delete older than the stored version is skipped, for nodes and relationships.
    write(vec![
        rec(8, &[("op", "delete"), ("id", "1"), ("ts", "1")]),
        rec(
            9,
            &[("op", "delete"), ("id", "3"), ("friend", "1"), ("ts", "2")],
        ),
    ])
    .await;
    assert_eq!(
        person_state(&tg, &p, 1).await,
        Some((s("v2 again"), None, Some(2)))
    );
    assert_eq!(
        knows_state(&tg, &p, &knows, 3, 1).await,
        Some((Some(3), Some(3)))
    );
    // A newer one deletes (an equal one would too); the relationship first, its nodes stay.
    write(vec![rec(
        10,
        &[("op", "delete"), ("id", "3"), ("friend", "1"), ("ts", "3")],
    )])
    .await;
    assert_eq!(knows_state(&tg, &p, &knows, 3, 1).await, None);
    assert!(person_state(&tg, &p, 3).await.is_some());
    write(vec![rec(11, &[("op", "delete"), ("id", "1"), ("ts", "5")])]).await;
    assert_eq!(person_state(&tg, &p, 1).await, None);
    assert_eq!(
        knows_state(&tg, &p, &knows, 4, 1).await,
        None,
        "went with 1"
    );

    // No tombstone: an upsert older than the delete creates the person again.
    write(vec![rec(
        12,
        &[("id", "1"), ("name", "back"), ("friend", "2"), ("ts", "1")],
    )])
    .await;
    assert_eq!(
        person_state(&tg, &p, 1).await,
        Some((s("back"), None, Some(1)))
    );

    // Runs of one batch keep record order, each guarded: for 5, v7 is written and the older
    // delete and upsert after it are skipped; for 6, v1 is deleted by v2 and v3 writes anew.
    write(vec![
        rec(
            13,
            &[
                ("id", "5"),
                ("name", "five v7"),
                ("friend", "2"),
                ("ts", "7"),
            ],
        ),
        rec(
            14,
            &[
                ("id", "6"),
                ("name", "six v1"),
                ("friend", "2"),
                ("ts", "1"),
            ],
        ),
        rec(15, &[("op", "delete"), ("id", "5"), ("ts", "6")]),
        rec(16, &[("op", "delete"), ("id", "6"), ("ts", "2")]),
        rec(
            17,
            &[
                ("id", "5"),
                ("name", "five v5"),
                ("friend", "2"),
                ("ts", "5"),
            ],
        ),
        rec(
            18,
            &[
                ("id", "6"),
                ("name", "six v3"),
                ("friend", "2"),
                ("ts", "3"),
            ],
        ),
    ])
    .await;
    assert_eq!(
        person_state(&tg, &p, 5).await,
        Some((s("five v7"), None, Some(7)))
    );
    assert_eq!(
        person_state(&tg, &p, 6).await,
        Some((s("six v3"), None, Some(3)))
    );
    assert_eq!(
        knows_state(&tg, &p, &knows, 5, 2).await,
        Some((None, Some(7)))
    );
    let ops: Vec<(String, Operation)> = publisher
        .drain()
        .last()
        .unwrap()
        .events
        .iter()
        .filter(|e| e.kind == EntityKind::Node && e.label == p)
        .map(|e| (e.key.clone(), e.operation))
        .collect();
    // The statements' guards are on the server: the writer publishes every run's events,
    // skipped rows' too (the gap the writer's module docs state).
    assert_eq!(ops.len(), 6, "{ops:?}");

    // Without a version a record is refused, naming the field; on the pipeline's mapper the
    // field goes with the dead letter.
    for fields in [
        &[("id", "7"), ("friend", "2")][..],
        &[("id", "7"), ("friend", "2"), ("ts", "")],
        &[("op", "delete"), ("id", "7")],
    ] {
        let e = m.map_record(fields).unwrap_err();
        assert_eq!(
            e,
            weir_graph::RecordError::MissingVersion { field: "ts".into() }
        );
        assert!(e.to_string().contains("`ts`"), "{e}");
    }
    let e = m
        .map_record([("id", "7"), ("friend", "2"), ("ts", "soon")].as_slice())
        .unwrap_err();
    assert!(
        e.to_string().contains("`ts` (the version) is `soon`"),
        "{e}"
    );
    use weir_stream::Mapper;
    let json = serde_json::json!({"id": 7, "friend": 2, "ts": 1.5});
    let e = weir_graph::GraphMapper::new(m.clone())
        .map(&weir_stream::DecodedRecord {
            position: weir_stream::Position {
                file: 0,
                line: 1,
                offset: 0,
            },
            raw: b"",
            value: weir_stream::Decoded::Json(json),
        })
        .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("ts"));
    assert!(e.message.contains("use an integer"), "{}", e.message);
}
