//! Pool configuration: plain serde struct, hand-written defaults, validation naming the field.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_config::Backoff;

use crate::PoolError;

/// Settings of a [`crate::Pool`]. Durations are written like `30s` or `5m` in files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Most live sessions (checked out plus idle). Default 20. Never exceeded.
    pub max_size: usize,
    /// Idle sessions the reaper keeps open once the pool is ready. Default 0.
    pub min_idle: usize,
    /// A session idle longer than this is closed (on checkout or by the reaper). Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_ttl: Duration,
    /// No session lives longer than this (minus its jitter). Default 30 min.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_lifetime: Duration,
    /// Each session's lifetime is shortened by a random amount up to this, so sessions made
    /// together do not all expire together. Default 3 min. Must be below `max_lifetime`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_lifetime_jitter: Duration,
    /// Longest wait for a session, including making a new one. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub acquire_timeout: Duration,
    /// Longest wait to open and prove one Bolt connection (`RETURN 1`). Default 5 s.
    /// Must not exceed `acquire_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Client-side deadline of every query and transaction, and of each fetch of a stream.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub query_timeout: Duration,
    /// A checkout of a session idle longer than this first runs `RETURN 1`. Default 10 s.
    /// Must not exceed `idle_ttl`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub health_check_after_idle: Duration,
    /// How often the reaper closes expired idle sessions (and, before the pool is ready,
    /// how often at most it retries the first connection). Default 5 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reaper_interval: Duration,
    /// Consecutive connection failures that open the circuit. Default 5.
    pub circuit_failure_threshold: u32,
    /// How long an open circuit fails calls fast before one probe may try. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub circuit_cool_down: Duration,
    /// Rows fetched from the server per round trip by streams and `execute`. Default 500.
    pub fetch_size: usize,
    /// Most rows `execute` collects before it fails with `TooManyRows`; use `stream` for
    /// more. Default 10 000.
    pub max_collect_rows: usize,
    /// Attempts of a write transaction on transient errors (first try included), for the
    /// pool's own retrying writes. Ingestion does not use it: its pipeline retries transient
    /// failures itself, so that they lower its write concurrency. Default 3.
    pub txn_max_attempts: u32,
    /// Back-off before the first retry of a transaction; doubled each retry, with jitter.
    /// Default 100 ms.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub txn_backoff_min: Duration,
    /// Longest back-off between transaction attempts. Default 2 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub txn_backoff_max: Duration,
    /// Switch Nagle's algorithm off (`TCP_NODELAY`) on each new Bolt connection. neo4rs
    /// leaves it on, and then every statement larger than 8 KiB waits for the server's
    /// delayed ACK (40–200 ms); see [`crate::nodelay`]. Linux only. Default on.
    pub tcp_nodelay: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 20,
            min_idle: 0,
            idle_ttl: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(30 * 60),
            max_lifetime_jitter: Duration::from_secs(3 * 60),
            acquire_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(30),
            health_check_after_idle: Duration::from_secs(10),
            reaper_interval: Duration::from_secs(5),
            circuit_failure_threshold: 5,
            circuit_cool_down: Duration::from_secs(10),
            fetch_size: 500,
            max_collect_rows: 10_000,
            txn_max_attempts: 3,
            txn_backoff_min: Duration::from_millis(100),
            txn_backoff_max: Duration::from_secs(2),
            tcp_nodelay: true,
        }
    }
}

impl PoolConfig {
    /// The retry policy of [`crate::Pool::write_txn`]: `txn_max_attempts` attempts, waits
    /// doubling from `txn_backoff_min` to `txn_backoff_max`, each shortened by up to half at
    /// random.
    pub fn txn_retry(&self) -> Backoff {
        Backoff::exponential(self.txn_backoff_min, self.txn_backoff_max)
            .with_jitter(0.5)
            .with_max_attempts(self.txn_max_attempts)
    }

