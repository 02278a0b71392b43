//! The memory watcher's figures as metrics.

use weir_memwatch::{LeakVerdict, MemoryWatcher};

use crate::encode::Encoder;
use crate::names::*;
use crate::registry::MetricSource;

/// A [`MetricSource`] reading a [`MemoryWatcher`] (its latest sample, no new sampling).
#[derive(Clone, Debug)]
pub struct MemorySource {
    watcher: MemoryWatcher,
}

impl MemorySource {
    /// A source for `watcher`.
    pub fn new(watcher: MemoryWatcher) -> Self {
        Self { watcher }
    }
}

impl MetricSource for MemorySource {
    fn collect(&self, e: &mut Encoder) {
        let stats = self.watcher.stats();
        let leak = self.watcher.leak_status();
        if let Some(s) = &stats.current {
            e.gauge(&MEMORY_USED_BYTES, &[], s.used_bytes as f64);
            if let Some(l) = s.limit_bytes {
                e.gauge(&MEMORY_LIMIT_BYTES, &[], l as f64);
            }
            if let Some(r) = s.ratio {
                e.gauge(&MEMORY_PRESSURE_RATIO, &[], r);
            }
            if let Some(rss) = s.rss_bytes {
                e.gauge(&MEMORY_RSS_BYTES, &[], rss as f64);
            }
            if let Some(a) = s.allocator {
                e.gauge(
                    &MEMORY_ALLOCATOR_ALLOCATED_BYTES,
                    &[],
                    a.allocated_bytes as f64,
                );
                e.gauge(
                    &MEMORY_ALLOCATOR_RESIDENT_BYTES,
                    &[],
                    a.resident_bytes as f64,
                );
            }
        }
        if let Some(p) = stats.peak_rss_bytes {
            e.gauge(&MEMORY_PEAK_RSS_BYTES, &[], p as f64);
        }
        if let Some(cg) = stats.cgroup {
            e.gauge(&MEMORY_CGROUP_USAGE_BYTES, &[], cg.usage_bytes as f64);
            if let Some(l) = cg.limit_bytes {
                e.gauge(&MEMORY_CGROUP_LIMIT_BYTES, &[], l as f64);
            }
        }
        e.gauge(&MEMORY_PRESSURE_LEVEL, &[], stats.level.as_gauge() as f64);
        e.gauge(
            &MEMORY_LEAK_SLOPE_BYTES_PER_HOUR,
            &[],
            leak.latest.slope_bytes_per_hour,
        );
        e.gauge(&MEMORY_LEAK_FIT_RATIO, &[], leak.latest.r_squared);
        e.gauge(
            &MEMORY_LEAK_GROWTH_RATIO_PER_HOUR,
            &[],
            leak.latest.growth_pct_per_hour / 100.0,
        );
        for v in LeakVerdict::ALL {
            let on = if v == leak.verdict { 1.0 } else { 0.0 };
            e.gauge(&MEMORY_LEAK_VERDICT, &[("verdict", v.as_str())], on);
        }
        e.gauge(&MEMORY_HISTORY_SAMPLES, &[], stats.history_len as f64);
        e.counter(&MEMORY_SAMPLES_TOTAL, &[], stats.samples_taken);
        e.counter(&MEMORY_ALERTS_TOTAL, &[], stats.alerts_raised);
    }
}
