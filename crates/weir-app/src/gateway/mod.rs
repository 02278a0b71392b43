//! `weir-gatewayd`: Weir's GraphQL gateway fed from the bus.
//!
//! Each replica reads change batches through its own bus consumer ([`feed`]) and publishes
//! them to its subscription manager, so every replica delivers every matching change to its
//! clients, in seq order, once. A client that reconnects subscribes again with
//! `graphChanges(since: <last seq it saw>)` and first receives what it missed, read from the bus
//! ([`crate::BusReplay`]), then goes on live; `GET /changes?since=` ([`replay`]) pages
//! through the same history over HTTP. `/health` and `/ready` reflect the graph and the bus
//! ([`crate::health`]); the GraphQL routes are the gateway's own
//! ([`weir_gateway::router`]). The web console is at `/` and GraphiQL at `/graphiql`
//! (weir-console).
//!
//! [`run`] is the whole service; `main.rs` only parses flags and calls it, so tests start it
//! in-process with [`run_on`]. [`serve_gateway`] is shared with `weir serve`.

pub mod config;
pub mod feed;
pub mod replay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::cli::{Command, ConfigAction};
use crate::config::Env;
use crate::health::{self, BusProbe, Health, ReaderProbe};
use crate::{Authenticator, BusSlot, GatedGraphReader, ServiceError};
use axum::Router;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_gateway::{GatewayError, GatewayState};

pub use config::{GatewaydConfig, ReplayConfig};
pub use replay::{ReplayApi, replay_router};

/// Errors of the gateway service.
#[derive(Debug, thiserror::Error)]
pub enum GatewaydError {
    /// Settings are wrong.
    #[error(transparent)]
    Config(#[from] ServiceError),
    /// The gateway refused to start.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// Listening failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Command line of `weir-gatewayd`.
#[derive(Debug, Parser)]
#[command(
    name = "weir-gatewayd",
    version,
    about = "Weir's GraphQL gateway, fed from the NATS JetStream bus."
)]
pub struct Cli {
    /// TOML config file (see `weir-gatewayd config show` for every setting). Env `WEIR_CONFIG`.
    #[arg(long, short, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides the file and `WEIR_BIND`).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to do; default `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Resolves the settings: defaults, the file, `env`, then the flags; validated.
    pub fn resolve(&self, env: &Env) -> Result<GatewaydConfig, ServiceError> {
        let mut c: GatewaydConfig = crate::config::load_file(self.config.as_deref())?;
        c.apply_env(env)?;
        if let Some(b) = self.bind {
            c.gateway.bind = b;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Serves the gateway's routes plus `extra` on `listener`, with `/health` and `/ready` from
/// `health`, until `shutdown` fires; then completes every subscription, closes every socket
/// (1001) and waits for them at most the gateway's `shutdown_grace`.
pub async fn serve_gateway(
    listener: TcpListener,
    state: GatewayState,
    extra: Router,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let app = health::layer(weir_gateway::router(state.clone()).merge(extra), health);
    tracing::info!(%addr, "gateway listening");
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    shutdown.cancelled().await;
    tracing::info!(
        sockets = state.open_sockets(),
        subscriptions = state.manager().active(),
        "gateway shutting down"
    );
    state.begin_shutdown();
    let grace = state.config().shutdown_grace;
    let drain = async {
        while state.open_sockets() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.await
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(Ok(r)) => r?,
        Ok(Err(join)) => tracing::error!(error = %join, "gateway server task failed"),
        Err(_) => tracing::warn!(
            sockets = state.open_sockets(),
            ?grace,
            "shutdown grace over; dropping remaining sockets"
        ),
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Binds `config.gateway.bind` and runs the service until `shutdown` fires.
pub async fn run(config: GatewaydConfig, shutdown: CancellationToken) -> Result<(), GatewaydError> {
    let listener = TcpListener::bind(config.gateway.bind).await?;
    run_on(config, listener, shutdown).await
}

/// Runs the service on `listener` until `shutdown` fires.
pub async fn run_on(
    config: GatewaydConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewaydError> {
    config.validate()?;
    let auth = Arc::new(Authenticator::new(&config.gateway.auth));
    let bus = BusSlot::connect_in_background(config.bus.clone(), shutdown.clone());
    let reader = Arc::new(GatedGraphReader::new(
        &config.graph,
        config.graph_max_connections,
        bus.clone(),
        Duration::from_secs(3),
    )?);
    let state = GatewayState::with_replay(
        config.gateway.clone(),
        reader.clone(),
        Some(Arc::new(crate::BusReplay(bus.clone()))),
    )?;
    let feeds = CancellationToken::new();
    let changes = feed::spawn_changes(bus.clone(), state.manager().clone(), feeds.clone());
    let progress = feed::spawn_progress(bus.clone(), state.manager().clone(), feeds.clone());
    let health = Health::new("weir-gatewayd", shutdown.clone(), Duration::from_secs(5))
        .with("graph", Arc::new(ReaderProbe(reader)))
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
            crate::admin::spawn_admin(
                "weir-gatewayd",
                bind,
                config.admin_token.clone(),
                None,
                vec![
                    ("subscriptions", {
                        let m = state.manager().clone();
                        Arc::new(weir_metrics::subscriptions_source(move || m.stats())) as _
                    }),
                    ("bus", crate::admin::bus_metrics(bus.clone())),
                ],
                shutdown.clone(),
            )
            .await?
            .1,
        ),
        None => None,
    };
    // The web console (`/`, `/graphiql`) and its read-only data routes, behind the API keys.
    let console = weir_console::Console::new("weir-gatewayd", auth.clone())
        .with_memory(
            weir_console::spawn_memory_watcher(None, shutdown.clone()).map_err(|e| {
                ServiceError::Invalid {
                    field: "console",
                    reason: e.to_string(),
                }
            })?,
        )
        .with_figure("bus", crate::figures::bus(bus.clone()))
        .with_figure("gateway", crate::figures::gateway(state.clone()))
        .router();
    let extra = replay_router(ReplayApi {
        bus,
        auth,
        config: config.replay.clone(),
    })
    .merge(console);
    let served = serve_gateway(listener, state, extra, health, shutdown).await;
    feeds.cancel();
    let _ = changes.await;
    let _ = progress.await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    served.map_err(GatewaydError::Io)
}
