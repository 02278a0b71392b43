//! The handles a client holds: its [`Connection`] and each live [`Subscription`] (a stream
//! of [`Delivery`]; dropping it removes the subscription).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::manager::Inner;
use crate::slot::{Next, Slot};
use crate::{
    ConnectionId, Delivery, EndReason, EventRef, Item, SubscribeOptions, SubscriptionError,
    SubscriptionId, Topic,
};

/// A connection's handle: subscriptions are started through it.
pub struct Connection {
    pub(crate) id: ConnectionId,
    pub(crate) inner: Arc<Inner>,
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
    pub(crate) id: SubscriptionId,
    pub(crate) conn: ConnectionId,
    pub(crate) expires: Instant,
    pub(crate) inner: Arc<Inner>,
    pub(crate) slot: Arc<Slot>,
    pub(crate) replay: Option<BoxStream<'static, EventRef>>,
    pub(crate) replay_max_seq: u64,
    pub(crate) last_delivered: Option<(u64, u32)>,
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
