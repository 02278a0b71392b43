//! Weir's GraphQL gateway, served by axum.
//!
//! - [`router`] gives `POST /graphql`, the WebSocket endpoint `/graphql/ws`
//!   (`graphql-transport-ws` and the legacy `graphql-ws` of subscriptions-transport-ws),
//!   `GET /health` and `GET /ready`.
//! - [`serve`] runs it until a [`CancellationToken`] fires, then shuts down gracefully: stops
//!   accepting, completes every subscription, sends `complete` for each operation and closes
//!   every socket with 1001, within [`GatewayConfig::shutdown_grace`].
//! - The WebSocket protocols are implemented here over axum's socket (async-graphql only
//!   executes operations, with `Schema::execute_stream`), so the close codes the
//!   graphql-transport-ws spec asks for (4400, 4401, 4403, 4408, 4409), server pings with a
//!   pong timeout (close 4499), message size limits (close 1009), a per-connection start rate
//!   and shutdown are all under the gateway's control.
//! - Subscriptions live in a [`weir_subscriptions::SubscriptionManager`]; feed it change
//!   batches with [`GatewayState::manager`]`.publish(..)` / `.feed(..)` and job progress with
//!   `.publish_progress(..)`.

mod auth;
mod config;
mod graph;
pub mod listener;
pub mod origin;
mod projection;
mod replay;
pub mod schema;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_subscriptions::{SubscriptionError, SubscriptionManager};

pub use auth::{AuthError, Authenticator, Principal, bearer};
pub use config::{AuthConfig, DEFAULT_CLOCK_SKEW, GatewayConfig, LimitsConfig, WebSocketConfig};
pub use graph::{Direction, GraphNode, GraphReader, Ident, Neighbour, NeighbourQuery, NodeKey};
pub use listener::{ListenerConfig, ListenerStats};
pub use replay::{ChangeReplay, Replay, ReplayBatches, ReplayError};
pub use schema::{GatewaySchema, sdl};
pub use ws::close_codes;

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A label, type or property name is not a plain identifier.
    #[error("invalid {what} `{value}`: use letters, digits and `_`, not starting with a digit")]
    InvalidIdentifier {
        /// label, type or property.
        what: &'static str,
        /// The value (cut to 64 characters).
        value: String,
    },
    /// An argument is out of range or malformed.
    #[error("{0}")]
    BadArgument(String),
    /// The subscription manager refused.
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    /// A `since` catch-up cannot be served.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// Too many `since` catch-ups are running on this gateway.
    #[error(
        "too many catch-ups (`since`) in progress on this gateway (limit {limit}); retry shortly"
    )]
    TooManyReplays {
        /// `limits.max_replays`.
        limit: usize,
    },
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The graph server failed (the cause is logged, not shown to clients).
    #[error("graph read failed: {0}")]
    Graph(String),
    /// A setting is wrong.
    #[error("invalid gateway setting `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Listening or serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Shared state of the gateway. Cheap to clone.
#[derive(Clone)]
pub struct GatewayState {
    pub(crate) inner: Arc<StateInner>,
}

pub(crate) struct StateInner {
    pub(crate) config: GatewayConfig,
    pub(crate) schema: GatewaySchema,
    pub(crate) manager: SubscriptionManager,
    pub(crate) auth: auth::Authenticator,
    pub(crate) reader: Arc<dyn GraphReader>,
    /// Fired after the manager has completed every subscription: sockets send `complete`s and
    /// close with 1001.
    pub(crate) closing: CancellationToken,
    /// Fired when the grace period is over: sockets are dropped. `closing` is its child, so
    /// firing it fires `closing` too (a socket waits on `closing` alone).
    pub(crate) force: CancellationToken,
    pub(crate) sockets: TaskTracker,
    pub(crate) open_sockets: std::sync::atomic::AtomicUsize,
    /// `graphChanges` operations delivered by the fast path (`projection.rs`).
    pub(crate) fast_operations: Arc<std::sync::atomic::AtomicU64>,
    /// Distinct fast-path plans, shared by the subscriptions with that selection (bounded by
    /// [`MAX_PLANS`]).
    pub(crate) plans: parking_lot::Mutex<std::collections::HashSet<Arc<projection::ChangePlan>>>,
    /// Open WebSockets per client address (`websocket.max_sockets_per_ip`).
    pub(crate) socket_ips: Arc<listener::Slots<std::net::IpAddr>>,
    /// Live operations per principal (`limits.max_subscriptions_per_principal`).
    pub(crate) principal_ops: Arc<listener::Slots<Arc<str>>>,
}