    /// Checks every field and their combinations; the error names the offending field.
    pub fn validate(&self) -> Result<(), PoolError> {
        let bad =
            |field: &'static str, reason: String| Err(PoolError::InvalidConfig { field, reason });
        if self.max_size == 0 {
            return bad("max_size", "must be at least 1".into());
        }
        if self.min_idle > self.max_size {
            return bad(
                "min_idle",
                format!("{} exceeds max_size {}", self.min_idle, self.max_size),
            );
        }
        let positive: [(&'static str, Duration); 9] = [
            ("idle_ttl", self.idle_ttl),
            ("max_lifetime", self.max_lifetime),
            ("acquire_timeout", self.acquire_timeout),
            ("connect_timeout", self.connect_timeout),
            ("query_timeout", self.query_timeout),
            ("health_check_after_idle", self.health_check_after_idle),
            ("reaper_interval", self.reaper_interval),
            ("circuit_cool_down", self.circuit_cool_down),
            ("txn_backoff_min", self.txn_backoff_min),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return bad(field, "must be greater than zero".into());
            }
        }
        if self.max_lifetime_jitter >= self.max_lifetime {
            return bad(
                "max_lifetime_jitter",
                format!(
                    "{:?} must be below max_lifetime {:?}",
                    self.max_lifetime_jitter, self.max_lifetime
                ),
            );
        }
        if self.connect_timeout > self.acquire_timeout {
            return bad(
                "connect_timeout",
                format!(
                    "{:?} exceeds acquire_timeout {:?}: a slow connect could never be counted as failed",
                    self.connect_timeout, self.acquire_timeout
                ),
            );
        }
        if self.health_check_after_idle > self.idle_ttl {
            return bad(
                "health_check_after_idle",
                format!(
                    "{:?} exceeds idle_ttl {:?}: such sessions are closed before any check",
                    self.health_check_after_idle, self.idle_ttl
                ),
            );
        }
        if self.circuit_failure_threshold == 0 {
            return bad("circuit_failure_threshold", "must be at least 1".into());
        }
        if self.fetch_size == 0 {
            return bad("fetch_size", "must be at least 1".into());
        }
        if self.max_collect_rows == 0 {
            return bad("max_collect_rows", "must be at least 1".into());
        }
        if self.txn_max_attempts == 0 {
            return bad("txn_max_attempts", "must be at least 1".into());
        }
        if self.txn_backoff_max < self.txn_backoff_min {
            return bad(
                "txn_backoff_max",
                format!(
                    "{:?} is below txn_backoff_min {:?}",
                    self.txn_backoff_max, self.txn_backoff_min
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(c: &PoolConfig) -> &'static str {
        match c.validate() {
            Err(PoolError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = PoolConfig::default();
        c.validate().unwrap();
        assert_eq!(c.max_size, 20);
        assert_eq!(c.min_idle, 0);
        assert_eq!(c.idle_ttl, Duration::from_secs(30));
        assert_eq!(c.max_lifetime, Duration::from_secs(1800));
    }

    #[test]
    fn invalid_combinations_name_the_field() {
        let d = PoolConfig::default;
        assert_eq!(field_of(&PoolConfig { max_size: 0, ..d() }), "max_size");
        assert_eq!(
            field_of(&PoolConfig {
                min_idle: 21,
                ..d()
            }),
            "min_idle"
        );
        assert_eq!(
            field_of(&PoolConfig {
                idle_ttl: Duration::ZERO,
                ..d()
            }),
            "idle_ttl"
        );
        assert_eq!(
            field_of(&PoolConfig {
                max_lifetime_jitter: Duration::from_secs(1800),
                ..d()
            }),
            "max_lifetime_jitter"
        );
        assert_eq!(
            field_of(&PoolConfig {
                connect_timeout: Duration::from_secs(11),
                ..d()
            }),
            "connect_timeout"
        );
        assert_eq!(
            field_of(&PoolConfig {
                health_check_after_idle: Duration::from_secs(31),
                ..d()
            }),
            "health_check_after_idle"
        );
        assert_eq!(
            field_of(&PoolConfig {
                circuit_failure_threshold: 0,
                ..d()
            }),
            "circuit_failure_threshold"
        );
        assert_eq!(
            field_of(&PoolConfig {
                txn_backoff_max: Duration::from_millis(1),
                ..d()
            }),
            "txn_backoff_max"
        );
    }

    #[test]
    fn reads_humantime_durations_and_rejects_unknown_fields() {
        let c: PoolConfig =
            serde_json::from_str(r#"{"max_size": 4, "idle_ttl": "2s", "max_lifetime": "1m"}"#)
                .unwrap();
        assert_eq!(c.max_size, 4);
        assert_eq!(c.idle_ttl, Duration::from_secs(2));
        assert_eq!(c.max_lifetime, Duration::from_secs(60));
        assert!(serde_json::from_str::<PoolConfig>(r#"{"max_sise": 4}"#).is_err());
    }
}
