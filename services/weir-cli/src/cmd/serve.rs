//! `weir serve`: the gateway and the ingest job API in one process, on the in-process bus.
//!
//! One listener serves the gateway (`POST /graphql`, `/graphql/ws`), the job API of
//! `weir-ingestd` (`/jobs`, `/jobs/upload`, `/jobs/{id}`), the `since` replay
//! (`GET /changes?since=`) and `/health` / `/ready` (ready once the graph pool has connected;
//! the in-process bus is always there). With `--ingest FILE --mapping M` it also ingests that
//! file once the graph is reachable, so clients watch the changes arrive live. The web console
//! is at `/` and GraphiQL at `/graphiql` (weir-console).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use weir_app::config::Env;
use weir_app::gateway::{ReplayApi, ReplayConfig, replay_router};
use weir_app::health::{BusProbe, Health, PoolProbe};
use weir_app::jobs::{JobInput, JobManager, JobSpec, JobsApi, JobsConfig, jobs_router};
use weir_app::{Authenticator, BusPublisher, BusSlot, GatedGraphReader};
use weir_bus::{Bus, BusConfig, InProcessConfig};
use weir_config::{GraphSettings, START_HINT, Secret};
use weir_gateway::{AuthConfig, GatewayConfig, GatewayState};
use weir_pool::{Pool, PoolConfig};

use super::EXIT_FATAL;

/// Settings of `weir serve` (a TOML file with `--config`; print them with `--show-config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServeConfig {
    /// The gateway (`bind` default `127.0.0.1:8080`, auth, limits, subscriptions, websocket).
    gateway: GatewayConfig,
    /// The graph server (env `NEO4J_*`).
    graph: GraphSettings,
    /// The graph session pool used by ingest jobs.
    pool: PoolConfig,
    /// The in-process bus (retention for `since` replay).
    bus: InProcessConfig,
    /// Ingest jobs.
    jobs: JobsConfig,
    /// `since` replay page limits.
    replay: ReplayConfig,
    /// How long shutdown waits for jobs to write their checkpoints. Default 30 s.
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    /// Admin listener (`/metrics`, `/api/memory/*`). Default: none (off). Env
    /// `WEIR_ADMIN_BIND`.
    admin_bind: Option<SocketAddr>,
    /// Bearer token of the admin listener. Env `WEIR_ADMIN_TOKEN`.
    admin_token: Option<Secret>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            gateway: GatewayConfig::default(),
            graph: GraphSettings::default(),
            pool: PoolConfig::default(),
            bus: InProcessConfig::default(),
            jobs: JobsConfig::default(),
            replay: ReplayConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            admin_bind: None,
            admin_token: None,
        }
    }
}

/// Arguments of `weir serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML settings file (`--show-config` prints every setting).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080; overrides the file and `WEIR_BIND`).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// An API key clients must present as `Authorization: Bearer <key>` (repeatable; also
    /// `WEIR_API_KEYS`, comma-separated).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Turn authentication off (local demos only: anyone who can reach the port may query,
    /// subscribe and start jobs).
    #[arg(long)]
    no_auth: bool,
    /// Ingest this file once the graph is reachable (needs --mapping).
    #[arg(long, requires = "mapping")]
    ingest: Option<PathBuf>,
    /// The mapping file for --ingest.
    #[arg(long, short, requires = "ingest")]
    mapping: Option<PathBuf>,
    /// Prefix for every label and relationship type of the --ingest job.
    #[arg(long, default_value = "")]
    label_prefix: String,
    /// Serve `/metrics` and `/api/memory/*` on this address (overrides `WEIR_ADMIN_BIND`).
    #[arg(long)]
    admin_bind: Option<SocketAddr>,
    /// Print the resolved settings (secrets masked) and exit.
    #[arg(long)]
    show_config: bool,
}

