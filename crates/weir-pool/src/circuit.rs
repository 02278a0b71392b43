//! Circuit breaker: N consecutive connection failures open it; after a cool-down one probe
//! decides between closing it again and another cool-down.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The breaker's state, as shown in [`crate::PoolStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail fast with `CircuitOpen`.
    Open,
    /// The cool-down is over: one probe call is (or may be) in flight, others fail fast.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What a caller may do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead.
    Pass,
    /// Go ahead as the single probe; report the outcome.
    Probe,
    /// Fail fast; a probe may go in this long.
    Reject(Duration),
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cool_down: Duration,
    opened_total: std::sync::atomic::AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cool_down,
            opened_total: 0.into(),
        }
    }

    pub(crate) fn admit(&self) -> Admission {
        let mut s = self.state.lock();
        match *s {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *s = State::HalfOpen { probing: true };
                    Admission::Probe
                } else {
                    Admission::Reject(until - now)
                }
            }
            State::HalfOpen { probing: false } => {
                *s = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::HalfOpen { probing: true } => Admission::Reject(Duration::ZERO),
        }
    }

    /// A connection or query succeeded. Closes a half-open circuit; resets the count of a
    /// closed one; ignored while open (a late answer from before the outage proves nothing).
    pub(crate) fn success(&self) {
        let mut s = self.state.lock();
        match *s {
            State::Closed { failures: 0 } | State::Open { .. } => {}
            State::Closed { .. } | State::HalfOpen { .. } => *s = State::Closed { failures: 0 },
        }
    }

    /// A connection failure. Returns true if this call opened the circuit.
    pub(crate) fn failure(&self) -> bool {
        let mut s = self.state.lock();
        match *s {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::HalfOpen { .. } => {
                *s = State::Open {
                    until: Instant::now() + self.cool_down,
                };
                self.opened_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            State::Open { .. } => false,
        }
    }

    /// The probe ended without a verdict (cancelled): let the next caller probe.
    pub(crate) fn probe_abandoned(&self) {
        let mut s = self.state.lock();
        if let State::HalfOpen { probing: true } = *s {
            *s = State::HalfOpen { probing: false };
        }
    }

    pub(crate) fn state(&self) -> (CircuitState, u32) {
        let s = self.state.lock();
        match *s {
            State::Closed { failures } => (CircuitState::Closed, failures),
            State::Open { until } if Instant::now() >= until => (CircuitState::HalfOpen, 0),
            State::Open { .. } => (CircuitState::Open, 0),
            State::HalfOpen { .. } => (CircuitState::HalfOpen, 0),
        }
    }

    pub(crate) fn opened_total(&self) -> u64 {
        self.opened_total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Reports a probe's verdict; abandoning it (drop without verdict) lets another caller probe.
pub(crate) struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    done: bool,
}

impl<'a> ProbeGuard<'a> {
    pub(crate) fn new(breaker: &'a Breaker) -> Self {
        Self {
            breaker,
            done: false,
        }
    }

    pub(crate) fn succeeded(mut self) {
        self.done = true;
        self.breaker.success();
    }

    pub(crate) fn failed(mut self) {
        self.done = true;
        self.breaker.failure();
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.probe_abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cool_down() {
        let b = Breaker::new(3, Duration::from_secs(10));
        assert_eq!(b.admit(), Admission::Pass);
        assert!(!b.failure());
        assert!(!b.failure());
        assert_eq!(b.state(), (CircuitState::Closed, 2));
        b.success();
        assert_eq!(b.state(), (CircuitState::Closed, 0));
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "third consecutive failure opens");
        assert_eq!(b.state().0, CircuitState::Open);
        assert_eq!(b.opened_total(), 1);
        assert_eq!(b.admit(), Admission::Reject(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.admit(), Admission::Reject(Duration::from_secs(6)));
        // A late success while open does not close it.
        b.success();
        assert_eq!(b.state().0, CircuitState::Open);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.state().0, CircuitState::HalfOpen);
        assert_eq!(b.admit(), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(), Admission::Reject(Duration::ZERO));
        // The probe fails: a new cool-down.
        ProbeGuard::new(&b).failed();
        assert_eq!(b.state().0, CircuitState::Open);
        assert_eq!(b.opened_total(), 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.admit(), Admission::Probe);
        ProbeGuard::new(&b).succeeded();
        assert_eq!(b.state(), (CircuitState::Closed, 0));
        assert_eq!(b.admit(), Admission::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_lets_the_next_caller_probe() {
        let b = Breaker::new(1, Duration::from_secs(1));
        assert!(b.failure());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(), Admission::Probe);
        drop(ProbeGuard::new(&b));
        assert_eq!(b.admit(), Admission::Probe);
    }
}
