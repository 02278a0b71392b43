//! The graph side of the stream processor: [`GraphMapper`] (a `weir_stream::Mapper`) and
//! [`GraphSink`] (a `weir_stream::Sink`), and the writer's executor on a `weir_pool::Pool`.

use std::sync::Arc;

use async_trait::async_trait;
use neo4rs::Query;
use weir_events::SourcePosition;
use weir_pool::{Pool, PoolError};
use weir_stream::{
    Decoded, DecodedRecord, MapError, Mapper, Prepared, Sink, SinkBatch, SinkError, SourceNames,
    Staged,
};

use crate::error::GraphError;
use crate::mapping::{MappedRecord, Mapping, Record, RecordError};
use crate::value::FieldRef;
use crate::writer::{CypherExecutor, GraphWriter, PreparedBatch, RecordRef};

impl GraphError {
    /// Classifies a pool error.
    pub fn from_pool(e: &PoolError) -> Self {
        match e {
            PoolError::Database { code, message } => {
                let g = Self::from_server(code, message);
                if e.is_transient() && !g.is_transient() {
                    Self::Transient {
                        code: code.clone(),
                        message: message.clone(),
                    }
                } else {
                    g
                }
            }
            other if other.is_transient() => Self::Transient {
                code: "pool".into(),
                message: other.to_string(),
            },
            other => Self::Fatal {
                code: "pool".into(),
                message: other.to_string(),
            },
        }
    }
}

/// Runs the writer's statements through the bounded session pool, one attempt per call
/// ([`Pool::write_txn_once`]): the pool's own transaction retries (`txn_max_attempts`) would
/// hide deadlocks from the writer and the pipeline, whose retries report them as contention.
#[async_trait]
impl CypherExecutor for Pool {
    async fn write_txn(&self, statements: &[Query]) -> Result<(), GraphError> {
        let mut session = self.get().await.map_err(|e| GraphError::from_pool(&e))?;
        session
            .write_txn(statements)
            .await
            .map_err(|e| GraphError::from_pool(&e))
    }

    async fn write_txn_owned(
        &self,
        first: Vec<Query>,
        _rebuild: &(dyn Fn() -> Vec<Query> + Send + Sync),
    ) -> Result<(), GraphError> {
        Pool::write_txn_once(self, first)
            .await
            .map_err(|e| GraphError::from_pool(&e))
    }

    async fn run(&self, statement: Query) -> Result<(), GraphError> {
        Pool::run(self, statement)
            .await
            .map_err(|e| GraphError::from_pool(&e))
    }
}

struct CsvRecord<'a>(weir_stream::CsvRow<'a>);

impl Record for CsvRecord<'_> {
    fn field(&self, name: &str) -> Option<FieldRef<'_>> {
        self.0.get(name).map(FieldRef::Text)
    }
}

/// Maps decoded CSV rows and JSON objects with a [`Mapping`].
#[derive(Clone, Debug)]
pub struct GraphMapper {
    mapping: Arc<Mapping>,
}

impl GraphMapper {
    /// A mapper for `mapping`.
    pub fn new(mapping: Arc<Mapping>) -> Self {
        Self { mapping }
    }
}

fn map_error(e: RecordError) -> MapError {
    match &e {
        RecordError::EmptyKey { field, .. }
        | RecordError::Value { field, .. }
        | RecordError::Operation { field, .. }
        | RecordError::MissingVersion { field }
        | RecordError::Version { field, .. } => MapError::field(field.clone(), e.to_string()),
        RecordError::NothingToDelete => MapError::record(e.to_string()),
    }
}

impl Mapper for GraphMapper {
    type Item = MappedRecord;

    fn map(&self, record: &DecodedRecord<'_>) -> Result<MappedRecord, MapError> {
        match &record.value {
            Decoded::Csv(row) => self.mapping.map_record(&CsvRecord(*row)).map_err(map_error),
            Decoded::Json(serde_json::Value::Object(obj)) => {
                self.mapping.map_record(obj).map_err(map_error)
            }
            Decoded::Json(other) => Err(MapError::record(format!(
                "expected a JSON object, found {}",
                match other {
                    serde_json::Value::Array(_) => "an array",
                    serde_json::Value::String(_) => "a string",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            ))),
        }
    }

    /// A CSV header must hold every column the mapping needs, each once
    /// ([`Mapping::check_header`]).
    fn check_header(&self, columns: &[&str]) -> Result<(), MapError> {
        self.mapping
            .check_header(columns)
            .map_err(|e| MapError::record(e.to_string()))
    }

    fn item_bytes(&self, item: &MappedRecord, raw_len: usize) -> usize {
        // The sink encodes rows into Bolt values before their write (`Sink::prepare`, one batch
        // ahead of the writes in flight): count the item twice.
        2 * item.approx_bytes() + raw_len + std::mem::size_of::<Staged<MappedRecord>>()
    }
}

struct StagedRef<'a> {
    staged: &'a Staged<MappedRecord>,
    names: &'a SourceNames,
}

