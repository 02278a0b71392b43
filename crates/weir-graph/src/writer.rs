//! The graph writer: mapped records in, one write transaction per batch out.
//!
//! Per batch: node rows first (per label, deduplicated by key, sorted by key), then
//! relationship rows (per type, deduplicated and sorted by start and end key, so concurrent
//! batches take locks in the same order), all in one transaction. Transient failures are
//! retried per [`WriterConfig::max_attempts`] (not at all for pipelines, whose sink stage
//! retries them: [`WriterConfig::for_pipeline`]); uniqueness-constraint races per
//! [`WriterConfig::constraint_attempts`]; data failures can be isolated down to the record.
//! Executors make one attempt per call and never retry.
//!
//! # Order
//!
//! - **Within a batch**: record order. Consecutive records of one operation form a run; runs
//!   are written one after the other in the one transaction, so an upsert, a delete and an
//!   upsert of one key end with the key written. Within a run a key is written once, with its
//!   records merged in record order (a later record overrides an earlier one, property by
//!   property).
//! - **Across batches of one writer with one batch in flight** (`--concurrency 1`): batches
//!   commit in input order.
//! - **Across workers, or with several batches in flight** (`--concurrency` above 1, several
//!   `weir consume` workers, a redelivery): no order. A mapping with `[input] version_field`
//!   makes this safe: every statement is guarded by the version stored on the node or
//!   relationship (see [`crate::cypher::node_merge`]), so a record older than what is stored
//!   is skipped and the graph never goes back to an older state. Equal versions apply.
//!   Within a run, a record older than one before it of the same key is ignored for that
//!   key; records of one version merge property by property; a higher version of a key goes
//!   in a statement of its own after the lower one's (`Layers`), so each is guarded on its
//!   own and the outcome is that of applying the records one by one.
//! - **Deletes leave no tombstone**: once a node or relationship is deleted its version is
//!   gone with it, so an older upsert that arrives after the delete creates it again.
//!
//! Change events are built from the records, before the write: a versioned row that the
//! server skipped (its stored version was newer) still publishes its `MERGED` or `DELETED`
//! event, and [`WriteOutcome`] still counts it. The statements do not report which rows
//! applied: that would need [`CypherExecutor::write_txn`] to return each statement's rows,
//! which the pool's transaction (`weir_pool::Session::write_txn`) does not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use neo4rs::{BoltList, BoltMap, BoltType, Query};
use weir_config::Backoff;
use weir_events::{
    ChangeBatch, ChangeEvent, EVENT_FORMAT_VERSION, EntityKind, NodeRef, Operation, SourcePosition,
};

use crate::cypher;
use crate::error::GraphError;
use crate::mapping::{MappedRecord, Mapping, Op, canonical_key};
use crate::publish::ChangePublisher;
use crate::value::Value;

/// Runs Cypher for the writer. Implemented for `neo4rs::Graph`; a pool implements it too.
///
/// An executor makes **one attempt** per call and does not retry: the writer (or, for
/// pipelines, the pipeline) retries, and must see every transient failure so that contention
/// reaches the adaptive concurrency limit.
#[async_trait]
pub trait CypherExecutor: Send + Sync + 'static {
    /// Runs `statements` in order in one write transaction and commits it, once; on failure
    /// the transaction is rolled back and the error classified. Borrowed, so a retry reuses the
    /// same statements: an implementation that must hand the driver an owned `Query` clones
    /// one statement at a time as it sends it, never the whole list.
    async fn write_txn(&self, statements: &[Query]) -> Result<(), GraphError>;

    /// Like [`CypherExecutor::write_txn`], with the statements handed over: `first` for the
    /// first attempt, `rebuild()` makes them again where an executor needs another copy (the
    /// executors here make one attempt and do not). Saves copying large
    /// parameter lists into the driver. Default: borrows `first`.
    async fn write_txn_owned(
        &self,
        first: Vec<Query>,
        rebuild: &(dyn Fn() -> Vec<Query> + Send + Sync),
    ) -> Result<(), GraphError> {
        let _ = rebuild;
        self.write_txn(&first).await
    }

    /// Runs one statement on its own (auto-commit), e.g. schema statements.
    async fn run(&self, statement: Query) -> Result<(), GraphError>;
}

