//! Catch-up for reconnecting clients: `graphChanges(since: N)`.
//!
//! A client that saw changes up to bus sequence `N` and lost its connection subscribes again
//! with `since: N`. The gateway then
//!
//! 1. opens a replay from the bus ([`ChangeReplay::open`]): batches with `seq > N`, in order —
//!    a `since` older than the bus's retention or newer than anything published is refused
//!    here, as a GraphQL error, before anything is registered;
//! 2. registers the live subscription (from now on every batch the gateway's feed hands to the
//!    subscription manager is queued for it);
//! 3. reads `head` = the highest seq the manager had published at that moment (or the bus's
//!    newest seq when the replay was opened, if higher: a gateway that just started feeds
//!    itself from the bus's tip, so older batches never reach its manager), and delivers the
//!    replayed batches with `seq <= head` (filtered like the live ones), then the live queue,
//!    skipping live events the replay already delivered.
//!
//! So every matching change after `N` arrives once, in seq order, with nothing skipped at the
//! seam. Memory stays bounded: the replay is pulled one batch at a time as the client reads
//! (the bus consumer has its own bound), and live events that arrive meanwhile wait in the
//! subscription's bounded queue (if the replay takes long enough to overflow it, the client
//! sees `missed` as usual). At most [`LimitsConfig::max_replays`](crate::LimitsConfig) replays
//! run at once per gateway, because each holds a bus consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use weir_events::ChangeBatch;
use weir_subscriptions::{ChangeFilter, EventRef};

/// Batches replayed from the bus: each item is the next batch in seq order, or an error after
/// which the replay ends.
pub type ReplayBatches = BoxStream<'static, Result<Arc<ChangeBatch>, ReplayError>>;

/// An opened replay.
pub struct Replay {
    /// Every retained batch with `seq > since`, in seq order; it may go on past the present
    /// (the gateway stops reading at the head it needs).
    pub batches: ReplayBatches,
    /// The newest seq published on the bus when the replay was opened. The gateway replays at
    /// least up to here: its own feed may not have seen these batches yet (a gateway that just
    /// started reads the bus from its tip onwards).
    pub last_published: u64,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("last_published", &self.last_published)
            .finish_non_exhaustive()
    }
}

/// Where `graphChanges(since:)` reads what a client missed: the bus (see
/// `weir_app::BusReplay`), or anything that keeps change batches by seq.
pub trait ChangeReplay: Send + Sync + 'static {
    /// Opens a replay of every retained batch with `seq > since`, in seq order. Fails with
    /// [`ReplayError::SinceTooOld`] when retention already dropped a batch after `since`, and
    /// [`ReplayError::SinceAhead`] when `since` is newer than anything published.
    fn open(&self, since: u64) -> BoxFuture<'static, Result<Replay, ReplayError>>;
}

/// Why a replay could not be opened or went on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Retention already dropped batches after `since`; the client must reload its view.
    #[error(
        "`since` {since} is older than the bus retains (oldest retained seq {first_retained}): reload instead of catching up"
    )]
    SinceTooOld {
        /// What the client asked for.
        since: u64,
        /// The oldest seq still retained.
        first_retained: u64,
    },
    /// `since` is newer than anything published.
    #[error("`since` {since} is ahead of the last published seq {last}")]
    SinceAhead {
        /// What the client asked for.
        since: u64,
        /// The last seq published.
        last: u64,
    },
    /// The bus cannot be read now (not connected, timed out); the client may retry.
    #[error("the bus is unavailable for replay: {0}")]
    Unavailable(String),
}

