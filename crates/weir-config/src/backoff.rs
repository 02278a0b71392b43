//! [`Backoff`]: the one retry policy every Weir retry loop uses.
//!
//! Exponential back-off with a cap, optional jitter and an optional bound on attempts. Which
//! layer retries which kind of failure is decided by the callers (see ARCHITECTURE.md,
//! "Retries: which layer retries what"); this type only says how long to wait and whether
//! another attempt is allowed.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A retry policy: how long to wait after a failed attempt, and how many attempts there are.
///
/// The wait after failed attempt `n` (1-based) is `initial × multiplierⁿ⁻¹`, capped at `max`,
/// then shortened by a random part of at most `jitter` of it: with `jitter` 0.5 it lies
/// between half and all of the capped value. Jitter keeps writers that failed together (a
/// deadlock, an outage) from retrying in lockstep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Wait after the first failed attempt.
    pub initial: Duration,
    /// Longest wait between attempts.
    pub max: Duration,
    /// Growth factor of the wait per attempt; values below 1 are taken as 1.
    pub multiplier: f64,
    /// Fraction of each wait that is random, in `[0, 1]` (0 = none); clamped.
    pub jitter: f64,
    /// Attempts in all, the first included; `None` retries until the caller stops (its
    /// cancellation). `Some(0)` is taken as `Some(1)`: the first attempt is always made.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 100 ms doubling to 10 s, jitter 0.5, 5 attempts.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), Duration::from_secs(10))
            .with_jitter(0.5)
            .with_max_attempts(5)
    }
}

impl Backoff {
    /// Waits doubling from `initial` up to `max`, no jitter, no bound on attempts.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.0,
            max_attempts: None,
        }
    }

    /// The same policy with `jitter` (fraction of each wait that is random, `[0, 1]`).
    pub const fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same policy with `multiplier` as the growth factor.
    pub const fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The same policy with at most `attempts` attempts, the first included.
    pub const fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Whether another attempt may follow failed attempt number `attempt` (1-based).
    pub fn may_retry(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|m| attempt < m.max(1))
    }

    /// The wait after failed attempt number `attempt` (1-based; 0 is taken as 1), jittered
    /// with `unit` in `[0, 1]` (0 = the full wait, 1 = the shortest the jitter allows).
    /// Deterministic: tests pass the unit; retry loops use [`Backoff::jittered`].
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = self.initial.as_secs_f64() * exp;
        // `max` below `initial` caps every wait at `max`.
        let capped = base.min(self.max.as_secs_f64());
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        Duration::try_from_secs_f64(capped * (1.0 - jitter * unit)).unwrap_or(self.max)
    }

    /// [`Backoff::delay`] with a random unit.
    pub fn jittered(&self, attempt: u32) -> Duration {
        let unit = if self.jitter > 0.0 {
            random_unit()
        } else {
            0.0
        };
        self.delay(attempt, unit)
    }
}

/// A random number in `[0, 1)`, from the standard library's randomly keyed SipHash (good
/// enough to spread retries; not for anything secret), so this crate needs no RNG.
fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = RandomState::new().hash_one(n);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_the_initial_wait_and_caps_at_max() {
        let b = Backoff::exponential(ms(100), ms(1000));
        assert_eq!(b.delay(1, 0.0), ms(100));
        assert_eq!(b.delay(2, 0.0), ms(200));
        assert_eq!(b.delay(3, 0.0), ms(400));
        assert_eq!(b.delay(4, 0.0), ms(800));
        assert_eq!(b.delay(5, 0.0), ms(1000));
        assert_eq!(b.delay(u32::MAX, 0.0), ms(1000));
        // Attempt 0 is taken as the first.
        assert_eq!(b.delay(0, 0.0), ms(100));
    }

    #[test]
    fn multiplier_sets_the_growth_and_never_shrinks_the_wait() {
        let b = Backoff::exponential(ms(100), Duration::from_secs(60)).with_multiplier(3.0);
        assert_eq!(b.delay(3, 0.0), ms(900));
        let b = b.with_multiplier(0.5);
        assert_eq!(b.delay(3, 0.0), ms(100));
    }

    #[test]
    fn max_below_initial_caps_every_wait() {
        let b = Backoff::exponential(ms(500), ms(200));
        assert_eq!(b.delay(1, 0.0), ms(200));
    }

    #[test]
    fn jitter_shortens_the_wait_by_at_most_its_fraction() {
        let b = Backoff::exponential(ms(100), ms(1000)).with_jitter(0.5);
        assert_eq!(b.delay(1, 0.0), ms(100));
        assert_eq!(b.delay(1, 1.0), ms(50));
        assert_eq!(b.delay(5, 1.0), ms(500));
        // Out-of-range units and jitter are clamped.
        assert_eq!(b.delay(1, 7.0), ms(50));
        assert_eq!(b.delay(1, -1.0), ms(100));
        assert_eq!(b.with_jitter(3.0).delay(1, 1.0), Duration::ZERO);
        assert_eq!(b.with_jitter(f64::NAN).delay(1, 1.0), ms(100));
    }

    #[test]
    fn jittered_waits_stay_in_range_and_vary() {
        let b = Backoff::exponential(ms(100), ms(1000)).with_jitter(0.5);
        let waits: Vec<Duration> = (0..500).map(|_| b.jittered(3)).collect();
        assert!(waits.iter().all(|w| *w >= ms(200) && *w <= ms(400)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{}", distinct.len());
        let mean = waits.iter().map(Duration::as_secs_f64).sum::<f64>() / waits.len() as f64;
        assert!((0.27..0.33).contains(&mean), "{mean}");
        // No jitter: the exact wait.
        assert_eq!(Backoff::exponential(ms(100), ms(1000)).jittered(3), ms(400));
    }

    #[test]
    fn max_attempts_bounds_retries() {
        let b = Backoff::default();
        assert_eq!(b.max_attempts, Some(5));
        assert!(b.may_retry(1) && b.may_retry(4));
        assert!(!b.may_retry(5));
        let once = b.with_max_attempts(1);
        assert!(!once.may_retry(1));
        let zero = b.with_max_attempts(0);
        assert!(!zero.may_retry(1));
        let unbounded = Backoff::exponential(ms(1), ms(2));
        assert!(unbounded.may_retry(u32::MAX - 1));
    }

    #[test]
    fn default_is_the_pipeline_policy() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.0), ms(100));
        assert_eq!(b.delay(2, 0.0), ms(200));
        assert_eq!(b.delay(30, 0.0), Duration::from_secs(10));
        assert_eq!(b.delay(1, 1.0), ms(50));
    }
}
