//! Histograms: [`Histogram`] is fed as things happen (prometheus-client's histogram, read when
//! `/metrics` is scraped); [`HistogramSnapshot`] carries one a subsystem keeps itself (the
//! graph pool's acquire wait) into the [`crate::Encoder`].

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram as ClientHistogram;

/// Default buckets for durations in seconds: 1 ms to 60 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Observations in fixed buckets (bounded memory: one count per bucket), kept by
/// prometheus-client. Cheap to clone: clones share the counts.
///
/// prometheus-client takes its bounds as given and counts NaN in the sum; this wrapper sorts
/// and deduplicates the bounds, drops non-finite ones and ignores NaN observations.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: ClientHistogram,
}

impl Histogram {
    /// A histogram with these upper bounds (sorted, deduplicated, non-finite ones dropped; the
    /// `+Inf` bucket is implicit).
    pub fn new(bounds: &[f64]) -> Self {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        Self {
            inner: ClientHistogram::new(b),
        }
    }

    /// Records one observation (NaN is ignored).
    pub fn observe(&self, v: f64) {
        if !v.is_nan() {
            self.inner.observe(v);
        }
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The histogram prometheus-client encodes.
    pub(crate) fn client(&self) -> &ClientHistogram {
        &self.inner
    }
}

/// A point-in-time copy of a histogram kept elsewhere, to encode with
/// [`crate::Encoder::histogram`].
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

impl HistogramSnapshot {
    /// The buckets as prometheus-client encodes them: `(upper bound, count)` per bound, not
    /// cumulative, then the observations above the highest bound under `f64::MAX` (`+Inf`).
    pub(crate) fn client_buckets(&self) -> Vec<(f64, u64)> {
        let n = self.bounds.len().min(self.counts.len());
        let mut buckets: Vec<(f64, u64)> = self.bounds[..n]
            .iter()
            .copied()
            .zip(self.counts[..n].iter().copied())
            .collect();
        let below: u64 = buckets.iter().map(|(_, c)| c).sum();
        buckets.push((f64::MAX, self.count.saturating_sub(below)));
        buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::Encoder;
    use crate::names::STREAM_BATCH_DURATION_SECONDS;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below() {
        let h = Histogram::new(&[1.0, 0.5, f64::INFINITY, 0.5]);
        for v in [0.5, 0.51, 1.0, 7.0, f64::NAN] {
            h.observe(v);
        }
        let mut e = Encoder::new();
        e.live_histogram(&STREAM_BATCH_DURATION_SECONDS, &[], &h);
        let text = e.finish();
        for line in [
            "weir_stream_batch_duration_seconds_bucket{le=\"0.5\"} 1\n",
            "weir_stream_batch_duration_seconds_bucket{le=\"1.0\"} 3\n",
            "weir_stream_batch_duration_seconds_bucket{le=\"+Inf\"} 4\n",
            "weir_stream_batch_duration_seconds_count 4\n",
            "weir_stream_batch_duration_seconds_sum 9.01\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("_bucket{").count(), 3, "{text}");
    }

    #[test]
    fn snapshot_buckets_put_the_rest_above_the_highest_bound() {
        let s = HistogramSnapshot {
            bounds: vec![0.1, 1.0],
            counts: vec![1, 2],
            sum: 4.25,
            count: 4,
        };
        assert_eq!(s.client_buckets(), vec![(0.1, 1), (1.0, 2), (f64::MAX, 1)]);
    }
}