#[async_trait]
impl CypherExecutor for neo4rs::Graph {
    async fn write_txn(&self, statements: &[Query]) -> Result<(), GraphError> {
        // `Txn::run` takes each query by value: one statement's copy at a time.
        graph_txn(self, statements.iter().cloned()).await
    }

    async fn write_txn_owned(
        &self,
        first: Vec<Query>,
        _rebuild: &(dyn Fn() -> Vec<Query> + Send + Sync),
    ) -> Result<(), GraphError> {
        graph_txn(self, first).await
    }

    async fn run(&self, statement: Query) -> Result<(), GraphError> {
        neo4rs::Graph::run(self, statement)
            .await
            .map(|_| ())
            .map_err(|e| GraphError::from_neo4rs(&e))
    }
}

/// One write transaction on `graph`: `statements` in order, then commit; rolled back on error.
async fn graph_txn(
    graph: &neo4rs::Graph,
    statements: impl IntoIterator<Item = Query>,
) -> Result<(), GraphError> {
    let mut txn = graph
        .start_txn()
        .await
        .map_err(|e| GraphError::from_neo4rs(&e))?;
    if let Err(e) = txn.run_queries(statements).await {
        let _ = txn.rollback().await;
        return Err(GraphError::from_neo4rs(&e));
    }
    txn.commit()
        .await
        .map(|_| ())
        .map_err(|e| GraphError::from_neo4rs(&e))
}

/// The writer's settings: its retry policy and the job id of its change events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Attempts per batch on transient failures (deadlocks, lost connections), the first
    /// included. Default 6; 1 for pipelines ([`WriterConfig::for_pipeline`]).
    pub max_attempts: u32,
    /// Wait before the first retry, doubled each time, each shortened by up to half at
    /// random. Default 100 ms.
    pub initial_backoff: Duration,
    /// Longest wait between attempts. Default 5 s.
    pub max_backoff: Duration,
    /// Attempts per batch when the server reports a uniqueness-constraint violation. Two
    /// transactions merging the same new key at once can both try to create it; some servers
    /// (ArcadeDB) then refuse the later one instead of waiting, and the retry finds the node.
    /// A violation that persists over these attempts is a data error. Independent of
    /// `max_attempts`. Default 4.
    pub constraint_attempts: u32,
    /// The job id written into change events. Default `weir`.
    pub job_id: String,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            constraint_attempts: 4,
            job_id: "weir".into(),
        }
    }
}

impl WriterConfig {
    /// The writer of a pipeline's [`crate::GraphSink`], as every production pipeline builds
    /// it: transient failures are **not** retried here (`max_attempts` 1) but surface as
    /// `SinkError::Transient`, so the pipeline retries them with its own policy and lowers its
    /// adaptive concurrency limit; constraint races are retried here (the retry is reported to
    /// the pipeline as contention). Change events carry `job_id`.
    pub fn for_pipeline(job_id: impl Into<String>) -> Self {
        Self {
            max_attempts: 1,
            job_id: job_id.into(),
            ..Self::default()
        }
    }

    /// The retry policy of transient failures: `max_attempts` attempts, waits doubling from
    /// `initial_backoff` to `max_backoff`, jitter 0.5.
    pub fn retry(&self) -> Backoff {
        Backoff::exponential(self.initial_backoff, self.max_backoff)
            .with_jitter(0.5)
            .with_max_attempts(self.max_attempts)
    }

    /// The retry policy of uniqueness-constraint races: [`WriterConfig::retry`] with
    /// `constraint_attempts` attempts.
    pub fn constraint_retry(&self) -> Backoff {
        self.retry().with_max_attempts(self.constraint_attempts)
    }
}

/// A batch of mapped records with where each came from.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Batch number, unique within the job.
    pub id: u64,
    /// The records, in input order.
    pub records: Vec<(SourcePosition, MappedRecord)>,
}

/// A mapped record and where it came from, as the writer reads it.
pub trait RecordRef {
    /// The mapped record.
    fn mapped(&self) -> &MappedRecord;
    /// Where it came from (only asked for when change events are built).
    fn position(&self) -> SourcePosition;
}

impl RecordRef for (SourcePosition, MappedRecord) {
    fn mapped(&self) -> &MappedRecord {
        &self.1
    }

    fn position(&self) -> SourcePosition {
        self.0.clone()
    }
}

