//! One subscription's pending deliveries: references to shared batches, never copies of
//! events, and the rule that decides when a reader is too slow.
//!
//! A published batch is queued to a subscription as one [`Pending`]: the batch (shared by
//! every subscription and by the bus), and which of its events the subscription's filter
//! matched (shared by every subscription with that filter). A burst of any size therefore
//! costs each subscription one small entry, and a reader that keeps up never loses anything,
//! however large one batch is.
//!
//! A reader is **too slow** when, at a publish or at the manager's once-a-second check, the
//! batch it is reading was published more than [`ManagerConfig::max_lag`] ago, or more than
//! [`ManagerConfig::max_lag_bytes`] of change batches were published after it, or it has
//! [`ManagerConfig::max_pending_batches`] batches waiting. Its subscription then ends with
//! [`EndReason::Lagged`]; nothing is dropped silently. The bounds also bound memory: what a
//! slow reader can keep alive is at most the batches published within those limits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;
use tokio::time::Instant;
use weir_events::{ChangeBatch, ProgressEvent};

use crate::{EndReason, ManagerConfig};

/// Which events of a batch a filter matched.
#[derive(Debug)]
pub(crate) enum Matches {
    /// All of the batch's events.
    All(u32),
    /// These indexes, ascending.
    Indexes(Box<[u32]>),
}

impl Matches {
    pub(crate) fn new(indexes: Vec<u32>, events: usize) -> Self {
        if indexes.len() == events {
            Self::All(u32::try_from(events).unwrap_or(u32::MAX))
        } else {
            Self::Indexes(indexes.into_boxed_slice())
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::All(n) => *n as usize,
            Self::Indexes(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> u32 {
        match self {
            Self::All(_) => u32::try_from(i).unwrap_or(u32::MAX),
            Self::Indexes(v) => v[i],
        }
    }
}

/// A batch waiting to be read by one subscription.
pub(crate) struct Pending {
    pub(crate) batch: Arc<ChangeBatch>,
    pub(crate) matches: Arc<Matches>,
    /// Bytes published on the manager up to and including this batch.
    pub(crate) end_offset: u64,
    /// When the manager received it.
    pub(crate) at: Instant,
}

/// The part of a subscription shared between the registry and its handle.
pub(crate) struct Slot {
    pub(crate) q: Mutex<SlotQueue>,
}

pub(crate) struct SlotQueue {
    pub(crate) pending: VecDeque<Pending>,
    /// Next position in the front entry's matches.
    pos: usize,
    /// The newest progress snapshot not yet read, and how many it superseded.
    progress: Option<Arc<ProgressEvent>>,
    progress_skipped: u64,
    pub(crate) ended: Option<EndReason>,
    waker: Option<Waker>,
}

/// What the next read of a slot gives.
pub(crate) enum Next {
    Change(Arc<ChangeBatch>, u32),
    Progress(Arc<ProgressEvent>, u64),
    Ended,
    Empty,
}

/// Slots a drained queue keeps (more are given back; the queue starts with none).
const IDLE_SLOTS: usize = 4;

impl Slot {
    pub(crate) fn new() -> Self {
        Self {
            q: Mutex::new(SlotQueue {
                pending: VecDeque::new(),
                pos: 0,
                progress: None,
                progress_skipped: 0,
                ended: None,
                waker: None,
            }),
        }
    }

    /// Queues `p`; returns `true` when the subscription is now too slow (see the module docs).
    pub(crate) fn push_change(
        &self,
        p: Pending,
        head: u64,
        now: Instant,
        cfg: &ManagerConfig,
    ) -> bool {
        let mut q = self.q.lock();
        if q.ended.is_some() {
            return false;
        }
        q.pending.push_back(p);
        let slow = q.pending.len() > cfg.max_pending_batches || q.too_slow(head, now, cfg);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        slow
    }

    /// Replaces the progress snapshot waiting to be read.
    pub(crate) fn push_progress(&self, p: Arc<ProgressEvent>) {
        let mut q = self.q.lock();
        if q.ended.is_some() {
            return;
        }
        if q.progress.replace(p).is_some() {
            q.progress_skipped += 1;
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    /// Marks the subscription ended and frees what it held; returns the change events it had
    /// not read.
    pub(crate) fn end(&self, reason: EndReason) -> u64 {
        let mut q = self.q.lock();
        if q.ended.is_none() {
            q.ended = Some(reason);
        }
        let unread = q.unread();
        q.pending = VecDeque::new();
        q.progress = None;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        unread
    }

    /// The next delivery, or registers `waker` when there is none yet.
    pub(crate) fn next(&self, waker: &Waker) -> Next {
        let mut q = self.q.lock();
        if let Some(p) = q.progress.take() {
            let skipped = std::mem::take(&mut q.progress_skipped);
            return Next::Progress(p, skipped);
        }
        while let Some(front) = q.pending.front() {
            let (pos, len) = (q.pos, front.matches.len());
            if pos < len {
                let item = Next::Change(front.batch.clone(), front.matches.get(pos));
                q.pos += 1;
                if q.pos == len {
                    q.advance();
                }
                return item;
            }
            q.advance();
        }
        if q.ended.is_some() {
            return Next::Ended;
        }
        if !q.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            q.waker = Some(waker.clone());
        }
        Next::Empty
    }
}

impl SlotQueue {
    fn advance(&mut self) {
        self.pending.pop_front();
        self.pos = 0;
        if self.pending.is_empty() && self.pending.capacity() > IDLE_SLOTS {
            // A burst grew the queue; drained, an idle subscription keeps only a few slots.
            self.pending.shrink_to(IDLE_SLOTS);
        }
    }

    /// Whether the reader is past the lag limits (time or bytes behind the head).
    pub(crate) fn too_slow(&self, head: u64, now: Instant, cfg: &ManagerConfig) -> bool {
        self.pending.front().is_some_and(|front| {
            head.saturating_sub(front.end_offset) > cfg.max_lag_bytes
                || now.saturating_duration_since(front.at) > cfg.max_lag
        })
    }

    /// Change events queued and not yet read.
    pub(crate) fn unread(&self) -> u64 {
        let total: usize = self.pending.iter().map(|p| p.matches.len()).sum();
        total.saturating_sub(self.pos) as u64
    }
}
