//! Counters the bus keeps; services export them (Prometheus) from [`BusMetrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one bus handle (shared by its clones and subscriptions).
#[derive(Debug, Default)]
pub struct BusMetrics {
    published: AtomicU64,
    duplicates: AtomicU64,
    publish_errors: AtomicU64,
    consumed: AtomicU64,
    redelivered: AtomicU64,
    lag: AtomicU64,
    progress_published: AtomicU64,
    progress_dropped: AtomicU64,
    parts_published: AtomicU64,
    skipped_decode: AtomicU64,
    skipped_version: AtomicU64,
    /// The highest stream seq a skip was counted for: a message read again (a `since` replay,
    /// `GET /changes`) is not counted twice.
    skipped_upto: AtomicU64,
    incomplete: AtomicU64,
}

/// A point-in-time copy of [`BusMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusMetricsSnapshot {
    /// Change batches accepted by the bus (new, not duplicates). `weir_bus_published_total`.
    pub published: u64,
    /// Publishes recognised as duplicates of an earlier batch id (retries).
    /// `weir_bus_publish_duplicates_total`.
    pub duplicates: u64,
    /// Publishes that failed (timeouts included). `weir_bus_publish_errors_total`.
    pub publish_errors: u64,
    /// Change batches handed to subscribers (summed over subscriptions).
    /// `weir_bus_consumed_total`.
    pub consumed: u64,
    /// Deliveries dropped because the subscription had already seen that seq (redeliveries
    /// after a consumer was recreated). `weir_bus_redelivered_total`.
    pub redelivered: u64,
    /// Batches published but not yet read by the most recently served subscription, as of its
    /// last read. `weir_bus_lag_batches`.
    pub lag: u64,
    /// Progress events published. `weir_bus_progress_published_total`.
    pub progress_published: u64,
    /// Progress events a slow subscriber skipped (progress is lossy by design).
    /// `weir_bus_progress_dropped_total`.
    pub progress_dropped: u64,
    /// Messages published for change batches too large for one message (each batch split
    /// into parts counts its parts). `weir_bus_parts_published_total`.
    pub parts_published: u64,
    /// Messages skipped because they could not be decoded as a change batch (garbage on the
    /// stream), each counted once however many subscriptions read it.
    /// `weir_bus_messages_skipped_total{reason="decode"}`.
    pub skipped_decode: u64,
    /// Messages skipped because they carry an event format version this build does not read
    /// (a newer publisher in a rolling upgrade). `weir_bus_messages_skipped_total{reason="version"}`.
    pub skipped_version: u64,
    /// Change batches split into parts that could not be put back together (a part fell out
    /// of retention, or too many batches were open at once) and were skipped.
    /// `weir_bus_messages_skipped_total{reason="incomplete"}`.
    pub incomplete: u64,
}

impl BusMetrics {
    /// A copy of every counter.
    pub fn snapshot(&self) -> BusMetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BusMetricsSnapshot {
            published: g(&self.published),
            duplicates: g(&self.duplicates),
            publish_errors: g(&self.publish_errors),
            consumed: g(&self.consumed),
            redelivered: g(&self.redelivered),
            lag: g(&self.lag),
            progress_published: g(&self.progress_published),
            progress_dropped: g(&self.progress_dropped),
            parts_published: g(&self.parts_published),
            skipped_decode: g(&self.skipped_decode),
            skipped_version: g(&self.skipped_version),
            incomplete: g(&self.incomplete),
        }
    }

    pub(crate) fn on_publish(&self, duplicate: bool) {
        let c = if duplicate {
            &self.duplicates
        } else {
            &self.published
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_publish_error(&self) {
        self.publish_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_consume(&self, lag: u64) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
        self.lag.store(lag, Ordering::Relaxed);
    }

    pub(crate) fn on_redelivered(&self) {
        self.redelivered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_progress_published(&self) {
        self.progress_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_parts_published(&self, n: u64) {
        self.parts_published.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a skipped message at stream seq `seq` (once: not again when a replay reads it);
    /// returns whether it is the first of its kind (log it loudly).
    pub(crate) fn on_skipped(&self, seq: u64, kind: crate::parts::SkipKind) -> bool {
        if self.skipped_upto.fetch_max(seq, Ordering::Relaxed) >= seq {
            return false;
        }
        let c = match kind {
            crate::parts::SkipKind::Decode => &self.skipped_decode,
            crate::parts::SkipKind::Version => &self.skipped_version,
        };
        c.fetch_add(1, Ordering::Relaxed) == 0
    }

    pub(crate) fn on_incomplete(&self, n: u64) -> bool {
        self.incomplete.fetch_add(n, Ordering::Relaxed) == 0 && n > 0
    }

    pub(crate) fn on_progress_dropped(&self, n: u64) {
        self.progress_dropped.fetch_add(n, Ordering::Relaxed);
    }
}