/// Resolves the settings: defaults, the file, the environment, then the flags.
pub(crate) fn resolve(args: &ServeArgs, env: &Env) -> anyhow::Result<ServeConfig> {
    let mut c: ServeConfig = weir_app::config::load_file(args.config.as_deref())?;
    env.apply_graph(&mut c.graph);
    if let Some(b) = env.parse("WEIR_BIND")? {
        c.gateway.bind = b;
    }
    if let Some(keys) = env.secrets("WEIR_API_KEYS") {
        c.gateway.auth = AuthConfig::ApiKeys { keys };
    }
    if let Some(b) = env.parse("WEIR_ADMIN_BIND")? {
        c.admin_bind = Some(b);
    }
    if let Some(t) = env.get("WEIR_ADMIN_TOKEN") {
        c.admin_token = Some(Secret::new(t));
    }
    if args.admin_bind.is_some() {
        c.admin_bind = args.admin_bind;
    }
    if let Some(b) = args.bind {
        c.gateway.bind = b;
    }
    if !args.api_keys.is_empty() {
        c.gateway.auth = AuthConfig::ApiKeys {
            keys: args.api_keys.iter().map(Secret::new).collect(),
        };
    }
    if args.no_auth {
        c.gateway.auth = AuthConfig::Disabled;
    }
    if let Some(f) = &args.ingest {
        // The one file given on the command line may be read by the job; nothing else.
        let f = f
            .canonicalize()
            .with_context(|| format!("--ingest {}", f.display()))?;
        c.jobs.input_roots.push(f);
    }
    c.gateway.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    c.pool
        .validate()
        .map_err(|e| anyhow::anyhow!("pool: {e}"))?;
    BusConfig::InProcess(c.bus.clone())
        .validate()
        .map_err(|e| anyhow::anyhow!("bus: {e}"))?;
    Ok(c)
}

/// Runs `weir serve` until Ctrl-C / SIGTERM.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let env = Env::load()?;
    let config = resolve(&args, &env)?;
    if args.show_config {
        print!("{}", weir_app::config::show(&config));
        return Ok(0);
    }
    let startup = match (&args.ingest, &args.mapping) {
        (Some(file), Some(mapping)) => Some(JobSpec {
            id: None,
            input: JobInput::Path(file.clone()),
            mapping: std::fs::read_to_string(mapping)
                .with_context(|| format!("reading mapping {}", mapping.display()))?,
            format: None,
            label_prefix: args.label_prefix.clone(),
        }),
        _ => None,
    };
    let shutdown = CancellationToken::new();
    weir_app::cancel_on_signal(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(config.gateway.bind)
        .await
        .with_context(|| format!("listening on {}", config.gateway.bind))?;
    match serve(config, listener, startup, shutdown).await {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(EXIT_FATAL)
        }
    }
}

