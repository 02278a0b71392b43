//! The GraphQL schema: queries over the graph and ingest jobs, change and progress
//! subscriptions.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{
    Context, Enum, ErrorExtensions, Json, Object, Schema, SimpleObject, Subscription,
};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use weir_events::ProgressEvent;
use weir_subscriptions::{
    ChangeFilter, Connection, EndReason, EventRef, Item, SubscribeOptions, SubscriptionError,
    SubscriptionId, SubscriptionManager, Topic,
};

use crate::GatewayError;
use crate::config::LimitsConfig;
use crate::graph::{self, GraphReader, Ident, NeighbourQuery, NodeKey};
use crate::projection::ChangePlan;
use crate::replay::{self, ChangeReplay, ReplayError};

/// What `graphChanges(since:)` needs: the replay source and the gateway-wide replay slots.
struct ReplayCtx {
    source: Option<Arc<dyn ChangeReplay>>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// The gateway's schema type.
pub type GatewaySchema = Schema<QueryRoot, async_graphql::EmptyMutation, SubscriptionRoot>;

/// Builds the schema with its limits; `reader` and `manager` are available to resolvers.
pub(crate) fn build(
    reader: Arc<dyn GraphReader>,
    manager: SubscriptionManager,
    limits: &LimitsConfig,
    introspection: bool,
    replay: Option<Arc<dyn ChangeReplay>>,
) -> GatewaySchema {
    let mut b = Schema::build(QueryRoot, async_graphql::EmptyMutation, SubscriptionRoot)
        .data(reader)
        .data(manager)
        .data(ReplayCtx {
            source: replay,
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_replays)),
        })
        .data(limits.clone())
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity);
    if !introspection {
        b = b.disable_introspection();
    }
    b.finish()
}

/// The SDL of the schema (what `schemas/gateway.graphql` holds).
pub fn sdl() -> String {
    Schema::build(QueryRoot, async_graphql::EmptyMutation, SubscriptionRoot)
        .finish()
        .sdl()
}

/// Per-operation context the WebSocket layer gives subscription resolvers.
pub(crate) struct OpContext {
    pub(crate) conn: Arc<Connection>,
    /// The subscription the operation started, so a client `complete` can end it as such.
    pub(crate) subscription: Mutex<Option<SubscriptionId>>,
    /// Why it ended, once it has.
    pub(crate) ended: Mutex<Option<EndReason>>,
    /// `(seq, index)` of the last change it delivered, once it has ended: where the client
    /// resumes (`since`, `sinceIndex`) after being ended as too slow.
    pub(crate) last_delivered: Mutex<Option<(u64, u32)>>,
    /// The `graphChanges` fast path ([`crate::projection`]).
    pub(crate) fast: FastPath,
}

/// How a `graphChanges` operation moves to the fast path: the resolver's stream first yields
/// the synthetic [`crate::projection::probe`] change and puts the plan's rendering of it in
/// `probe`; the connection compares that with what the executor produced (`verdict`) and does
/// not send it; on a match the stream hands its subscription and plan over (`handoff`) and the
/// connection renders every change itself.
#[derive(Default)]
pub(crate) struct FastPath {
    /// Whether the operation may use it (its text has no directives).
    pub(crate) allowed: bool,
    /// Counts operations that moved to it (the gateway's `fast_operations`).
    pub(crate) moved: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) probe: Mutex<Option<serde_json::Value>>,
    pub(crate) verdict: Mutex<Option<bool>>,
    pub(crate) handoff: Mutex<Option<tokio::sync::oneshot::Sender<Handoff>>>,
}

/// A `graphChanges` subscription taken over by the connection (see [`FastPath`]).
pub(crate) struct Handoff {
    pub(crate) plan: ChangePlan,
    pub(crate) sub: weir_subscriptions::Subscription,
}

/// The stream a `graphChanges` resolver returns (see [`FastPath`]).
struct Changes {
    sub: Option<weir_subscriptions::Subscription>,
    op: Arc<OpContext>,
    plan: Option<ChangePlan>,
    probed: bool,
}

