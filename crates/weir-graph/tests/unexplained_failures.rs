//! Failures the server does not explain (`Neo.DatabaseError.*`; what ArcadeDB sends for a
//! write conflict between two workers) neither stop the stream nor lose a record: a mock
//! executor behind the real `GraphSink` and `GraphWriter` in a real `Pipeline`.
//!
//! - failing now and then: the batch is retried and every record commits, none dead-lettered;
//! - failing every time one record is in the write: that record alone is dead-lettered with
//!   the server's message, every other record commits.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use neo4rs::{BoltType, Query};
use weir_graph::{
    CypherExecutor, GraphError, GraphMapper, GraphSink, GraphWriter, Mapping, NoopPublisher,
    WriterConfig,
};
use weir_stream::{
    CancellationToken, DeadLetter, DeadLetterSink, Pipeline, PipelineConfig, ReaderSource,
    RunOutcome,
};

const MAPPING: &str = r#"
[[nodes]]
label = "Person"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }]
"#;

const RECORDS: i64 = 1000;

fn keys(statements: &[Query]) -> Vec<i64> {
    let mut out = Vec::new();
    for q in statements {
        let Some(BoltType::List(rows)) = q.get_params().value.get("rows") else {
            continue;
        };
        for row in &rows.value {
            if let BoltType::Map(m) = row
                && let Some(BoltType::Integer(i)) = m.value.get("k0")
            {
                out.push(i.value);
            }
        }
    }
    out
}

/// Whether the `n`-th transaction, holding these keys, fails.
type FailWhen = Box<dyn Fn(u64, &[i64]) -> bool + Send + Sync>;

/// Fails a write transaction with ArcadeDB's unexplained error when `fails` says so.
struct Graph {
    calls: AtomicU64,
    failures: AtomicU64,
    committed: Mutex<Vec<i64>>,
    fails: FailWhen,
}

impl Graph {
    fn new(fails: impl Fn(u64, &[i64]) -> bool + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            committed: Mutex::default(),
            fails: Box::new(fails),
        })
    }

    fn txn(&self, statements: &[Query]) -> Result<(), GraphError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let k = keys(statements);
        if (self.fails)(call, &k) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(GraphError::from_server(
                "Neo.DatabaseError.General.UnknownError",
                "Error executing Cypher command: UNWIND $rows AS row MERGE (n:`Person` {`id`: row.k0}) SET n += row.p",
            ));
        }
        self.committed.lock().unwrap().extend(k);
        Ok(())
    }
}

struct Shared(Arc<Graph>);

#[async_trait]
impl CypherExecutor for Shared {
    async fn write_txn(&self, statements: &[Query]) -> Result<(), GraphError> {
        self.0.txn(statements)
    }

    async fn write_txn_owned(
        &self,
        first: Vec<Query>,
        _rebuild: &(dyn Fn() -> Vec<Query> + Send + Sync),
    ) -> Result<(), GraphError> {
        self.0.txn(&first)
    }

    async fn run(&self, _statement: Query) -> Result<(), GraphError> {
        Ok(())
    }
}

#[derive(Default)]
struct Letters(Mutex<Vec<DeadLetter>>);

impl DeadLetterSink for Letters {
    fn write(&self, letter: &DeadLetter) -> std::io::Result<()> {
        self.0.lock().unwrap().push(letter.clone());
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn run(graph: Arc<Graph>) -> (weir_stream::RunSummary, Arc<Letters>) {
    let mapping = Arc::new(Mapping::parse(MAPPING, "people.toml").unwrap());
    let writer = Arc::new(GraphWriter::new(
        Shared(graph),
        mapping.clone(),
        Arc::new(NoopPublisher),
        WriterConfig::for_pipeline("unexplained"),
    ));
    let cfg = PipelineConfig {
        job_id: "unexplained".into(),
        batch_records: 100,
        min_batch_records: 1,
        ..PipelineConfig::default()
    };
    let mut input = String::from("id,name\n");
    for i in 0..RECORDS {
        input.push_str(&format!("{i},P{i}\n"));
    }
    let source = ReaderSource::new(Cursor::new(input.into_bytes()), "people.csv", &cfg);
    let letters = Arc::new(Letters::default());
    let summary = Pipeline::new(
        cfg,
        GraphMapper::new(mapping),
        GraphSink::new(writer, "unexplained"),
    )
    .with_dead_letters(letters.clone())
    .run(source, CancellationToken::new())
    .await
    .unwrap();
    (summary, letters)
}

#[tokio::test(start_paused = true)]
async fn an_unexplained_failure_now_and_then_is_retried_and_every_record_commits() {
    // Every other transaction fails (a conflict with another worker's write).
    let graph = Graph::new(|call, _| call % 2 == 0);
    let (summary, letters) = run(graph.clone()).await;
    assert_eq!(summary.outcome, RunOutcome::Completed, "{summary:?}");
    assert_eq!(summary.records_committed, RECORDS as u64);
    assert_eq!(summary.records_dead_lettered, 0);
    assert!(letters.0.lock().unwrap().is_empty());
    assert!(graph.failures.load(Ordering::SeqCst) >= 10);
    assert_eq!(summary.retries, graph.failures.load(Ordering::SeqCst));
    let committed: BTreeSet<i64> = graph.committed.lock().unwrap().iter().copied().collect();
    assert!(committed.iter().copied().eq(0..RECORDS));
}

#[tokio::test(start_paused = true)]
async fn a_record_the_server_always_fails_is_dead_lettered_alone() {
    let graph = Graph::new(|_, keys| keys.contains(&500));
    let (summary, letters) = run(graph.clone()).await;
    assert_eq!(summary.outcome, RunOutcome::Completed, "{summary:?}");
    assert_eq!(summary.records_committed, RECORDS as u64 - 1);
    assert_eq!(summary.records_dead_lettered, 1);
    let letters = letters.0.lock().unwrap();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].raw.starts_with("500,"), "{:?}", letters[0]);
    assert!(
        letters[0].error.contains("without a reason") && letters[0].error.contains("UnknownError"),
        "{}",
        letters[0].error
    );
    let committed: BTreeSet<i64> = graph.committed.lock().unwrap().iter().copied().collect();
    assert_eq!(committed.len(), RECORDS as usize - 1);
    assert!(!committed.contains(&500));
}
