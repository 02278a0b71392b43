//! Adaptive write concurrency: how many batches the sink stage keeps in flight.
//!
//! Graph servers differ in what concurrent writers buy. Some serialise concurrent `MERGE`
//! transactions or thrash on their locks (ArcadeDB: on the people example four writers were
//! about half as fast as one, without a single error), others (Neo4j, with row-level locks)
//! gain from a few. No fixed default suits both, so the limit is found by measuring:
//!
//! * It starts at 1 and measures a *window* (at least [`WINDOW_MIN_BATCHES`] batches, and two
//!   per writer) of clean batches dispatched at the current limit, after skipping the first
//!   `limit` of them (ramp-up): the estimated throughput is `limit × records / time spent
//!   writing them` (Little's law).
//! * Every so many windows it *probes*: one writer more (or, after an upward probe failed,
//!   one fewer) for a window. It keeps the probe if the throughput rose by
//!   [`RAISE_GAIN`] (upward) or stayed within [`LOWER_LOSS`] (downward: fewer writers for the
//!   same throughput is cheaper for the server); otherwise it goes back. A probe that holds
//!   halves the windows before the next probe, one that fails doubles them, up to
//!   [`MAX_PROBE_WINDOWS`], so the cost of probing on a server that rejects more writers falls
//!   to one window in that many.
//! * A write that needed a retry (the sink reported contention such as a retried deadlock, or
//!   a transient error) lowers the limit at once: a probe fails; otherwise the limit halves
//!   (rounding up). Only writes dispatched since the last change count, so one burst of
//!   contention is one decrease.
//!
//! The controller is plain state fed with batch completions and their durations: no clock of
//! its own, so it is tested deterministically against simulated servers.

use std::time::Duration;

/// Fewest clean batches in a measuring window.
pub const WINDOW_MIN_BATCHES: usize = 4;

/// Windows before the first probe: the first raise costs about this many windows at one
/// writer on a server that scales, and the first failed probe comes no earlier on one that
/// does not.
pub const INITIAL_PROBE_WINDOWS: u32 = 4;

/// Most windows between two probes.
pub const MAX_PROBE_WINDOWS: u32 = 32;

/// Throughput gain an extra writer must bring to be kept (10 %).
pub const RAISE_GAIN: f64 = 1.10;

/// Throughput one writer fewer may lose and still be kept (5 %).
pub const LOWER_LOSS: f64 = 0.95;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Up,
    Down,
}

/// The in-flight limit and the measurements that move it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConcurrencyLimit {
    max: usize,
    adaptive: bool,
    limit: usize,
    epoch: u64,
    /// The limit a probe returns to when it fails.
    stable: usize,
    probe: Option<Probe>,
    /// Throughput (records/s) measured at `stable`.
    reference: Option<f64>,
    /// Batches of the current epoch still to skip before measuring (ramp-up at a new limit).
    skip: usize,
    window_batches: usize,
    window_records: u64,
    window_time: Duration,
    windows_since_probe: u32,
    probe_windows: u32,
    up_failed: bool,
}

impl ConcurrencyLimit {
    /// A limit of at most `max` (at least 1); fixed at `max` unless `adaptive`.
    pub fn new(max: usize, adaptive: bool) -> Self {
        let max = max.max(1);
        let limit = if adaptive { 1 } else { max };
        Self {
            max,
            adaptive,
            limit,
            epoch: 0,
            stable: limit,
            probe: None,
            reference: None,
            skip: limit,
            window_batches: 0,
            window_records: 0,
            window_time: Duration::ZERO,
            windows_since_probe: 0,
            probe_windows: INITIAL_PROBE_WINDOWS,
            up_failed: false,
        }
    }

    /// Batches that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Windows the next probe waits for.
    pub fn probe_windows(&self) -> u32 {
        self.probe_windows
    }

