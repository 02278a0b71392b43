//! Bus configuration: which implementation, and its bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BusError;

/// Which bus to run, with its settings. In a config file:
///
/// ```toml
/// [bus]
/// kind = "nats"
/// url = "nats://127.0.0.1:4222"
/// stream = "WEIR_EVENTS"
/// max_age = "24h"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusConfig {
    /// The in-process bus: a bounded ring buffer inside this process (the single `weir` binary).
    InProcess(InProcessConfig),
    /// NATS JetStream, shared by an ingest service and gateway replicas.
    Nats(NatsBusConfig),
}

impl Default for BusConfig {
    /// The in-process bus with its defaults.
    fn default() -> Self {
        Self::InProcess(InProcessConfig::default())
    }
}

impl BusConfig {
    /// Checks every bound; the error names the field.
    pub fn validate(&self) -> Result<(), BusError> {
        match self {
            Self::InProcess(c) => c.validate(),
            Self::Nats(c) => c.validate(),
        }
    }
}

/// Settings of the in-process bus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InProcessConfig {
    /// Most change batches retained for replay (`since`) and for slow subscribers; the oldest
    /// is dropped past it. Default 4096 batches.
    pub capacity: usize,
    /// Most bytes of change batches retained (estimated heap size,
    /// [`weir_events::ChangeBatch::approx_bytes`]); the oldest batches are dropped past it, but
    /// the newest batch is always kept whatever its size. This is the bound on the bus's
    /// memory: a 1,000-row batch of the people example holds about 1.5 MiB of change events.
    /// Default 64 MiB.
    pub max_bytes: u64,
    /// Progress events buffered per subscriber; a slower subscriber skips to the newest ones
    /// (progress events are snapshots). Default 64.
    pub progress_capacity: usize,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            max_bytes: 64 << 20,
            progress_capacity: 64,
        }
    }
}

