//! Memory-pressure backpressure: pause intake above the high watermark, resume below the low
//! one (hysteresis), and shrink batches while memory is tight.

use std::sync::Arc;

use weir_events::PressureState;
use weir_memwatch::MemoryGauge;

/// Most halvings of the batch size under pressure.
const MAX_SHRINK: u32 = 10;

/// Reads the gauge and keeps the pressure state.
pub(crate) struct Pressure {
    gauge: Arc<dyn MemoryGauge>,
    high: f64,
    low: f64,
    state: PressureState,
    shrink: u32,
    ratio: Option<f64>,
    peak_used: Option<u64>,
    /// Usage the pipeline could not bring down by draining (see [`Pressure::accept_floor`]).
    floor: Option<f64>,
}

impl std::fmt::Debug for Pressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pressure")
            .field("state", &self.state)
            .field("shrink", &self.shrink)
            .field("ratio", &self.ratio)
            .finish()
    }
}

impl Pressure {
    pub(crate) fn new(gauge: Arc<dyn MemoryGauge>, high: f64, low: f64) -> Self {
        Self {
            gauge,
            high,
            low,
            state: PressureState::Normal,
            shrink: 0,
            ratio: None,
            peak_used: None,
            floor: None,
        }
    }

    /// The pipeline drained everything and usage is still above the low watermark: that
    /// memory is not the pipeline's. Take the current usage as a floor: the state turns
    /// normal with the smallest batches, and turns high again only when usage grows by the
    /// watermark gap above the floor. The floor ends once usage falls below the low watermark.
    pub(crate) fn accept_floor(&mut self) {
        self.floor = self.ratio;
        self.state = PressureState::Normal;
        self.shrink = MAX_SHRINK;
    }

    /// The usage accepted as a floor, if any.
    pub(crate) fn floor(&self) -> Option<f64> {
        self.floor
    }

    /// Reads the gauge and updates the state: `Normal -> High` at or above the high watermark
    /// (batches halve), `High -> Normal` at or below the low one; between the two the state
    /// holds. While normal and below the low watermark, batches grow back one doubling per
    /// sample.
    pub(crate) fn sample(&mut self) -> PressureState {
        let usage = self.gauge.usage();
        self.peak_used = Some(
            self.peak_used
                .map_or(usage.used_bytes, |p| p.max(usage.used_bytes)),
        );
        self.ratio = usage.ratio();
        let Some(r) = self.ratio else {
            self.state = PressureState::Normal;
            self.shrink = self.shrink.saturating_sub(1);
            return self.state;
        };
        if self.floor.is_some() && r < self.low {
            self.floor = None;
        }
        let (high, low) = match self.floor {
            Some(f) => ((f + (self.high - self.low)).max(self.high), f.max(self.low)),
            None => (self.high, self.low),
        };
        match self.state {
            PressureState::Normal if r >= high => {
                self.state = PressureState::High;
                self.shrink = (self.shrink + 1).min(MAX_SHRINK);
            }
            PressureState::High if r <= low => self.state = PressureState::Normal,
            PressureState::Normal if r < self.low => self.shrink = self.shrink.saturating_sub(1),
            _ => {}
        }
        self.state
    }

    pub(crate) fn state(&self) -> PressureState {
        self.state
    }

    pub(crate) fn ratio(&self) -> Option<f64> {
        self.ratio
    }

    pub(crate) fn peak_used(&self) -> Option<u64> {
        self.peak_used
    }

    /// The batch record limit now: `base` halved once per level of shrink, at least `min`.
    pub(crate) fn batch_limit(&self, base: usize, min: usize) -> usize {
        (base >> self.shrink).max(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use weir_memwatch::{MemoryUsage, UsageSource};

    fn gauge() -> (Arc<AtomicU64>, Arc<dyn MemoryGauge>) {
        let used = Arc::new(AtomicU64::new(0));
        let u = used.clone();
        let g = move || MemoryUsage {
            used_bytes: u.load(Ordering::SeqCst),
            limit_bytes: Some(100),
            source: UsageSource::Injected,
        };
        (used, Arc::new(g))
    }

    /// The state after each sample, with usage set to each of `usages` in turn.
    fn states(p: &mut Pressure, used: &AtomicU64, usages: &[u64]) -> Vec<PressureState> {
        usages
            .iter()
            .map(|&u| {
                used.store(u, Ordering::SeqCst);
                p.sample()
            })
            .collect()
    }

    #[test]
    fn hysteresis_between_watermarks() {
        let (used, g) = gauge();
        let mut p = Pressure::new(g, 0.8, 0.7);
        let seq = states(&mut p, &used, &[50, 79, 80, 75, 71, 70, 75, 79, 81]);
        use PressureState::{High, Normal};
        assert_eq!(
            seq,
            [
                Normal, Normal, High, High, High, Normal, Normal, Normal, High
            ]
        );
        assert_eq!(p.peak_used(), Some(81));
    }

    #[test]
    fn an_accepted_floor_raises_both_watermarks_until_usage_falls_below_low() {
        let (used, g) = gauge();
        let mut p = Pressure::new(g, 0.8, 0.7);
        used.store(85, Ordering::SeqCst);
        assert_eq!(p.sample(), PressureState::High);
        p.accept_floor();
        assert_eq!(p.floor(), Some(0.85));
        assert_eq!(p.batch_limit(1000, 16), 16, "smallest batches");
        use PressureState::{High, Normal};
        // Normal up to floor + gap (0.95); high above; normal again at the floor; the floor
        // ends below the configured low watermark.
        let seq = states(&mut p, &used, &[85, 90, 94, 96, 90, 85, 69, 75, 80]);
        assert_eq!(
            seq,
            [
                Normal, Normal, Normal, High, High, Normal, Normal, Normal, High
            ]
        );
        assert_eq!(p.floor(), None);
    }

    #[test]
    fn batches_shrink_under_pressure_and_grow_back() {
        let (used, g) = gauge();
        let mut p = Pressure::new(g, 0.8, 0.7);
        assert_eq!(p.batch_limit(1000, 16), 1000);
        used.store(90, Ordering::SeqCst);
        p.sample();
        assert_eq!(p.batch_limit(1000, 16), 500);
        used.store(60, Ordering::SeqCst);
        p.sample(); // back to normal
        used.store(90, Ordering::SeqCst);
        p.sample();
        assert_eq!(p.batch_limit(1000, 16), 250);
        used.store(60, Ordering::SeqCst);
        p.sample();
        assert_eq!(
            p.batch_limit(1000, 16),
            250,
            "first sample only leaves High"
        );
        p.sample();
        assert_eq!(p.batch_limit(1000, 16), 500);
        p.sample();
        assert_eq!(p.batch_limit(1000, 16), 1000);
        p.sample();
        assert_eq!(p.batch_limit(1000, 16), 1000);
        for _ in 0..20 {
            used.store(90, Ordering::SeqCst);
            p.sample();
            used.store(60, Ordering::SeqCst);
            p.sample();
        }
        assert_eq!(p.batch_limit(1000, 16), 16, "never below the minimum");
    }
}
