//! The foundation works end to end: the real graph server takes writes and answers reads
//! through neo4rs, NATS JetStream takes a message and hands it back, and a missing service
//! fails with a message that says how to start it.

use std::time::Duration;

use futures::StreamExt as _;
use weir_config::{GraphSettings, NatsSettings};

#[tokio::test]
async fn graph_server_writes_and_reads_nodes() {
    let tg = weir_test_support::graph().await;
    let label = tg.label("Person");
    let rows: Vec<neo4rs::BoltType> = (0..100)
        .map(|i| {
            let mut m = std::collections::HashMap::new();
            m.insert("id".to_owned(), neo4rs::BoltType::from(format!("p{i}")));
            m.insert("age".to_owned(), neo4rs::BoltType::from(i as i64));
            neo4rs::BoltType::from(m)
        })
        .collect();
    let q = neo4rs::query(&format!(
        "UNWIND $rows AS row MERGE (n:`{label}` {{id: row.id}}) SET n.age = row.age"
    ))
    .param("rows", rows);
    tg.graph.run(q).await.unwrap();
    assert_eq!(tg.count(&label).await, 100);

    let q = neo4rs::query(&format!(
        "MATCH (n:`{label}` {{id: $id}}) RETURN n.age AS age"
    ))
    .param("id", "p42");
    let mut res = tg.graph.execute(q).await.unwrap();
    let row = res.next().await.unwrap().expect("p42 exists");
    assert_eq!(row.get::<i64>("age").unwrap(), 42);
}

#[tokio::test]
async fn nats_jetstream_publishes_and_consumes() {
    use async_nats::jetstream::{consumer, stream};
    let tn = weir_test_support::nats().await;
    let name = tn.name("FOUNDATION");
    let subject = format!("{name}.events");
    tn.jetstream
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            max_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .unwrap();
    let ack = tn
        .jetstream
        .publish(subject.clone(), "hello weir".into())
        .await
        .unwrap();
    let seq = ack.await.unwrap().sequence;
    assert_eq!(seq, 1);

    let stream = tn.jetstream.get_stream(&name).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut msgs = consumer.fetch().max_messages(1).messages().await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), msgs.next())
        .await
        .expect("message within 10 s")
        .expect("one message")
        .unwrap();
    assert_eq!(&msg.payload[..], b"hello weir");
    msg.ack().await.unwrap();
}

#[tokio::test]
async fn unreachable_graph_server_says_how_to_start_it() {
    let port = closed_port();
    let s = GraphSettings {
        uri: format!("bolt://127.0.0.1:{port}"),
        ..GraphSettings::default()
    };
    let Err(err) = weir_test_support::try_connect_graph(&s).await else {
        panic!("connecting to a closed port must fail");
    };
    assert!(err.contains("graph server not reachable"), "{err}");
    assert!(err.contains("scripts/dev.sh up"), "{err}");
    assert!(err.contains("NEO4J_URI"), "{err}");
}

#[tokio::test]
async fn unreachable_nats_says_how_to_start_it() {
    let port = closed_port();
    let s = NatsSettings {
        url: format!("nats://127.0.0.1:{port}"),
    };
    let err = weir_test_support::try_connect_nats(&s)
        .await
        .expect_err("must fail");
    assert!(err.contains("NATS (with JetStream) not reachable"), "{err}");
    assert!(err.contains("scripts/dev.sh up"), "{err}");
}

/// A port nothing listens on: bind one, note it, close it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
