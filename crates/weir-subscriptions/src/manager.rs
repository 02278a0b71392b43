//! The registry itself: its state behind one lock, the [`SubscriptionManager`] handle, the
//! per-batch delivery to matching subscriptions, and the reaper (TTLs, slow consumers).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weir_events::{ChangeBatch, ProgressEvent};

use crate::filter::{FilterId, FilterIndex};
use crate::slot::{Matches, Pending, Slot};
use crate::{
    Connection, ConnectionId, EndReason, ManagerConfig, RegistrySnapshot, Stats, SubscribeOptions,
    Subscription, SubscriptionError, SubscriptionId, Topic,
};

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) completed: [AtomicU64; 6],
    pub(crate) rejected_limit: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) delivered: AtomicU64,
}

pub(crate) struct Entry {
    pub(crate) conn: ConnectionId,
    pub(crate) topic: EntryTopic,
    pub(crate) created: Instant,
    pub(crate) expires: Instant,
    pub(crate) slot: Arc<Slot>,
}

pub(crate) enum EntryTopic {
    Changes(FilterId),
    Progress(String),
}

pub(crate) struct JobEntry {
    pub(crate) latest: Arc<ProgressEvent>,
    pub(crate) updated: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) subs: HashMap<SubscriptionId, Entry>,
    pub(crate) per_conn: HashMap<ConnectionId, usize>,
    pub(crate) filters: FilterIndex,
    /// Subscriptions of each distinct filter.
    pub(crate) members: HashMap<FilterId, HashSet<SubscriptionId>>,
    pub(crate) progress: HashMap<String, HashSet<SubscriptionId>>,
    pub(crate) expiries: BTreeSet<(Instant, SubscriptionId)>,
    pub(crate) jobs: HashMap<String, JobEntry>,
    pub(crate) job_clock: u64,
    pub(crate) next_sub: u64,
    pub(crate) shut_down: bool,
    /// Highest bus `seq` of a change batch published so far (0: none).
    pub(crate) last_seq: u64,
    /// Estimated bytes of change batches published so far (the slow-consumer byte clock).
    pub(crate) head_bytes: u64,
}

pub(crate) struct Inner {
    pub(crate) config: ManagerConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) counters: Counters,
    pub(crate) next_conn: AtomicU64,
    pub(crate) open_connections: AtomicU64,
    pub(crate) reaper_wake: Arc<Notify>,
    pub(crate) reaper_stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reaper_stop.cancel();
    }
}

/// The registry of live subscriptions. Cheap to clone (shared).
#[derive(Clone)]
pub struct SubscriptionManager {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SubscriptionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// How often the reaper checks every subscription's lag (besides the checks at each publish).
pub(crate) const LAG_CHECK_EVERY: Duration = Duration::from_secs(1);

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
    pub(crate) fn subscribe(
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

    pub(crate) fn end(&self, id: SubscriptionId, reason: EndReason) -> bool {
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
    pub(crate) fn due(&self, now: Instant) -> (Vec<SubscriptionId>, Vec<SubscriptionId>) {
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
