//! `/health` and `/ready` reflecting the graph and the bus.
//!
//! [`layer`] puts both in front of any router (a middleware answers them before routing, so
//! they also replace the gateway router's own, which know nothing of the bus): `/health`
//! always answers 200 while the process runs, with each component's state; `/ready` answers
//! 200 only when no component is down and the service is not shutting down, else 503.
//!
//! Components are [`weir_metrics::HealthCheck`]s, the same trait the admin listener's
//! `/health` runs: a process hands the same checks to both ([`Health::checks`]), so the two
//! endpoints never disagree about the graph or the bus.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use weir_metrics::{ComponentHealth, HealthCheck, HealthStatus};

use crate::BusSlot;

/// The bus in a [`BusSlot`]: down until connected (and while it is not usable).
#[derive(Debug)]
pub struct BusProbe(pub BusSlot);

#[async_trait]
impl HealthCheck for BusProbe {
    async fn check(&self) -> ComponentHealth {
        match self.0.check_ready().await {
            Ok(()) => ComponentHealth::up(None),
            Err(e) => ComponentHealth::down(e),
        }
    }
}

/// A session pool: down before its first connection, once closed, and while its circuit is
/// open; degraded (still ready) while the circuit is half-open and probing the server.
#[derive(Debug)]
pub struct PoolProbe(pub weir_pool::Pool);

#[async_trait]
impl HealthCheck for PoolProbe {
    async fn check(&self) -> ComponentHealth {
        let s = self.0.status();
        if s.closed {
            ComponentHealth::down("pool closed")
        } else if !s.ready {
            ComponentHealth::down("no connection yet")
        } else {
            match s.circuit {
                weir_pool::CircuitState::Open => {
                    ComponentHealth::down("circuit open: graph server failing")
                }
                weir_pool::CircuitState::HalfOpen => {
                    ComponentHealth::degraded("circuit half-open: probing the graph server")
                }
                weir_pool::CircuitState::Closed => ComponentHealth::up(None),
            }
        }
    }
}

/// A value shown in `/health` (e.g. open subscriptions).
pub type Detail = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The components of one service.
#[derive(Clone)]
pub struct Health {
    service: &'static str,
    probes: Arc<Vec<(&'static str, Arc<dyn HealthCheck>)>>,
    details: Arc<Vec<(&'static str, Detail)>>,
    timeout: Duration,
    shutting_down: CancellationToken,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.probes.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Health")
            .field("service", &self.service)
            .field("probes", &names)
            .finish()
    }
}

/// What [`Health::report`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Whether everything is up and the service is not shutting down.
    pub ready: bool,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl Health {
    /// Health of `service`; not ready once `shutting_down` fires. Each probe gets `timeout`.
    pub fn new(service: &'static str, shutting_down: CancellationToken, timeout: Duration) -> Self {
        Self {
            service,
            probes: Arc::new(Vec::new()),
            details: Arc::new(Vec::new()),
            timeout,
            shutting_down,
        }
    }

    /// Adds a component.
    pub fn with(mut self, name: &'static str, probe: Arc<dyn HealthCheck>) -> Self {
        Arc::make_mut(&mut self.probes).push((name, probe));
        self
    }

    /// The components, for the admin listener's `/health` (`crate::admin::spawn_admin`).
    pub fn checks(&self) -> Vec<(String, Arc<dyn HealthCheck>)> {
        self.probes
            .iter()
            .map(|(name, p)| ((*name).to_owned(), p.clone()))
            .collect()
    }

    /// Adds a value shown in the body (not part of readiness).
    pub fn with_detail(mut self, name: &'static str, detail: Detail) -> Self {
        Arc::make_mut(&mut self.details).push((name, detail));
        self
    }

    /// Runs every check (at once, each bounded by the timeout). Ready when none is down and
    /// the service is not shutting down; a degraded component is shown, not refused.
    pub async fn report(&self) -> Report {
        let checks = self.probes.iter().map(|(name, p)| async move {
            let h = tokio::time::timeout(self.timeout, p.check())
                .await
                .unwrap_or_else(|_| {
                    ComponentHealth::down(format!("no answer within {:?}", self.timeout))
                });
            (*name, h)
        });
        let results = futures::future::join_all(checks).await;
        let shutting_down = self.shutting_down.is_cancelled();
        let mut ready = !shutting_down;
        let mut components = serde_json::Map::new();
        for (name, h) in results {
            ready &= h.status != HealthStatus::Down;
            components.insert(
                name.to_owned(),
                serde_json::to_value(&h).unwrap_or_else(|_| json!({"status": "down"})),
            );
        }
        let mut body = json!({
            "service": self.service,
            "status": if ready { "ok" } else if shutting_down { "shutting_down" } else { "degraded" },
            "components": components,
        });
        for (name, d) in self.details.iter() {
            body[*name] = d();
        }
        Report { ready, body }
    }
}

async fn intercept(State(health): State<Health>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    match req.uri().path() {
        "/health" => axum::Json(health.report().await.body).into_response(),
        "/ready" => {
            let r = health.report().await;
            let status = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(r.body)).into_response()
        }
        _ => next.run(req).await,
    }
}