impl<T: RecordRef + ?Sized> RecordRef for &T {
    fn mapped(&self) -> &MappedRecord {
        (**self).mapped()
    }

    fn position(&self) -> SourcePosition {
        (**self).position()
    }
}

/// What a committed batch wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Distinct nodes merged or deleted (rows sent; in a versioned mapping the server may have
    /// skipped some as older than what it holds).
    pub nodes: u64,
    /// Distinct relationships merged or deleted (rows sent, likewise).
    pub relationships: u64,
    /// Attempts it took (1 = no retry).
    pub attempts: u32,
    /// Set when the commit worked but the publisher refused the change batch.
    pub publish_error: Option<String>,
}

/// The result of [`GraphWriter::write_isolating`].
#[derive(Debug, Default)]
pub struct IsolatedOutcome {
    /// Records committed.
    pub committed: u64,
    /// Records the server refused: their index in the batch and why.
    pub failed: Vec<(usize, GraphError)>,
    /// Totals over the committed parts.
    pub outcome: WriteOutcome,
}

/// A batch encoded for the server by [`GraphWriter::prepare`], ready for
/// [`GraphWriter::write_prepared`]: its statements with their Bolt parameters and its change
/// events.
#[derive(Debug)]
pub struct PreparedBatch {
    batch_id: String,
    queries: Vec<Query>,
    events: Vec<ChangeEvent>,
    nodes: u64,
    rels: u64,
}

impl PreparedBatch {
    /// The change-batch id it will be written under.
    pub fn batch_id(&self) -> &str {
        &self.batch_id
    }
}

/// Writes batches of mapped records to the graph.
pub struct GraphWriter<E> {
    exec: E,
    mapping: Arc<Mapping>,
    node_cypher: Vec<String>,
    rel_cypher: Vec<String>,
    publisher: Arc<dyn ChangePublisher>,
    config: WriterConfig,
}

/// A key in write order: integers numerically (index-friendly, and the same order in every
/// batch, so concurrent transactions take locks in one order), everything else by its text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart {
    Int(i64),
    Text(String),
}

/// A relationship's place in write order: start key, then end key.
type RelKey = (Vec<KeyPart>, Vec<KeyPart>);

/// One statement's rows by key, each with the version kept for it (versioned mappings).
type Rows<K> = BTreeMap<K, (BoltMap, Option<i64>)>;

fn sort_key(values: &[Value]) -> Vec<KeyPart> {
    values
        .iter()
        .map(|v| match v {
            Value::Int(i) => KeyPart::Int(*i),
            other => {
                let mut s = String::new();
                other.write_canonical(&mut s);
                KeyPart::Text(s)
            }
        })
        .collect()
}

fn is_constraint_race(e: &GraphError) -> bool {
    matches!(e, GraphError::Data { code, .. } if code.contains("ConstraintValidation"))
}

/// Whether a record of version `new` supersedes the one kept for its key (`kept`): unversioned
/// records always do, versioned ones when not older (equal versions apply, like the
/// statements' guard on the server).
fn supersedes(new: Option<i64>, kept: Option<i64>) -> bool {
    match (new, kept) {
        (Some(n), Some(k)) => n >= k,
        _ => true,
    }
}

/// Appends `UNWIND $rows ...` (`cypher()`) over `rows` to `queries` unless there are none;
/// returns how many rows it carries. A row's version, when it has one, goes in as `v`.
fn push_unwind<K>(queries: &mut Vec<Query>, cypher: impl FnOnce() -> String, rows: Rows<K>) -> u64 {
    if rows.is_empty() {
        return 0;
    }
    let n = rows.len() as u64;
    let list: Vec<BoltType> = rows
        .into_values()
        .map(|(mut row, v)| {
            if let Some(v) = v {
                row.put("v".into(), Value::Int(v).to_bolt());
            }
            BoltType::Map(row)
        })
        .collect();
    queries.push(Query::new(cypher()).param("rows", BoltType::List(BoltList::from(list))));
    n
}

