//! The `graphChanges` fast path renders exactly what the GraphQL executor renders: for each
//! selection below, a subscription served by the executor throughout (the query carries a
//! no-op directive, which keeps it off the fast path) and one on the fast path receive the
//! same frames for nodes and relationships, with aliases, `__typename`, fragments and nested
//! `start`/`end` selections; and the fast path is really taken where it can be.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};
use weir_events::{EntityKind, NodeRef, Operation};

const SELECTIONS: &[&str] = &[
    "seq index kind label key operation missed",
    "__typename k: key properties jobId batchId committedAtMs",
    "key start { label key __typename } end { key }",
    "...F label",
    "... on GraphChange { key kind } operation",
    "key s: start { k: key } e: end { l: label }",
];

fn events() -> Vec<weir_events::ChangeEvent> {
    let mut node = event(EntityKind::Node, "P", "alice", Operation::Merged);
    node.properties = BTreeMap::from([
        ("name".to_owned(), json!("Alice \"A\" \u{e9}")),
        ("tags".to_owned(), json!(["x", "y"])),
        ("n".to_owned(), json!(1.5)),
    ]);
    let mut rel = event(
        EntityKind::Relationship,
        "R",
        "alice->bob",
        Operation::Created,
    );
    rel.start = Some(NodeRef {
        label: "P".into(),
        key: "alice".into(),
    });
    rel.end = Some(NodeRef {
        label: "P".into(),
        key: "bob".into(),
    });
    rel.properties = BTreeMap::from([("since".to_owned(), json!(2020))]);
    vec![node.clone(), rel.clone(), node, rel]
}

async fn frames(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.recv_json().await;
        assert_eq!(m["type"], "next", "{m}");
        out.push(m["payload"].clone());
    }
    out
}

#[tokio::test]
async fn the_fast_path_renders_what_the_executor_renders() {
    let server = serve(config()).await;
    for (i, sel) in SELECTIONS.iter().enumerate() {
        let fragment = if sel.contains("...F") {
            " fragment F on GraphChange { key seq }"
        } else {
            ""
        };
        let fast_q = format!(
            r#"subscription {{ graphChanges(labels: ["P"], types: ["R"]) {{ {sel} }} }}{fragment}"#
        );
        let slow_q = format!(
            r#"subscription {{ graphChanges(labels: ["P"], types: ["R"]) @include(if: true) {{ {sel} }} }}{fragment}"#
        );
        let before = server.state.fast_operations();
        let mut fast = connect(server.addr, "graphql-transport-ws").await;
        fast.init().await;
        fast.subscribe("1", &fast_q).await;
        let mut slow = connect(server.addr, "graphql-transport-ws").await;
        slow.init().await;
        slow.subscribe("1", &slow_q).await;
        server.wait_active(2).await;
        let mut b = (*batch(events())).clone();
        b.assign_seq(i as u64 + 1);
        server.state.manager().publish(std::sync::Arc::new(b));
        let (got_fast, got_slow) = (frames(&mut fast, 4).await, frames(&mut slow, 4).await);
        assert_eq!(got_fast, got_slow, "selection `{sel}`");
        // The probe went through the executor; every change came by the fast path.
        assert_eq!(
            server.state.fast_operations(),
            before + 1,
            "selection `{sel}` took the fast path once"
        );
        drop((fast, slow));
        server.wait_empty().await;
    }
}

#[tokio::test]
async fn a_selection_the_plan_does_not_cover_keeps_the_executor() {
    let server = serve(config()).await;
    let mut c = connect(server.addr, "graphql-transport-ws").await;
    c.init().await;
    // A repeated response key with different sub-selections is merged by the executor.
    c.subscribe(
        "1",
        r#"subscription { graphChanges(types: ["R"]) { start { key } start { label } } }"#,
    )
    .await;
    server.wait_active(1).await;
    server.state.manager().publish(batch(events()));
    let got = frames(&mut c, 2).await;
    assert_eq!(
        got[0]["data"]["graphChanges"]["start"],
        json!({"key": "alice", "label": "P"})
    );
    assert_eq!(server.state.fast_operations(), 0);
    drop(c);
    server.wait_empty().await;
}
