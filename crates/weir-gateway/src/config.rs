//! Gateway settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_config::Secret;
use weir_subscriptions::ManagerConfig;

use crate::GatewayError;

/// Everything the gateway can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on. Default `127.0.0.1:8080` (loopback only). Not read from a
    /// `[gateway]` section: a Weir process's listener is its top-level `bind`.
    #[serde(skip)]
    pub bind: SocketAddr,
    /// Who may call. Default: API keys, with none configured (every request refused) — auth is
    /// off only with `mode = "disabled"`, and only on a loopback `bind` (see
    /// [`GatewayConfig::validate`]). Not read from a `[gateway]` section: one `[auth]` guards
    /// every API of a Weir process.
    #[serde(skip)]
    pub auth: AuthConfig,
    /// Request and operation limits.
    pub limits: LimitsConfig,
    /// The subscription registry (TTL, limits, queue size, slow-consumer policy).
    pub subscriptions: ManagerConfig,
    /// WebSocket keep-alive and handshake timing.
    pub websocket: WebSocketConfig,
    /// Whether introspection queries are answered. Default `true`: only authenticated callers
    /// can send any operation (introspection included), the schema is no secret (it is
    /// committed as `schemas/gateway.graphql`), and GraphiQL needs it for completion and docs.
    /// Set `false` to answer `__schema` / `__type` with null.
    pub introspection: bool,
    /// How long shutdown waits for subscriptions to complete and sockets to close before it
    /// drops them. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// Web pages from other origins allowed to open a WebSocket or send a non-GET request
    /// (exact `Origin` values, e.g. `https://app.example.com`). A request from a browser
    /// carries an `Origin`; one whose origin is neither this server's own (the `Host` it was
    /// sent to: the console and GraphiQL) nor listed here is refused with 403, so a page the
    /// user happens to visit cannot drive a gateway on their machine, even with auth off.
    /// Requests without `Origin` (curl, drivers, `graphql-ws` in Node) are not affected.
    /// Default: none.
    pub allowed_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            subscriptions: ManagerConfig::default(),
            websocket: WebSocketConfig::default(),
            introspection: true,
            shutdown_grace: Duration::from_secs(10),
            allowed_origins: Vec::new(),
        }
    }
}

/// How callers prove who they are: `Authorization: Bearer <token>` on HTTP and the upgrade
/// request, or in the `connection_init` payload (`Authorization`, `authorization`,
/// `authToken` or `token`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// No authentication. Only when explicitly configured.
    Disabled,
    /// The token must equal one of these keys (compared in constant time).
    ApiKeys {
        /// The accepted keys.
        keys: Vec<Secret>,
    },
    /// The token must be a JWT signed with HS256 by this secret, not expired.
    Jwt {
        /// The HMAC secret.
        secret: Secret,
        /// When set, a token must carry an `iss` claim equal to it (a token without one is
        /// refused).
        #[serde(default)]
        issuer: Option<String>,
        /// When set, a token must carry an `aud` claim naming it (a token without one is
        /// refused).
        #[serde(default)]
        audience: Option<String>,
        /// How far the clocks of the token's issuer and this process may disagree: `exp` is
        /// honoured this long after it passed and `nbf` this long before it comes. Default
        /// 30 s; at most 5 min.
        #[serde(default = "default_clock_skew", with = "humantime_serde")]
        #[schemars(with = "String")]
        clock_skew: Duration,
    },
}

/// The default [`AuthConfig::Jwt`] `clock_skew`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);

fn default_clock_skew() -> Duration {
    DEFAULT_CLOCK_SKEW
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self::ApiKeys { keys: Vec::new() }
    }
}

/// Request and operation limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Maximum query depth. Default 15: the standard introspection query (graphql-js
    /// `getIntrospectionQuery`, what GraphiQL and other tools send) is 15 deep. The schema's own
    /// types have no cycles, so no other query comes near it; the complexity limit bounds
    /// what a deep introspection query can cost.
    pub max_depth: usize,
    /// Maximum query complexity (async-graphql's count of fields, lists weighted). Default 500.
    pub max_complexity: usize,
    /// Maximum HTTP request body, bytes. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Maximum WebSocket message, bytes. Default 64 KiB.
    pub max_ws_message_bytes: usize,
    /// Subscriptions a connection may start per second (token bucket, burst of the same size).
    /// Default 20.
    pub subscription_starts_per_sec: u32,
    /// Maximum page size of `neighbours`. Default 100.
    pub max_page_size: usize,
    /// Maximum labels in one `counts` query. Default 50.
    pub max_count_labels: usize,
    /// `graphChanges(since:)` catch-ups running at once on this gateway (each holds a bus
    /// consumer until it has caught up); more are refused with `LIMIT_EXCEEDED`. Default 64.
    pub max_replays: usize,
    /// Live operations one principal (an API key, a JWT `sub`) may hold across all its
    /// connections; more are refused with `LIMIT_EXCEEDED`, so one caller cannot take every
    /// slot of `subscriptions.max_total`. Not applied with auth off. Default 5,000.
    pub max_subscriptions_per_principal: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_depth: 15,
            max_complexity: 500,
            max_body_bytes: 64 * 1024,
            max_ws_message_bytes: 64 * 1024,
            subscription_starts_per_sec: 20,
            max_page_size: 100,
            max_count_labels: 50,
            max_replays: 64,
            max_subscriptions_per_principal: 5_000,
        }
    }
}

