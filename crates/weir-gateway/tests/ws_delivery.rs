//! Subscriptions receive what matches their filter and nothing else, over both protocols;
//! a short TTL ends with `complete` and an empty registry; `ingestProgress` streams a job.

mod common;

use common::*;
use serde_json::json;
use weir_events::{
    EVENT_FORMAT_VERSION, EntityKind, JobState, Operation, PressureState, ProgressEvent,
};

const PERSON_CREATED: &str = r#"subscription { graphChanges(labels: ["Person"], operations: [CREATED]) { label key operation missed } }"#;

#[tokio::test]
async fn matching_events_only_graphql_transport_ws() {
    let server = serve(config()).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.subscribe("people", PERSON_CREATED).await;
    c.subscribe(
        "knows",
        r#"subscription { graphChanges(types: ["KNOWS"], keys: ["a->b"]) { kind label key } }"#,
    )
    .await;
    server.wait_active(2).await;
    server.state.manager().publish(batch(vec![
        event(EntityKind::Node, "Person", "alice", Operation::Created),
        event(EntityKind::Node, "Person", "bob", Operation::Updated),
        event(EntityKind::Node, "City", "paris", Operation::Created),
        event(
            EntityKind::Relationship,
            "KNOWS",
            "a->c",
            Operation::Created,
        ),
        event(
            EntityKind::Relationship,
            "KNOWS",
            "a->b",
            Operation::Created,
        ),
        event(EntityKind::Node, "Person", "carol", Operation::Created),
    ]));
    let mut people = Vec::new();
    let mut knows = Vec::new();
    while people.len() < 2 || knows.is_empty() {
        let m = c.recv_json().await;
        assert_eq!(m["type"], "next", "{m}");
        let change = &m["payload"]["data"]["graphChanges"];
        match m["id"].as_str().unwrap() {
            "people" => people.push(change["key"].as_str().unwrap().to_owned()),
            "knows" => knows.push(change.clone()),
            other => panic!("unknown id {other}"),
        }
    }
    assert_eq!(people, ["alice", "carol"]);
    assert_eq!(
        knows,
        [json!({"kind": "RELATIONSHIP", "label": "KNOWS", "key": "a->b"})]
    );
    // Nothing else arrives: a marker event proves the stream is in order and complete.
    server.state.manager().publish(batch(vec![event(
        EntityKind::Node,
        "Person",
        "marker",
        Operation::Created,
    )]));
    let m = c.recv_json().await;
    assert_eq!(m["payload"]["data"]["graphChanges"]["key"], "marker");
    // Client complete removes the subscription, counted as such.
    c.send(json!({"type": "complete", "id": "people"})).await;
    server.wait_active(1).await;
    assert_eq!(server.state.manager().stats().completed_client, 1);
    drop(c);
    server.wait_empty().await;
}

#[tokio::test]
async fn legacy_subscriptions_transport_ws() {
    let server = serve(config()).await;
    let mut c = connect(server.addr, "graphql-ws").await;
    c.init().await;
    c.send(json!({"type": "start", "id": "1", "payload": {"query": PERSON_CREATED}}))
        .await;
    server.wait_active(1).await;
    server.state.manager().publish(batch(vec![
        event(EntityKind::Node, "City", "x", Operation::Created),
        event(EntityKind::Node, "Person", "dora", Operation::Created),
    ]));
    let m = c.recv_json().await;
    assert_eq!(m["type"], "data");
    assert_eq!(m["payload"]["data"]["graphChanges"]["key"], "dora");
    c.send(json!({"type": "stop", "id": "1"})).await;
    server.wait_active(0).await;
    c.send(json!({"type": "connection_terminate"})).await;
    c.expect_close(1000).await;
    server.wait_empty().await;
}

#[tokio::test]
async fn short_ttl_sends_complete_and_empties_the_registry() {
    let server = serve(config()).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.subscribe(
        "t",
        r#"subscription { graphChanges(labels: ["A"], ttlSeconds: 1) { key } }"#,
    )
    .await;
    server.wait_active(1).await;
    assert_eq!(c.recv_json().await, json!({"type": "complete", "id": "t"}));
    assert_eq!(server.state.manager().active(), 0);
    assert_eq!(server.state.manager().stats().completed_ttl, 1);
    // The connection stays usable.
    c.subscribe(
        "u",
        r#"subscription { graphChanges(labels: ["A"]) { key } }"#,
    )
    .await;
    server.wait_active(1).await;
    drop(c);
    server.wait_empty().await;
}

fn progress(job: &str, read: u64, state: JobState) -> ProgressEvent {
    ProgressEvent {
        version: EVENT_FORMAT_VERSION,
        job_id: job.into(),
        state,
        records_read: read,
        records_committed: read,
        records_dead_lettered: 0,
        bytes_read: read * 10,
        bytes_total: Some(1000),
        records_per_sec: 5.0,
        batches_in_flight: 1,
        pressure: PressureState::Normal,
        pressure_ratio: None,
        eta_secs: None,
        elapsed_secs: 1.0,
        error: None,
    }
}

#[tokio::test]
async fn ingest_progress_and_jobs_query() {
    let server = serve(config()).await;
    let m = server.state.manager();
    m.publish_progress(progress("j1", 10, JobState::Running));
    m.publish_progress(progress("j2", 1, JobState::Queued));
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    c.subscribe(
        "p",
        r#"subscription { ingestProgress(jobId: "j1") { jobId state recordsRead } }"#,
    )
    .await;
    // The latest state comes first.
    let first = c.recv_json().await;
    assert_eq!(
        first["payload"]["data"]["ingestProgress"],
        json!({"jobId": "j1", "state": "RUNNING", "recordsRead": 10})
    );
    m.publish_progress(progress("j2", 2, JobState::Running));
    m.publish_progress(progress("j1", 20, JobState::Completed));
    let next = c.recv_json().await;
    assert_eq!(
        next["payload"]["data"]["ingestProgress"],
        json!({"jobId": "j1", "state": "COMPLETED", "recordsRead": 20})
    );
    let (status, body) = post(
        server.addr,
        Some(TOKEN),
        json!({"query": "{ ingestJobs { jobId state } }"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["ingestJobs"],
        json!([{"jobId": "j1", "state": "COMPLETED"}, {"jobId": "j2", "state": "RUNNING"}])
    );
    drop(c);
    server.wait_empty().await;
}
