//! The manager's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SubscriptionError;

/// Settings of a [`SubscriptionManager`](crate::SubscriptionManager).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// TTL of a subscription that asks for none. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// The longest TTL a subscription may have; longer requests are cut to it. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Live subscriptions one connection may hold. Default 100.
    pub max_per_connection: usize,
    /// Live subscriptions the whole manager may hold. Default 10,000.
    pub max_total: usize,
    /// Events queued per subscription before the oldest is dropped. Default 256.
    pub queue_capacity: usize,
    /// How long a subscription's queue may keep overflowing (events dropped, never drained to
    /// empty) before the subscription is ended with [`EndReason::Lagged`](crate::EndReason).
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
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
            queue_capacity: 256,
            max_lag: Duration::from_secs(30),
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
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be above zero");
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
            queue_capacity: 0,
            ..ManagerConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(SubscriptionError::InvalidConfig {
                field: "queue_capacity",
                ..
            })
        ));
    }
}
