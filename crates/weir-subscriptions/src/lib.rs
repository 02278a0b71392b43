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
//! - **Delivery.** [`SubscriptionManager::publish`] takes a batch as an `Arc` (the bus's own),
//!   evaluates each distinct filter once per event (filters are found through an index by
//!   node label | relationship type, so no event scans all subscriptions, and a thousand
//!   subscriptions with one filter cost one evaluation), and queues to each matching
//!   subscription one reference to the batch with the indexes its filter matched. Every
//!   matching change reaches every live subscription, once and in publish order, whatever the
//!   size of a burst.
//! - **Slow consumers** (module `slot`): a subscription whose reader is more than
//!   [`ManagerConfig::max_lag`] or [`ManagerConfig::max_lag_bytes`] behind, or has
//!   [`ManagerConfig::max_pending_batches`] batches waiting, ends with [`EndReason::Lagged`];
//!   its handle reports the last change it delivered so the client can resume with `since`.
//!   Nothing is ever dropped silently, and what slow readers keep alive is bounded by those
//!   limits.
//! - Progress: [`SubscriptionManager::publish_progress`] keeps the latest [`ProgressEvent`] of
//!   at most [`ManagerConfig::max_jobs`] jobs and delivers it to that job's watchers (a slow
//!   watcher gets the newest snapshot; `missed` counts the ones it superseded).
//! - [`SubscriptionManager::shutdown`] completes every subscription and refuses new ones.

mod config;
mod filter;
mod slot;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weir_events::{ChangeBatch, ChangeEvent, ProgressEvent};

pub use config::ManagerConfig;
pub use filter::ChangeFilter;

use filter::{FilterId, FilterIndex};
use slot::{Matches, Next, Pending, Slot};

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
    /// Its reader fell too far behind (the slow-consumer limits of [`ManagerConfig`]).
    Lagged,
    /// Changes were lost before they reached this manager (the bus stream was deleted and
    /// created again, or retention dropped batches its feed had not read): the subscriber is
    /// told instead of silently missing them ([`SubscriptionManager::end_changes`]).
    Gap,
}

impl EndReason {
    const ALL: [EndReason; 6] = [
        Self::Client,
        Self::Ttl,
        Self::Disconnect,
        Self::Shutdown,
        Self::Lagged,
        Self::Gap,
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
            Self::Gap => "gap",
        }
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

/// One change event, inside the batch that carried it (shared, never copied).
#[derive(Clone, Debug)]
pub struct EventRef {
    batch: Arc<ChangeBatch>,
    index: u32,
}

impl EventRef {
    /// Event `index` of `batch`; `None` when out of range.
    pub fn new(batch: Arc<ChangeBatch>, index: usize) -> Option<Self> {
        let index = u32::try_from(index).ok()?;
        ((index as usize) < batch.events.len()).then_some(Self { batch, index })
    }

    /// Every event of `batch`, in order.
    pub fn all(batch: Arc<ChangeBatch>) -> impl Iterator<Item = Self> {
        let n = u32::try_from(batch.events.len()).unwrap_or(u32::MAX);
        (0..n).map(move |index| Self {
            batch: batch.clone(),
            index,
        })
    }

    /// The batch it came in.
    pub fn batch(&self) -> &Arc<ChangeBatch> {
        &self.batch
    }
}

impl Deref for EventRef {
    type Target = ChangeEvent;

