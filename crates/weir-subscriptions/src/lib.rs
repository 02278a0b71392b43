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
//!   node label | relationship type, and by key for filters that name keys, so no event scans
//!   all subscriptions, and a thousand subscriptions with one filter cost one evaluation), and
//!   queues to each matching subscription one reference to the batch with the indexes its
//!   filter matched. Every
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
mod manager;
mod slot;
mod subscription;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use serde::Serialize;
use weir_events::{ChangeBatch, ChangeEvent, ProgressEvent};

pub use config::ManagerConfig;
pub use filter::ChangeFilter;
pub use manager::SubscriptionManager;
pub use subscription::{Connection, Subscription};

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

/// All reasons, for metrics exporters.
pub fn end_reasons() -> [EndReason; 6] {
    EndReason::ALL
}

#[cfg(test)]
mod tests;
