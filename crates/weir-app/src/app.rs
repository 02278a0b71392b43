//! How every long-running Weir process is put together: one function, [`run_on`], for
//! `weir serve`, `weir-ingestd` and `weir-gatewayd`; the [`Role`] says which parts run.
//!
//! In order (each part reports into what was built before it):
//! 1. the metric sources, filled as parts are built, served by the admin listener at the end;
//! 2. the bus: in-process (ready at once) or NATS (connected in the background, with retries;
//!    the process is not ready meanwhile);
//! 3. the graph pools: one for ingest writes (roles with jobs), one for GraphQL reads (roles
//!    with the gateway), each with its own deadlines, circuit breaker and metrics;
//! 4. the gateway: its state (subscription manager), reads through the read pool, `since`
//!    catch-ups from the bus, and the feeds that hand bus batches and progress to it;
//! 5. the jobs: the job manager, publishing each job's changes by the events policy, every
//!    job's records, batches and backpressure counted in the `weir_stream_*` metrics;
//! 6. the routes on `bind`: GraphQL + WebSocket, the job API, `/changes`, the console, and
//!    `/health` / `/ready` over every part;
//! 7. the admin listener (metrics of every part, memory), when `admin.bind` is set.
//!
//! Shutdown runs it backwards: stop accepting; complete subscriptions and close sockets
//! (within `gateway.shutdown_grace`); let running jobs write their checkpoints (within
//! `shutdown_grace`), then stop their publishers; stop the feeds; close the pools; stop the
//! admin listener.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_bus::{Bus, BusConfig};
use weir_gateway::{GatewayState, GraphReader};
use weir_pool::Pool;

use crate::admin::Sources;
use crate::gateway::{ReplayApi, replay_router};
use crate::health::{BusProbe, Health, PoolProbe};
use crate::jobs::{JobManager, JobSpec, JobsApi, jobs_router};
use crate::settings::{Role, Settings};
use crate::{Authenticator, BusPublisher, BusSlot, ServiceError};

/// Errors that stop a process.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The settings are wrong.
    #[error(transparent)]
    Settings(#[from] ServiceError),
    /// A part could not be built.
    #[error("{part}: {reason}")]
    Part {
        /// Which part.
        part: &'static str,
        /// Why.
        reason: String,
    },
    /// Listening or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn part(part: &'static str) -> impl FnOnce(String) -> AppError {
    move |reason| AppError::Part { part, reason }
}

/// Binds `settings.bind` and runs `role` until `shutdown` fires (see [`run_on`]).
pub async fn run(
    role: Role,
    settings: Settings,
    startup: Option<JobSpec>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let listener = TcpListener::bind(settings.bind)
        .await
        .map_err(|e| part("bind")(format!("cannot listen on {}: {e}", settings.bind)))?;
    run_on(role, settings, listener, startup, shutdown).await
}