    fn deref(&self) -> &ChangeEvent {
        &self.batch.events[self.index as usize]
    }
}

impl PartialEq for EventRef {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// One item delivered to a subscription.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A graph change (shared between every subscription it matched).
    Change(EventRef),
    /// A job's progress.
    Progress(Arc<ProgressEvent>),
}

/// An item, with what the subscription missed just before it.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The item.
    pub item: Item,
    /// Progress snapshots superseded by this one before the reader took them (progress is a
    /// snapshot: only the newest matters). Always 0 for changes: a reader too slow for the
    /// change feed is ended ([`EndReason::Lagged`]), never silently skipped ahead.
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
    pub replay: Option<BoxStream<'static, EventRef>>,
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
    /// Ended by the slow-consumer limits.
    pub completed_lagged: u64,
    /// Ended because changes were lost before reaching the manager.
    pub completed_gap: u64,
    /// Refused by the per-connection or global limit.
    pub rejected_limit: u64,
    /// Change events that were queued to a subscription ended as too slow and so never
    /// delivered by it (its client resumes with `since`).
    pub dropped_events: u64,
    /// Change events queued to subscriptions (one per matching subscription).
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
    /// Distinct filters with neither labels nor types.
    pub wildcard: usize,
    /// Distinct change filters of live subscriptions.
    pub filters: usize,
    /// Jobs with at least one progress watcher.
    pub progress_jobs: usize,
    /// Entries in the TTL schedule.
    pub expiries: usize,
    /// Batches queued across every subscription (references; the batches are shared).
    pub queued_batches: usize,
    /// Change events queued and not yet read, across every subscription.
    pub queued_items: usize,
    /// Estimated bytes held by the registry for subscriptions (entries, filters, index,
    /// schedule, queues; not the shared batches themselves, nor the job table).
    pub held_bytes: usize,
    /// Jobs in the progress table.
    pub jobs: usize,
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    completed: [AtomicU64; 6],
    rejected_limit: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

struct Entry {
    conn: ConnectionId,
    topic: EntryTopic,
    created: Instant,
    expires: Instant,
    slot: Arc<Slot>,
}

enum EntryTopic {
    Changes(FilterId),
    Progress(String),
}

struct JobEntry {
    latest: Arc<ProgressEvent>,
    updated: u64,
}

#[derive(Default)]
struct State {
    subs: HashMap<SubscriptionId, Entry>,
    per_conn: HashMap<ConnectionId, usize>,
    filters: FilterIndex,
    /// Subscriptions of each distinct filter.
    members: HashMap<FilterId, HashSet<SubscriptionId>>,
    progress: HashMap<String, HashSet<SubscriptionId>>,
    expiries: BTreeSet<(Instant, SubscriptionId)>,
    jobs: HashMap<String, JobEntry>,
    job_clock: u64,
    next_sub: u64,
    shut_down: bool,
    /// Highest bus `seq` of a change batch published so far (0: none).
    last_seq: u64,
    /// Estimated bytes of change batches published so far (the slow-consumer byte clock).
    head_bytes: u64,
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

/// How often the reaper checks every subscription's lag (besides the checks at each publish).
const LAG_CHECK_EVERY: Duration = Duration::from_secs(1);

impl SubscriptionManager {
    /// Makes a manager and starts its reaper (TTLs, slow consumers) on the current tokio
    /// runtime (the reaper stops when the last clone of the manager drops).
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