/// WebSocket timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// How long a client has to send `connection_init` (else close 4408). Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connection_init_timeout: Duration,
    /// How often the server pings. Default 15 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ping_interval: Duration,
    /// How long after a ping the client has to send anything (a pong) before it is closed with
    /// 4499. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub pong_timeout: Duration,
    /// How long one frame may take to write before the client is dropped. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// Outgoing messages queued per connection (beyond this the subscriptions' own queues and
    /// slow-consumer policy take over). Default 64.
    pub outbound_queue: usize,
    /// Bytes the socket reads from the network at once. Each open socket holds a buffer of this
    /// size for its whole life (the WebSocket library's own default, 128 KiB, made an idle
    /// subscription cost ~150 KB); larger messages still arrive whole, in several reads, up
    /// to `limits.max_ws_message_bytes` (the buffer then keeps the size that message needed).
    /// Clients send only small control messages (`connection_init`, `subscribe`, `pong`): 256
    /// bytes hold a short one in a single read, and a longer query takes a few more reads (then
    /// the buffer keeps the size it needed). Default 256 B, at least 128.
    pub read_buffer_bytes: usize,
    /// WebSockets open at once; more upgrades are answered 503. Default 20,000.
    pub max_sockets: usize,
    /// WebSockets open at once from one client address; more are answered 429; `0` turns the
    /// check off (behind a reverse proxy). Default 1,000.
    pub max_sockets_per_ip: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            connection_init_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            outbound_queue: 64,
            read_buffer_bytes: 256,
            max_sockets: 20_000,
            max_sockets_per_ip: 1_000,
        }
    }
}

impl AuthConfig {
    /// Checks the settings: an HS256 secret needs at least 16 bytes.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if let AuthConfig::Jwt {
            secret, clock_skew, ..
        } = self
        {
            if secret.expose().len() < 16 {
                return Err(GatewayError::InvalidConfig {
                    field: "auth.secret",
                    reason: "an HS256 secret needs at least 16 bytes",
                });
            }
            if *clock_skew > Duration::from_secs(300) {
                return Err(GatewayError::InvalidConfig {
                    field: "auth.clock_skew",
                    reason: "at most 5 min: a longer skew keeps expired tokens alive",
                });
            }
        }
        Ok(())
    }
}

fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', '?', '#', ' '])
}

