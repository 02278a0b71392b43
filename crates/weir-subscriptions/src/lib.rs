//! The registry of live subscriptions behind Weir's GraphQL gateway (no HTTP here).
//!
//! - A [`SubscriptionManager`] holds every live subscription: its connection, its [`Topic`]
//!   (graph changes matching a [`ChangeFilter`], or one ingest job's progress), when it was
//!   created and when it expires.
//! - A subscription is owned by its [`Subscription`] handle: dropping the handle removes it,
//!   whatever the path (client `complete`, socket closed, TCP dropped, task aborted, handler
//!   panic). Server-side endings ([`EndReason::Ttl`], [`EndReason::Shutdown`],
//!   [`EndReason::Lagged`]) remove it at once and end the handle's stream.
//! - TTL: each subscription gets the TTL it asks for, [`ManagerConfig::default_ttl`] when it
//!   asks for none, never more than [`ManagerConfig::max_ttl`]. A reaper task completes it when
//!   the TTL runs out.
//! - Limits: [`ManagerConfig::max_per_connection`] and [`ManagerConfig::max_total`], refused
//!   with [`SubscriptionError::ConnectionLimit`] / [`SubscriptionError::GlobalLimit`].
//! - Matching: [`SubscriptionManager::publish`] looks each event up in an index by
//!   (node label | relationship type); subscriptions with neither are kept in a separate
//!   "everything" set. No event scans all subscriptions.
//! - Slow consumers: each subscription has a queue of [`ManagerConfig::queue_capacity`] items.
//!   When it is full the **oldest item is dropped** and counted; the next [`Delivery`] says how
//!   many were missed. A subscription whose queue keeps overflowing for longer than
//!   [`ManagerConfig::max_lag`] without ever being drained is ended with [`EndReason::Lagged`]
//!   (the gateway then disconnects the client).
//! - Progress: [`SubscriptionManager::publish_progress`] keeps the latest [`ProgressEvent`] of
//!   at most [`ManagerConfig::max_jobs`] jobs and delivers it to that job's watchers.
//! - [`SubscriptionManager::shutdown`] completes every subscription and refuses new ones.

mod config;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weir_events::{ChangeBatch, ChangeEvent, EntityKind, Operation, ProgressEvent};

pub use config::ManagerConfig;

/// Errors of the subscription manager.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The connection already holds its maximum of live subscriptions.
    #[error("too many subscriptions on this connection (limit {limit})")]
    ConnectionLimit {
        /// The per-connection limit.
        limit: usize,
    },
    /// The server already holds its maximum of live subscriptions.
    #[error("too many subscriptions on this server (limit {limit})")]
    GlobalLimit {
        /// The global limit.
        limit: usize,
    },
    /// The manager is shutting down and takes no new subscriptions.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A setting is wrong.
    #[error("invalid subscription setting `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The client completed (stopped) it.
    Client,
    /// Its TTL ran out.
    Ttl,
    /// Its handle was dropped without another reason: connection closed, TCP dropped, task
    /// aborted or panicked.
    Disconnect,
    /// The server shut down.
    Shutdown,
    /// Its consumer stayed behind longer than [`ManagerConfig::max_lag`] (slow-consumer limit).
    Lagged,
}

impl EndReason {
    const ALL: [EndReason; 5] = [
        Self::Client,
        Self::Ttl,
        Self::Disconnect,
        Self::Shutdown,
        Self::Lagged,
    ];

    fn idx(self) -> usize {
        self as usize
    }

    /// The reason's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Ttl => "ttl",
            Self::Disconnect => "disconnect",
            Self::Shutdown => "shutdown",
            Self::Lagged => "lagged",
        }
    }
}

/// Which change events a subscription wants. Empty lists mean "any".
///
/// `labels` select node events by label, `types` relationship events by type; with both empty
/// every node and relationship matches. `keys` and `operations` further narrow (exact match on
/// [`ChangeEvent::key`] and [`ChangeEvent::operation`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    /// Node labels.
    pub labels: Vec<String>,
    /// Relationship types.
    pub types: Vec<String>,
    /// Keys in canonical form.
    pub keys: Vec<String>,
    /// Operations.
    pub operations: Vec<Operation>,
}

