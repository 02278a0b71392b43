//! A fixed-size, lock-free latency histogram shared by every client task of a load generator.
//!
//! Log-linear buckets over microseconds: exact below 64 µs, then 32 buckets per power of two
//! (≤ 3.2 % relative error), up to 2^36 µs. Memory is fixed (about 1,000 counters) whatever
//! the number of deliveries; the exact maximum is kept on the side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const LINEAR: u64 = 64;
const SUB: u64 = 32;
const MAX_EXP: u64 = 36;
const BUCKETS: usize = (LINEAR + (MAX_EXP - 6 + 1) * SUB) as usize;

/// Counts latencies in microsecond buckets.
pub struct Histogram {
    counts: Vec<AtomicU64>,
    total: AtomicU64,
    max_us: AtomicU64,
}

fn index(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let exp = u64::from(63 - us.leading_zeros()).min(MAX_EXP);
    let shift = exp - 5;
    let sub = ((us >> shift) - SUB).min(SUB - 1);
    (LINEAR + (exp - 6) * SUB + sub) as usize
}

/// The upper bound (µs) of a bucket, so a quantile is never under-reported.
fn upper(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < LINEAR {
        return idx;
    }
    let exp = (idx - LINEAR) / SUB + 6;
    let sub = (idx - LINEAR) % SUB;
    let shift = exp - 5;
    ((SUB + sub + 1) << shift) - 1
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Records one latency.
    pub fn record(&self, us: u64) {
        self.counts[index(us)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Forgets everything recorded.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.total.store(0, Ordering::Relaxed);
        self.max_us.store(0, Ordering::Relaxed);
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The exact largest latency recorded.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Ordering::Relaxed))
    }

    /// The `q`-quantile (nearest rank, bucket upper bound capped at the maximum).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                let max = self.max_us.load(Ordering::Relaxed);
                return Some(Duration::from_micros(upper(i).min(max)));
            }
        }
        Some(self.max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order_with_small_error() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            63,
            64,
            65,
            100,
            1_000,
            12_345,
            1 << 20,
            5_000_000_000,
        ] {
            let i = index(us);
            assert!(i < BUCKETS, "{us} -> {i}");
            assert!(i >= last, "not monotonic at {us}");
            last = i;
            let up = upper(i);
            assert!(up >= us, "{us}: upper {up}");
            assert!(
                (up - us) as f64 <= us as f64 * 0.033 + 1.0,
                "{us}: upper {up}"
            );
        }
    }

    #[test]
    fn quantiles_and_max() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), Duration::from_micros(1000));
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((500.0..=500.0 * 1.033).contains(&p50), "p50 {p50}");
        assert!((990.0..=1000.0).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), Some(Duration::from_micros(1000)));
        h.reset();
        assert_eq!(h.count(), 0);
    }
}
