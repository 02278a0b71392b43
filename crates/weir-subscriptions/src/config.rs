//! The manager's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SubscriptionError;

/// Settings of a [`SubscriptionManager`](crate::SubscriptionManager).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// TTL of a subscription that asks for none. Default 30 min.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub default_ttl: Duration,
    /// The longest TTL a subscription may have; longer requests are cut to it. Default 30 min.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ttl: Duration,
    /// Live subscriptions one connection may hold. Default 100.
    pub max_per_connection: usize,
    /// Live subscriptions the whole manager may hold. Default 10,000.
    pub max_total: usize,
    /// A subscriber is too slow when the batch it is reading was published more than this
    /// long ago: its subscription ends with [`EndReason::Lagged`](crate::EndReason) (the
    /// gateway sends `SLOW_CONSUMER` with the last change delivered and closes with 1008; the
    /// client resumes with `since`). Default 30 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_lag: Duration,
    /// A subscriber is too slow when more than this many bytes of change batches (estimated
    /// heap size) were published after the batch it is reading. One batch never counts
    /// against itself, so a batch of any size fits. Also bounds what slow subscribers keep
    /// alive. Default 64 MiB.
    pub max_lag_bytes: u64,
    /// A subscriber is too slow when this many batches wait for it (bounds each
    /// subscription's queue of batch references; an entry is about 40 bytes). Default 1024.
    pub max_pending_batches: usize,
    /// Ingest jobs whose latest progress is kept; past it the oldest finished job (else the
    /// least recently updated) is forgotten. Default 256.
    pub max_jobs: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(30 * 60),
            max_ttl: Duration::from_secs(30 * 60),
            max_per_connection: 100,
            max_total: 10_000,
            max_lag: Duration::from_secs(30),
            max_lag_bytes: 64 << 20,
            max_pending_batches: 1024,
            max_jobs: 256,
        }
    }
}

impl ManagerConfig {
    /// Checks the settings, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), SubscriptionError> {
        let bad = |field: &'static str, reason: &'static str| {
            Err(SubscriptionError::InvalidConfig { field, reason })
        };
        if self.default_ttl.is_zero() {
            return bad("default_ttl", "must be above zero");
        }
        if self.max_ttl < self.default_ttl {
            return bad("max_ttl", "must be at least default_ttl");
        }
        if self.max_per_connection == 0 {
            return bad("max_per_connection", "must be above zero");
        }
        if self.max_total < self.max_per_connection {
            return bad("max_total", "must be at least max_per_connection");
        }
        if self.max_pending_batches == 0 {
            return bad("max_pending_batches", "must be above zero");
        }
        if self.max_lag.is_zero() {
            return bad("max_lag", "must be above zero");
        }
        if self.max_lag_bytes == 0 {
            return bad("max_lag_bytes", "must be above zero");
        }
        if self.max_jobs == 0 {
            return bad("max_jobs", "must be above zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = ManagerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.default_ttl, Duration::from_secs(1800));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["default_ttl"], "30m");
        let back: ManagerConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validation_names_the_field() {
        let c = ManagerConfig {
            max_ttl: Duration::from_secs(1),
            ..ManagerConfig::default()
        };
        match c.validate() {
            Err(SubscriptionError::InvalidConfig { field, .. }) => assert_eq!(field, "max_ttl"),
            other => panic!("{other:?}"),
        }
        let c = ManagerConfig {
            max_pending_batches: 0,
            ..ManagerConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(SubscriptionError::InvalidConfig {
                field: "max_pending_batches",
                ..
            })
        ));
    }
}