impl ChangeFilter {
    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        let by_label = match event.kind {
            EntityKind::Node => &self.labels,
            EntityKind::Relationship => &self.types,
        };
        let label_ok =
            (self.labels.is_empty() && self.types.is_empty()) || by_label.contains(&event.label);
        label_ok
            && (self.keys.is_empty() || self.keys.contains(&event.key))
            && (self.operations.is_empty() || self.operations.contains(&event.operation))
    }

    fn index_keys(&self) -> impl Iterator<Item = (EntityKind, &str)> {
        self.labels
            .iter()
            .map(|l| (EntityKind::Node, l.as_str()))
            .chain(
                self.types
                    .iter()
                    .map(|t| (EntityKind::Relationship, t.as_str())),
            )
    }

    fn is_wildcard(&self) -> bool {
        self.labels.is_empty() && self.types.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        let strings = |v: &Vec<String>| {
            v.capacity() * std::mem::size_of::<String>()
                + v.iter().map(String::capacity).sum::<usize>()
        };
        strings(&self.labels)
            + strings(&self.types)
            + strings(&self.keys)
            + self.operations.capacity() * std::mem::size_of::<Operation>()
    }
}

/// What a subscription watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Graph changes that pass the filter.
    Changes(ChangeFilter),
    /// Progress of one ingest job.
    Progress {
        /// The job id.
        job_id: String,
    },
}

/// One item delivered to a subscription.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A graph change (shared between every subscription it matched).
    Change(Arc<ChangeEvent>),
    /// A job's progress.
    Progress(Arc<ProgressEvent>),
}

/// An item with the number of items dropped just before it (slow-consumer policy).
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The item.
    pub item: Item,
    /// Items this subscription missed since the previous delivery because its queue was full.
    pub missed: u64,
}

/// Id of a live subscription, unique within a manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SubscriptionId(pub u64);

/// Id of a connection, unique within a manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ConnectionId(pub u64);

/// Options for a new subscription.
#[derive(Default)]
pub struct SubscribeOptions {
    /// The TTL asked for; `None` gives the default, more than the maximum gives the maximum.
    pub ttl: Option<Duration>,
    /// Events to deliver before live ones (replay hook for `since: seq`). Live change events
    /// whose non-zero `seq` is at or below the last replayed one are skipped.
    pub replay: Option<BoxStream<'static, Arc<ChangeEvent>>>,
}

impl std::fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("ttl", &self.ttl)
            .field("replay", &self.replay.is_some())
            .finish()
    }
}

/// Counters since the manager started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Subscriptions live now.
    pub active: u64,
    /// Subscriptions created.
    pub created: u64,
    /// Completed by the client.
    pub completed_client: u64,
    /// Completed because their TTL ran out.
    pub completed_ttl: u64,
    /// Removed because their handle dropped (connection gone, task ended).
    pub completed_disconnect: u64,
    /// Completed by shutdown.
    pub completed_shutdown: u64,
    /// Ended by the slow-consumer limit.
    pub completed_lagged: u64,
    /// Refused by the per-connection or global limit.
    pub rejected_limit: u64,
    /// Items dropped from full queues.
    pub dropped_events: u64,
    /// Items queued to subscriptions.
    pub delivered_events: u64,
}

/// Sizes of every structure the registry holds, to prove they empty out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegistrySnapshot {
    /// Live subscriptions.
    pub subscriptions: usize,
    /// Connections holding at least one subscription (per-connection map entries).
    pub connections_with_subscriptions: usize,
    /// Connection handles alive.
    pub open_connections: usize,
    /// Keys in the label/type index.
    pub index_keys: usize,
    /// Subscriptions in the "everything" set.
    pub wildcard: usize,
    /// Jobs with at least one progress watcher.
    pub progress_jobs: usize,
    /// Entries in the TTL schedule.
    pub expiries: usize,
    /// Items queued across every subscription.
    pub queued_items: usize,
    /// Estimated bytes held by the registry for subscriptions (entries, filters, index,
    /// schedule, queues; not the shared events themselves, nor the job table).
    pub held_bytes: usize,
    /// Jobs in the progress table.
    pub jobs: usize,
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    completed: [AtomicU64; 5],
    rejected_limit: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