impl Stream for Changes {
    type Item = GraphChange;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<GraphChange>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.probed
            && let Some(plan) = this.plan.take()
            && *this.op.fast.verdict.lock() == Some(true)
            && let Some(tx) = this.op.fast.handoff.lock().take()
            && let Some(sub) = this.sub.take()
        {
            match tx.send(Handoff { plan, sub }) {
                // The connection delivers from here on and drops this stream.
                Ok(()) => return Poll::Pending,
                Err(h) => this.sub = Some(h.sub),
            }
        }
        if !this.probed {
            this.probed = true;
            if let Some(plan) = &this.plan {
                let probe = crate::projection::probe();
                *this.op.fast.probe.lock() = plan.render_value(&probe);
                return Poll::Ready(Some(GraphChange {
                    event: probe,
                    missed: 0,
                }));
            }
        }
        let Some(sub) = this.sub.as_mut() else {
            return Poll::Pending;
        };
        loop {
            match sub.poll_next_unpin(cx) {
                Poll::Ready(Some(d)) => {
                    let Item::Change(event) = d.item else {
                        continue;
                    };
                    return Poll::Ready(Some(GraphChange {
                        event,
                        missed: d.missed,
                    }));
                }
                Poll::Ready(None) => {
                    *this.op.ended.lock() = sub.end_reason();
                    *this.op.last_delivered.lock() = sub.last_delivered();
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn user_error(e: &GatewayError) -> async_graphql::Error {
    e.extend()
}

impl ErrorExtensions for GatewayError {
    fn extend(&self) -> async_graphql::Error {
        match self {
            GatewayError::Graph(cause) => {
                // The cause stays in the log, with an id the client can quote.
                let id = uuid_like();
                tracing::error!(correlation_id = %id, cause = %cause, "graph read failed");
                async_graphql::Error::new(format!("internal error (correlation id {id})"))
                    .extend_with(|_, e| e.set("code", "INTERNAL"))
            }
            other => {
                let code = other.code();
                async_graphql::Error::new(other.to_string()).extend_with(|_, e| e.set("code", code))
            }
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{:x}-{:x}", nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// Relationship direction, from the node asked about.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Direction {
    /// Relationships pointing away from the node.
    Outgoing,
    /// Relationships pointing at the node.
    Incoming,
    /// Either way.
    Both,
}

/// What kind of element changed.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum EntityKind {
    /// A node.
    Node,
    /// A relationship.
    Relationship,
}

/// What happened to it.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Operation {
    /// Created.
    Created,
    /// Updated.
    Updated,
    /// Written by MERGE (created or updated).
    Merged,
    /// Deleted.
    Deleted,
}

impl From<Operation> for weir_events::Operation {
    fn from(o: Operation) -> Self {
        match o {
            Operation::Created => Self::Created,
            Operation::Updated => Self::Updated,
            Operation::Merged => Self::Merged,
            Operation::Deleted => Self::Deleted,
        }
    }
}

impl From<weir_events::Operation> for Operation {
    fn from(o: weir_events::Operation) -> Self {
        match o {
            weir_events::Operation::Created => Self::Created,
            weir_events::Operation::Updated => Self::Updated,
            weir_events::Operation::Merged => Self::Merged,
            weir_events::Operation::Deleted => Self::Deleted,
        }
    }
}

/// Where an ingest job stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// Reading and writing.
    Running,
    /// Paused by memory pressure.
    Paused,
    /// Finishing in-flight batches.
    Draining,
    /// Done.
    Completed,
    /// Stopped by an error.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl From<weir_events::JobState> for JobState {
    fn from(s: weir_events::JobState) -> Self {
        use weir_events::JobState as J;
        match s {
            J::Queued => Self::Queued,
            J::Running => Self::Running,
            J::Paused => Self::Paused,
            J::Draining => Self::Draining,
            J::Completed => Self::Completed,
            J::Failed => Self::Failed,
            J::Cancelled => Self::Cancelled,
        }
    }
}

/// A node.
#[derive(SimpleObject, Clone, Debug)]
pub struct Node {
    /// The database id, as text (it may exceed 53 bits).
    pub id: String,
    /// Labels.
    pub labels: Vec<String>,
    /// Properties.
    pub properties: Json<serde_json::Value>,
}

impl From<graph::GraphNode> for Node {
    fn from(n: graph::GraphNode) -> Self {
        Self {
            id: n.id.to_string(),
            labels: n.labels,
            properties: Json(n.properties),
        }
    }
}

/// A neighbour and the relationship leading to it.
#[derive(SimpleObject, Clone, Debug)]
pub struct NeighbourEdge {
    /// Cursor of this edge (pass as `after` for the next page).
    pub cursor: String,
    /// Relationship type.
    pub relationship_type: String,
    /// Direction of the relationship seen from the start node.
    pub direction: Direction,
    /// The node at the other end.
    pub node: Node,
}

/// Pagination state.
#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    /// Whether another page follows.
    pub has_next_page: bool,
    /// Cursor of the last edge of this page.
    pub end_cursor: Option<String>,
}

/// A page of neighbours.
#[derive(SimpleObject, Clone, Debug)]
pub struct NeighbourConnection {
    /// The edges.
    pub edges: Vec<NeighbourEdge>,
    /// Pagination.
    pub page_info: PageInfo,
}

/// Nodes per label.
#[derive(SimpleObject, Clone, Debug)]
pub struct LabelCount {
    /// The label.
    pub label: String,
    /// Nodes carrying it.
    pub count: i64,
}

/// A node reference (relationship end).
#[derive(SimpleObject, Clone, Debug)]
pub struct NodeRef {
    /// Label.
    pub label: String,
    /// Key, canonical form.
    pub key: String,
}

/// A graph change delivered to a `graphChanges` subscription.
pub struct GraphChange {
    event: EventRef,
    missed: u64,
}

#[Object]
impl GraphChange {
    /// Bus sequence of its batch (0 when not from the bus).
    async fn seq(&self) -> u64 {
        self.event.seq
    }
    /// Index within the batch.
    async fn index(&self) -> u32 {
        self.event.index
    }
    /// Node or relationship.
    async fn kind(&self) -> EntityKind {
        match self.event.kind {
            weir_events::EntityKind::Node => EntityKind::Node,
            weir_events::EntityKind::Relationship => EntityKind::Relationship,
        }
    }
    /// Node label or relationship type.
    async fn label(&self) -> &str {
        &self.event.label
    }
    /// Key in canonical form.
    async fn key(&self) -> &str {
        &self.event.key
    }
    /// What happened.
    async fn operation(&self) -> Operation {
        self.event.operation.into()
    }
    /// Properties written.
    async fn properties(&self) -> Json<&std::collections::BTreeMap<String, serde_json::Value>> {
        Json(&self.event.properties)
    }
    /// Start node of a relationship.
    async fn start(&self) -> Option<NodeRef> {
        self.event.start.as_ref().map(|n| NodeRef {
            label: n.label.clone(),
            key: n.key.clone(),
        })
    }
    /// End node of a relationship.
    async fn end(&self) -> Option<NodeRef> {
        self.event.end.as_ref().map(|n| NodeRef {
            label: n.label.clone(),
            key: n.key.clone(),
        })
    }
    /// The ingest job that wrote it.
    async fn job_id(&self) -> &str {
        &self.event.job_id
    }
    /// The batch that wrote it.
    async fn batch_id(&self) -> &str {
        &self.event.batch_id
    }
    /// Commit time, ms since the Unix epoch.
    async fn committed_at_ms(&self) -> i64 {
        self.event.committed_at_ms
    }
    /// Always 0: a subscriber too slow for the change feed is ended with a `SLOW_CONSUMER`
    /// error naming the last change it received (and its socket closed with 1008), never
    /// silently skipped ahead. Kept for clients written against earlier versions.
    async fn missed(&self) -> u64 {
        self.missed
    }
}

/// An ingest job's latest progress.
pub struct IngestJob(Arc<ProgressEvent>);

#[Object]
impl IngestJob {
    /// Job id.
    async fn job_id(&self) -> &str {
        &self.0.job_id
    }
    /// State.
    async fn state(&self) -> JobState {
        self.0.state.into()
    }
    /// Records read.
    async fn records_read(&self) -> u64 {
        self.0.records_read
    }
    /// Records committed.
    async fn records_committed(&self) -> u64 {
        self.0.records_committed
    }
    /// Records dead-lettered.
    async fn records_dead_lettered(&self) -> u64 {
        self.0.records_dead_lettered
    }
    /// Bytes read.
    async fn bytes_read(&self) -> u64 {
        self.0.bytes_read
    }
    /// Total bytes, when known.
    async fn bytes_total(&self) -> Option<u64> {
        self.0.bytes_total
    }
    /// Recent records committed per second.
    async fn records_per_sec(&self) -> f64 {
        self.0.records_per_sec
    }
    /// Batches in flight.
    async fn batches_in_flight(&self) -> u32 {
        self.0.batches_in_flight
    }
    /// Whether memory pressure paused intake.
    async fn under_pressure(&self) -> bool {
        self.0.pressure == weir_events::PressureState::High
    }
    /// Estimated seconds left.
    async fn eta_secs(&self) -> Option<f64> {
        self.0.eta_secs
    }
    /// Seconds since start.
    async fn elapsed_secs(&self) -> f64 {
        self.0.elapsed_secs
    }
    /// The fatal error of a failed job.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

/// Queries.
pub struct QueryRoot;

fn node_key(label: &str, key_property: &str, key: String) -> async_graphql::Result<NodeKey> {
    Ok(NodeKey {
        label: Ident::new("label", label).map_err(|e| user_error(&e))?,
        property: Ident::new("property", key_property).map_err(|e| user_error(&e))?,
        value: key,
    })
}

#[Object]
impl QueryRoot {
    /// The node with this label and key.
    async fn node(
        &self,
        ctx: &Context<'_>,
        label: String,
        key: String,
        #[graphql(default = "id")] key_property: String,
    ) -> async_graphql::Result<Option<Node>> {
        let key = node_key(&label, &key_property, key)?;
        let reader = ctx.data::<Arc<dyn GraphReader>>()?;
        let node = reader.node(&key).await.map_err(|e| user_error(&e))?;
        Ok(node.map(Node::from))
    }

    /// Neighbours of a node, a page at a time (ordered by relationship id).
    #[allow(clippy::too_many_arguments)]
    async fn neighbours(
        &self,
        ctx: &Context<'_>,
        label: String,
        key: String,
        #[graphql(default = "id")] key_property: String,
        relationship_type: Option<String>,
        #[graphql(default_with = "Direction::Both")] direction: Direction,
        #[graphql(default = 20)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<NeighbourConnection> {
        let limits = ctx.data::<LimitsConfig>()?;
        let node = node_key(&label, &key_property, key)?;
        let relationship_type = relationship_type
            .map(|t| Ident::new("type", &t))
            .transpose()
            .map_err(|e| user_error(&e))?;
        if first < 1 || first as usize > limits.max_page_size {
            return Err(user_error(&GatewayError::BadArgument(format!(
                "`first` must be between 1 and {}",
                limits.max_page_size
            ))));
        }
        let after = after
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| GatewayError::BadArgument("`after` is not a cursor".into()))
            })
            .transpose()
            .map_err(|e| user_error(&e))?;
        let q = NeighbourQuery {
            node,
            relationship_type,
            direction: match direction {
                Direction::Outgoing => graph::Direction::Outgoing,
                Direction::Incoming => graph::Direction::Incoming,
                Direction::Both => graph::Direction::Both,
            },
            after,
            limit: first as usize + 1,
        };
        let reader = ctx.data::<Arc<dyn GraphReader>>()?;
        let mut rows = reader.neighbours(&q).await.map_err(|e| user_error(&e))?;
        let has_next_page = rows.len() > first as usize;
        rows.truncate(first as usize);
        let edges: Vec<NeighbourEdge> = rows
            .into_iter()
            .map(|n| NeighbourEdge {
                cursor: n.relationship_id.to_string(),
                relationship_type: n.relationship_type,
                direction: if n.outgoing {
                    Direction::Outgoing
                } else {
                    Direction::Incoming
                },
                node: n.node.into(),
            })
            .collect();
        let end_cursor = edges.last().map(|e| e.cursor.clone());
        Ok(NeighbourConnection {
            edges,
            page_info: PageInfo {
                has_next_page,
                end_cursor,
            },
        })
    }