/// The whole of `weir serve` on `listener`, until `shutdown` fires.
pub(crate) async fn serve(
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    startup: Option<JobSpec>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = Arc::new(Authenticator::new(&config.gateway.auth));
    let bus = BusSlot::ready(Bus::connect(&BusConfig::InProcess(config.bus.clone())).await?);
    let pool = Pool::new(config.graph.clone(), config.pool.clone()).context("graph pool")?;
    let reader = Arc::new(GatedGraphReader::new(
        &config.graph,
        4,
        bus.clone(),
        Duration::from_secs(3),
    )?);
    let state = GatewayState::with_replay(
        config.gateway.clone(),
        reader,
        Some(Arc::new(weir_app::BusReplay(bus.clone()))),
    )?;
    let feeds = CancellationToken::new();
    let changes =
        weir_app::gateway::feed::spawn_changes(bus.clone(), state.manager().clone(), feeds.clone());
    let progress = weir_app::gateway::feed::spawn_progress(
        bus.clone(),
        state.manager().clone(),
        feeds.clone(),
    );
    let hard_stop = CancellationToken::new();
    let jobs = JobManager::new(
        config.jobs.clone(),
        pool.clone(),
        bus.clone(),
        BusPublisher::new(bus.clone(), config.jobs.events.clone(), hard_stop.clone()),
        shutdown.clone(),
    );
    let health = Health::new("weir serve", shutdown.clone(), Duration::from_secs(5))
        .with("graph", Arc::new(PoolProbe(pool.clone())))
        .with("bus", Arc::new(BusProbe(bus.clone())))
        .with_detail("subscriptions", {
            let m = state.manager().clone();
            Arc::new(move || serde_json::json!(m.active()))
        })
        .with_detail("sockets", {
            let s = state.clone();
            Arc::new(move || serde_json::json!(s.open_sockets()))
        });
    let admin = match config.admin_bind {
        Some(bind) => Some(
            weir_app::admin::spawn_admin(
                "weir-serve",
                bind,
                config.admin_token.clone(),
                config.jobs.memory_limit,
                vec![
                    ("pool", {
                        let p = pool.clone();
                        Arc::new(weir_metrics::pool_source(move || p.status())) as _
                    }),
                    ("subscriptions", {
                        let m = state.manager().clone();
                        Arc::new(weir_metrics::subscriptions_source(move || m.stats())) as _
                    }),
                    ("bus", weir_app::admin::bus_metrics(bus.clone())),
                ],
                shutdown.clone(),
            )
            .await?
            .1,
        ),
        None => None,
    };
    // The web console (`/`, `/graphiql`) and its read-only data routes, behind the API keys.
    let console = weir_console::Console::new("weir serve", auth.clone())
        .with_jobs()
        .with_memory(weir_console::spawn_memory_watcher(
            config.jobs.memory_limit,
            shutdown.clone(),
        )?)
        .with_figure("pool", weir_app::figures::pool(pool.clone()))
        .with_figure("bus", weir_app::figures::bus(bus.clone()))
        .with_figure("gateway", weir_app::figures::gateway(state.clone()))
        .router();
    let extra = replay_router(ReplayApi {
        bus,
        auth: auth.clone(),
        config: config.replay.clone(),
    })
    .merge(jobs_router(JobsApi {
        jobs: jobs.clone(),
        auth,
    }))
    .merge(console);
    if let Some(spec) = startup {
        let jobs = jobs.clone();
        let pool = pool.clone();
        let uri = config.graph.uri.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            // Readiness gating: the job starts once the graph has answered.
            while !pool.wait_ready(Duration::from_secs(15)).await {
                if stop.is_cancelled() {
                    return;
                }
                tracing::warn!(%uri, hint = START_HINT, "graph server not reachable yet");
            }
            match jobs.submit(spec).await {
                Ok(s) => tracing::info!(job = %s.id, input = %s.input, "startup ingest job queued"),
                Err(e) => tracing::error!(error = %e, "startup ingest job refused"),
            }
        });
    }
    let served =
        weir_app::gateway::serve_gateway(listener, state, extra, health, shutdown.clone()).await;
    jobs.wait_stopped(config.shutdown_grace).await;
    hard_stop.cancel();
    feeds.cancel();
    let _ = changes.await;
    let _ = progress.await;
    pool.close().await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    served.context("serving")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ServeArgs,
        }
        let mut v = vec!["weir-serve"];
        v.extend_from_slice(extra);
        T::try_parse_from(v).unwrap().a
    }

    #[test]
    fn flags_beat_env_beat_defaults_and_show_masks_keys() {
        let env = Env::from_pairs([
            ("WEIR_BIND", "127.0.0.1:9001"),
            ("WEIR_API_KEYS", "env-key-123"),
        ]);
        let c = resolve(&args(&[]), &env).unwrap();
        assert_eq!(c.gateway.bind.port(), 9001);
        let shown = weir_app::config::show(&c);
        assert!(!shown.contains("env-key-123"), "{shown}");
        let c = resolve(&args(&["--bind", "127.0.0.1:9002", "--no-auth"]), &env).unwrap();
        assert_eq!(c.gateway.bind.port(), 9002);
        assert_eq!(c.gateway.auth, AuthConfig::Disabled);
    }

    #[test]
    fn default_bind_is_loopback() {
        let c = resolve(&args(&[]), &Env::default()).unwrap();
        assert!(c.gateway.bind.ip().is_loopback());
    }

    async fn http(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer serve-key-123\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `weir serve --ingest`: ready once the graph answers, runs the start-up job, and the
    /// changes it committed are on the in-process bus for `since` replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_ingests_at_start_and_replays_its_changes() {
        let graph = weir_test_support::graph().await;
        let label = graph.label("Person");
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("people.csv");
        let mut data = String::from("person_id,name,age\n");
        for i in 0..60 {
            data.push_str(&format!("{i},p{i},{}\n", 20 + i % 30));
        }
        std::fs::write(&csv, data).unwrap();
        let mapping = "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\", field = \"person_id\", type = \"int\" },\n  { name = \"name\" },\n]\n";
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = ServeConfig {
            graph: weir_test_support::settings().graph,
            gateway: GatewayConfig {
                auth: AuthConfig::ApiKeys {
                    keys: vec![Secret::new("serve-key-123")],
                },
                ..GatewayConfig::default()
            },
            jobs: JobsConfig {
                job_dir: dir.path().join("jobs"),
                spool_dir: dir.path().join("spool"),
                input_roots: vec![csv.canonicalize().unwrap()],
                ..JobsConfig::default()
            },
            admin_bind: Some(admin),
            ..ServeConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spec = JobSpec {
            id: Some("startup".into()),
            input: JobInput::Path(csv),
            mapping: mapping.into(),
            format: None,
            label_prefix: format!("{}_", graph.namespace),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(config, listener, Some(spec), shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        loop {
            let (status, body) = http(addr, "/jobs/startup").await;
            if status == 200 && body["state"] == "completed" {
                assert_eq!(body["records_committed"], 60, "{body}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "start-up job did not finish: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(http(addr, "/ready").await.0, 200);
        let (status, page) = http(addr, &format!("/changes?since=0&labels={label}")).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 60, "{page}");
        assert_eq!(page["complete"], true);
        assert_eq!(graph.count(&label).await, 60);
        let (status, _) = http(admin, "/metrics").await;
        assert_eq!(status, 200, "admin listener serves /metrics");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("serve stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