/// Builds the replay stream a subscription delivers before its live queue.
///
/// `batches` start after seq `from`; events at or before `after` = `(seq, index)` are skipped
/// (`index` `None`: the whole batch `seq`), so a client that lost its connection in the middle
/// of a batch gets the rest of it. `head` is set by the caller right after the live
/// subscription is registered (before the stream is first polled) to the larger of the
/// manager's last published seq and the bus's [`Replay::last_published`]; batches are read
/// until the one with `seq >= head` and only events matching `filter` are yielded. `permit`
/// (the gateway-wide replay slot) is released when the replay ends or the subscription drops.
pub(crate) fn events_until_head(
    batches: ReplayBatches,
    from: u64,
    after: (u64, Option<u32>),
    head: Arc<AtomicU64>,
    filter: ChangeFilter,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = EventRef> + Send + 'static {
    struct State {
        batches: ReplayBatches,
        since: u64,
        head: Arc<AtomicU64>,
        _permit: OwnedSemaphorePermit,
    }
    let state = State {
        batches,
        since: from,
        head,
        _permit: permit,
    };
    let seen = move |e: &EventRef| match after {
        (seq, None) => e.seq <= seq,
        (seq, Some(index)) => e.seq < seq || (e.seq == seq && e.index <= index),
    };
    futures::stream::unfold(state, |mut st| async move {
        let head = st.head.load(Ordering::Acquire);
        // Nothing (left) to replay: the live queue holds everything above `head`. Returning
        // `None` drops the state: the bus consumer and the replay slot go with it.
        if st.since >= head {
            return None;
        }
        let next = st.batches.next().await;
        match next {
            Some(Ok(batch)) => {
                st.since = batch.seq.max(st.since);
                Some((EventRef::all(batch), st))
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, since = st.since, head, "replay ended early");
                None
            }
            None => None,
        }
    })
    .flat_map(futures::stream::iter)
    .filter(move |e| futures::future::ready(!seen(e) && filter.matches(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;
    use weir_events::fixture::{self, event};
    use weir_events::{EntityKind, Operation};

    fn batch(seq: u64, labels: &[&str]) -> Arc<ChangeBatch> {
        let events = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                event(
                    EntityKind::Node,
                    l,
                    &format!("{seq}-{i}"),
                    Operation::Created,
                )
            })
            .collect();
        let mut b = fixture::batch("j", &format!("b{seq}"), events);
        b.assign_seq(seq);
        Arc::new(b)
    }

    fn filter(labels: &[&str]) -> ChangeFilter {
        ChangeFilter {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..ChangeFilter::default()
        }
    }

    #[tokio::test]
    async fn stops_at_head_filters_and_releases_the_permit() {
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().unwrap();
        // The source goes on forever past the head, like a live bus subscription.
        let source = futures::stream::iter((4..).map(|s| Ok(batch(s, &["A", "B"])))).boxed();
        let head = Arc::new(AtomicU64::new(6));
        let keys: Vec<String> =
            events_until_head(source, 3, (3, None), head, filter(&["A"]), permit)
                .map(|e| e.key.clone())
                .collect()
                .await;
        assert_eq!(keys, ["4-0", "5-0", "6-0"]);
        assert_eq!(sem.available_permits(), 1, "permit released at the end");
    }

    #[tokio::test]
    async fn nothing_to_replay_when_since_is_at_head_and_the_source_is_not_read() {
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().unwrap();
        // A source that would hang forever if polled.
        let source = futures::stream::pending().boxed();
        let head = Arc::new(AtomicU64::new(5));
        let got: Vec<_> = events_until_head(source, 5, (5, None), head, filter(&[]), permit)
            .collect()
            .await;
        assert!(got.is_empty());
        assert_eq!(sem.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_batch_left_in_the_middle_is_resumed_after_the_last_index() {
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().unwrap();
        let source = futures::stream::iter((4..).map(|s| Ok(batch(s, &["A", "A", "A"])))).boxed();
        let head = Arc::new(AtomicU64::new(5));
        // The client had events 0 and 1 of batch 4: replay from 3, skip through (4, 1).
        let keys: Vec<String> =
            events_until_head(source, 3, (4, Some(1)), head, filter(&["A"]), permit)
                .map(|e| e.key.clone())
                .collect()
                .await;
        assert_eq!(keys, ["4-2", "5-0", "5-1", "5-2"]);
    }

    #[tokio::test]
    async fn an_error_mid_replay_ends_it() {
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().unwrap();
        let source = futures::stream::iter(vec![
            Ok(batch(2, &["A"])),
            Err(ReplayError::Unavailable("gone".into())),
            Ok(batch(3, &["A"])),
        ])
        .boxed();
        let head = Arc::new(AtomicU64::new(10));
        let keys: Vec<String> = events_until_head(source, 1, (1, None), head, filter(&[]), permit)
            .map(|e| e.key.clone())
            .collect()
            .await;
        assert_eq!(keys, ["2-0"]);
        assert_eq!(sem.available_permits(), 1);
    }
}