    /// Whether the current limit is a probe under measurement.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Changes with every change of the limit; a batch remembers it when it is dispatched and
    /// hands it back with its outcome, so that only batches written at the current limit
    /// count.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn window_len(&self) -> usize {
        WINDOW_MIN_BATCHES.max(2 * self.limit)
    }

    fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        self.epoch += 1;
        self.skip = limit;
        self.window_batches = 0;
        self.window_records = 0;
        self.window_time = Duration::ZERO;
    }

    /// Records a write that met contention (the sink reported it, or a transient error that
    /// will be retried), at once, so that no further batch starts at the old limit.
    /// `dispatched` is the [`Self::epoch`] the batch was dispatched in. Returns the new limit
    /// when it changed.
    pub fn on_contention(&mut self, dispatched: u64) -> Option<usize> {
        if !self.adaptive || dispatched != self.epoch {
            return None;
        }
        let before = self.limit;
        match self.probe.take() {
            Some(p) => self.fail_probe(p),
            None => {
                self.reference = None;
                self.stable = self.limit.div_ceil(2);
                self.windows_since_probe = 0;
            }
        }
        self.set_limit(self.stable);
        (self.limit != before).then_some(self.limit)
    }

    fn fail_probe(&mut self, p: Probe) {
        self.probe_windows = (self.probe_windows * 2).min(MAX_PROBE_WINDOWS);
        self.up_failed = p == Probe::Up;
        self.windows_since_probe = 0;
    }

    /// Records a batch of `records` that was dispatched in `dispatched` ([`Self::epoch`]) and
    /// written in `took` without any retry. Returns the new limit when it changed.
    pub fn on_clean_batch(
        &mut self,
        dispatched: u64,
        records: usize,
        took: Duration,
    ) -> Option<usize> {
        if !self.adaptive || dispatched != self.epoch {
            return None;
        }
        if self.skip > 0 {
            // The first batches at a new limit ran while the old ones drained or the new ones
            // had not queued up yet: not representative.
            self.skip -= 1;
            return None;
        }
        self.window_batches += 1;
        self.window_records += records as u64;
        self.window_time += took;
        if self.window_batches < self.window_len() {
            return None;
        }
        let secs = self.window_time.as_secs_f64().max(1e-9);
        let measured = self.limit as f64 * self.window_records as f64 / secs;
        self.window_batches = 0;
        self.window_records = 0;
        self.window_time = Duration::ZERO;
        let before = self.limit;
        match self.probe.take() {
            Some(p) => {
                let reference = self.reference.unwrap_or(0.0);
                let keep = match p {
                    Probe::Up => measured > reference * RAISE_GAIN,
                    Probe::Down => measured >= reference * LOWER_LOSS,
                };
                if keep {
                    self.reference = Some(measured);
                    self.stable = self.limit;
                    self.probe_windows = (self.probe_windows / 2).max(1);
                    self.up_failed = false;
                    self.windows_since_probe = 0;
                } else {
                    self.fail_probe(p);
                    self.set_limit(self.stable);
                }
            }
            None => {
                // Smooth the reference over stable windows.
                self.reference = Some(match self.reference {
                    Some(r) => 0.5 * r + 0.5 * measured,
                    None => measured,
                });
                self.windows_since_probe += 1;
                if self.windows_since_probe >= self.probe_windows {
                    let up = self.limit < self.max && !(self.up_failed && self.limit > 1);
                    let down = self.limit > 1;
                    if up || down {
                        self.stable = self.limit;
                        let (p, to) = if up {
                            (Probe::Up, self.limit + 1)
                        } else {
                            (Probe::Down, self.limit - 1)
                        };
                        self.probe = Some(p);
                        self.set_limit(to);
                    }
                }
            }
        }
        (self.limit != before).then_some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: usize = 1000;

    /// Simulates `rounds` rounds against a server where `n` concurrent batches each take
    /// `latency(n)`: every round dispatches `limit` batches and completes them. Returns the
    /// limit of each round.
    fn simulate(
        c: &mut ConcurrencyLimit,
        rounds: usize,
        latency: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        let mut limits = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let n = c.limit();
            limits.push(n);
            let epoch = c.epoch();
            for _ in 0..n {
                c.on_clean_batch(epoch, BATCH, latency(n));
            }
        }
        limits
    }

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    /// An adaptive limit that has climbed to `max` on a server that scales, not mid-probe.
    fn settled_at_max(max: usize) -> ConcurrencyLimit {
        let mut c = ConcurrencyLimit::new(max, true);
        while c.limit() < max || c.probing() {
            simulate(&mut c, 1, |_| ms(300.0));
        }
        c
    }

    fn share_at(limits: &[usize], level: usize) -> f64 {
        limits.iter().filter(|&&l| l == level).count() as f64 / limits.len() as f64
    }

    #[test]
    fn fixed_limit_never_moves() {
        let mut c = ConcurrencyLimit::new(4, false);
        assert_eq!(c.limit(), 4);
        assert_eq!(c.on_contention(c.epoch()), None);
        let limits = simulate(&mut c, 100, |n| ms(300.0 * n as f64));
        assert!(limits.iter().all(|&l| l == 4));
    }

    #[test]
    fn a_server_that_scales_gets_the_maximum() {
        let mut c = ConcurrencyLimit::new(4, true);
        assert_eq!(c.limit(), 1);
        let limits = simulate(&mut c, 400, |_| ms(300.0));
        assert_eq!(c.limit(), 4);
        assert!(share_at(&limits[100..], 4) > 0.9, "{limits:?}");
    }

    /// ArcadeDB on the people example: n writers take about n times as long each, and a bit
    /// more (lock waits), so one writer is best. The limit stays at 1 but for rare probes.
    #[test]
    fn a_server_that_serialises_writes_keeps_one_writer() {
        let mut c = ConcurrencyLimit::new(4, true);
        let limits = simulate(&mut c, 2000, |n| {
            ms(300.0 * n as f64 * (1.0 + 0.2 * (n - 1) as f64))
        });
        assert!(limits.iter().all(|&l| l <= 2), "never beyond one probe");
        assert!(share_at(&limits, 1) > 0.95, "{}", share_at(&limits, 1));
        assert_eq!(c.probe_windows(), MAX_PROBE_WINDOWS);
    }

    /// Flat throughput from 1 writer up: extra writers are not kept (they must gain 10 %).
    #[test]
    fn writers_that_add_nothing_are_not_kept() {
        let mut c = ConcurrencyLimit::new(8, true);
        let limits = simulate(&mut c, 2000, |n| ms(300.0 * n as f64));
        assert!(share_at(&limits, 1) > 0.95, "{}", share_at(&limits, 1));
    }

    /// Scales to two writers, flat beyond: settles at two.
    #[test]
    fn settles_where_more_writers_stop_paying() {
        let mut c = ConcurrencyLimit::new(8, true);
        let limits = simulate(&mut c, 3000, |n| ms(300.0 * (n as f64 / 2.0).max(1.0)));
        assert!(
            share_at(&limits[200..], 2) > 0.9,
            "{}",
            share_at(&limits[200..], 2)
        );
    }

    /// Writers that no longer pay after a change on the server are given back by downward
    /// probes.
    #[test]
    fn downward_probes_give_back_writers_that_stopped_paying() {
        let mut c = ConcurrencyLimit::new(4, true);
        simulate(&mut c, 400, |_| ms(300.0));
        assert_eq!(c.limit(), 4);
        let limits = simulate(&mut c, 4000, |n| ms(300.0 * n as f64));
        assert!(
            share_at(&limits[2000..], 1) > 0.9,
            "{}",
            share_at(&limits[2000..], 1)
        );
    }

    #[test]
    fn contention_halves_it_but_never_below_one() {
        let mut c = settled_at_max(7);
        assert_eq!(c.on_contention(c.epoch()), Some(4));
        assert_eq!(c.on_contention(c.epoch()), Some(2));
        assert_eq!(c.on_contention(c.epoch()), Some(1));
        assert_eq!(c.on_contention(c.epoch()), None);
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn one_burst_of_contention_is_one_decrease() {
        let mut c = settled_at_max(8);
        let dispatched = c.epoch();
        // Eight writes in flight all hit the same deadlock.
        assert_eq!(c.on_contention(dispatched), Some(4));
        for _ in 0..7 {
            assert_eq!(c.on_contention(dispatched), None);
        }
        // A batch dispatched after the decrease that contends again lowers it again.
        assert_eq!(c.on_contention(c.epoch()), Some(2));
    }

    #[test]
    fn contention_during_a_probe_fails_the_probe() {
        let mut c = ConcurrencyLimit::new(4, true);
        while !c.probing() {
            simulate(&mut c, 1, |_| ms(300.0));
        }
        assert_eq!(c.limit(), 2);
        let windows = c.probe_windows();
        assert_eq!(c.on_contention(c.epoch()), Some(1));
        assert!(!c.probing());
        assert_eq!(c.probe_windows(), windows * 2);
    }

    #[test]
    fn batches_from_another_limit_do_not_count() {
        let mut c = ConcurrencyLimit::new(4, true);
        let old = c.epoch();
        while !c.probing() {
            simulate(&mut c, 1, |_| ms(300.0));
        }
        // Stragglers dispatched at the old limit, however slow, change nothing.
        for _ in 0..100 {
            assert_eq!(c.on_clean_batch(old, BATCH, ms(10_000.0)), None);
        }
        assert_eq!(c.on_contention(old), None);
        assert!(c.probing());
    }

    #[test]
    fn a_limit_of_zero_is_taken_as_one() {
        let c = ConcurrencyLimit::new(0, true);
        assert_eq!((c.limit(), c.max()), (1, 1));
    }
}
