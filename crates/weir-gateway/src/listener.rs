//! Every HTTP listener of Weir (the gateway, the job API, the admin listener) is served by
//! [`serve`]: HTTP/1.1 with a header-read timeout that also ends idle keep-alive connections,
//! a request timeout, a cap on open connections (global and per client address) and a bounded
//! graceful shutdown. A client that opens connections and sends nothing, or a header a byte at
//! a time, holds them for at most [`ListenerConfig::header_read_timeout`]; past the caps new
//! connections are closed at once, before any byte is read.
//!
//! A WebSocket leaves these rules once upgraded: it then has its own (the `connection_init`
//! timeout, pings, and the gateway's `websocket.max_sockets` / `max_sockets_per_ip` caps).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connection rules of a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// How long a client may take to send a request's header, counted from when the
    /// connection opens or the previous response was sent (so it also closes idle keep-alive
    /// connections). Default 10 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// How long a request may take, body and handler included, before it is answered 408.
    /// Streaming routes ([`STREAMING_PATHS`]: uploads) are exempt and bound their own reads.
    /// Default 60 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// HTTP connections open at once; more are closed on accept. Default 20,000 (mind the
    /// process's open-file limit, `ulimit -n`).
    pub max_connections: usize,
    /// Connections open at once from one client address; `0` turns the check off (behind a
    /// reverse proxy every client has the proxy's address). Default 1,000.
    pub max_connections_per_ip: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
        }
    }
}

impl ListenerConfig {
    /// Checks the settings, naming the first wrong field.
    pub fn validate(&self) -> Result<(), crate::GatewayError> {
        let bad = |field: &'static str, reason: &'static str| {
            Err(crate::GatewayError::InvalidConfig { field, reason })
        };
        if self.header_read_timeout.is_zero() {
            return bad("listener.header_read_timeout", "must be above zero");
        }
        if self.request_timeout.is_zero() {
            return bad("listener.request_timeout", "must be above zero");
        }
        if self.max_connections == 0 {
            return bad("listener.max_connections", "must be above zero");
        }
        Ok(())
    }
}

/// Routes whose requests stream a large body and are exempt from the request timeout: they
/// time out a body that stops arriving themselves.
pub const STREAMING_PATHS: &[&str] = &["/jobs/upload"];

/// What a listener has refused and how many connections it holds.
#[derive(Debug, Default)]
pub struct ListenerStats {
    open: AtomicU64,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
}

impl ListenerStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed on accept because `max_connections` were open.
    pub fn refused_total_cap(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Connections closed on accept because their address had `max_connections_per_ip` open.
    pub fn refused_per_ip_cap(&self) -> u64 {
        self.refused_per_ip.load(Ordering::Relaxed)
    }
}

/// Counts what each key (a client address, a principal) holds open; an entry lives while its
/// key holds one, so the map is bounded by what is open.
pub(crate) struct Slots<K: Hash + Eq + Clone> {
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Default for Slots<K> {
    fn default() -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// One slot of a [`Slots`], given back on drop.
pub(crate) struct Slot<K: Hash + Eq + Clone> {
    map: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// A slot for `key` unless it holds `cap` already (`cap` 0: no limit).
    pub(crate) fn take(self: &Arc<Self>, key: &K, cap: usize) -> Option<Slot<K>> {
        self.try_add(key, cap).then(|| Slot {
            map: self.clone(),
            key: key.clone(),
        })
    }
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// Adds one to `key` unless it holds `cap` already (`cap` 0: no limit).
    pub(crate) fn try_add(&self, key: &K, cap: usize) -> bool {
        let mut m = self.open.lock();
        let n = m.get(key).copied().unwrap_or(0);
        if cap > 0 && n >= cap {
            return false;
        }
        m.insert(key.clone(), n + 1);
        true
    }

    /// Takes `n` from `key`, forgetting it at zero.
    pub(crate) fn sub(&self, key: &K, n: usize) {
        let mut m = self.open.lock();
        if let Some(held) = m.get_mut(key) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                m.remove(key);
            }
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        self.map.sub(&self.key, 1);
    }
}

struct Held {
    _total: OwnedSemaphorePermit,
    _ip: Slot<IpAddr>,
    stats: Arc<ListenerStats>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn request_timeout(timeout: Duration, req: Request, next: Next) -> Response {
    if STREAMING_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({"error": {
                "code": "REQUEST_TIMEOUT",
                "message": format!("the request took longer than {timeout:?}"),
            }})),
        )
            .into_response(),
    }
}

/// Serves `router` on `listener` by `config`'s rules until `shutdown` fires; then stops
/// accepting, lets requests in progress finish (keep-alive connections close after their
/// current response) and returns once every connection has ended or `grace` has passed
/// (the rest are dropped). `stats` counts what it refused.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ListenerConfig,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let timeout = config.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| request_timeout(timeout, req, next),
    ));
    let total = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = Arc::new(Slots::<IpAddr>::default());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(64 * 1024);
    let conns = TaskTracker::new();
    // Fired when `grace` is over: the connections still open are dropped.
    let force = CancellationToken::new();
    let mut refused_logged = false;
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            stats.refused_total.fetch_add(1, Ordering::Relaxed);
            if !refused_logged {
                tracing::warn!(
                    max = config.max_connections,
                    "connection refused: listener.max_connections open (logged once)"
                );
                refused_logged = true;
            }
            continue;
        };
        let Some(ip) = per_ip.take(&peer.ip(), config.max_connections_per_ip) else {
            stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: listener.max_connections_per_ip");
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            _total: permit,
            _ip: ip,
            stats: stats.clone(),
        };
        let _ = stream.set_nodelay(true);
        // The client's address for the handlers (`ConnectInfo`), set on each request: layering
        // the router per connection would rebuild every route.
        let routes = router.clone();
        let svc = TowerToHyperService::new(tower::service_fn(
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                tower::ServiceExt::oneshot(routes.clone(), req.map(axum::body::Body::new))
            },
        ));
        let conn = http
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let (stop, force) = (shutdown.clone(), force.clone());
        conns.spawn(async move {
            let _held = held;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = force.cancelled() => {}
            }
        });
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!(
            open = stats.open(),
            ?grace,
            "shutdown grace over: dropping the remaining connections"
        );
        force.cancel();
        conns.wait().await;
    }
    Ok(())
}