/// A run's upsert rows of one kind (nodes or relationships) by mapping and key, in layers.
///
/// Unversioned, every key has one row in layer 0 that later records override property by
/// property. Versioned, a key's records of one version merge into one row, a record older than
/// the highest version seen for its key is ignored, and a record of a higher version starts
/// the key's row in the next layer. Each layer is a statement of its own, so every version is
/// guarded on its own, as if the records were applied one by one: with `v1 {name, city}` then
/// `v3 {name}` and `v2` stored, `v1` is skipped and `v2`'s city stays (one merged row at `v3`
/// would write `v1`'s city). Within one statement a key has one row (ArcadeDB evaluates every
/// row's `WHERE` before any row's `SET`).
struct Layers<K> {
    /// Per layer, per mapping: key -> (row, its version).
    layers: Vec<Vec<Rows<K>>>,
    /// Per mapping, versioned only: key -> (its last layer, the highest version seen).
    last: Vec<BTreeMap<K, (usize, i64)>>,
}

impl<K: Ord + Clone> Layers<K> {
    fn new(mappings: usize) -> Self {
        Self {
            layers: vec![vec![BTreeMap::new(); mappings]],
            last: vec![BTreeMap::new(); mappings],
        }
    }

    /// The row a record of version `v` writes `key` of mapping `mi` into (`new_row()` when it
    /// starts one), or `None` when the record is older than a version seen for the key.
    fn row(
        &mut self,
        mi: usize,
        key: K,
        v: Option<i64>,
        new_row: impl FnOnce() -> BoltMap,
    ) -> Option<&mut BoltMap> {
        let layer = match v {
            None => 0,
            Some(v) => match self.last[mi].get_mut(&key) {
                None => {
                    self.last[mi].insert(key.clone(), (0, v));
                    0
                }
                Some((_, kept)) if v < *kept => return None,
                Some((layer, kept)) => {
                    if v > *kept {
                        *layer += 1;
                        *kept = v;
                    }
                    *layer
                }
            },
        };
        if layer == self.layers.len() {
            let mappings = self.last.len();
            self.layers.push(vec![BTreeMap::new(); mappings]);
        }
        let entry = self.layers[layer][mi]
            .entry(key)
            .or_insert_with(|| (new_row(), v));
        Some(&mut entry.0)
    }

    /// Appends the statements, layer by layer (`cypher(mi)` per mapping); returns the number
    /// of distinct keys.
    fn push(self, queries: &mut Vec<Query>, cypher: impl Fn(usize) -> String) -> u64 {
        let mut keys = 0;
        for (li, layer) in self.layers.into_iter().enumerate() {
            for (mi, rows) in layer.into_iter().enumerate() {
                let n = push_unwind(queries, || cypher(mi), rows);
                if li == 0 {
                    keys += n;
                }
            }
        }
        keys
    }
}

/// Sets `props` into the row's property map `p` (later values win).
fn put_props(p: &mut BoltMap, props: &[(usize, Value)], defs: &[crate::mapping::PropertyMapping]) {
    p.value.reserve(props.len());
    for (i, v) in props {
        p.value.insert(defs[*i].name.as_str().into(), v.to_bolt());
    }
}

fn props_json(
    props: &[(usize, Value)],
    defs: &[crate::mapping::PropertyMapping],
) -> BTreeMap<String, serde_json::Value> {
    props
        .iter()
        .map(|(i, v)| (defs[*i].name.as_str().to_owned(), v.to_json()))
        .collect()
}

impl<E: CypherExecutor> GraphWriter<E> {
    /// A writer for `mapping` over `exec`, publishing change batches to `publisher`.
    pub fn new(
        exec: E,
        mapping: Arc<Mapping>,
        publisher: Arc<dyn ChangePublisher>,
        config: WriterConfig,
    ) -> Self {
        let node_cypher = mapping.nodes.iter().map(cypher::node_merge).collect();
        let rel_cypher = mapping
            .relationships
            .iter()
            .map(cypher::rel_merge)
            .collect();
        Self {
            exec,
            mapping,
            node_cypher,
            rel_cypher,
            publisher,
            config,
        }
    }

