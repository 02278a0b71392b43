//! Weir's web console and GraphiQL, served by the binaries themselves.
//!
//! [`Console::router`] serves, on the listener it is merged into:
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /` | open | the console page (jobs, memory, figures, live change tail) |
//! | `GET /graphiql` | open | GraphiQL against this gateway (queries over HTTP, subscriptions over WebSocket) |
//! | `GET /console/assets/{file}` | open | scripts, styles, fonts: hashed names, cached as immutable |
//! | `GET /console/info` | open | what this listener offers: service, version, jobs, memory, whether a key is needed |
//! | `GET /api/console/figures` | API key | pool, bus, subscription and socket figures |
//! | `GET /api/memory/{stats,history,leak-detection,report}` | API key | weir-metrics' read-only memory routes ([`weir_metrics::memory_router`]) |
//!
//! The pages are static shells: they load without a key and send the key (kept in the tab's
//! `sessionStorage` only) as `Authorization: Bearer` on every data call and in the WebSocket's
//! `connection_init` payload. Every asset is embedded in the binary (built by vite from
//! `web/`, committed under `assets/`), and the pages' content security policy allows requests
//! to their own origin only.
//!
//! The job routes (`/jobs`, `/api/mapping/validate`) and the gateway (`/graphql`,
//! `/graphql/ws`) are not this crate's: a binary that mounts the job API says so with
//! [`Console::with_jobs`] and the page shows its jobs section.

mod assets;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use weir_gateway::Authenticator;
use weir_memwatch::{MemoryWatcher, WatcherConfig};
use weir_metrics::{AdminState, Registry};

/// A figure: reads a status snapshot (no I/O) and returns it as JSON.
pub type Detail = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Errors of the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The memory watcher could not be set up.
    #[error("console memory watcher: {0}")]
    Memory(#[from] weir_memwatch::MemwatchError),
}

/// Seconds between the samples of the console's memory watcher ([`spawn_memory_watcher`]).
pub const MEMORY_INTERVAL: Duration = Duration::from_secs(2);
/// Samples its history keeps: one hour at [`MEMORY_INTERVAL`].
pub const MEMORY_HISTORY: usize = 1800;

/// Starts a memory watcher of this process for the console's chart: a sample every
/// [`MEMORY_INTERVAL`], the last [`MEMORY_HISTORY`] kept, against `memory_limit` (bytes;
/// `None`: the cgroup limit when there is one). It runs until `shutdown` fires.
pub fn spawn_memory_watcher(
    memory_limit: Option<u64>,
    shutdown: CancellationToken,
) -> Result<MemoryWatcher, ConsoleError> {
    let watcher = MemoryWatcher::for_process(
        WatcherConfig {
            interval: MEMORY_INTERVAL,
            history_capacity: MEMORY_HISTORY,
            ..WatcherConfig::default()
        },
        memory_limit,
    )?;
    watcher.spawn(shutdown);
    Ok(watcher)
}

/// What one listener's console shows, and the routes that serve it.
pub struct Console {
    service: &'static str,
    auth: Arc<Authenticator>,
    jobs: bool,
    memory: Option<MemoryWatcher>,
    figures: Vec<(&'static str, Detail)>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("service", &self.service)
            .field("jobs", &self.jobs)
            .field("memory", &self.memory.is_some())
            .field(
                "figures",
                &self.figures.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Console {
    /// The console of `service` (shown in the page's header); data routes check `auth`, the
    /// same keys as the gateway's.
    pub fn new(service: &'static str, auth: Arc<Authenticator>) -> Self {
        Self {
            service,
            auth,
            jobs: false,
            memory: None,
            figures: Vec::new(),
        }
    }

    /// The job API (`/jobs`, `/jobs/upload`, `/api/mapping/validate`) is mounted on this
    /// listener: the page shows the jobs section (start, follow and cancel jobs).
    pub fn with_jobs(mut self) -> Self {
        self.jobs = true;
        self
    }

    /// Serves `watcher`'s read-only memory routes (`/api/memory/*`) behind the API keys; the
    /// page charts its history.
    pub fn with_memory(mut self, watcher: MemoryWatcher) -> Self {
        self.memory = Some(watcher);
        self
    }

    /// Adds a figure to `/api/console/figures` under `name`.
    pub fn with_figure(mut self, name: &'static str, figure: Detail) -> Self {
        self.figures.push((name, figure));
        self
    }

    /// The routes (see the crate docs). Merge them into the listener's router.
    pub fn router(self) -> Router {
        let info = json!({
            "service": self.service,
            "version": env!("CARGO_PKG_VERSION"),
            "jobs": self.jobs,
            "memory": self.memory.is_some(),
            "auth_required": self.auth.required(),
        });
        let figures = Arc::new(self.figures);
        let mut protected = Router::new().route(
            "/api/console/figures",
            get(move || {
                let figures = figures.clone();
                async move {
                    let body: serde_json::Map<String, serde_json::Value> = figures
                        .iter()
                        .map(|(name, f)| ((*name).to_owned(), f()))
                        .collect();
                    no_store(Json(body).into_response())
                }
            }),
        );
        if let Some(watcher) = self.memory {
            // Only the memory routes of this state are mounted: its registry stays empty.
            let state = AdminState::new(self.service, watcher, Arc::new(Registry::new()));
            protected = protected.merge(weir_metrics::memory_router(state));
        }
        let protected =
            protected.route_layer(middleware::from_fn_with_state(self.auth, require_key));
        Router::new()
            .route("/", get(|| async { assets::page("index.html") }))
            .route("/graphiql", get(|| async { assets::page("graphiql.html") }))
            .route("/console/assets/{*file}", get(assets::hashed))
            .route(
                "/console/info",
                get(move || {
                    let info = info.clone();
                    async move { no_store(Json(info).into_response()) }
                }),
            )
            .merge(protected)
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Refuses a request without a valid `Authorization: Bearer <key>` with 401 and the job
/// API's error shape: `{"error": {"code": "UNAUTHENTICATED", "message": ...}}`.
async fn require_key(State(auth): State<Arc<Authenticator>>, req: Request, next: Next) -> Response {
    match auth.check_headers(req.headers()) {
        Ok(_) => no_store(next.run(req).await),
        Err(e) => {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"code": "UNAUTHENTICATED", "message": e.to_string()}})),
            )
                .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;
    use weir_config::Secret;
    use weir_gateway::AuthConfig;

    use super::*;

    const KEY: &str = "console-test-key";

    fn console() -> Console {
        let auth = Authenticator::new(&AuthConfig::ApiKeys {
            keys: vec![Secret::new(KEY)],
        });
        Console::new("test", Arc::new(auth))
    }

    async fn get(router: &Router, path: &str, key: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), 64 << 20)
            .await
            .unwrap()
            .to_vec()
    }

    fn header_of(r: &Response, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn pages_and_assets_load_without_a_key_with_types_and_cache_headers() {
        let router = console().router();
        for page in ["/", "/graphiql"] {
            let r = get(&router, page, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{page}");
            assert_eq!(
                header_of(&r, header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache");
            assert!(header_of(&r, header::CONTENT_SECURITY_POLICY).contains("default-src 'self'"));
            let html = String::from_utf8(body(r).await).unwrap();
            // The first hashed script of the page is served as JavaScript, immutable.
            let script = html
                .split("src=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap()
                .to_owned();
            assert!(script.starts_with("/console/assets/"), "{script}");
            let r = get(&router, &script, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{script}");
            assert_eq!(
                header_of(&r, header::CONTENT_TYPE),
                "text/javascript; charset=utf-8"
            );
            assert_eq!(
                header_of(&r, header::CACHE_CONTROL),
                "public, max-age=31536000, immutable"
            );
            assert!(!body(r).await.is_empty());
        }
        let r = get(&router, "/console/assets/assets/nope.js", None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // The manifest is not served: only build outputs under assets/assets/ are.
        let r = get(&router, "/console/assets/../manifest.json", None).await;
        assert_ne!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn info_is_open_and_says_what_the_listener_offers() {
        let router = console().with_jobs().router();
        let r = get(&router, "/console/info", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(v["service"], "test");
        assert_eq!(v["jobs"], true);
        assert_eq!(v["memory"], false);
        assert_eq!(v["auth_required"], true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_routes_need_the_key() {
        let shutdown = CancellationToken::new();
        let watcher = spawn_memory_watcher(None, shutdown.clone()).unwrap();
        watcher.sample_now();
        let router = console()
            .with_memory(watcher)
            .with_figure("answer", Arc::new(|| json!({"value": 42})))
            .router();
        for path in [
            "/api/console/figures",
            "/api/memory/stats",
            "/api/memory/history?limit=5",
            "/api/memory/leak-detection",
            "/api/memory/report",
        ] {
            for key in [None, Some("wrong-key")] {
                let r = get(&router, path, key).await;
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} {key:?}");
                assert_eq!(header_of(&r, header::WWW_AUTHENTICATE), "Bearer");
                let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
                assert_eq!(v["error"]["code"], "UNAUTHENTICATED", "{path}");
            }
            let r = get(&router, path, Some(KEY)).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-store");
        }
        let r = get(&router, "/api/console/figures", Some(KEY)).await;
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(v, json!({"answer": {"value": 42}}));
        let r = get(&router, "/api/memory/history?limit=5", Some(KEY)).await;
        let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(v["capacity"], MEMORY_HISTORY);
        assert!(!v["samples"].as_array().unwrap().is_empty(), "{v}");
        // Nothing that writes or exposes more than memory: those stay on the admin listener.
        for path in ["/api/memory/snapshot", "/metrics"] {
            let r = get(&router, path, Some(KEY)).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn without_memory_the_memory_routes_are_absent() {
        let router = console().router();
        let r = get(&router, "/api/memory/stats", Some(KEY)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