    /// Node counts for each label asked about.
    async fn counts(
        &self,
        ctx: &Context<'_>,
        labels: Vec<String>,
    ) -> async_graphql::Result<Vec<LabelCount>> {
        let limits = ctx.data::<LimitsConfig>()?;
        if labels.len() > limits.max_count_labels {
            return Err(user_error(&GatewayError::BadArgument(format!(
                "at most {} labels per query",
                limits.max_count_labels
            ))));
        }
        let idents = labels
            .iter()
            .map(|l| Ident::new("label", l))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| user_error(&e))?;
        let reader = ctx.data::<Arc<dyn GraphReader>>()?;
        let mut out = Vec::with_capacity(idents.len());
        for l in idents {
            let count = reader.count(&l).await.map_err(|e| user_error(&e))?;
            out.push(LabelCount {
                label: l.as_str().to_owned(),
                count,
            });
        }
        Ok(out)
    }

    /// The ingest jobs the gateway knows, most recently updated first.
    async fn ingest_jobs(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<IngestJob>> {
        let m = ctx.data::<SubscriptionManager>()?;
        Ok(m.jobs().into_iter().map(IngestJob).collect())
    }

    /// One ingest job's latest progress.
    async fn ingest_job(
        &self,
        ctx: &Context<'_>,
        job_id: String,
    ) -> async_graphql::Result<Option<IngestJob>> {
        let m = ctx.data::<SubscriptionManager>()?;
        Ok(m.job(&job_id).map(IngestJob))
    }
}

