//! Deadlocks reach the adaptive concurrency limit (no server: a mock executor).
//!
//! A real `Pipeline` writes through the real `GraphSink` and `GraphWriter`, built as every
//! production pipeline builds them (`WriterConfig::for_pipeline`), over an executor that fails
//! a write transaction with a deadlock whenever another write is in flight. The pipeline is
//! the one layer that retries the deadlocks, and each one must lower its limit.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use neo4rs::{BoltType, Query};
use weir_graph::{
    CypherExecutor, GraphError, GraphMapper, GraphSink, GraphWriter, Mapping, NoopPublisher,
    WriterConfig,
};
use weir_stream::{
    BatchReport, CancellationToken, Pipeline, PipelineConfig, PipelineObserver, ReaderSource,
    RunOutcome,
};

const MAPPING: &str = r#"
[[nodes]]
label = "Person"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }]
"#;

const RECORDS: i64 = 1000;

/// A graph that deadlocks concurrent writers: a write transaction that starts while another
/// is in flight fails with `DeadlockDetected` (after holding its "locks" as long as a write
/// takes; the one already running commits, so retries always make progress). Records the keys of committed `Person` rows.
#[derive(Default)]
struct DeadlockingGraph {
    in_flight: AtomicUsize,
    deadlocks: AtomicU64,
    committed: Mutex<Vec<i64>>,
}

impl DeadlockingGraph {
    async fn txn(&self, statements: &[Query]) -> Result<(), GraphError> {
        let others = self.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let result = if others > 0 {
            self.deadlocks.fetch_add(1, Ordering::SeqCst);
            Err(GraphError::from_server(
                "Neo.TransientError.Transaction.DeadlockDetected",
                "ForsetiClient can't acquire ExclusiveLock: deadlock detected",
            ))
        } else {
            let mut committed = self.committed.lock().unwrap();
            for q in statements {
                if !q.query().contains("MERGE (n:`Person`") {
                    continue;
                }
                let Some(BoltType::List(rows)) = q.get_params().value.get("rows") else {
                    panic!("no rows in {}", q.query());
                };
                for row in &rows.value {
                    match row {
                        BoltType::Map(m) => match m.value.get("k0") {
                            Some(BoltType::Integer(i)) => committed.push(i.value),
                            other => panic!("key {other:?}"),
                        },
                        other => panic!("row {other:?}"),
                    }
                }
            }
            Ok(())
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// The executor the writer owns; the test keeps the other handle.
struct Shared(Arc<DeadlockingGraph>);

#[async_trait]
impl CypherExecutor for Shared {
    async fn write_txn(&self, statements: &[Query]) -> Result<(), GraphError> {
        self.0.txn(statements).await
    }

    async fn write_txn_owned(
        &self,
        first: Vec<Query>,
        _rebuild: &(dyn Fn() -> Vec<Query> + Send + Sync),
    ) -> Result<(), GraphError> {
        self.0.txn(&first).await
    }

    async fn run(&self, _statement: Query) -> Result<(), GraphError> {
        Ok(())
    }
}

/// Records every change of the adaptive limit.
#[derive(Default)]
struct Limits(Mutex<Vec<usize>>);

impl PipelineObserver for Limits {
    fn batch_finished(&self, _report: &BatchReport) {}

    fn concurrency_changed(&self, limit: usize) {
        self.0.lock().unwrap().push(limit);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_deadlocks_lower_the_adaptive_limit_and_every_record_commits_once() {
    let graph = Arc::new(DeadlockingGraph::default());
    let mapping = Arc::new(Mapping::parse(MAPPING, "people.toml").unwrap());
    // As production builds a pipeline's writer and sink.
    let writer = Arc::new(GraphWriter::new(
        Shared(graph.clone()),
        mapping.clone(),
        Arc::new(NoopPublisher),
        WriterConfig::for_pipeline("contention"),
    ));
    let sink = GraphSink::new(writer, "contention");
    let cfg = PipelineConfig {
        job_id: "contention".into(),
        batch_records: 10,
        min_batch_records: 1,
        concurrency: 4,
        adaptive_concurrency: true,
        ..PipelineConfig::default()
    };
    let mut input = String::from("id,name\n");
    for i in 0..RECORDS {
        input.push_str(&format!("{i},P{i}\n"));
    }
    let source = ReaderSource::new(Cursor::new(input.into_bytes()), "people.csv", &cfg);
    let limits = Arc::new(Limits::default());
    let summary = Pipeline::new(cfg, GraphMapper::new(mapping), sink)
        .with_observer(limits.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();

    assert_eq!(summary.outcome, RunOutcome::Completed, "{summary:?}");
    assert_eq!(summary.records_committed, RECORDS as u64, "{summary:?}");
    assert_eq!(summary.records_dead_lettered, 0, "{summary:?}");

    // Every record committed exactly once: deadlocked transactions commit nothing.
    let mut counts: BTreeMap<i64, u32> = BTreeMap::new();
    for k in graph.committed.lock().unwrap().iter() {
        *counts.entry(*k).or_default() += 1;
    }
    assert_eq!(counts.len(), RECORDS as usize);
    assert!(counts.keys().copied().eq(0..RECORDS));
    assert!(
        counts.values().all(|&n| n == 1),
        "some record committed twice"
    );

    // Deadlocks happened, and the pipeline (the one layer retrying them) counted each retry:
    // the writer built for pipelines does not retry them itself.
    let deadlocks = graph.deadlocks.load(Ordering::SeqCst);
    assert!(deadlocks > 0, "no write ever ran concurrently");
    assert_eq!(summary.retries, deadlocks, "{summary:?}");

    // The limit rose (probes) and the deadlocks brought it back down to 1.
    let limits = limits.0.lock().unwrap().clone();
    let raised = limits.iter().position(|&l| l > 1);
    let raised = raised.unwrap_or_else(|| panic!("the limit never rose: {limits:?}"));
    assert!(
        limits[raised..].contains(&1),
        "the limit never came back down to 1: {limits:?}"
    );
    // Writes only go through alone, so no probe above 1 is ever kept.
    assert!(limits.iter().all(|&l| l <= 2), "{limits:?}");
}
