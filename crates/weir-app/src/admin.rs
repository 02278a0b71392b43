//! The admin listener: `/metrics` (Prometheus) and `/api/memory/*` from weir-metrics, on an
//! address of its own (off unless configured), protected by an admin token when one is set.
//!
//! The listener serves heap snapshots and every metric, so it refuses to start on an address
//! other hosts can reach (anything but loopback, e.g. `0.0.0.0:9464`) without an admin token
//! ([`check_admin_access`]): set `admin.token` (`WEIR_ADMIN_TOKEN`), bind it to `127.0.0.1`, or
//! opt out explicitly with `admin.allow_open = true` (`WEIR_ADMIN_ALLOW_OPEN=1`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_config::Secret;
use weir_memwatch::{MemoryWatcher, WatcherConfig};
use weir_metrics::{AdminState, HealthCheck, MemorySource, MetricSource, Registry, admin_router};

use crate::config::Env;
use crate::settings::AdminConfig;
use crate::{BusSlot, ServiceError};

/// The environment variable that lets the admin listener run without a token on an address
/// other than loopback (`1`/`true`/`yes`/`on`; default off). Read from the environment and
/// `.weir/env` by [`spawn_admin`].
pub const ALLOW_OPEN_ENV: &str = "WEIR_ADMIN_ALLOW_OPEN";

/// Metric sources a service registers besides memory.
pub type Sources = Vec<(&'static str, Arc<dyn MetricSource>)>;

/// The bus metrics of whatever bus the slot holds (nothing before it connects).
pub fn bus_metrics(slot: BusSlot) -> Arc<dyn MetricSource> {
    Arc::new(move |e: &mut weir_metrics::Encoder| {
        if let Some(bus) = slot.get() {
            weir_metrics::adapters::encode_bus(e, &bus.metrics().snapshot());
        }
    })
}

/// Whether `addr` is reachable from this host only (`127.0.0.0/8`, `::1`, or `::ffff:127.x.y.z`).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Reads [`ALLOW_OPEN_ENV`] from `env`: `1`/`true`/`yes`/`on` is true, `0`/`false`/`no`/`off`
/// or unset is false, anything else an error naming the variable.
pub fn allow_open_from_env(env: &Env) -> Result<bool, ServiceError> {
    let Some(v) = env.get(ALLOW_OPEN_ENV) else {
        return Ok(false);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ServiceError::Env {
            var: ALLOW_OPEN_ENV,
            reason: format!("`{v}` is not one of 1, true, yes, on, 0, false, no, off"),
        }),
    }
}

/// The rule of the admin listener: on a loopback address it may run without a token; on any
/// other address (`0.0.0.0`, a pod or host IP) it needs a non-empty `token` unless `allow_open`
/// (the explicit opt-out, [`ALLOW_OPEN_ENV`]) is set. The error names the settings that fix it.
/// [`crate::settings::Settings::validate`] applies it, so a process refuses such settings
/// before it starts anything.
pub fn check_admin_access(
    bind: SocketAddr,
    token: Option<&Secret>,
    allow_open: bool,
) -> Result<(), ServiceError> {
    let has_token = token.is_some_and(|t| !t.is_empty());
    if has_token || allow_open || is_loopback(bind) {
        return Ok(());
    }
    Err(ServiceError::Invalid {
        field: "admin_bind",
        reason: format!(
            "the admin listener (/metrics, /api/memory/*, heap snapshots) would be open to the \
             network on {bind} without an admin token; set `admin.token` (env \
             WEIR_ADMIN_TOKEN), bind it to 127.0.0.1, or set `admin.allow_open = true` \
             ({ALLOW_OPEN_ENV}=1) to serve it unauthenticated anyway"
        ),
    })
}