/// Subscriptions (WebSocket only).
pub struct SubscriptionRoot;

fn ttl_arg(ttl_seconds: Option<i32>) -> async_graphql::Result<Option<Duration>> {
    match ttl_seconds {
        None => Ok(None),
        Some(s) if s >= 1 => Ok(Some(Duration::from_secs(s as u64))),
        Some(_) => Err(user_error(&GatewayError::BadArgument(
            "`ttlSeconds` must be at least 1".into(),
        ))),
    }
}

fn start(
    ctx: &Context<'_>,
    topic: Topic,
    ttl: Option<Duration>,
) -> async_graphql::Result<(Arc<OpContext>, weir_subscriptions::Subscription)> {
    start_with(ctx, topic, ttl, None)
}

fn start_with(
    ctx: &Context<'_>,
    topic: Topic,
    ttl: Option<Duration>,
    replay: Option<futures::stream::BoxStream<'static, EventRef>>,
) -> async_graphql::Result<(Arc<OpContext>, weir_subscriptions::Subscription)> {
    let op = ctx
        .data::<Arc<OpContext>>()
        .map_err(|_| {
            user_error(&GatewayError::BadArgument(
                "subscriptions are served over WebSocket at /graphql/ws".into(),
            ))
        })?
        .clone();
    let sub = op
        .conn
        .subscribe(topic, SubscribeOptions { ttl, replay })
        .map_err(|e| user_error(&GatewayError::Subscription(e)))?;
    *op.subscription.lock() = Some(sub.id());
    Ok((op, sub))
}

