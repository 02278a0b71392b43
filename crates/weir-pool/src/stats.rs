//! Counters and the acquire-wait histogram behind [`crate::PoolStatus`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::CircuitState;

/// Why a session was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Idle longer than `idle_ttl`.
    IdleTtl,
    /// Older than its (jittered) `max_lifetime`.
    MaxLifetime,
    /// Saw an I/O or protocol error or a deadline, or its user was cancelled mid-use.
    Broken,
    /// Failed the liveness check run after `health_check_after_idle`.
    HealthCheck,
    /// The pool closed (or dropped) it.
    Shutdown,
}

impl CloseReason {
    const ALL: [CloseReason; 5] = [
        Self::IdleTtl,
        Self::MaxLifetime,
        Self::Broken,
        Self::HealthCheck,
        Self::Shutdown,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (inclusive) of the acquire-wait histogram buckets; a last bucket counts the
/// rest. Prometheus-style `le` buckets once made cumulative.
pub const ACQUIRE_WAIT_BUCKETS: [Duration; 10] = [
    Duration::from_micros(100),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

#[derive(Debug, Default)]
pub(crate) struct Stats {
    created: AtomicU64,
    closed: [AtomicU64; 5],
    wait_buckets: [AtomicU64; ACQUIRE_WAIT_BUCKETS.len() + 1],
    wait_sum_nanos: AtomicU64,
    wait_count: AtomicU64,
    acquire_timeouts: AtomicU64,
    connect_failures: AtomicU64,
}

impl Stats {
    pub(crate) fn created(&self) {
        self.created.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn acquire_timeout(&self) {
        self.acquire_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn connect_failure(&self) {
        self.connect_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_wait(&self, wait: Duration) {
        let i = ACQUIRE_WAIT_BUCKETS
            .iter()
            .position(|b| wait <= *b)
            .unwrap_or(ACQUIRE_WAIT_BUCKETS.len());
        self.wait_buckets[i].fetch_add(1, Relaxed);
        self.wait_sum_nanos
            .fetch_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.wait_count.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> (u64, ClosedCounts, AcquireWait, u64, u64) {
        let c = |r: CloseReason| self.closed[r.index()].load(Relaxed);
        let closed = ClosedCounts {
            idle_ttl: c(CloseReason::IdleTtl),
            max_lifetime: c(CloseReason::MaxLifetime),
            broken: c(CloseReason::Broken),
            health_check: c(CloseReason::HealthCheck),
            shutdown: c(CloseReason::Shutdown),
        };
        debug_assert_eq!(CloseReason::ALL.len(), self.closed.len());
        let wait = AcquireWait {
            bucket_bounds: ACQUIRE_WAIT_BUCKETS.to_vec(),
            bucket_counts: self.wait_buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: Duration::from_nanos(self.wait_sum_nanos.load(Relaxed)),
            count: self.wait_count.load(Relaxed),
        };
        (
            self.created.load(Relaxed),
            closed,
            wait,
            self.acquire_timeouts.load(Relaxed),
            self.connect_failures.load(Relaxed),
        )
    }
}

/// Sessions closed, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClosedCounts {
    /// Closed for idling longer than `idle_ttl`.
    pub idle_ttl: u64,
    /// Closed for living longer than `max_lifetime`.
    pub max_lifetime: u64,
    /// Discarded after an error, a deadline or a cancelled use.
    pub broken: u64,
    /// Closed after failing the liveness check.
    pub health_check: u64,
    /// Closed by pool shutdown.
    pub shutdown: u64,
}

impl ClosedCounts {
    /// All closed sessions.
    pub fn total(&self) -> u64 {
        self.idle_ttl + self.max_lifetime + self.broken + self.health_check + self.shutdown
    }
}

/// Histogram of time spent waiting in `get()` (successful or not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AcquireWait {
    /// Inclusive upper bound of each bucket but the last (see [`ACQUIRE_WAIT_BUCKETS`]).
    pub bucket_bounds: Vec<Duration>,
    /// Waits per bucket (not cumulative); one more entry than `bucket_bounds` (the rest).
    pub bucket_counts: Vec<u64>,
    /// Sum of all waits.
    pub sum: Duration,
    /// Number of waits.
    pub count: u64,
}

/// A snapshot of the pool, for health endpoints and the metrics exporter.
///
/// The fields are read one after another, not under one lock: a session the maintenance task
/// closes leaves `size` a moment before `sessions_closed` counts it (when it is dropped), so
/// `sessions_created - sessions_closed.total() == size` holds once the pool is quiet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// Configured bound on live sessions.
    pub max_size: usize,
    /// Live sessions (idle plus in use).
    pub size: usize,
    /// Idle sessions in the pool.
    pub idle: usize,
    /// Sessions checked out.
    pub in_use: usize,
    /// Callers waiting for a session.
    pub waiting: usize,
    /// Whether a connection has succeeded at least once.
    pub ready: bool,
    /// Whether the pool was closed.
    pub closed: bool,
    /// Circuit breaker state.
    pub circuit: CircuitState,
    /// Consecutive connection failures counted towards opening the circuit.
    pub consecutive_failures: u32,
    /// How many times the circuit opened.
    pub circuit_opened_total: u64,
    /// Sessions opened since start.
    pub sessions_created: u64,
    /// Sessions closed since start, by reason.
    pub sessions_closed: ClosedCounts,
    /// Failed attempts to open a session.
    pub connect_failures: u64,
    /// Checkouts that failed with an acquire timeout.
    pub acquire_timeouts: u64,
    /// Acquire wait histogram.
    pub acquire_wait: AcquireWait,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_histogram_buckets_sum_and_count() {
        let s = Stats::default();
        s.record_wait(Duration::from_micros(50));
        s.record_wait(Duration::from_millis(1));
        s.record_wait(Duration::from_secs(60));
        let (_, _, w, _, _) = s.snapshot();
        assert_eq!(w.bucket_counts.len(), w.bucket_bounds.len() + 1);
        assert_eq!(w.bucket_counts[0], 1);
        assert_eq!(w.bucket_counts[1], 1);
        assert_eq!(*w.bucket_counts.last().unwrap(), 1);
        assert_eq!(w.count, 3);
        assert_eq!(
            w.sum,
            Duration::from_secs(60) + Duration::from_millis(1) + Duration::from_micros(50)
        );
    }

    #[test]
    fn closed_counts_by_reason() {
        let s = Stats::default();
        for r in CloseReason::ALL {
            s.closed(r);
        }
        s.closed(CloseReason::Broken);
        let (_, c, _, _, _) = s.snapshot();
        assert_eq!(c.broken, 2);
        assert_eq!(c.total(), 6);
    }
}