/// Most distinct selection plans kept for sharing; past it, new plans are not shared.
const MAX_PLANS: usize = 1024;

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl GatewayState {
    /// Builds the state: validates `config`, makes the subscription manager (needs a tokio
    /// runtime) and the schema.
    pub fn new(config: GatewayConfig, reader: Arc<dyn GraphReader>) -> Result<Self, GatewayError> {
        Self::with_replay(config, reader, None)
    }

    /// Like [`GatewayState::new`], with a source for `graphChanges(since:)` catch-ups (the bus).
    /// Without one, a subscription passing `since` is refused with `REPLAY_UNAVAILABLE`.
    pub fn with_replay(
        config: GatewayConfig,
        reader: Arc<dyn GraphReader>,
        replay: Option<Arc<dyn ChangeReplay>>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let manager = SubscriptionManager::new(config.subscriptions.clone())?;
        let schema = schema::build(
            reader.clone(),
            manager.clone(),
            &config.limits,
            config.introspection,
            replay,
        );
        let force = CancellationToken::new();
        Ok(Self {
            inner: Arc::new(StateInner {
                auth: auth::Authenticator::new(&config.auth),
                config,
                schema,
                manager,
                reader,
                closing: force.child_token(),
                force,
                sockets: TaskTracker::new(),
                open_sockets: std::sync::atomic::AtomicUsize::new(0),
                fast_operations: Arc::default(),
                plans: parking_lot::Mutex::default(),
                socket_ips: Arc::default(),
                principal_ops: Arc::default(),
            }),
        })
    }

    /// The subscription manager: publish change batches and job progress to it.
    pub fn manager(&self) -> &SubscriptionManager {
        &self.inner.manager
    }

    /// The settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// The schema.
    pub fn schema(&self) -> &GatewaySchema {
        &self.inner.schema
    }

    /// WebSocket connections open now.
    pub fn open_sockets(&self) -> usize {
        self.inner
            .open_sockets
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The shared copy of `plan` (subscriptions with one selection hold one plan).
    pub(crate) fn intern_plan(&self, plan: projection::ChangePlan) -> Arc<projection::ChangePlan> {
        let mut plans = self.inner.plans.lock();
        if let Some(p) = plans.get(&plan) {
            return p.clone();
        }
        let plan = Arc::new(plan);
        if plans.len() < MAX_PLANS {
            plans.insert(plan.clone());
        }
        plan
    }

    /// `graphChanges` operations moved to the fast path so far: their changes are rendered
    /// from a plan of the selection instead of by the GraphQL executor.
    pub fn fast_operations(&self) -> u64 {
        self.inner
            .fast_operations
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts the shutdown of live sockets: completes every subscription, then every socket
    /// sends its `complete`s and closes with 1001. [`serve`] calls it; call it yourself when you
    /// serve the router another way.
    pub fn begin_shutdown(&self) {
        self.inner.manager.shutdown();
        self.inner.closing.cancel();
    }
}

/// The gateway's routes over `state`.
pub fn router(state: GatewayState) -> Router {
    let body_limit = state.inner.config.limits.max_body_bytes;
    let origins = state.inner.config.allowed_origins.clone();
    let routes = Router::new()
        .route("/graphql", post(graphql_post))
        .route("/graphql/ws", get(ws::upgrade))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .layer(DefaultBodyLimit::max(body_limit));
    origin::guarded(routes, &origins).with_state(state)
}

/// Serves [`router`] on `listener` with the default [`ListenerConfig`] until `shutdown` fires,
/// then shuts down gracefully within [`GatewayConfig::shutdown_grace`] (after which remaining
/// sockets are dropped and logged).
pub async fn serve(
    listener: TcpListener,
    state: GatewayState,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    serve_with(listener, state, &ListenerConfig::default(), shutdown).await
}

/// [`serve`] with the connection rules of `rules`.
pub async fn serve_with(
    listener: TcpListener,
    state: GatewayState,
    rules: &ListenerConfig,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    let app = router(state.clone());
    let grace = state.inner.config.shutdown_grace;
    let server = tokio::spawn({
        let (rules, stop) = (rules.clone(), shutdown.clone());
        async move {
            listener::serve(
                listener,
                app,
                &rules,
                Arc::new(ListenerStats::default()),
                stop,
                grace,
            )
            .await
        }
    });
    shutdown.cancelled().await;
    tracing::info!(
        sockets = state.open_sockets(),
        subscriptions = state.manager().active(),
        "gateway shutting down"
    );
    state.begin_shutdown();
    let grace = state.inner.config.shutdown_grace;
    let drain = async {
        state.inner.sockets.close();
        state.inner.sockets.wait().await;
        server.await
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(Ok(res)) => res?,
        Ok(Err(join)) => tracing::error!(error = %join, "gateway server task failed"),
        Err(_) => {
            tracing::warn!(
                sockets = state.open_sockets(),
                ?grace,
                "shutdown grace over: dropping remaining sockets"
            );
            state.inner.force.cancel();
            state.inner.sockets.wait().await;
        }
    }
    tracing::info!("gateway stopped");
    Ok(())
}

pub(crate) fn http_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
}

fn error_json(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"message": message, "extensions": {"code": code}}]})),
    )
        .into_response()
}

async fn graphql_post(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let principal = match state.inner.auth.check(http_token(&headers)) {
        Ok(p) => p,
        Err(e) => return error_json(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", &e.to_string()),
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("the body is not a GraphQL request: {e}"),
            );
        }
    };
    let response = state.inner.schema.execute(request.data(principal)).await;
    axum::Json(response).into_response()
}

async fn health(State(state): State<GatewayState>) -> Response {
    let stats = state.manager().stats();
    axum::Json(json!({
        "status": "ok",
        "sockets": state.open_sockets(),
        "subscriptions": stats.active,
        "shutting_down": state.manager().is_shut_down(),
    }))
    .into_response()
}

async fn ready(State(state): State<GatewayState>) -> Response {
    if state.manager().is_shut_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !state.inner.reader.ready().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "graph not reachable").into_response();
    }
    (StatusCode::OK, "ready").into_response()
}
