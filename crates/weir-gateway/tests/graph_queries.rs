//! `Query` against the real Bolt graph server, through `GraphReader` for both
//! `weir_pool::Pool` and `neo4rs::Graph`:
//! node by label and key, neighbours with type, direction and cursor pagination, counts by
//! label. Fails loudly when the graph server is not running.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_neo4rs_graph() {
    let tg = weir_test_support::graph().await;
    let reader = Arc::new(tg.graph.clone());
    node_neighbours_and_counts(&tg, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_weir_pool() {
    let tg = weir_test_support::graph().await;
    let pool = weir_pool::Pool::new(tg.settings.clone(), weir_pool::PoolConfig::default()).unwrap();
    assert!(
        pool.wait_ready(std::time::Duration::from_secs(15)).await,
        "pool not ready: {}",
        weir_test_support::START_HINT
    );
    node_neighbours_and_counts(&tg, Arc::new(pool)).await;
}

async fn node_neighbours_and_counts(
    tg: &weir_test_support::TestGraph,
    reader: Arc<dyn weir_gateway::GraphReader>,
) {
    let person = tg.label("Person");
    let city = tg.label("City");
    let knows = tg.rel_type("KNOWS");
    let lives = tg.rel_type("LIVES_IN");
    // ana knows five people; bob knows ana; ana lives in one city.
    let setup = format!(
        "CREATE (a:`{person}` {{id: 1, name: 'ana'}}) \
         CREATE (c:`{city}` {{id: 'paris', name: 'Paris'}}) \
         CREATE (a)-[:`{lives}`]->(c) \
         WITH a UNWIND range(2, 6) AS i \
         CREATE (p:`{person}` {{id: i, name: 'p' + toString(i)}}) \
         CREATE (a)-[:`{knows}`]->(p)"
    );
    tg.graph.run(neo4rs::query(&setup)).await.unwrap();
    let bob = format!(
        "MATCH (a:`{person}` {{id: 1}}), (b:`{person}` {{id: 2}}) CREATE (b)-[:`{knows}`]->(a)"
    );
    tg.graph.run(neo4rs::query(&bob)).await.unwrap();

    let server = serve_with(config(), reader).await;
    let ask = |query: String| {
        let addr = server.addr;
        async move {
            let (status, body) = post(addr, Some(TOKEN), json!({"query": query}).to_string()).await;
            assert_eq!(status, 200);
            assert!(body.get("errors").is_none(), "{body}");
            body["data"].clone()
        }
    };

    // Node by label and key: an integer key and a string key.
    let d = ask(format!(
        r#"{{ node(label: "{person}", key: "1") {{ labels properties }} }}"#
    ))
    .await;
    assert_eq!(d["node"]["labels"], json!([person]));
    assert_eq!(d["node"]["properties"]["name"], "ana");
    let d = ask(format!(
        r#"{{ node(label: "{city}", key: "paris") {{ properties }} }}"#
    ))
    .await;
    assert_eq!(d["node"]["properties"]["name"], "Paris");
    let d = ask(format!(
        r#"{{ node(label: "{person}", key: "999") {{ id }} }}"#
    ))
    .await;
    assert_eq!(d["node"], Value::Null);

    // Outgoing KNOWS, two per page, following the cursor.
    let mut names = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let after_arg = match &after {
            Value::String(c) => format!(", after: \"{c}\""),
            _ => String::new(),
        };
        let d = ask(format!(
            r#"{{ neighbours(label: "{person}", key: "1", relationshipType: "{knows}", direction: OUTGOING, first: 2{after_arg}) {{
                edges {{ cursor relationshipType direction node {{ properties }} }}
                pageInfo {{ hasNextPage endCursor }} }} }}"#
        ))
        .await;
        pages += 1;
        let page = &d["neighbours"];
        for e in page["edges"].as_array().unwrap() {
            assert_eq!(e["relationshipType"], knows.as_str());
            assert_eq!(e["direction"], "OUTGOING");
            names.push(e["node"]["properties"]["name"].as_str().unwrap().to_owned());
        }
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    names.sort();
    assert_eq!(names, ["p2", "p3", "p4", "p5", "p6"]);

    // Incoming: bob only. Both ways, any type: 5 + 1 + 1 city.
    let d = ask(format!(
        r#"{{ neighbours(label: "{person}", key: "1", direction: INCOMING) {{ edges {{ direction node {{ properties }} }} }} }}"#
    ))
    .await;
    assert_eq!(
        d["neighbours"]["edges"],
        json!([{"direction": "INCOMING", "node": {"properties": {"id": 2, "name": "p2"}}}])
    );
    let d = ask(format!(
        r#"{{ neighbours(label: "{person}", key: "1", first: 50) {{ edges {{ cursor }} pageInfo {{ hasNextPage }} }} }}"#
    ))
    .await;
    assert_eq!(d["neighbours"]["edges"].as_array().unwrap().len(), 7);
    assert_eq!(d["neighbours"]["pageInfo"]["hasNextPage"], false);

    // Counts by label.
    let d = ask(format!(
        r#"{{ counts(labels: ["{person}", "{city}"]) {{ label count }} }}"#
    ))
    .await;
    assert_eq!(
        d["counts"],
        json!([{"label": person, "count": 6}, {"label": city, "count": 1}])
    );
    assert_eq!(get(server.addr, "/ready").await.0, 200);
}