/// Ends the stream when the subscription ends and records why.
fn deliveries<T: Send + 'static>(
    op: Arc<OpContext>,
    sub: weir_subscriptions::Subscription,
    map: impl Fn(weir_subscriptions::Delivery) -> Option<T> + Send + 'static,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold((sub, op), |(mut sub, op)| async move {
        match sub.next().await {
            Some(d) => Some((d, (sub, op))),
            None => {
                *op.ended.lock() = sub.end_reason();
                *op.last_delivered.lock() = sub.last_delivered();
                None
            }
        }
    })
    .filter_map(move |d| futures::future::ready(map(d)))
}

#[Subscription]
impl SubscriptionRoot {
    /// Graph changes matching the filter (empty or missing lists mean any). `labels` select
    /// nodes, `types` relationships; with neither, everything. Ends with `complete` when its
    /// TTL (default and maximum set by the server) runs out.
    ///
    /// `since`: the last `seq` this client received before it lost its connection. The
    /// subscription first delivers every matching change after it that the bus still retains,
    /// then goes on live, each change once and in order. `sinceIndex`: with `since`, the
    /// `index` of the last change of batch `since` the client received (a client can lose its
    /// connection in the middle of a batch): the rest of that batch is delivered too. A
    /// `SLOW_CONSUMER` error carries both values (`extensions.lastSeq`, `lastIndex`). Errors:
    /// `SINCE_TOO_OLD` (retention dropped some: reload instead), `SINCE_AHEAD`,
    /// `REPLAY_UNAVAILABLE` (no bus, or it is unreachable: retry), `LIMIT_EXCEEDED` (too many
    /// catch-ups at once: retry).
    #[allow(clippy::too_many_arguments)]
    async fn graph_changes(
        &self,
        ctx: &Context<'_>,
        labels: Option<Vec<String>>,
        types: Option<Vec<String>>,
        keys: Option<Vec<String>>,
        operations: Option<Vec<Operation>>,
        ttl_seconds: Option<i32>,
        since: Option<u64>,
        since_index: Option<u32>,
    ) -> async_graphql::Result<impl Stream<Item = GraphChange> + use<>> {
        let labels = labels.unwrap_or_default();
        let types = types.unwrap_or_default();
        for l in &labels {
            Ident::new("label", l).map_err(|e| user_error(&e))?;
        }
        for t in &types {
            Ident::new("type", t).map_err(|e| user_error(&e))?;
        }
        let keys = keys.unwrap_or_default();
        if labels.len() + types.len() + keys.len() > 100 {
            return Err(user_error(&GatewayError::BadArgument(
                "at most 100 labels, types and keys together".into(),
            )));
        }
        let filter = ChangeFilter {
            labels,
            types,
            keys,
            operations: operations
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
        };
        let ttl = ttl_arg(ttl_seconds)?;
        let Some(since) = since else {
            let (op, sub) = start(ctx, Topic::Changes(filter), ttl)?;
            return Ok(changes_of(ctx, op, sub));
        };
        // Catch-up: open the replay first (a bad `since` fails before anything registers),
        // register the live subscription, then replay up to what the manager had published.
        let rc = ctx.data::<ReplayCtx>()?;
        let Some(source) = rc.source.clone() else {
            return Err(user_error(&GatewayError::Replay(ReplayError::Unavailable(
                "this gateway has no bus to replay from".into(),
            ))));
        };
        let permit = rc.slots.clone().try_acquire_owned().map_err(|_| {
            let limit = ctx.data_unchecked::<LimitsConfig>().max_replays;
            user_error(&GatewayError::TooManyReplays { limit })
        })?;
        // Mid-batch: replay batch `since` itself, skipping what the client already has.
        let (from, after) = match since_index {
            Some(_) if since == 0 => {
                return Err(user_error(&GatewayError::BadArgument(
                    "`sinceIndex` needs a `since` of at least 1".into(),
                )));
            }
            Some(i) => (since - 1, (since, Some(i))),
            None => (since, (since, None)),
        };
        let opened = source
            .open(from)
            .await
            .map_err(|e| user_error(&GatewayError::Replay(e)))?;
        let head = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let events = replay::events_until_head(
            opened.batches,
            from,
            after,
            head.clone(),
            filter.clone(),
            permit,
        );
        let manager = ctx.data::<SubscriptionManager>()?;
        let (op, sub) = start_with(ctx, Topic::Changes(filter), ttl, Some(events.boxed()))?;
        head.store(
            manager.last_seq().max(opened.last_published),
            std::sync::atomic::Ordering::Release,
        );
        Ok(changes_of(ctx, op, sub))
    }