/// Starts the memory watcher and serves the admin routes on `config.bind` (required) until
/// `shutdown`
/// fires. Its `/health` runs `checks` (the process's components, the same as the main
/// listener's [`crate::health::Health::checks`]) besides memory. Returns the bound address
/// and the server task.
///
/// Refuses (before binding) an address other than loopback without a token, unless
/// `config.allow_open`: see [`check_admin_access`].
pub async fn spawn_admin(
    service: &'static str,
    config: &AdminConfig,
    rules: &weir_gateway::ListenerConfig,
    memory_limit: Option<u64>,
    sources: Sources,
    checks: Vec<(String, Arc<dyn HealthCheck>)>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServiceError> {
    let Some(bind) = config.bind else {
        return Err(ServiceError::Invalid {
            field: "admin_bind",
            reason: "the admin listener has no address".into(),
        });
    };
    let token = config.token.clone();
    check_admin_access(bind, token.as_ref(), config.allow_open)?;
    if config.allow_open && !is_loopback(bind) && token.as_ref().is_none_or(|t| t.is_empty()) {
        tracing::warn!(
            %bind,
            "admin listener open without a token (admin.allow_open): anyone who can reach \
             it can read metrics and take heap snapshots"
        );
    }
    let invalid = |reason: String| ServiceError::Invalid {
        field: "admin_bind",
        reason,
    };
    let watcher = MemoryWatcher::for_process(WatcherConfig::default(), memory_limit)
        .map_err(|e| invalid(e.to_string()))?;
    watcher.spawn(shutdown.clone());
    let registry = Arc::new(Registry::new());
    registry
        .register_source("memory", Arc::new(MemorySource::new(watcher.clone())))
        .map_err(|e| invalid(e.to_string()))?;
    for (name, s) in sources {
        registry
            .register_source(name, s)
            .map_err(|e| invalid(e.to_string()))?;
    }
    let mut state = AdminState::new(service, watcher, registry).with_admin_token(token);
    for (name, check) in checks {
        state = state.with_check(name, check);
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| invalid(format!("cannot listen on {bind}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| invalid(e.to_string()))?;
    tracing::info!(%addr, "admin listener (metrics, memory) listening");
    let rules = rules.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = weir_gateway::listener::serve(
            listener,
            admin_router(state),
            &rules,
            Arc::new(weir_gateway::ListenerStats::default()),
            shutdown,
            std::time::Duration::from_secs(5),
        )
        .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_open_admin_listener_needs_loopback_a_token_or_the_opt_out() {
        let token = Secret::new("admin-token-123");
        let empty = Secret::new("");
        for loopback in [
            "127.0.0.1:9464",
            "127.1.2.3:9464",
            "[::1]:9464",
            "[::ffff:127.0.0.1]:1",
        ] {
            check_admin_access(addr(loopback), None, false)
                .unwrap_or_else(|e| panic!("{loopback}: {e}"));
        }
        for open in [
            "0.0.0.0:9464",
            "[::]:9464",
            "10.1.2.3:9464",
            "[::ffff:10.0.0.1]:9464",
        ] {
            let e = check_admin_access(addr(open), None, false)
                .expect_err(open)
                .to_string();
            for named in [
                "admin_bind",
                "WEIR_ADMIN_TOKEN",
                "127.0.0.1",
                ALLOW_OPEN_ENV,
            ] {
                assert!(e.contains(named), "{open}: {e} does not name {named}");
            }
            let e = check_admin_access(addr(open), Some(&empty), false);
            assert!(e.is_err(), "{open}: an empty token is no token");
            check_admin_access(addr(open), Some(&token), false).unwrap();
            check_admin_access(addr(open), None, true).unwrap();
        }
    }

    #[test]
    fn the_opt_out_is_read_from_the_environment_by_name() {
        let read = |v: &str| allow_open_from_env(&Env::from_pairs([(ALLOW_OPEN_ENV, v)]));
        assert!(!allow_open_from_env(&Env::default()).unwrap());
        for yes in ["1", "true", "YES", " on "] {
            assert!(read(yes).unwrap(), "{yes}");
        }
        for no in ["0", "false", "no", "off", ""] {
            assert!(!read(no).unwrap(), "{no}");
        }
        let e = read("sure").unwrap_err().to_string();
        assert!(e.contains(ALLOW_OPEN_ENV) && e.contains("sure"), "{e}");
    }

    #[tokio::test]
    async fn spawn_admin_refuses_an_open_bind_without_a_token_before_listening() {
        let stop = CancellationToken::new();
        let e = spawn_admin(
            "t",
            &AdminConfig {
                bind: Some(addr("0.0.0.0:0")),
                ..AdminConfig::default()
            },
            &weir_gateway::ListenerConfig::default(),
            None,
            Vec::new(),
            Vec::new(),
            stop.clone(),
        )
        .await
        .expect_err("open admin listener without a token")
        .to_string();
        assert!(
            e.contains("WEIR_ADMIN_TOKEN") && e.contains(ALLOW_OPEN_ENV),
            "{e}"
        );
        // With a token, or on loopback, it starts.
        let with_token = AdminConfig {
            bind: Some(addr("0.0.0.0:0")),
            token: Some(Secret::new("admin-token-123")),
            ..AdminConfig::default()
        };
        let (a, task) = spawn_admin(
            "t",
            &with_token,
            &weir_gateway::ListenerConfig::default(),
            None,
            Vec::new(),
            Vec::new(),
            stop.clone(),
        )
        .await
        .unwrap();
        assert!(a.ip().is_unspecified());
        let (b, task2) = spawn_admin(
            "t",
            &AdminConfig {
                bind: Some(addr("127.0.0.1:0")),
                ..AdminConfig::default()
            },
            &weir_gateway::ListenerConfig::default(),
            None,
            Vec::new(),
            Vec::new(),
            stop.clone(),
        )
        .await
        .unwrap();
        assert!(b.ip().is_loopback());
        stop.cancel();
        task.await.unwrap();
        task2.await.unwrap();
    }
}