impl RecordRef for StagedRef<'_> {
    fn mapped(&self) -> &MappedRecord {
        &self.staged.item
    }

    fn position(&self) -> SourcePosition {
        let p = self.staged.position;
        SourcePosition {
            source: self.names.get(p.file as usize).map(|n| n.to_string()),
            line: Some(p.line),
            offset: Some(p.offset),
        }
    }
}

/// Writes pipeline batches with a [`GraphWriter`]. Errors are classified for the pipeline:
/// transient (it retries), data (it isolates the bad records and dead-letters them), fatal.
pub struct GraphSink<E> {
    writer: Arc<GraphWriter<E>>,
    job_id: String,
}

impl<E: CypherExecutor> GraphSink<E> {
    /// A sink writing through `writer`; change batches are named
    /// `<job_id>-<run_id>-<seq>-<offset>`.
    pub fn new(writer: Arc<GraphWriter<E>>, job_id: impl Into<String>) -> Self {
        Self {
            writer,
            job_id: job_id.into(),
        }
    }
}

impl<E: CypherExecutor> GraphSink<E> {
    fn refs<'a>(batch: &SinkBatch<'a, MappedRecord>) -> Vec<StagedRef<'a>> {
        batch
            .items
            .iter()
            .map(|staged| StagedRef {
                staged,
                names: batch.sources,
            })
            .collect()
    }

    fn prepare_batch(&self, batch: &SinkBatch<'_, MappedRecord>) -> PreparedBatch {
        let refs = Self::refs(batch);
        // Unique per run (a second run under the same job id never has its changes taken for
        // duplicates of the first's); parts of a split batch share `seq`, the first record's
        // offset tells them apart.
        let first = batch.items.first().map(|s| s.position.offset).unwrap_or(0);
        let id = format!("{}-{}-{}-{first}", self.job_id, batch.run_id, batch.seq);
        self.writer.prepare(id, &refs)
    }

    async fn write_batch(
        &self,
        batch: &SinkBatch<'_, MappedRecord>,
        prepared: PreparedBatch,
    ) -> Result<(), SinkError> {
        match self
            .writer
            .write_prepared(prepared, &Self::refs(batch))
            .await
        {
            Ok(outcome) => {
                // Retried deadlocks or constraint races: tell the pipeline, which lowers its
                // concurrency (servers that serialise MERGEs do better with fewer writers).
                if outcome.attempts > 1 {
                    batch.contention.report();
                }
                match outcome.publish_error {
                    // The publisher gave up (its policy requires every change to reach the
                    // bus): the run stops, and the batch is not finished, so the checkpoint
                    // stays before it and a rerun writes (idempotently) and publishes it.
                    Some(e) => Err(SinkError::Fatal(format!(
                        "batch committed to the graph, but its change events could not be published: {e}; \
                         the checkpoint stays before it: rerun (--resume, or resubmit the job) to publish them"
                    ))),
                    None => Ok(()),
                }
            }
            Err(e) => Err(sink_error(e, batch.attempt)),
        }
    }
}

/// Attempts a write (a batch, or a part of one being isolated) gets when the server fails it
/// without a reason ([`GraphError::is_unexplained`]) before its records are isolated.
pub const UNEXPLAINED_ATTEMPTS: u32 = 4;

/// What the pipeline does with a failed write, on its `attempt`-th try: transient errors are
/// retried; refused data is isolated and dead-lettered; a failure the server does not explain
/// is retried like a transient one (on ArcadeDB it is a write conflict between concurrent
/// writers, which the next try does not meet) and, from [`UNEXPLAINED_ATTEMPTS`] on, isolated
/// like refused data, so one record the server cannot take is dead-lettered with the server's
/// message instead of stopping the stream; anything else stops the run.
fn sink_error(e: GraphError, attempt: u32) -> SinkError {
    if e.is_transient() || (e.is_unexplained() && attempt < UNEXPLAINED_ATTEMPTS) {
        SinkError::Transient(e.to_string())
    } else if e.is_data_error() {
        SinkError::Data {
            message: e.to_string(),
            bad_items: None,
        }
    } else if e.is_unexplained() {
        SinkError::Data {
            message: format!("the server failed this write {attempt} times without a reason: {e}"),
            bad_items: None,
        }
    } else {
        SinkError::Fatal(e.to_string())
    }
}

impl<E: CypherExecutor> Sink for GraphSink<E> {
    type Item = MappedRecord;

    async fn write(&self, batch: &SinkBatch<'_, MappedRecord>) -> Result<(), SinkError> {
        self.write_batch(batch, self.prepare_batch(batch)).await
    }

    /// Encodes the batch's rows into Bolt parameters ahead of its write.
    fn prepare(&self, batch: &SinkBatch<'_, MappedRecord>) -> Option<Prepared> {
        Some(Prepared::new(self.prepare_batch(batch)))
    }

    async fn write_prepared(
        &self,
        batch: &SinkBatch<'_, MappedRecord>,
        prepared: Prepared,
    ) -> Result<(), SinkError> {
        match prepared.downcast::<PreparedBatch>() {
            Ok(p) => self.write_batch(batch, p).await,
            Err(_) => self.write(batch).await,
        }
    }
}
