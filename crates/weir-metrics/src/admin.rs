//! The admin HTTP endpoints every Weir binary mounts.
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `GET /health` | open | liveness and each component (`schemas/memory.schema.json#/$defs/health`) |
//! | `GET /health/memory` | open | memory level and verdict (`#/$defs/health_memory`) |
//! | `GET /api/memory/stats` | admin | [`weir_memwatch::MemoryStats`] (`#/$defs/stats`) |
//! | `GET /api/memory/history?limit=N` | admin | newest N samples, oldest first (`#/$defs/history`) |
//! | `GET /api/memory/leak-detection` | admin | [`weir_memwatch::LeakStatus`] (`#/$defs/leak_detection`) |
//! | `GET /api/memory/report` | admin | all of it (`#/$defs/report`) |
//! | `POST /api/memory/snapshot` | admin | a heap profile, gzipped pprof protobuf (`go tool pprof` reads it), or 503 `profiling_unavailable` saying how to turn profiling on (`#/$defs/error`) |
//! | `GET /metrics` | admin | Prometheus text format |
//!
//! "admin" routes need `Authorization: Bearer <token>` when [`AdminState::with_admin_token`]
//! set one; without a token they are open (bind to 127.0.0.1, the default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use weir_config::Secret;
use weir_memwatch::{
    LeakVerdict, MemoryWatcher, MemwatchError, PressureLevel, ProfilingStatus, heap_profile,
    profiling_status,
};

use crate::encode::CONTENT_TYPE;
use crate::registry::Registry;

/// A component's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Working.
    Up,
    /// Working, with a problem worth a look (e.g. memory pressure, circuit half-open).
    Degraded,
    /// Not working.
    Down,
}

/// One component's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComponentHealth {
    /// Up, degraded or down.
    pub status: HealthStatus,
    /// A short human explanation (never a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ComponentHealth {
    /// Up, with an optional detail.
    pub fn up(detail: Option<String>) -> Self {
        Self {
            status: HealthStatus::Up,
            detail,
        }
    }
    /// Degraded, saying why.
    pub fn degraded(detail: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Degraded,
            detail: Some(detail.into()),
        }
    }
    /// Down, saying why.
    pub fn down(detail: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Down,
            detail: Some(detail.into()),
        }
    }
}

/// A component check for `/health` (graph pool, bus, ...), injected by the binary.
#[async_trait::async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// Checks the component. Should be cheap (a status read, not a round trip) where possible;
    /// it is cut off after [`AdminState::with_check_timeout`].
    async fn check(&self) -> ComponentHealth;
}

#[async_trait::async_trait]
impl<F> HealthCheck for F
where
    F: Fn() -> ComponentHealth + Send + Sync + 'static,
{
    async fn check(&self) -> ComponentHealth {
        self()
    }
}

/// Most component checks a state accepts (the `/health` answer stays small).
pub const MAX_CHECKS: usize = 16;
/// Most samples `/api/memory/history` returns (and the default `limit`).
pub const MAX_HISTORY_RESPONSE: usize = 1000;

/// What the endpoints serve from.
#[derive(Clone)]
pub struct AdminState {
    service: String,
    watcher: MemoryWatcher,
    registry: Arc<Registry>,
    checks: Vec<(String, Arc<dyn HealthCheck>)>,
    admin_token: Option<Secret>,
    check_timeout: Duration,
    started: Instant,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("service", &self.service)
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("admin_token", &self.admin_token)
            .field("check_timeout", &self.check_timeout)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// State for `service` (e.g. `weir-serve`), reading `watcher` and encoding `registry`.
    pub fn new(
        service: impl Into<String>,
        watcher: MemoryWatcher,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            service: service.into(),
            watcher,
            registry,
            checks: Vec::new(),
            admin_token: None,
            check_timeout: Duration::from_secs(2),
            started: Instant::now(),
        }
    }

    /// Adds a component check named `name` (e.g. `graph_pool`, `bus`). `memory` is built in.
    /// Beyond [`MAX_CHECKS`] checks further ones are ignored with a warning.
    pub fn with_check(mut self, name: impl Into<String>, check: Arc<dyn HealthCheck>) -> Self {
        let name = name.into();
        if self.checks.len() >= MAX_CHECKS {
            tracing::warn!(check = %name, max = MAX_CHECKS, "too many health checks; ignored");
        } else {
            self.checks.push((name, check));
        }
        self
    }

    /// Requires `Authorization: Bearer <token>` on the admin routes. An empty token is the
    /// same as none.
    pub fn with_admin_token(mut self, token: Option<Secret>) -> Self {
        self.admin_token = token.filter(|t| !t.is_empty());
        self
    }

    /// How long a component check may take before it counts as down. Default 2 s.
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }
}

/// The router with every endpoint; merge it into the binary's own router or serve it alone.
pub fn admin_router(state: AdminState) -> Router {
    let protected = memory_routes()
        .route("/api/memory/snapshot", post(snapshot))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/health", get(health))
        .route("/health/memory", get(health_memory))
        .merge(protected)
        .with_state(state)
}

/// Only the read-only memory routes (`/api/memory/stats`, `/history`, `/leak-detection`,
/// `/report`), with no authentication of their own: for a listener that authenticates its
/// callers itself (the web console mounts them on the main listener behind the API keys).
/// The heap snapshot and `/metrics` stay on the admin listener.
pub fn memory_router(state: AdminState) -> Router {
    memory_routes().with_state(state)
}