/// Slots a drained subscription queue keeps (more are given back; the queue starts with none).
const IDLE_QUEUE_SLOTS: usize = 8;

/// The part of a subscription shared between the registry and its handle.
struct Slot {
    q: Mutex<SlotQueue>,
}

struct SlotQueue {
    items: VecDeque<Item>,
    missed: u64,
    lagging_since: Option<Instant>,
    ended: Option<EndReason>,
    waker: Option<Waker>,
}

enum Push {
    Queued,
    Dropped,
    Lagged,
}

impl Slot {
    fn new() -> Self {
        Self {
            q: Mutex::new(SlotQueue {
                items: VecDeque::new(),
                missed: 0,
                lagging_since: None,
                ended: None,
                waker: None,
            }),
        }
    }

    fn push(&self, item: Item, cap: usize, now: Instant, max_lag: Duration) -> Push {
        let mut q = self.q.lock();
        if q.ended.is_some() {
            return Push::Queued;
        }
        let mut outcome = Push::Queued;
        if q.items.len() >= cap {
            q.items.pop_front();
            q.missed += 1;
            let since = *q.lagging_since.get_or_insert(now);
            outcome = if now.duration_since(since) > max_lag {
                Push::Lagged
            } else {
                Push::Dropped
            };
        }
        q.items.push_back(item);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        outcome
    }

