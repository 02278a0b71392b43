//! The event bus between Weir's parts: the ingest side publishes a [`ChangeBatch`] per
//! committed graph batch and [`ProgressEvent`]s; gateways subscribe.
//!
//! One API, [`Bus`], two implementations chosen by [`BusConfig`]:
//!
//! - [`InProcessBus`] (default, the single `weir` binary): a bounded ring of batches shared by
//!   every subscriber; no queue per subscriber.
//! - [`NatsBus`]: a NATS JetStream stream with retention limits (age, bytes); one message per
//!   batch with `Nats-Msg-Id` = batch id; each subscriber (gateway replica) reads through its
//!   own ordered consumer.
//!
//! # Contract
//!
//! - **Sequence.** Every published batch gets a bus sequence `seq`, strictly increasing in
//!   publish order (on NATS: the stream sequence). [`ChangeBatch::assign_seq`] stamps it on the
//!   batch and its events, so every event carries `(seq, index)`.
//! - **Publish after commit, once.** Publish a batch only after its graph transaction
//!   committed. A publish that fails with a transient error ([`BusError::is_transient`], e.g.
//!   [`BusError::PublishTimeout`] while NATS is down) must be retried with the *same* batch
//!   (same `batch_id`): the bus deduplicates it (NATS: within `duplicate_window`; in-process:
//!   while the batch is retained) and returns the original seq with `duplicate = true`.
//!   Publish batches one after the other (await each) so the bus order is the commit order.
//! - **Backpressure.** Publishing never queues without bound: on NATS the client buffers at
//!   most `client_capacity` commands while disconnected; a publish that cannot get its ack
//!   within `publish_timeout` fails fast with [`BusError::PublishTimeout`] and the caller
//!   (the ingest pipeline) pauses and retries. The in-process bus never blocks: it drops its
//!   oldest batch (slow subscribers then see [`BusError::Lagged`]).
//! - **Subscribe.** [`Bus::subscribe_changes`] with `since = None` delivers batches published
//!   after the call; with `Some(s)` it first replays every retained batch with `seq > s` (pass
//!   the last seq you received). Each subscription yields every batch exactly once, in seq
//!   order; if it cannot (retention dropped what it needs) it yields
//!   [`BusError::SinceTooOld`] / [`BusError::Lagged`] and ends. A `since` newer than anything
//!   published is [`BusError::SinceAhead`].
//! - **Progress** is live only and lossy for slow readers (each event is a snapshot that
//!   supersedes the previous one); on NATS it travels on core NATS, not in the stream.

mod config;
mod error;
mod memory;
mod metrics;
mod nats;
mod parts;

use std::sync::Arc;

use futures::stream::BoxStream;
pub use weir_events::{ChangeBatch, EVENT_FORMAT_VERSION, ProgressEvent};

pub use config::{BusConfig, InProcessConfig, MIN_CONSUMER_MAX_BATCH, NatsBusConfig, StorageKind};
pub use error::BusError;
pub use memory::InProcessBus;
pub use metrics::{BusMetrics, BusMetricsSnapshot};
pub use nats::NatsBus;

/// A subscription to change batches: each item is the next batch in seq order (shared: the
/// in-process bus hands every subscriber its own retained `Arc`), or an error after which the
/// stream ends.
pub type ChangeStream = BoxStream<'static, Result<Arc<ChangeBatch>, BusError>>;

/// A subscription to progress events (live only).
pub type ProgressStream = BoxStream<'static, Result<ProgressEvent, BusError>>;

/// The result of publishing a change batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The bus sequence of the batch.
    pub seq: u64,
    /// Whether the bus already had this batch id (a retry): nothing new was delivered and
    /// `seq` is the original one.
    pub duplicate: bool,
}

/// The bus: in-process or NATS JetStream. Cheap to clone; clones share one connection.
#[derive(Clone, Debug)]
pub enum Bus {
    /// See [`InProcessBus`].
    InProcess(InProcessBus),
    /// See [`NatsBus`].
    Nats(NatsBus),
}

impl Bus {
    /// Validates `config` and builds the bus. For NATS this connects (within
    /// `connect_timeout`) and creates or updates the stream with the configured limits; it
    /// fails with [`BusError::Unavailable`] when NATS cannot be reached, so a service can stay
    /// not-ready and retry.
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        config.validate()?;
        Ok(match config {
            BusConfig::InProcess(c) => Self::InProcess(InProcessBus::new(c)?),
            BusConfig::Nats(c) => Self::Nats(NatsBus::connect(c).await?),
        })
    }

    /// Publishes one committed batch and returns its seq. Retry with the same batch on a
    /// transient error; see the crate docs.
    pub async fn publish_changes(&self, batch: ChangeBatch) -> Result<Published, BusError> {
        match self {
            Self::InProcess(b) => Ok(b.publish_changes(batch)),
            Self::Nats(b) => b.publish_changes(batch).await,
        }
    }

    /// Publishes a progress event to the live progress subscribers.
    pub async fn publish_progress(&self, event: &ProgressEvent) -> Result<(), BusError> {
        match self {
            Self::InProcess(b) => {
                b.publish_progress(event);
                Ok(())
            }
            Self::Nats(b) => b.publish_progress(event).await,
        }
    }

    /// Subscribes to change batches, replaying from after `since` when given.
    pub async fn subscribe_changes(&self, since: Option<u64>) -> Result<ChangeStream, BusError> {
        match self {
            Self::InProcess(b) => b.subscribe_changes(since),
            Self::Nats(b) => b.subscribe_changes(since).await,
        }
    }

    /// Like [`Bus::subscribe_changes`], also returning the newest seq published when the
    /// subscription opened (0 before the first publish), read in the same step that checks
    /// `since`: a catch-up reads the stream at least up to it.
    pub async fn subscribe_changes_at(
        &self,
        since: Option<u64>,
    ) -> Result<(ChangeStream, u64), BusError> {
        match self {
            Self::InProcess(b) => b.subscribe_changes_at(since),
            Self::Nats(b) => b.subscribe_changes_at(since).await,
        }
    }

    /// Subscribes to progress events from now on.
    pub async fn subscribe_progress(&self) -> Result<ProgressStream, BusError> {
        match self {
            Self::InProcess(b) => Ok(b.subscribe_progress()),
            Self::Nats(b) => b.subscribe_progress().await,
        }
    }

    /// Readiness: `Ok` when the bus can take publishes and subscriptions now (NATS: connected
    /// and the stream answers within `connect_timeout`). Services gate `/ready` on it.
    pub async fn check_ready(&self) -> Result<(), BusError> {
        match self {
            Self::InProcess(_) => Ok(()),
            Self::Nats(b) => b.check_ready().await,
        }
    }

    /// The live counters of this bus.
    pub fn metrics(&self) -> &Arc<BusMetrics> {
        match self {
            Self::InProcess(b) => b.metrics(),
            Self::Nats(b) => b.metrics(),
        }
    }
}

/// A batch of `n` node events for unit tests.
#[cfg(test)]
pub(crate) fn test_batch(job: &str, batch_id: &str, n: usize) -> ChangeBatch {
    use weir_events::fixture::{batch, event};
    use weir_events::{EntityKind, Operation};
    let events = (0..n)
        .map(|i| {
            let key = format!("{batch_id}-{i}");
            event(EntityKind::Node, "Person", &key, Operation::Created)
        })
        .collect();
    batch(job, batch_id, events)
}