/// Answers `GET /health` and `GET /ready` from `health` in front of `router`.
pub fn layer(router: Router, health: Health) -> Router {
    router.layer(axum::middleware::from_fn_with_state(health, intercept))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;

    struct Flag(Arc<AtomicBool>);

    #[async_trait]
    impl HealthCheck for Flag {
        async fn check(&self) -> ComponentHealth {
            if self.0.load(Ordering::SeqCst) {
                ComponentHealth::up(None)
            } else {
                ComponentHealth::down("down for the test")
            }
        }
    }

    struct Hangs;

    #[async_trait]
    impl HealthCheck for Hangs {
        async fn check(&self) -> ComponentHealth {
            std::future::pending().await
        }
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, serde_json::Value) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn ready_follows_every_component_and_shutdown() {
        let graph = Arc::new(AtomicBool::new(false));
        let bus = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let health = Health::new("t", stop.clone(), Duration::from_secs(1))
            .with("graph", Arc::new(Flag(graph.clone())))
            .with("bus", Arc::new(Flag(bus.clone())))
            .with_detail("answer", Arc::new(|| json!(42)));
        let router = layer(
            Router::new().route("/ready", axum::routing::get(|| async { "inner" })),
            health,
        );
        let (s, body) = get(&router, "/ready").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["components"]["graph"]["status"], "down");
        let (s, body) = get(&router, "/health").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["answer"], 42);
        graph.store(true, Ordering::SeqCst);
        assert_eq!(get(&router, "/ready").await.0, StatusCode::OK);
        bus.store(false, Ordering::SeqCst);
        assert_eq!(
            get(&router, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        bus.store(true, Ordering::SeqCst);
        stop.cancel();
        let (s, body) = get(&router, "/ready").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "shutting_down");
    }

    #[tokio::test]
    async fn a_degraded_component_is_shown_and_stays_ready_and_the_checks_are_shared() {
        let health = Health::new("t", CancellationToken::new(), Duration::from_secs(1))
            .with(
                "graph",
                Arc::new(|| ComponentHealth::degraded("circuit half-open")),
            )
            .with("bus", Arc::new(Flag(Arc::new(AtomicBool::new(true)))));
        let r = health.report().await;
        assert!(r.ready, "{}", r.body);
        assert_eq!(r.body["status"], "ok");
        assert_eq!(r.body["components"]["graph"]["status"], "degraded");
        assert_eq!(r.body["components"]["graph"]["detail"], "circuit half-open");
        assert_eq!(r.body["components"]["bus"], json!({"status": "up"}));
        // The same checks, for the admin listener.
        let checks = health.checks();
        let names: Vec<&str> = checks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["graph", "bus"]);
        assert_eq!(checks[0].1.check().await.status, HealthStatus::Degraded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_is_bounded() {
        let health = Health::new("t", CancellationToken::new(), Duration::from_secs(2))
            .with("stuck", Arc::new(Hangs));
        let r = health.report().await;
        assert!(!r.ready);
        assert!(
            r.body["components"]["stuck"]["detail"]
                .as_str()
                .unwrap()
                .contains("no answer")
        );
    }
}