impl InProcessConfig {
    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.capacity == 0 {
            return Err(BusError::Config {
                field: "in_process.capacity",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_bytes == 0 {
            return Err(BusError::Config {
                field: "in_process.max_bytes",
                reason: "must be at least 1".into(),
            });
        }
        if self.progress_capacity == 0 {
            return Err(BusError::Config {
                field: "in_process.progress_capacity",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Where JetStream keeps the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// On disk (survives a NATS restart).
    File,
    /// In memory.
    Memory,
}

/// Settings of the NATS JetStream bus.
///
/// Change batches go to the stream `stream` on the subject `<subject_prefix>.changes` (one
/// message per batch, `Nats-Msg-Id` = batch id); the stream sequence is the batch's `seq`.
/// Progress events go to `<subject_prefix>.progress` on core NATS (live only, not stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NatsBusConfig {
    /// NATS URL. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// JetStream stream name (letters, digits, `-`, `_`). Default `WEIR_EVENTS`.
    pub stream: String,
    /// Subject prefix (tokens of letters, digits, `-`, `_`, separated by `.`). Default `weir`.
    pub subject_prefix: String,
    /// Retention by age: changes older than this are dropped. Default 24 h.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_age: Duration,
    /// Retention by size: the oldest changes are dropped above this many bytes. Default 1 GiB.
    pub max_bytes: u64,
    /// Window in which a re-published batch id is recognised as a duplicate. Must cover the
    /// longest outage plus retry you want deduplicated. Default 10 min.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duplicate_window: Duration,
    /// Stream storage. Default `file`.
    pub storage: StorageKind,
    /// How long a publish may wait (for the client buffer and for the server's ack) before it
    /// fails with [`BusError::PublishTimeout`]. Default 5 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub publish_timeout: Duration,
    /// How long `connect` and readiness checks wait. Default 5 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Longest pause between reconnect attempts (back-off grows to it). Default 2 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reconnect_max_delay: Duration,
    /// Idle heartbeat of each subscription's consumer. A consumer that misses two (e.g. after a
    /// NATS restart) is recreated from the last seq it delivered. Default 2 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub consumer_heartbeat: Duration,
    /// Most change batches one subscription's consumer pulls at once (the consumer's
    /// `max_batch`). With `subscription_capacity` it bounds a subscriber's client-side buffer
    /// to this many messages of at most the server's `max_payload` each. Default 64, at
    /// least 16: with 4, an ordered consumer on nats-server 2.9.10 stopped receiving after
    /// its first pull (every later pull expired with 408), so small values are refused.
    pub consumer_max_batch: usize,
    /// Commands the client buffers while disconnected (async-nats `client_capacity`); a
    /// publish beyond it waits and then times out. Default 256.
    pub client_capacity: usize,
    /// Messages buffered per subscription (async-nats `subscription_capacity`). Default 1024.
    pub subscription_capacity: usize,
    /// Publishes awaiting their ack at once (async-nats `max_ack_inflight`). Default 64.
    pub max_ack_inflight: usize,
}

impl Default for NatsBusConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "WEIR_EVENTS".into(),
            subject_prefix: "weir".into(),
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(600),
            storage: StorageKind::File,
            publish_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_max_delay: Duration::from_secs(2),
            consumer_heartbeat: Duration::from_secs(2),
            consumer_max_batch: 64,
            client_capacity: 256,
            subscription_capacity: 1024,
            max_ack_inflight: 64,
        }
    }
}

/// Smallest accepted [`NatsBusConfig::consumer_max_batch`].
pub const MIN_CONSUMER_MAX_BATCH: usize = 16;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl NatsBusConfig {
    /// The subject change batches are published on.
    pub fn changes_subject(&self) -> String {
        format!("{}.changes", self.subject_prefix)
    }

    /// The subject progress events are published on.
    pub fn progress_subject(&self) -> String {
        format!("{}.progress", self.subject_prefix)
    }

    /// Checks names and bounds; the error names the field.
    pub fn validate(&self) -> Result<(), BusError> {
        let err = |field, reason: &str| {
            Err(BusError::Config {
                field,
                reason: reason.into(),
            })
        };
        if self.url.trim().is_empty() {
            return err("nats.url", "must not be empty");
        }
        if self.stream.is_empty() || !self.stream.chars().all(is_name_char) {
            return err(
                "nats.stream",
                "must be non-empty letters, digits, `-` or `_`",
            );
        }
        if self
            .subject_prefix
            .split('.')
            .any(|t| t.is_empty() || !t.chars().all(is_name_char))
        {
            return err(
                "nats.subject_prefix",
                "must be `.`-separated non-empty tokens of letters, digits, `-` or `_`",
            );
        }
        if self.max_age.is_zero() {
            return err(
                "nats.max_age",
                "must be positive (unbounded age is not allowed)",
            );
        }
        if self.max_bytes == 0 || i64::try_from(self.max_bytes).is_err() {
            return err("nats.max_bytes", "must be between 1 and i64::MAX");
        }
        if self.duplicate_window.is_zero() || self.duplicate_window > self.max_age {
            return err(
                "nats.duplicate_window",
                "must be positive and at most max_age",
            );
        }
        for (field, d) in [
            ("nats.publish_timeout", self.publish_timeout),
            ("nats.connect_timeout", self.connect_timeout),
            ("nats.reconnect_max_delay", self.reconnect_max_delay),
            ("nats.consumer_heartbeat", self.consumer_heartbeat),
        ] {
            if d.is_zero() {
                return err(field, "must be positive");
            }
        }
        for (field, n) in [
            ("nats.client_capacity", self.client_capacity),
            ("nats.subscription_capacity", self.subscription_capacity),
            ("nats.max_ack_inflight", self.max_ack_inflight),
        ] {
            if n == 0 {
                return err(field, "must be at least 1");
            }
        }
        if self.consumer_max_batch < MIN_CONSUMER_MAX_BATCH {
            return err(
                "nats.consumer_max_batch",
                "must be at least 16 (smaller pulls stalled against nats-server 2.9)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BusConfig::default().validate().unwrap();
        BusConfig::Nats(NatsBusConfig::default())
            .validate()
            .unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            NatsBusConfig {
                stream: "a.b".into(),
                ..Default::default()
            },
            NatsBusConfig {
                subject_prefix: "weir..x".into(),
                ..Default::default()
            },
            NatsBusConfig {
                max_bytes: 0,
                ..Default::default()
            },
            NatsBusConfig {
                duplicate_window: Duration::from_secs(48 * 3600),
                ..Default::default()
            },
            NatsBusConfig {
                client_capacity: 0,
                ..Default::default()
            },
            NatsBusConfig {
                consumer_max_batch: MIN_CONSUMER_MAX_BATCH - 1,
                ..Default::default()
            },
        ];
        let fields: Vec<&str> = bad
            .iter()
            .map(|c| match c.validate() {
                Err(BusError::Config { field, .. }) => field,
                other => panic!("expected a config error, got {other:?}"),
            })
            .collect();
        assert_eq!(
            fields,
            [
                "nats.stream",
                "nats.subject_prefix",
                "nats.max_bytes",
                "nats.duplicate_window",
                "nats.client_capacity",
                "nats.consumer_max_batch"
            ]
        );
        let zero = InProcessConfig {
            capacity: 0,
            ..Default::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(BusError::Config {
                field: "in_process.capacity",
                ..
            })
        ));
    }

    #[test]
    fn parses_from_toml_like_json_with_durations() {
        let c: BusConfig = serde_json::from_value(serde_json::json!({
            "kind": "nats",
            "url": "nats://10.0.0.1:4222",
            "max_age": "2h",
            "publish_timeout": "750ms"
        }))
        .unwrap();
        let BusConfig::Nats(n) = c else {
            panic!("expected nats")
        };
        assert_eq!(n.max_age, Duration::from_secs(7200));
        assert_eq!(n.publish_timeout, Duration::from_millis(750));
        assert_eq!(n.stream, "WEIR_EVENTS");
        assert_eq!(n.changes_subject(), "weir.changes");
        let c: BusConfig =
            serde_json::from_value(serde_json::json!({"kind": "in_process"})).unwrap();
        assert_eq!(c, BusConfig::default());
    }
}
