//! Settings of `weir-gatewayd`: defaults, a TOML file (`--config`), the environment, flags.

use std::time::Duration;

use crate::ServiceError;
use crate::config::Env;
use serde::{Deserialize, Serialize};
use weir_bus::{BusConfig, NatsBusConfig};
use weir_config::GraphSettings;
use weir_gateway::{AuthConfig, GatewayConfig};

/// Everything `weir-gatewayd` can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaydConfig {
    /// The gateway itself (`[gateway]`: bind, auth, limits, subscriptions, websocket). Bind
    /// default `127.0.0.1:8080`; env `WEIR_BIND`, `WEIR_API_KEYS`.
    pub gateway: GatewayConfig,
    /// The graph server. Env `NEO4J_URI`, `NEO4J_USER`, `NEO4J_PASSWORD`, `NEO4J_DATABASE`.
    pub graph: GraphSettings,
    /// Graph connections for queries. Default 8.
    pub graph_max_connections: usize,
    /// The bus the changes come from. Default NATS JetStream at `nats://127.0.0.1:4222`, stream
    /// `WEIR_EVENTS`. Env `NATS_URL`, `WEIR_BUS_STREAM`.
    pub bus: BusConfig,
    /// `GET /changes?since=` replay limits.
    pub replay: ReplayConfig,
    /// Address of the admin listener (`/metrics`, `/api/memory/*`). Default: none (off).
    /// Env `WEIR_ADMIN_BIND`.
    pub admin_bind: Option<std::net::SocketAddr>,
    /// Bearer token the admin listener requires. Default: none. Env `WEIR_ADMIN_TOKEN`.
    pub admin_token: Option<weir_config::Secret>,
}

impl Default for GatewaydConfig {
    fn default() -> Self {
        Self {
            gateway: GatewayConfig::default(),
            graph: GraphSettings::default(),
            graph_max_connections: 8,
            bus: BusConfig::Nats(NatsBusConfig::default()),
            replay: ReplayConfig::default(),
            admin_bind: None,
            admin_token: None,
        }
    }
}

/// Limits of one replay page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Most batches read for one page (a client pages on with the returned `last_seq`).
    /// Default 256.
    pub max_batches: usize,
    /// Most events returned in one page (the page ends at the batch that reaches it).
    /// Default 10 000.
    pub max_events: usize,
    /// The page ends when no further batch arrives within this. Default 300 ms.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            max_batches: 256,
            max_events: 10_000,
            idle: Duration::from_millis(300),
        }
    }
}

impl GatewaydConfig {
    /// Applies the environment (see each field).
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ServiceError> {
        env.apply_graph(&mut self.graph);
        env.apply_bus(&mut self.bus);
        if let Some(b) = env.parse("WEIR_ADMIN_BIND")? {
            self.admin_bind = Some(b);
        }
        if let Some(t) = env.get("WEIR_ADMIN_TOKEN") {
            self.admin_token = Some(weir_config::Secret::new(t));
        }
        if let Some(b) = env.parse("WEIR_BIND")? {
            self.gateway.bind = b;
        }
        if let Some(keys) = env.secrets("WEIR_API_KEYS") {
            self.gateway.auth = AuthConfig::ApiKeys { keys };
        }
        Ok(())
    }

    /// Checks the settings, naming the first wrong field.
    pub fn validate(&self) -> Result<(), ServiceError> {
        self.gateway.validate().map_err(|e| ServiceError::Invalid {
            field: "gateway",
            reason: e.to_string(),
        })?;
        self.bus.validate().map_err(|e| ServiceError::Invalid {
            field: "bus",
            reason: e.to_string(),
        })?;
        if self.graph_max_connections == 0 {
            return Err(ServiceError::Invalid {
                field: "graph_max_connections",
                reason: "must be at least 1".into(),
            });
        }
        let r = &self.replay;
        if r.max_batches == 0 || r.max_events == 0 || r.idle.is_zero() {
            return Err(ServiceError::Invalid {
                field: "replay",
                reason: "max_batches, max_events and idle must be above zero".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_valid() {
        let c = GatewaydConfig::default();
        assert!(c.gateway.bind.ip().is_loopback());
        c.validate().unwrap();
    }

    #[test]
    fn env_sets_bind_keys_and_bus() {
        let mut c = GatewaydConfig::default();
        c.apply_env(&Env::from_pairs([
            ("WEIR_BIND", "127.0.0.1:18080"),
            ("WEIR_API_KEYS", "a-key"),
            ("WEIR_BUS_STREAM", "S2"),
        ]))
        .unwrap();
        assert_eq!(c.gateway.bind.port(), 18080);
        assert!(matches!(c.bus, BusConfig::Nats(ref n) if n.stream == "S2"));
        assert!(matches!(c.gateway.auth, AuthConfig::ApiKeys { ref keys } if keys.len() == 1));
    }

    #[test]
    fn zero_replay_is_refused_by_name() {
        let mut c = GatewaydConfig::default();
        c.replay.max_batches = 0;
        assert!(c.validate().unwrap_err().to_string().contains("replay"));
    }
}
