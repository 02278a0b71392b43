//! Prepared writes (no server: a recording executor): a batch prepared ahead is written with
//! the statements `prepare` made, handed over rather than copied, and a retry sends the same
//! statements encoded afresh from the records.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use neo4rs::{BoltMap, Query};
use weir_events::SourcePosition;
use weir_graph::{
    CypherExecutor, GraphError, GraphWriter, MappedRecord, Mapping, NoopPublisher, WriterConfig,
};

const MAPPING: &str = r#"
[[nodes]]
label = "Person"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }]

[[relationships]]
type = "KNOWS"
start = { label = "Person", key = { id = "id" } }
end = { label = "Person", key = { id = "knows" } }
"#;

/// A statement's text and parameters.
type Statement = (String, BoltMap);

/// Records each transaction's statements (text and parameters) and how they arrived; fails
/// the first `fail` transactions as transient.
#[derive(Default)]
struct Recording {
    txns: Mutex<Vec<(&'static str, Vec<Statement>)>>,
    fail: Mutex<u32>,
}

impl Recording {
    fn record(&self, how: &'static str, statements: &[Query]) -> Result<(), GraphError> {
        let s = statements
            .iter()
            .map(|q| (q.query().to_owned(), q.get_params().clone()))
            .collect();
        self.txns.lock().unwrap().push((how, s));
        let mut fail = self.fail.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(GraphError::Transient {
                code: "test".into(),
                message: "connection reset".into(),
            });
        }
        Ok(())
    }
}

/// The executor the writer owns; the test keeps the other handle.
struct Shared(Arc<Recording>);

#[async_trait]
impl CypherExecutor for Shared {
    async fn write_txn(&self, statements: &[Query]) -> Result<(), GraphError> {
        self.0.record("borrowed", statements)
    }

    async fn write_txn_owned(
        &self,
        first: Vec<Query>,
        _rebuild: &(dyn Fn() -> Vec<Query> + Send + Sync),
    ) -> Result<(), GraphError> {
        self.0.record("owned", &first)
    }

    async fn run(&self, _statement: Query) -> Result<(), GraphError> {
        Ok(())
    }
}

fn records(m: &Mapping) -> Vec<(SourcePosition, MappedRecord)> {
    (0..5)
        .map(|i| {
            let (id, name, knows) = (i.to_string(), format!("P{i}"), ((i + 1) % 5).to_string());
            let rec: Vec<(&str, &str)> = vec![("id", &id), ("name", &name), ("knows", &knows)];
            (
                SourcePosition::default(),
                m.map_record(rec.as_slice()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_prepared_batch_is_sent_as_prepared_and_a_retry_encodes_it_again() {
    let mapping = Arc::new(Mapping::parse(MAPPING, "test.toml").unwrap());
    let exec = Arc::new(Recording::default());
    *exec.fail.lock().unwrap() = 1;
    let writer = GraphWriter::new(
        Shared(exec.clone()),
        mapping.clone(),
        Arc::new(NoopPublisher),
        WriterConfig {
            initial_backoff: std::time::Duration::from_millis(1),
            ..WriterConfig::default()
        },
    );
    let recs = records(&mapping);
    let prepared = writer.prepare("job-7-0".into(), &recs);
    assert_eq!(prepared.batch_id(), "job-7-0");
    let out = writer.write_prepared(prepared, &recs).await.unwrap();
    assert_eq!((out.nodes, out.relationships, out.attempts), (5, 5, 2));

    let txns = exec.txns.lock().unwrap().clone();
    assert_eq!(txns.len(), 2);
    // Both attempts went by value, and the retry's statements (encoded again from the
    // records) equal the prepared ones: nodes then relationships, five rows each.
    assert_eq!(txns[0].0, "owned");
    assert_eq!(txns[1].0, "owned");
    assert_eq!(txns[0].1, txns[1].1);
    assert_eq!(txns[0].1.len(), 2);
    assert!(txns[0].1[0].0.contains("MERGE (n:`Person`"));
    assert!(txns[0].1[1].0.contains("[r:`KNOWS`]"));
    for (_, params) in &txns[0].1 {
        match params.value.get("rows") {
            Some(neo4rs::BoltType::List(rows)) => assert_eq!(rows.len(), 5),
            other => panic!("{other:?}"),
        }
    }

    // `write_records` is prepare + write_prepared: the same statements.
    writer.write_records("job-7-0".into(), &recs).await.unwrap();
    assert_eq!(exec.txns.lock().unwrap()[2].1, txns[0].1);
}