    /// Queues `batch` to every subscription with a matching event (see the crate docs), and
    /// ends the subscriptions this leaves too far behind.
    pub fn publish(&self, batch: Arc<ChangeBatch>) {
        let inner = &self.inner;
        let cfg = &inner.config;
        let now = Instant::now();
        let bytes = batch.approx_bytes() as u64;
        let mut lagged = Vec::new();
        let mut delivered = 0u64;
        {
            let mut st = inner.state.lock();
            // Recorded under the same lock that registers subscriptions, so a subscription
            // registered before `last_seq()` returns N has every batch above N queued live.
            st.last_seq = st.last_seq.max(batch.seq);
            st.head_bytes += bytes;
            if st.subs.is_empty() {
                return;
            }
            let head = st.head_bytes;
            let mut matched: HashMap<FilterId, Vec<u32>> = HashMap::new();
            for (i, event) in batch.events.iter().enumerate() {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                st.filters
                    .matching(event, |id| matched.entry(id).or_default().push(i));
            }
            for (id, indexes) in matched {
                let Some(members) = st.members.get(&id) else {
                    continue;
                };
                let matches = Arc::new(Matches::new(indexes, batch.events.len()));
                for sub in members {
                    let Some(entry) = st.subs.get(sub) else {
                        continue;
                    };
                    delivered += matches.len() as u64;
                    let pending = Pending {
                        batch: batch.clone(),
                        matches: matches.clone(),
                        end_offset: head,
                        at: now,
                    };
                    if entry.slot.push_change(pending, head, now, cfg) {
                        lagged.push(*sub);
                    }
                }
            }
        }
        inner
            .counters
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
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
        S: Stream<Item = Arc<ChangeBatch>> + Send,
    {
        let mut batches = std::pin::pin!(batches);
        loop {
            tokio::select! {
                b = batches.next() => match b {
                    Some(b) => self.publish(b),
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
        let event = Arc::new(event);
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
                    entry.slot.push_progress(event.clone());
                    inner.counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
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

    /// Ends every change subscription with `reason` (progress watchers stay): the feed calls
    /// it with [`EndReason::Gap`] when it knows changes were lost before reaching it. Returns
    /// how many were ended.
    pub fn end_changes(&self, reason: EndReason) -> usize {
        let ids: Vec<SubscriptionId> = {
            let st = self.inner.state.lock();
            st.subs
                .iter()
                .filter(|(_, e)| matches!(e.topic, EntryTopic::Changes(_)))
                .map(|(id, _)| *id)
                .collect()
        };
        ids.into_iter()
            .filter(|id| self.inner.end(*id, reason))
            .count()
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
            completed_gap: done(EndReason::Gap),
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
        let (mut batches, mut queued, mut held) = (0, 0, 0);
        for e in st.subs.values() {
            let q = e.slot.q.lock();
            batches += q.pending.len();
            queued += q.unread() as usize;
            held += size_of::<(SubscriptionId, Entry)>()
                + size_of::<Slot>()
                + q.pending.capacity() * size_of::<Pending>();
            if let EntryTopic::Progress(job) = &e.topic {
                held += job.capacity();
            }
        }
        held += st.per_conn.capacity() * size_of::<(ConnectionId, usize)>();
        held += st.filters.heap_bytes();
        for set in st.members.values() {
            held += size_of::<FilterId>() + set.capacity() * size_of::<SubscriptionId>();
        }
        for (k, set) in &st.progress {
            held += k.capacity() + set.capacity() * size_of::<SubscriptionId>();
        }
        held += st.expiries.len() * size_of::<(Instant, SubscriptionId)>();
        RegistrySnapshot {
            subscriptions: st.subs.len(),
            connections_with_subscriptions: st.per_conn.len(),
            open_connections: self.inner.open_connections.load(Ordering::Relaxed) as usize,
            index_keys: st.filters.index_keys(),
            wildcard: st.filters.wildcards(),
            filters: st.filters.len(),
            progress_jobs: st.progress.len(),
            expiries: st.expiries.len(),
            queued_batches: batches,
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
            let topic = match topic {
                Topic::Changes(f) => {
                    let fid = st.filters.add(&f.normalized());
                    st.members.entry(fid).or_default().insert(id);
                    EntryTopic::Changes(fid)
                }
                Topic::Progress { job_id } => {
                    st.progress.entry(job_id.clone()).or_default().insert(id);
                    if let Some(job) = st.jobs.get(&job_id) {
                        slot.push_progress(job.latest.clone());
                    }
                    EntryTopic::Progress(job_id)
                }
            };
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
            if first_expiry.is_none_or(|t| expires < t) || st.subs.len() == 1 {
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
            last_delivered: None,
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
                EntryTopic::Changes(fid) => {
                    if let Some(set) = st.members.get_mut(fid) {
                        set.remove(&id);
                        if set.is_empty() {
                            st.members.remove(fid);
                        }
                    }
                    st.filters.remove(*fid);
                }
                EntryTopic::Progress(job_id) => {
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
                st.members.shrink_to_fit();
                st.progress.shrink_to_fit();
            }
            entry
        };
        let unread = entry.slot.end(reason);
        if reason == EndReason::Lagged {
            self.counters.dropped.fetch_add(unread, Ordering::Relaxed);
            tracing::info!(
                subscription = id.0,
                connection = entry.conn.0,
                unread,
                "subscriber too slow: ending its subscription"
            );
        }
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

    /// Subscriptions past their TTL, and those whose readers are too far behind.
    fn due(&self, now: Instant) -> (Vec<SubscriptionId>, Vec<SubscriptionId>) {
        let st = self.state.lock();
        let expired = st
            .expiries
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        let lagged = st
            .subs
            .iter()
            .filter(|(_, e)| e.slot.q.lock().too_slow(st.head_bytes, now, &self.config))
            .map(|(id, _)| *id)
            .collect();
        (expired, lagged)
    }
}

async fn reaper(inner: Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            let (expired, lagged) = inner.due(now);
            for id in expired {
                inner.end(id, EndReason::Ttl);
            }
            for id in lagged {
                inner.end(id, EndReason::Lagged);
            }
            let st = inner.state.lock();
            let expiry = st.expiries.first().map(|(t, _)| *t);
            // With subscriptions live, look at their lag at least once a second.
            let lag_check = (!st.subs.is_empty()).then(|| now + LAG_CHECK_EVERY);
            match (expiry, lag_check) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
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
    replay: Option<BoxStream<'static, EventRef>>,
    replay_max_seq: u64,
    last_delivered: Option<(u64, u32)>,
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

    /// `(seq, index)` of the last change event this subscription delivered: where a client
    /// that was ended as too slow resumes (`since`).
    pub fn last_delivered(&self) -> Option<(u64, u32)> {
        self.last_delivered
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
                    this.last_delivered = Some((ev.seq, ev.index));
                    return Poll::Ready(Some(Delivery {
                        item: Item::Change(ev),
                        missed: 0,
                    }));
                }
                Poll::Ready(None) => this.replay = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match this.slot.next(cx.waker()) {
                Next::Change(batch, index) => {
                    let ev = EventRef { batch, index };
                    if ev.seq != 0 && ev.seq <= this.replay_max_seq {
                        continue;
                    }
                    this.last_delivered = Some((ev.seq, ev.index));
                    return Poll::Ready(Some(Delivery {
                        item: Item::Change(ev),
                        missed: 0,
                    }));
                }
                Next::Progress(p, skipped) => {
                    return Poll::Ready(Some(Delivery {
                        item: Item::Progress(p),
                        missed: skipped,
                    }));
                }
                Next::Ended => return Poll::Ready(None),
                Next::Empty => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inner.end(self.id, EndReason::Disconnect);
    }
}

/// All reasons, for metrics exporters.
pub fn end_reasons() -> [EndReason; 6] {
    EndReason::ALL
}

#[cfg(test)]
mod tests;