    /// The mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Creates the key uniqueness constraints (or, where the server refuses one, an index)
    /// the mapping needs, `IF NOT EXISTS`. Returns the statements that took effect.
    pub async fn ensure_schema(&self) -> Result<Vec<String>, GraphError> {
        let mut done = Vec::new();
        for k in cypher::key_schemas(&self.mapping) {
            let c = k.constraint();
            match self.exec.run(Query::new(c.clone())).await {
                Ok(()) => done.push(c),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::warn!(label = k.label.as_str(), error = %e, "key constraint refused; creating an index instead");
                    let i = k.index();
                    self.exec.run(Query::new(i.clone())).await?;
                    done.push(i);
                }
            }
        }
        Ok(done)
    }

    /// Encodes `records` for one write under the change-batch id `batch_id` (no I/O): rows
    /// de-duplicated, sorted and turned into Bolt parameters, change events built. Done ahead
    /// of the write, it keeps the connection busy while the next batch is encoded.
    ///
    /// Consecutive records of one operation ([`Op`]) form a run, encoded on its own and in
    /// record order: a delete after an upsert of the same key removes it, an upsert after a
    /// delete writes it anew, all in the one transaction.
    pub fn prepare<R: RecordRef>(&self, batch_id: String, records: &[R]) -> PreparedBatch {
        let mut out = PreparedBatch {
            batch_id,
            queries: Vec::new(),
            events: Vec::new(),
            nodes: 0,
            rels: 0,
        };
        let mut start = 0;
        while start < records.len() {
            let op = records[start].mapped().op;
            let end = records[start..]
                .iter()
                .position(|r| r.mapped().op != op)
                .map_or(records.len(), |n| start + n);
            match op {
                Op::Upsert => self.prepare_upserts(&records[start..end], &mut out),
                Op::Delete => self.prepare_deletes(&records[start..end], &mut out),
            }
            start = end;
        }
        out
    }

    /// A change event of this writer, committed "now" (the time is set again at the commit).
    fn event(
        &self,
        batch_id: &str,
        kind: EntityKind,
        label: &str,
        key: String,
        operation: Operation,
        pos: &SourcePosition,
    ) -> ChangeEvent {
        ChangeEvent {
            version: EVENT_FORMAT_VERSION,
            seq: 0,
            index: 0,
            kind,
            label: label.to_owned(),
            key,
            operation,
            properties: BTreeMap::new(),
            start: None,
            end: None,
            job_id: self.config.job_id.clone(),
            batch_id: batch_id.to_owned(),
            source: pos.clone(),
            committed_at_ms: 0,
        }
    }

    /// Encodes a run of delete records: `DETACH DELETE` per node label, `DELETE` per
    /// relationship type, de-duplicated and sorted by key; `DELETED` events.
    fn prepare_deletes<R: RecordRef>(&self, records: &[R], out: &mut PreparedBatch) {
        let want_events = self.publisher.wants_events();
        let m = &*self.mapping;
        // Per mapping: key -> (row, the highest version asked for).
        let mut nodes: Vec<Rows<Vec<KeyPart>>> = vec![BTreeMap::new(); m.nodes.len()];
        let mut rels: Vec<Rows<RelKey>> = vec![BTreeMap::new(); m.relationships.len()];
        let mut events: BTreeMap<(bool, usize, String), ChangeEvent> = BTreeMap::new();
        for r in records {
            let rec = r.mapped();
            let pos = &if want_events {
                r.position()
            } else {
                SourcePosition::default()
            };
            for n in &rec.nodes {
                let nm = &m.nodes[n.mapping];
                let entry = nodes[n.mapping].entry(sort_key(&n.key)).or_insert_with(|| {
                    let mut row = BoltMap::with_capacity(n.key.len() + 1);
                    for (i, v) in n.key.iter().enumerate() {
                        row.put(format!("k{i}").into(), v.to_bolt());
                    }
                    (row, rec.version)
                });
                // An older delete of a key already asked for changes nothing.
                if !supersedes(rec.version, entry.1) {
                    continue;
                }
                entry.1 = rec.version;
                if want_events {
                    let key = canonical_key(nm.key_properties().map(|p| &p.name), &n.key);
                    events.insert(
                        (false, n.mapping, key.clone()),
                        self.event(
                            &out.batch_id,
                            EntityKind::Node,
                            nm.label.as_str(),
                            key,
                            Operation::Deleted,
                            pos,
                        ),
                    );
                }
            }
            for r in &rec.rels {
                let rm = &m.relationships[r.mapping];
                let entry = rels[r.mapping]
                    .entry((sort_key(&r.start), sort_key(&r.end)))
                    .or_insert_with(|| {
                        let mut row = BoltMap::with_capacity(r.start.len() + r.end.len() + 1);
                        for (i, v) in r.start.iter().enumerate() {
                            row.put(format!("s{i}").into(), v.to_bolt());
                        }
                        for (i, v) in r.end.iter().enumerate() {
                            row.put(format!("e{i}").into(), v.to_bolt());
                        }
                        (row, rec.version)
                    });
                if !supersedes(rec.version, entry.1) {
                    continue;
                }
                entry.1 = rec.version;
                if want_events {
                    let sk = canonical_key(rm.start.key.iter().map(|k| &k.0), &r.start);
                    let ek = canonical_key(rm.end.key.iter().map(|k| &k.0), &r.end);
                    let mut e = self.event(
                        &out.batch_id,
                        EntityKind::Relationship,
                        rm.rel_type.as_str(),
                        format!("{sk}->{ek}"),
                        Operation::Deleted,
                        pos,
                    );
                    e.start = Some(NodeRef {
                        label: rm.start.label.as_str().to_owned(),
                        key: sk,
                    });
                    e.end = Some(NodeRef {
                        label: rm.end.label.as_str().to_owned(),
                        key: ek,
                    });
                    events.insert((true, r.mapping, e.key.clone()), e);
                }
            }
        }
        // Relationships first: a node deleted in the same run would take them along anyway.
        for (i, rows) in rels.into_iter().enumerate() {
            out.rels += push_unwind(
                &mut out.queries,
                || cypher::rel_delete(&m.relationships[i]),
                rows,
            );
        }
        for (i, rows) in nodes.into_iter().enumerate() {
            out.nodes += push_unwind(&mut out.queries, || cypher::node_delete(&m.nodes[i]), rows);
        }
        // Node events before relationship events, like upserts.
        out.events.extend(events.into_values());
    }

    /// Encodes a run of upsert records.
    fn prepare_upserts<R: RecordRef>(&self, records: &[R], out: &mut PreparedBatch) {
        let batch_id = out.batch_id.clone();
        let want_events = self.publisher.wants_events();
        let m = &*self.mapping;
        let mut nodes: Layers<Vec<KeyPart>> = Layers::new(m.nodes.len());
        let mut rels: Layers<RelKey> = Layers::new(m.relationships.len());
        let mut node_events: Vec<BTreeMap<String, ChangeEvent>> =
            vec![BTreeMap::new(); m.nodes.len()];
        let mut rel_events: Vec<BTreeMap<(String, String), ChangeEvent>> =
            vec![BTreeMap::new(); m.relationships.len()];
        let event = |kind, label: &str, key: String, pos: &SourcePosition| {
            self.event(&batch_id, kind, label, key, Operation::Merged, pos)
        };
        for r in records {
            let rec = r.mapped();
            let pos = &if want_events {
                r.position()
            } else {
                SourcePosition::default()
            };
            for n in &rec.nodes {
                let nm = &m.nodes[n.mapping];
                let new_row = || {
                    let mut row = BoltMap::with_capacity(n.key.len() + 1);
                    for (i, v) in n.key.iter().enumerate() {
                        row.put(format!("k{i}").into(), v.to_bolt());
                    }
                    row.put(
                        "p".into(),
                        BoltType::Map(BoltMap::with_capacity(nm.properties.len())),
                    );
                    row
                };
                // Later records override earlier ones, property by property (versioned: those
                // of the same version; see `Layers`). An older record is ignored for the key.
                let Some(row) = nodes.row(n.mapping, sort_key(&n.key), rec.version, new_row) else {
                    continue;
                };
                if let Some(BoltType::Map(p)) = row.value.get_mut("p") {
                    put_props(p, &n.props, &nm.properties);
                }
                if want_events {
                    let key = canonical_key(nm.key_properties().map(|p| &p.name), &n.key);
                    let e = node_events[n.mapping]
                        .entry(key.clone())
                        .or_insert_with(|| event(EntityKind::Node, nm.label.as_str(), key, pos));
                    e.properties.extend(props_json(&n.props, &nm.properties));
                    e.source = pos.clone();
                }
            }
            for r in &rec.rels {
                let rm = &m.relationships[r.mapping];
                let new_row = || {
                    let mut row = BoltMap::with_capacity(r.start.len() + r.end.len() + 1);
                    for (i, v) in r.start.iter().enumerate() {
                        row.put(format!("s{i}").into(), v.to_bolt());
                    }
                    for (i, v) in r.end.iter().enumerate() {
                        row.put(format!("e{i}").into(), v.to_bolt());
                    }
                    row.put("p".into(), BoltType::Map(BoltMap::new()));
                    row
                };
                let key = (sort_key(&r.start), sort_key(&r.end));
                let Some(row) = rels.row(r.mapping, key, rec.version, new_row) else {
                    continue;
                };
                if let Some(BoltType::Map(p)) = row.value.get_mut("p") {
                    put_props(p, &r.props, &rm.properties);
                }
                if want_events {
                    let sk = canonical_key(rm.start.key.iter().map(|k| &k.0), &r.start);
                    let ek = canonical_key(rm.end.key.iter().map(|k| &k.0), &r.end);
                    let e = rel_events[r.mapping]
                        .entry((sk.clone(), ek.clone()))
                        .or_insert_with(|| {
                            let mut e = event(
                                EntityKind::Relationship,
                                rm.rel_type.as_str(),
                                format!("{sk}->{ek}"),
                                pos,
                            );
                            e.start = Some(NodeRef {
                                label: rm.start.label.as_str().to_owned(),
                                key: sk.clone(),
                            });
                            e.end = Some(NodeRef {
                                label: rm.end.label.as_str().to_owned(),
                                key: ek.clone(),
                            });
                            e
                        });
                    e.properties.extend(props_json(&r.props, &rm.properties));
                    e.source = pos.clone();
                }
            }
        }
        out.nodes += nodes.push(&mut out.queries, |i| self.node_cypher[i].clone());
        out.rels += rels.push(&mut out.queries, |i| self.rel_cypher[i].clone());
        out.events.extend(
            node_events
                .into_iter()
                .flat_map(BTreeMap::into_values)
                .chain(rel_events.into_iter().flat_map(BTreeMap::into_values)),
        );
    }

    /// Writes `records` in one transaction under the change-batch id `batch_id`: transient
    /// failures retried per [`WriterConfig`], events published after the commit.
    pub async fn write_records<R: RecordRef + Sync>(
        &self,
        batch_id: String,
        records: &[R],
    ) -> Result<WriteOutcome, GraphError> {
        self.write_prepared(self.prepare(batch_id, records), records)
            .await
    }

    /// Writes `records`, which [`GraphWriter::prepare`] encoded as `prepared`, in one
    /// transaction: the prepared statements go to the server as they are (not copied), a retry
    /// encodes `records` again; transient failures retried per [`WriterConfig`], events
    /// published after the commit.
    pub async fn write_prepared<R: RecordRef + Sync>(
        &self,
        prepared: PreparedBatch,
        records: &[R],
    ) -> Result<WriteOutcome, GraphError> {
        let PreparedBatch {
            batch_id,
            queries,
            events,
            nodes,
            rels,
        } = prepared;
        if queries.is_empty() {
            return Ok(WriteOutcome {
                attempts: 0,
                ..WriteOutcome::default()
            });
        }
        let rebuild = || self.prepare(batch_id.clone(), records).queries;
        let mut first = Some(queries);
        let (retry, constraint_retry) = (self.config.retry(), self.config.constraint_retry());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let statements = first.take().unwrap_or_else(rebuild);
            let policy = match self.exec.write_txn_owned(statements, &rebuild).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && retry.may_retry(attempt) => {
                    tracing::debug!(batch = %batch_id, attempt, error = %e, "transient failure, retrying");
                    &retry
                }
                Err(e) if is_constraint_race(&e) && constraint_retry.may_retry(attempt) => {
                    tracing::debug!(batch = %batch_id, attempt, error = %e, "constraint violation, retrying once the competing transaction committed");
                    &constraint_retry
                }
                Err(e) => return Err(e),
            };
            tokio::time::sleep(policy.jittered(attempt)).await;
        }
        let mut out = WriteOutcome {
            nodes,
            relationships: rels,
            attempts: attempt,
            publish_error: None,
        };
        if self.publisher.wants_events() {
            // The events were built ahead (`prepare`); they carry the commit's time.
            let committed_at = chrono::Utc::now().timestamp_millis();
            let mut events = events;
            for e in &mut events {
                e.committed_at_ms = committed_at;
            }
            let mut cb = ChangeBatch {
                version: EVENT_FORMAT_VERSION,
                seq: 0,
                job_id: self.config.job_id.clone(),
                batch_id,
                events,
            };
            cb.assign_seq(0);
            if let Err(e) = self.publisher.publish(cb).await {
                tracing::warn!(error = %e, "change batch not published");
                out.publish_error = Some(e.to_string());
            }
        }
        Ok(out)
    }

    /// Writes `batch` in one transaction (retrying transient failures) and publishes its
    /// change events.
    pub async fn write(&self, batch: &Batch) -> Result<WriteOutcome, GraphError> {
        self.write_records(
            format!("{}-{}", self.config.job_id, batch.id),
            &batch.records,
        )
        .await
    }

    /// Like [`GraphWriter::write`], but when the server refuses the data, each record is
    /// written on its own so only the refused ones fail. Transient and fatal errors are
    /// returned as they are.
    pub async fn write_isolating(&self, batch: &Batch) -> Result<IsolatedOutcome, GraphError> {
        match self.write(batch).await {
            Ok(outcome) => Ok(IsolatedOutcome {
                committed: batch.records.len() as u64,
                failed: Vec::new(),
                outcome,
            }),
            Err(e) if e.is_data_error() => {
                tracing::debug!(batch = batch.id, error = %e, "data error; isolating records");
                let mut out = IsolatedOutcome::default();
                for (i, rec) in batch.records.iter().enumerate() {
                    let id = format!("{}-{}.{i}", self.config.job_id, batch.id);
                    match self.write_records(id, std::slice::from_ref(rec)).await {
                        Ok(o) => {
                            out.committed += 1;
                            out.outcome.nodes += o.nodes;
                            out.outcome.relationships += o.relationships;
                            out.outcome.attempts = out.outcome.attempts.max(o.attempts);
                            if o.publish_error.is_some() {
                                out.outcome.publish_error = o.publish_error;
                            }
                        }
                        Err(e) if e.is_data_error() => out.failed.push((i, e)),
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of `layers`, as (layer, key, version, marks) with the `m` entries written.
    fn rows(layers: &Layers<u32>) -> Vec<(usize, u32, Option<i64>, Vec<String>)> {
        let mut out = Vec::new();
        for (li, layer) in layers.layers.iter().enumerate() {
            for (k, (row, v)) in &layer[0] {
                let mut marks: Vec<String> = row.value.keys().map(|s| s.value.clone()).collect();
                marks.sort();
                out.push((li, *k, *v, marks));
            }
        }
        out
    }

    fn write(layers: &mut Layers<u32>, key: u32, v: Option<i64>, mark: &str) -> bool {
        match layers.row(0, key, v, BoltMap::new) {
            Some(row) => {
                row.put(mark.into(), BoltType::from(1i64));
                true
            }
            None => false,
        }
    }

    #[test]
    fn unversioned_records_of_a_key_share_one_row() {
        let mut l = Layers::new(1);
        for m in ["a", "b", "c"] {
            assert!(write(&mut l, 1, None, m));
        }
        assert_eq!(
            rows(&l),
            vec![(0, 1, None, vec!["a".into(), "b".into(), "c".into()])]
        );
    }

    #[test]
    fn versions_of_a_key_go_in_layers_and_older_records_are_ignored() {
        let mut l = Layers::new(1);
        assert!(write(&mut l, 1, Some(3), "a"));
        assert!(!write(&mut l, 1, Some(1), "b"), "older than 3");
        assert!(write(&mut l, 1, Some(3), "c"), "equal: merged");
        assert!(write(&mut l, 2, Some(1), "d"));
        assert!(write(&mut l, 2, Some(5), "e"), "newer: next layer");
        assert!(!write(&mut l, 2, Some(4), "f"), "older than 5");
        assert!(write(&mut l, 2, Some(5), "g"));
        let s = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rows(&l),
            vec![
                (0, 1, Some(3), s(&["a", "c"])),
                (0, 2, Some(1), s(&["d"])),
                (1, 2, Some(5), s(&["e", "g"])),
            ]
        );
        let mut queries = Vec::new();
        assert_eq!(l.push(&mut queries, |_| "Q".into()), 2, "distinct keys");
        assert_eq!(queries.len(), 2, "one statement per layer");
    }
}
