//! A histogram that code feeds with observations (lock-free) and the encoder reads at scrape.

use std::sync::atomic::{AtomicU64, Ordering};

/// Default buckets for durations in seconds: 1 ms to 60 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Observations in fixed buckets (bounded memory: one counter per bucket).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative); the last one is above the highest bound.
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending (the `+Inf` bucket is implicit).
    pub bounds: Vec<f64>,
    /// Observations per bucket, not cumulative, one per bound.
    pub counts: Vec<u64>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations (including those above the highest bound).
    pub count: u64,
}

impl Histogram {
    /// A histogram with these upper bounds (sorted, deduplicated, non-finite ones dropped).
    pub fn new(bounds: &[f64]) -> Self {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds: b,
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation (NaN is ignored).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// A copy of the current figures.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.counts[..self.bounds.len()]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let over = self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            // `count` is derived from the buckets so the +Inf bucket always equals it.
            count: counts.iter().sum::<u64>() + over,
            counts,
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below() {
        let h = Histogram::new(&[1.0, 0.5, f64::INFINITY, 0.5]);
        for v in [0.5, 0.51, 1.0, 7.0, f64::NAN] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.bounds, vec![0.5, 1.0]);
        assert_eq!(s.counts, vec![1, 2]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 9.01).abs() < 1e-9);
    }
}