/// Runs `role` on `listener` until `shutdown` fires; `startup` is a job submitted once the
/// graph answers (`weir serve --ingest`). See the module docs for the order of the parts.
pub async fn run_on(
    role: Role,
    mut settings: Settings,
    listener: TcpListener,
    startup: Option<JobSpec>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    settings.validate(role)?;
    settings.jobs.memory_limit = settings.memory_limit();
    let name = role.name();
    let auth = Arc::new(Authenticator::new(&settings.auth));

    // 1. Metric sources, filled below.
    let mut sources: Sources = Vec::new();

    // 2. The bus.
    let bus = match &settings.bus {
        BusConfig::InProcess(_) => BusSlot::ready(
            Bus::connect(&settings.bus)
                .await
                .map_err(|e| part("bus")(e.to_string()))?,
        ),
        BusConfig::Nats(_) => {
            BusSlot::connect_in_background(settings.bus.clone(), shutdown.clone())
        }
    };
    sources.push(("bus", crate::admin::bus_metrics(bus.clone())));

    // 3. The graph pools.
    let write_pool = if role.has_jobs() {
        let p = Pool::new(settings.graph.clone(), settings.pool.clone())
            .map_err(|e| part("pool")(e.to_string()))?;
        sources.push(("pool", pool_metrics("write", &p)));
        Some(p)
    } else {
        None
    };
    let read_pool = if role.has_gateway() {
        let p = Pool::new(settings.graph.clone(), settings.read_pool.clone())
            .map_err(|e| part("read_pool")(e.to_string()))?;
        sources.push(("read_pool", pool_metrics("read", &p)));
        Some(p)
    } else {
        None
    };

    // 4. The gateway and its feeds.
    let feeds = CancellationToken::new();
    let mut feed_tasks = Vec::new();
    let gateway = match &read_pool {
        Some(reads) => {
            let state = GatewayState::with_replay(
                settings.gateway_config(),
                Arc::new(reads.clone()) as Arc<dyn GraphReader>,
                Some(Arc::new(crate::BusReplay(bus.clone()))),
            )
            .map_err(|e| part("gateway")(e.to_string()))?;
            feed_tasks.push(crate::gateway::feed::spawn_changes(
                bus.clone(),
                state.manager().clone(),
                feeds.clone(),
            ));
            feed_tasks.push(crate::gateway::feed::spawn_progress(
                bus.clone(),
                state.manager().clone(),
                feeds.clone(),
            ));
            sources.push(("subscriptions", {
                let m = state.manager().clone();
                Arc::new(weir_metrics::subscriptions_source(move || m.stats())) as _
            }));
            Some(state)
        }
        None => None,
    };

    // 5. The jobs.
    let hard_stop = CancellationToken::new();
    let jobs = match &write_pool {
        Some(writes) => {
            let stream = weir_metrics::StreamMetrics::new();
            sources.push(("stream", Arc::new(stream.clone()) as _));
            let nats_url = match &settings.bus {
                BusConfig::Nats(n) => n.url.clone(),
                BusConfig::InProcess(_) => "nats://127.0.0.1:4222".to_owned(),
            };
            let jobs = JobManager::new(
                settings.jobs.clone(),
                writes.clone(),
                bus.clone(),
                BusPublisher::new(bus.clone(), settings.jobs.events.clone(), hard_stop.clone()),
                stream,
                shutdown.clone(),
                nats_url,
            );
            sources.push(("consumer", jobs.consumer_metrics()));
            jobs.start_configured_streams()
                .await
                .map_err(|e| part("jobs.streams")(e.to_string()))?;
            Some(jobs)
        }
        None => None,
    };

    // 6. The routes and their health.
    let mut health = Health::new(name, shutdown.clone(), Duration::from_secs(5))
        .with("bus", Arc::new(BusProbe(bus.clone())));
    if let Some(p) = write_pool.as_ref().or(read_pool.as_ref()) {
        health = health.with("graph", Arc::new(PoolProbe(p.clone())));
    }
    // `weir serve` has both: the GraphQL reads' pool is checked on its own.
    if let (Some(_), Some(r)) = (&write_pool, &read_pool) {
        health = health.with("graph_reads", Arc::new(PoolProbe(r.clone())));
    }
    let mut console = weir_console::Console::new(name, auth.clone())
        .with_memory(console_memory(&settings, &shutdown)?)
        .with_figure("bus", crate::figures::bus(bus.clone()));
    if let Some(p) = &write_pool {
        console = console.with_figure("pool", crate::figures::pool(p.clone()));
    }
    if let Some(p) = &read_pool {
        console = console.with_figure("read_pool", crate::figures::pool(p.clone()));
    }
    let mut routes = Router::new();
    if let Some(state) = &gateway {
        let (m, s) = (state.manager().clone(), state.clone());
        health = health
            .with_detail(
                "subscriptions",
                Arc::new(move || serde_json::json!(m.active())),
            )
            .with_detail(
                "sockets",
                Arc::new(move || serde_json::json!(s.open_sockets())),
            );
        console = console.with_figure("gateway", crate::figures::gateway(state.clone()));
        routes = routes.merge(replay_router(ReplayApi::new(
            bus.clone(),
            auth.clone(),
            settings.replay.clone(),
        )));
    }
    if let Some(j) = &jobs {
        console = console.with_jobs();
        routes = routes.merge(jobs_router(JobsApi {
            jobs: j.clone(),
            auth: auth.clone(),
        }));
    }
    routes = routes.merge(console.router());

    // 7. The admin listener, with every part's metrics.
    let admin = match settings.admin.bind {
        Some(_) => Some(
            crate::admin::spawn_admin(
                name,
                &settings.admin,
                &settings.listener,
                settings.memory_limit(),
                sources,
                health.checks(),
                shutdown.clone(),
            )
            .await?
            .1,
        ),
        None => None,
    };

    if let (Some(spec), Some(j), Some(p)) = (startup, &jobs, &write_pool) {
        submit_when_ready(spec, j.clone(), p.clone(), shutdown.clone());
    }

    // Serve until `shutdown`, then stop in reverse.
    let addr = listener.local_addr()?;
    tracing::info!(%addr, process = name, "listening");
    let served = match &gateway {
        Some(state) => {
            crate::gateway::serve_gateway(
                listener,
                state.clone(),
                routes,
                health,
                &settings.listener,
                shutdown.clone(),
            )
            .await
        }
        None => {
            let routes = weir_gateway::origin::guarded(routes, &settings.gateway.allowed_origins);
            weir_gateway::listener::serve(
                listener,
                crate::health::layer(routes, health),
                &settings.listener,
                Arc::new(weir_gateway::ListenerStats::default()),
                shutdown.clone(),
                settings.shutdown_grace,
            )
            .await
        }
    };
    if let Some(j) = &jobs {
        tracing::info!("waiting for running jobs to write their checkpoints");
        j.wait_stopped(settings.shutdown_grace).await;
    }
    hard_stop.cancel();
    feeds.cancel();
    for t in feed_tasks {
        let _ = t.await;
    }
    for p in write_pool.iter().chain(read_pool.iter()) {
        p.close().await;
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    tracing::info!(process = name, "stopped");
    served.map_err(AppError::Io)
}

fn pool_metrics(label: &'static str, p: &Pool) -> Arc<dyn weir_metrics::MetricSource> {
    let p = p.clone();
    Arc::new(weir_metrics::pool_source(label, move || p.status()))
}

/// The console's memory history: a watcher of its own, sampled every 2 s for an hour.
fn console_memory(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Result<weir_memwatch::MemoryWatcher, AppError> {
    weir_console::spawn_memory_watcher(settings.memory_limit(), shutdown.clone())
        .map_err(|e| part("memory")(e.to_string()))
}

/// Submits `spec` once the graph has answered (readiness gating: never before).
fn submit_when_ready(spec: JobSpec, jobs: JobManager, pool: Pool, stop: CancellationToken) {
    tokio::spawn(async move {
        while !pool.wait_ready(Duration::from_secs(15)).await {
            if stop.is_cancelled() {
                return;
            }
            tracing::warn!(
                hint = weir_config::START_HINT,
                "graph server not reachable yet"
            );
        }
        match jobs.submit(spec).await {
            Ok(s) => tracing::info!(job = %s.id, input = %s.input, "start-up ingest job queued"),
            Err(e) => tracing::error!(error = %e, "start-up ingest job refused"),
        }
    });
}