    fn end(&self, reason: EndReason) {
        let mut q = self.q.lock();
        if q.ended.is_none() {
            q.ended = Some(reason);
        }
        // Nothing more is delivered once ended: free the queue now.
        q.items = VecDeque::new();
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

struct Entry {
    conn: ConnectionId,
    topic: Topic,
    created: Instant,
    expires: Instant,
    slot: Arc<Slot>,
}

struct JobEntry {
    latest: Arc<ProgressEvent>,
    updated: u64,
}

#[derive(Default)]
struct State {
    subs: HashMap<SubscriptionId, Entry>,
    per_conn: HashMap<ConnectionId, usize>,
    /// Index by kind (0 nodes, 1 relationships), then label/type.
    index: [HashMap<String, HashSet<SubscriptionId>>; 2],
    wildcard: HashSet<SubscriptionId>,
    progress: HashMap<String, HashSet<SubscriptionId>>,
    expiries: BTreeSet<(Instant, SubscriptionId)>,
    jobs: HashMap<String, JobEntry>,
    job_clock: u64,
    next_sub: u64,
    shut_down: bool,
    /// Highest bus `seq` of a change batch published so far (0: none).
    last_seq: u64,
}

struct Inner {
    config: ManagerConfig,
    state: Mutex<State>,
    counters: Counters,
    next_conn: AtomicU64,
    open_connections: AtomicU64,
    reaper_wake: Arc<Notify>,
    reaper_stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reaper_stop.cancel();
    }
}

/// The registry of live subscriptions. Cheap to clone (shared).
#[derive(Clone)]
pub struct SubscriptionManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SubscriptionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SubscriptionManager {
    /// Makes a manager and starts its TTL reaper on the current tokio runtime (the reaper
    /// stops when the last clone of the manager drops).
    pub fn new(config: ManagerConfig) -> Result<Self, SubscriptionError> {
        config.validate()?;
        let reaper_wake = Arc::new(Notify::new());
        let reaper_stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            next_conn: AtomicU64::new(1),
            open_connections: AtomicU64::new(0),
            reaper_wake: reaper_wake.clone(),
            reaper_stop: reaper_stop.clone(),
        });
        tokio::spawn(reaper(Arc::downgrade(&inner), reaper_wake, reaper_stop));
        Ok(Self { inner })
    }

    /// The settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// Registers a connection. Its subscriptions count against its limit; the handle is only
    /// an id holder (dropping it does not end subscriptions, dropping those does).
    pub fn connect(&self) -> Connection {
        self.inner.open_connections.fetch_add(1, Ordering::Relaxed);
        Connection {
            id: ConnectionId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed)),
            inner: self.inner.clone(),
        }
    }

    /// Matches every event of `batch` to subscriptions and queues it to them.
    pub fn publish(&self, batch: &ChangeBatch) {
        let inner = &self.inner;
        let cfg = &inner.config;
        let now = Instant::now();
        let mut lagged = Vec::new();
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        {
            let mut st = inner.state.lock();
            // Recorded under the same lock that registers subscriptions, so a subscription
            // registered before `last_seq()` returns N has every batch above N queued live.
            st.last_seq = st.last_seq.max(batch.seq);
            if st.subs.is_empty() {
                return;
            }
            for event in &batch.events {
                let mut shared: Option<Arc<ChangeEvent>> = None;
                let indexed = st.index[kind_idx(event.kind)].get(event.label.as_str());
                let candidates = indexed.into_iter().flatten().chain(st.wildcard.iter());
                for id in candidates {
                    let Some(entry) = st.subs.get(id) else {
                        continue;
                    };
                    let Topic::Changes(filter) = &entry.topic else {
                        continue;
                    };
                    if !filter.matches(event) {
                        continue;
                    }
                    let ev = shared
                        .get_or_insert_with(|| Arc::new(event.clone()))
                        .clone();
                    delivered += 1;
                    match entry
                        .slot
                        .push(Item::Change(ev), cfg.queue_capacity, now, cfg.max_lag)
                    {
                        Push::Queued => {}
                        Push::Dropped => dropped += 1,
                        Push::Lagged => {
                            dropped += 1;
                            lagged.push(*id);
                        }
                    }
                }
            }
        }
        inner
            .counters
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
        inner.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        for id in lagged {
            inner.end(id, EndReason::Lagged);
        }
    }

    /// The highest bus `seq` of a change batch published to this manager so far (0 when
    /// none). A subscription registered before this call receives, live, every batch with a
    /// higher seq; a `since` replay therefore needs to cover `(since, last_seq()]` only.
    pub fn last_seq(&self) -> u64 {
        self.inner.state.lock().last_seq
    }

    /// Publishes every batch of `batches` until it ends or the manager shuts down. This is the
    /// entry point for the in-process bus or a NATS consumer.
    pub async fn feed<S>(&self, batches: S)
    where
        S: Stream<Item = ChangeBatch> + Send,
    {
        let mut batches = std::pin::pin!(batches);
        loop {
            tokio::select! {
                b = batches.next() => match b {
                    Some(b) => self.publish(&b),
                    None => break,
                },
                _ = self.inner.reaper_stop.cancelled() => break,
            }
        }
    }

    /// Records a job's latest progress and delivers it to the job's watchers.
    pub fn publish_progress(&self, event: ProgressEvent) {
        let inner = &self.inner;
        let cfg = &inner.config;
        let now = Instant::now();
        let event = Arc::new(event);
        let mut lagged = Vec::new();
        {
            let mut st = inner.state.lock();
            st.job_clock += 1;
            let clock = st.job_clock;
            if !st.jobs.contains_key(&event.job_id) && st.jobs.len() >= cfg.max_jobs {
                let victim = st
                    .jobs
                    .iter()
                    .min_by_key(|(_, j)| (!j.latest.state.is_terminal(), j.updated))
                    .map(|(k, _)| k.clone());
                if let Some(v) = victim {
                    st.jobs.remove(&v);
                }
            }
            st.jobs.insert(
                event.job_id.clone(),
                JobEntry {
                    latest: event.clone(),
                    updated: clock,
                },
            );
            if let Some(ids) = st.progress.get(&event.job_id) {
                for id in ids {
                    if let Some(entry) = st.subs.get(id) {
                        match entry.slot.push(
                            Item::Progress(event.clone()),
                            cfg.queue_capacity,
                            now,
                            cfg.max_lag,
                        ) {
                            Push::Queued => {}
                            Push::Dropped => {
                                inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Push::Lagged => lagged.push(*id),
                        }
                        inner.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        for id in lagged {
            inner.end(id, EndReason::Lagged);
        }
    }

    /// The latest progress of every known job, most recently updated first.
    pub fn jobs(&self) -> Vec<Arc<ProgressEvent>> {
        let st = self.inner.state.lock();
        let mut v: Vec<_> = st
            .jobs
            .values()
            .map(|j| (j.updated, j.latest.clone()))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        v.into_iter().map(|(_, e)| e).collect()
    }

    /// The latest progress of one job.
    pub fn job(&self, job_id: &str) -> Option<Arc<ProgressEvent>> {
        self.inner
            .state
            .lock()
            .jobs
            .get(job_id)
            .map(|j| j.latest.clone())
    }

    /// Ends a subscription with `reason` (e.g. [`EndReason::Client`] on a client `complete`).
    /// Returns whether it was live.
    pub fn end(&self, id: SubscriptionId, reason: EndReason) -> bool {
        self.inner.end(id, reason)
    }

    /// Completes every subscription with [`EndReason::Shutdown`] and refuses new ones.
    pub fn shutdown(&self) {
        let ids: Vec<SubscriptionId> = {
            let mut st = self.inner.state.lock();
            st.shut_down = true;
            st.subs.keys().copied().collect()
        };
        for id in ids {
            self.inner.end(id, EndReason::Shutdown);
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.state.lock().shut_down
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let done = |r: EndReason| c.completed[r.idx()].load(Ordering::Relaxed);
        Stats {
            active: self.inner.state.lock().subs.len() as u64,
            created: c.created.load(Ordering::Relaxed),
            completed_client: done(EndReason::Client),
            completed_ttl: done(EndReason::Ttl),
            completed_disconnect: done(EndReason::Disconnect),
            completed_shutdown: done(EndReason::Shutdown),
            completed_lagged: done(EndReason::Lagged),
            rejected_limit: c.rejected_limit.load(Ordering::Relaxed),
            dropped_events: c.dropped.load(Ordering::Relaxed),
            delivered_events: c.delivered.load(Ordering::Relaxed),
        }
    }

    /// Number of live subscriptions.
    pub fn active(&self) -> usize {
        self.inner.state.lock().subs.len()
    }

    /// Sizes of every registry structure.
    pub fn snapshot(&self) -> RegistrySnapshot {
        use std::mem::size_of;
        let st = self.inner.state.lock();
        let mut queued = 0;
        let mut held = 0;
        for e in st.subs.values() {
            let q = e.slot.q.lock();
            queued += q.items.len();
            held += size_of::<(SubscriptionId, Entry)>()
                + size_of::<Slot>()
                + q.items.capacity() * size_of::<Item>();
            held += match &e.topic {
                Topic::Changes(f) => f.heap_bytes(),
                Topic::Progress { job_id } => job_id.capacity(),
            };
        }
        held += st.per_conn.len() * size_of::<(ConnectionId, usize)>();
        for (k, set) in st.index.iter().flatten() {
            held +=
                size_of::<String>() + k.capacity() + set.capacity() * size_of::<SubscriptionId>();
        }
        held += st.wildcard.len() * size_of::<SubscriptionId>();
        for (k, set) in &st.progress {
            held += k.capacity() + set.capacity() * size_of::<SubscriptionId>();
        }
        held += st.expiries.len() * size_of::<(Instant, SubscriptionId)>();
        RegistrySnapshot {
            subscriptions: st.subs.len(),
            connections_with_subscriptions: st.per_conn.len(),
            open_connections: self.inner.open_connections.load(Ordering::Relaxed) as usize,
            index_keys: st.index.iter().map(HashMap::len).sum(),
            wildcard: st.wildcard.len(),
            progress_jobs: st.progress.len(),
            expiries: st.expiries.len(),
            queued_items: queued,
            held_bytes: held,
            jobs: st.jobs.len(),
        }
    }
}

impl Inner {
    fn subscribe(
        self: &Arc<Self>,
        conn: ConnectionId,
        topic: Topic,
        opts: SubscribeOptions,
    ) -> Result<Subscription, SubscriptionError> {
        let cfg = &self.config;
        let ttl = opts.ttl.unwrap_or(cfg.default_ttl).min(cfg.max_ttl);
        let now = Instant::now();
        let expires = now + ttl;
        let slot = Arc::new(Slot::new());
        let id = {
            let mut st = self.state.lock();
            if st.shut_down {
                return Err(SubscriptionError::ShuttingDown);
            }
            let on_conn = st.per_conn.get(&conn).copied().unwrap_or(0);
            if on_conn >= cfg.max_per_connection {
                self.counters.rejected_limit.fetch_add(1, Ordering::Relaxed);
                return Err(SubscriptionError::ConnectionLimit {
                    limit: cfg.max_per_connection,
                });
            }
            if st.subs.len() >= cfg.max_total {
                self.counters.rejected_limit.fetch_add(1, Ordering::Relaxed);
                return Err(SubscriptionError::GlobalLimit {
                    limit: cfg.max_total,
                });
            }
            st.next_sub += 1;
            let id = SubscriptionId(st.next_sub);
            *st.per_conn.entry(conn).or_insert(0) += 1;
            match &topic {
                Topic::Changes(f) if f.is_wildcard() => {
                    st.wildcard.insert(id);
                }
                Topic::Changes(f) => {
                    for (kind, label) in f.index_keys() {
                        st.index[kind_idx(kind)]
                            .entry(label.to_owned())
                            .or_default()
                            .insert(id);
                    }
                }
                Topic::Progress { job_id } => {
                    st.progress.entry(job_id.clone()).or_default().insert(id);
                    if let Some(job) = st.jobs.get(job_id) {
                        slot.push(
                            Item::Progress(job.latest.clone()),
                            cfg.queue_capacity,
                            now,
                            cfg.max_lag,
                        );
                    }
                }
            }
            let first_expiry = st.expiries.first().map(|(t, _)| *t);
            st.expiries.insert((expires, id));
            st.subs.insert(
                id,
                Entry {
                    conn,
                    topic,
                    created: now,
                    expires,
                    slot: slot.clone(),
                },
            );
            if first_expiry.is_none_or(|t| expires < t) {
                self.reaper_wake.notify_one();
            }
            id
        };
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            subscription = id.0,
            connection = conn.0,
            ttl_ms = ttl.as_millis() as u64,
            "subscription started"
        );
        Ok(Subscription {
            id,
            conn,
            expires,
            inner: self.clone(),
            slot,
            replay: opts.replay,
            replay_max_seq: 0,
        })
    }

    fn end(&self, id: SubscriptionId, reason: EndReason) -> bool {
        let entry = {
            let mut st = self.state.lock();
            let Some(entry) = st.subs.remove(&id) else {
                return false;
            };
            if let Some(n) = st.per_conn.get_mut(&entry.conn) {
                *n -= 1;
                if *n == 0 {
                    st.per_conn.remove(&entry.conn);
                }
            }
            match &entry.topic {
                Topic::Changes(f) if f.is_wildcard() => {
                    st.wildcard.remove(&id);
                }
                Topic::Changes(f) => {
                    for (kind, label) in f.index_keys() {
                        let map = &mut st.index[kind_idx(kind)];
                        if let Some(set) = map.get_mut(label) {
                            set.remove(&id);
                            if set.is_empty() {
                                map.remove(label);
                            }
                        }
                    }
                }
                Topic::Progress { job_id } => {
                    if let Some(set) = st.progress.get_mut(job_id) {
                        set.remove(&id);
                        if set.is_empty() {
                            st.progress.remove(job_id);
                        }
                    }
                }
            }
            st.expiries.remove(&(entry.expires, id));
            if st.subs.is_empty() {
                // Give back the memory of a burst of subscriptions.
                st.subs.shrink_to_fit();
                st.per_conn.shrink_to_fit();
                st.index.iter_mut().for_each(HashMap::shrink_to_fit);
                st.wildcard.shrink_to_fit();
                st.progress.shrink_to_fit();
            }
            entry
        };
        entry.slot.end(reason);
        self.counters.completed[reason.idx()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            subscription = id.0,
            connection = entry.conn.0,
            reason = reason.as_str(),
            lived_ms = entry.created.elapsed().as_millis() as u64,
            "subscription ended"
        );
        true
    }
}

fn kind_idx(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Node => 0,
        EntityKind::Relationship => 1,
    }
}

async fn reaper(inner: Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            let due: Vec<SubscriptionId> = {
                let st = inner.state.lock();
                st.expiries
                    .iter()
                    .take_while(|(t, _)| *t <= now)
                    .map(|(_, id)| *id)
                    .collect()
            };
            for id in due {
                inner.end(id, EndReason::Ttl);
            }
            let st = inner.state.lock();
            st.expiries.first().map(|(t, _)| *t)
        };
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A connection's handle: subscriptions are started through it.
pub struct Connection {
    id: ConnectionId,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id).finish()
    }
}

impl Connection {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Starts a subscription, or refuses it by limit or shutdown.
    pub fn subscribe(
        &self,
        topic: Topic,
        opts: SubscribeOptions,
    ) -> Result<Subscription, SubscriptionError> {
        self.inner.subscribe(self.id, topic, opts)
    }

    /// Live subscriptions on this connection.
    pub fn active(&self) -> usize {
        self.inner
            .state
            .lock()
            .per_conn
            .get(&self.id)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A live subscription; a [`Stream`] of [`Delivery`]. Dropping it removes the subscription
/// (with [`EndReason::Disconnect`] unless it had already ended for another reason).
pub struct Subscription {
    id: SubscriptionId,
    conn: ConnectionId,
    expires: Instant,
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    replay: Option<BoxStream<'static, Arc<ChangeEvent>>>,
    replay_max_seq: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("connection", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Its id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// When its TTL runs out.
    pub fn expires_at(&self) -> Instant {
        self.expires
    }

    /// Why it ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.slot.q.lock().ended
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = &mut *self;
        if let Some(replay) = this.replay.as_mut() {
            match replay.poll_next_unpin(cx) {
                Poll::Ready(Some(ev)) => {
                    this.replay_max_seq = this.replay_max_seq.max(ev.seq);
                    return Poll::Ready(Some(Delivery {
                        item: Item::Change(ev),
                        missed: 0,
                    }));
                }
                Poll::Ready(None) => this.replay = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut q = this.slot.q.lock();
        loop {
            if let Some(item) = q.items.pop_front() {
                if let Item::Change(ev) = &item
                    && ev.seq != 0
                    && ev.seq <= this.replay_max_seq
                {
                    continue;
                }
                let missed = std::mem::take(&mut q.missed);
                if q.items.is_empty() {
                    q.lagging_since = None;
                    // A burst grew the queue (up to `queue_capacity` items); drained, it keeps
                    // only a few slots, so an idle subscription does not hold a burst's memory.
                    if q.items.capacity() > IDLE_QUEUE_SLOTS {
                        q.items.shrink_to(IDLE_QUEUE_SLOTS);
                    }
                }
                return Poll::Ready(Some(Delivery { item, missed }));
            }
            if q.ended.is_some() {
                return Poll::Ready(None);
            }
            q.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inner.end(self.id, EndReason::Disconnect);
    }
}

/// All reasons, for metrics exporters.
pub fn end_reasons() -> [EndReason; 5] {
    EndReason::ALL
}

#[cfg(test)]
mod tests;