impl GatewayConfig {
    /// Checks the settings, naming the first wrong field.
    ///
    /// Authentication may be off (`auth.mode = "disabled"`, `weir serve --no-auth`) only while
    /// `bind` is a loopback address: anywhere else every client on the network could query,
    /// subscribe and start jobs, so it is refused, naming the ways out.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |field: &'static str, reason: &'static str| {
            Err(GatewayError::InvalidConfig { field, reason })
        };
        if self.auth == AuthConfig::Disabled && !self.bind.ip().to_canonical().is_loopback() {
            return bad(
                "auth.mode",
                "authentication is off (`--no-auth` / `auth.mode = \"disabled\"`) but `bind` is \
                 not a loopback address, so anyone on the network could call; bind 127.0.0.1 \
                 (`--bind 127.0.0.1:8080` / WEIR_BIND), or configure keys (`--api-key`, \
                 WEIR_API_KEYS, `auth.mode = \"api_keys\"`) or `auth.mode = \"jwt\"`",
            );
        }
        self.subscriptions.validate()?;
        self.auth.validate()?;
        let l = &self.limits;
        if l.max_depth == 0 || l.max_complexity == 0 {
            return bad(
                "limits.max_depth",
                "depth and complexity limits must be above zero",
            );
        }
        if l.max_body_bytes < 256 || l.max_ws_message_bytes < 256 {
            return bad(
                "limits.max_body_bytes",
                "body and message limits must be at least 256 bytes",
            );
        }
        if l.subscription_starts_per_sec == 0 {
            return bad("limits.subscription_starts_per_sec", "must be above zero");
        }
        if l.max_page_size == 0 || l.max_count_labels == 0 {
            return bad("limits.max_page_size", "must be above zero");
        }
        if l.max_replays == 0 {
            return bad("limits.max_replays", "must be above zero");
        }
        if l.max_subscriptions_per_principal == 0 {
            return bad(
                "limits.max_subscriptions_per_principal",
                "must be above zero",
            );
        }
        if self.websocket.max_sockets == 0 {
            return bad("websocket.max_sockets", "must be above zero");
        }
        if self.allowed_origins.iter().any(|o| !valid_origin(o)) {
            return bad(
                "allowed_origins",
                "each must be an origin: scheme://host[:port], no path (e.g. https://app.example.com)",
            );
        }
        let w = &self.websocket;
        if !(128..=1 << 20).contains(&w.read_buffer_bytes) {
            return bad("websocket.read_buffer_bytes", "must be 128 B to 1 MiB");
        }
        if w.connection_init_timeout.is_zero()
            || w.ping_interval.is_zero()
            || w.pong_timeout.is_zero()
            || w.write_timeout.is_zero()
        {
            return bad("websocket", "timeouts and intervals must be above zero");
        }
        if w.outbound_queue == 0 {
            return bad("websocket.outbound_queue", "must be above zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let c = GatewayConfig::default();
        c.validate().unwrap();
        assert!(c.bind.ip().is_loopback());
        assert!(
            c.introspection,
            "introspection is on for authenticated callers"
        );
        assert_eq!(c.auth, AuthConfig::ApiKeys { keys: vec![] });
    }

    #[test]
    fn auth_is_off_only_on_loopback() {
        let off = |bind: &str| GatewayConfig {
            bind: bind.parse().unwrap(),
            auth: AuthConfig::Disabled,
            ..GatewayConfig::default()
        };
        for local in [
            "127.0.0.1:8080",
            "127.0.0.2:1",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            off(local)
                .validate()
                .unwrap_or_else(|e| panic!("{local}: {e}"));
        }
        for open in [
            "0.0.0.0:8080",
            "[::]:8080",
            "192.168.1.20:8080",
            "[::ffff:10.0.0.1]:80",
        ] {
            let e = off(open).validate().expect_err(open);
            assert!(
                matches!(
                    e,
                    GatewayError::InvalidConfig {
                        field: "auth.mode",
                        ..
                    }
                ),
                "{open}: {e}"
            );
            let text = e.to_string();
            for way_out in ["--no-auth", "127.0.0.1", "WEIR_API_KEYS", "--api-key"] {
                assert!(text.contains(way_out), "{open}: {text} lacks {way_out}");
            }
            // With keys (even none: every request refused) an open bind is fine.
            GatewayConfig {
                auth: AuthConfig::ApiKeys {
                    keys: vec![Secret::new("k")],
                },
                ..off(open)
            }
            .validate()
            .unwrap();
            GatewayConfig {
                auth: AuthConfig::default(),
                ..off(open)
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn reads_toml_like_json_and_masks_secrets() {
        let c: GatewayConfig = serde_json::from_value(serde_json::json!({
            "websocket": {"ping_interval": "5s"},
        }))
        .unwrap();
        assert_eq!(c.websocket.ping_interval, Duration::from_secs(5));
        // `auth` is the process's top-level `[auth]`, not part of a `[gateway]` section.
        let nested: Result<GatewayConfig, _> = serde_json::from_value(serde_json::json!({
            "auth": {"mode": "disabled"},
        }));
        assert!(nested.is_err(), "a [gateway] auth key must be rejected");
        let auth: AuthConfig = serde_json::from_value(serde_json::json!({
            "mode": "jwt", "secret": "0123456789abcdef0123",
        }))
        .unwrap();
        let c = GatewayConfig { auth, ..c };
        c.validate().unwrap();
        let shown = format!("{} {:?}", serde_json::to_string(&c.auth).unwrap(), c.auth);
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        let short = GatewayConfig {
            auth: serde_json::from_value(serde_json::json!({"mode": "jwt", "secret": "short"}))
                .unwrap(),
            ..GatewayConfig::default()
        };
        assert!(matches!(
            short.validate(),
            Err(GatewayError::InvalidConfig {
                field: "auth.secret",
                ..
            })
        ));
    }
}