    /// Progress of one ingest job: its latest state first, then every update.
    async fn ingest_progress(
        &self,
        ctx: &Context<'_>,
        job_id: String,
        ttl_seconds: Option<i32>,
    ) -> async_graphql::Result<impl Stream<Item = IngestJob> + use<>> {
        ingest_progress(ctx, job_id, ttl_seconds)
    }
}

fn changes_of(
    ctx: &Context<'_>,
    op: Arc<OpContext>,
    sub: weir_subscriptions::Subscription,
) -> impl Stream<Item = GraphChange> + Send + 'static + use<> {
    let plan = if op.fast.allowed {
        ChangePlan::new(&ctx.field())
    } else {
        None
    };
    Changes {
        sub: Some(sub),
        op,
        plan,
        probed: false,
    }
}

fn ingest_progress(
    ctx: &Context<'_>,
    job_id: String,
    ttl_seconds: Option<i32>,
) -> async_graphql::Result<impl Stream<Item = IngestJob> + Send + 'static + use<>> {
    if job_id.is_empty() || job_id.len() > 256 {
        return Err(user_error(&GatewayError::BadArgument(
            "`jobId` must be 1 to 256 characters".into(),
        )));
    }
    let (op, sub) = start(ctx, Topic::Progress { job_id }, ttl_arg(ttl_seconds)?)?;
    Ok(deliveries(op, sub, |d| match d.item {
        Item::Progress(p) => Some(IngestJob(p)),
        Item::Change(_) => None,
    }))
}

impl GatewayError {
    /// The `extensions.code` clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidIdentifier { .. } | Self::BadArgument(_) => "BAD_USER_INPUT",
            Self::Subscription(SubscriptionError::ConnectionLimit { .. })
            | Self::Subscription(SubscriptionError::GlobalLimit { .. }) => "LIMIT_EXCEEDED",
            Self::Subscription(SubscriptionError::ShuttingDown) => "SHUTTING_DOWN",
            Self::TooManyReplays { .. } => "LIMIT_EXCEEDED",
            Self::Replay(ReplayError::SinceTooOld { .. }) => "SINCE_TOO_OLD",
            Self::Replay(ReplayError::SinceAhead { .. }) => "SINCE_AHEAD",
            Self::Replay(ReplayError::Unavailable(_)) => "REPLAY_UNAVAILABLE",
            Self::Auth(_) => "UNAUTHENTICATED",
            _ => "INTERNAL",
        }
    }
}
