//! The gateway's side of a process (`weir-gatewayd`, `weir serve`): fed from the bus.
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
//! The process around it is put together by [`crate::app`].

pub mod config;
pub mod feed;
pub mod replay;

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_gateway::GatewayState;

use crate::health::{self, Health};

pub use config::ReplayConfig;
pub use replay::{ReplayApi, replay_router};

/// Serves the gateway's routes plus `extra` on `listener`, with `/health` and `/ready` from
/// `health`, until `shutdown` fires; then completes every subscription, closes every socket
/// (1001) and waits for them at most the gateway's `shutdown_grace`.
pub async fn serve_gateway(
    listener: TcpListener,
    state: GatewayState,
    extra: Router,
    health: Health,
    rules: &weir_gateway::ListenerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    // The gateway's own routes check the origin themselves; the rest (jobs, `/changes`, the
    // console's data) here.
    let extra = weir_gateway::origin::guarded(extra, &state.config().allowed_origins);
    let app = health::layer(weir_gateway::router(state.clone()).merge(extra), health);
    tracing::info!(%addr, "gateway listening");
    let grace = state.config().shutdown_grace;
    let server = tokio::spawn({
        let (rules, stop) = (rules.clone(), shutdown.clone());
        async move {
            weir_gateway::listener::serve(
                listener,
                app,
                &rules,
                std::sync::Arc::new(weir_gateway::ListenerStats::default()),
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