fn memory_routes() -> Router<AdminState> {
    Router::new()
        .route("/api/memory/stats", get(stats))
        .route("/api/memory/history", get(history))
        .route("/api/memory/leak-detection", get(leak_detection))
        .route("/api/memory/report", get(report))
}

/// An error answer: `{"error": code, "message": ...}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code,
            message: message.into(),
        }),
    )
        .into_response()
}

async fn require_admin(
    State(state): State<AdminState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.admin_token else {
        return next.run(req).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.expose().as_bytes()) => next.run(req).await,
        _ => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs `Authorization: Bearer <admin token>`",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

fn memory_component(watcher: &MemoryWatcher) -> ComponentHealth {
    let level = watcher.level();
    let verdict = watcher.leak_status().verdict;
    let detail = format!("level {}, trend {}", level.as_str(), verdict.as_str());
    match (level, verdict) {
        (PressureLevel::Warning | PressureLevel::Critical, _)
        | (_, LeakVerdict::Leaking | LeakVerdict::Growing) => ComponentHealth::degraded(detail),
        _ => ComponentHealth::up(Some(detail)),
    }
}

/// `/health` body.
#[derive(Debug, Serialize)]
struct HealthBody {
    status: HealthStatus,
    service: String,
    version: &'static str,
    uptime_seconds: f64,
    components: std::collections::BTreeMap<String, ComponentHealth>,
}

async fn health(State(state): State<AdminState>) -> Response {
    let timeout = state.check_timeout;
    let checks = state.checks.iter().map(|(name, c)| {
        let c = c.clone();
        async move {
            let h = tokio::time::timeout(timeout, c.check())
                .await
                .unwrap_or_else(|_| ComponentHealth::down(format!("no answer within {timeout:?}")));
            (name.clone(), h)
        }
    });
    let mut components: std::collections::BTreeMap<String, ComponentHealth> =
        futures::future::join_all(checks)
            .await
            .into_iter()
            .collect();
    components.insert("memory".to_owned(), memory_component(&state.watcher));
    let status = components
        .values()
        .map(|c| c.status)
        .max()
        .unwrap_or(HealthStatus::Up);
    let code = if status == HealthStatus::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = HealthBody {
        status,
        service: state.service.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        components,
    };
    (code, Json(body)).into_response()
}

/// `/health/memory` body.
#[derive(Debug, Serialize)]
struct HealthMemoryBody {
    status: HealthStatus,
    level: PressureLevel,
    leak_verdict: LeakVerdict,
    used_bytes: Option<u64>,
    limit_bytes: Option<u64>,
    ratio: Option<f64>,
}

async fn health_memory(State(state): State<AdminState>) -> Json<HealthMemoryBody> {
    let c = memory_component(&state.watcher);
    let latest = state.watcher.latest();
    Json(HealthMemoryBody {
        status: c.status,
        level: state.watcher.level(),
        leak_verdict: state.watcher.leak_status().verdict,
        used_bytes: latest.as_ref().map(|s| s.used_bytes),
        limit_bytes: latest.as_ref().and_then(|s| s.limit_bytes),
        ratio: latest.as_ref().and_then(|s| s.ratio),
    })
}

async fn stats(State(state): State<AdminState>) -> Json<weir_memwatch::MemoryStats> {
    Json(state.watcher.stats())
}

/// Query of `/api/memory/history`.
#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// `/api/memory/history` body.
#[derive(Debug, Serialize)]
struct HistoryBody {
    capacity: usize,
    total: usize,
    samples: Vec<weir_memwatch::MemorySample>,
}

async fn history(
    State(state): State<AdminState>,
    Query(q): Query<HistoryQuery>,
) -> Json<HistoryBody> {
    let all = state.watcher.history();
    let limit = q
        .limit
        .unwrap_or(MAX_HISTORY_RESPONSE)
        .min(MAX_HISTORY_RESPONSE);
    let total = all.len();
    let samples = all[total.saturating_sub(limit)..].to_vec();
    Json(HistoryBody {
        capacity: state.watcher.config().history_capacity,
        total,
        samples,
    })
}

async fn leak_detection(State(state): State<AdminState>) -> Json<weir_memwatch::LeakStatus> {
    Json(state.watcher.leak_status())
}

/// `/api/memory/report` body.
#[derive(Debug, Serialize)]
struct ReportBody {
    service: String,
    #[serde(flatten)]
    report: weir_memwatch::MemoryReport,
    profiling: ProfilingStatus,
}

async fn report(State(state): State<AdminState>) -> Json<ReportBody> {
    Json(ReportBody {
        service: state.service.clone(),
        report: state.watcher.report(),
        profiling: profiling_status(),
    })
}

async fn snapshot() -> Response {
    // Dumping writes and parses a file: off the async workers.
    let profile = match tokio::task::spawn_blocking(heap_profile).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "heap profile task failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "heap profile failed; see the service log",
            );
        }
    };
    match profile {
        Ok(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"heap.pb.gz\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(MemwatchError::ProfilingUnavailable { reason }) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "profiling_unavailable",
            reason,
        ),
        Err(e) => {
            tracing::error!(error = %e, "heap profile failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "heap profile failed; see the service log",
            )
        }
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let registry = state.registry.clone();
    // Encoding reads /proc and takes locks: keep it off the async workers.
    match tokio::task::spawn_blocking(move || registry.encode()).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "metrics encoding failed; see the service log",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
