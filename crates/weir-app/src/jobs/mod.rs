//! `weir-ingestd`: Weir's long-running ingest service.
//!
//! An HTTP job API ([`http`]) over the stream pipeline: jobs name a server-side file (inside
//! the configured input roots) or stream their records in the request body, with the
//! mapping; at most `jobs.max_concurrent` run at once and at most `jobs.max_queued` wait.
//! Each committed batch's changes are published to the bus after the commit (retried with
//! the same batch id while the bus is away, which pauses the job instead of buffering), and
//! progress events go to the bus as well. Jobs are refused (503) until the graph pool and the
//! bus are reachable; `/ready` says the same. On shutdown running jobs finish their in-flight
//! batches and write their checkpoints; a job submitted again with the same id resumes.
//!
//! [`run`] is the whole service; `main.rs` only parses flags and calls it, so tests start it
//! in-process with [`run_on`].

pub mod config;
pub mod http;
pub mod manager;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::cli::{Command, ConfigAction};
use crate::config::Env;
use crate::health::{self, BusProbe, Health, PoolProbe};
use crate::{Authenticator, BusPublisher, BusSlot, ServiceError};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_pool::Pool;

pub use config::{IngestdConfig, JobsConfig};
pub use http::{JobsApi, jobs_router};
pub use manager::{InputFormat, JobInput, JobManager, JobSpec, JobStatus};

/// Errors of the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum IngestdError {
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The mapping does not parse or validate.
    #[error("invalid mapping: {0}")]
    InvalidMapping(String),
    /// No or a wrong bearer token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A server-side path outside every input root.
    #[error("path {0} is outside the configured input roots")]
    PathNotAllowed(String),
    /// The input cannot be opened.
    #[error("input not found or unreadable: {0}")]
    InputNotFound(String),
    /// No such job.
    #[error("no job {0}")]
    NotFound(String),
    /// A job with this id is queued or running.
    #[error("job {0} is already queued or running")]
    Conflict(String),
    /// The upload is larger than allowed.
    #[error("upload larger than {max} bytes")]
    UploadTooLarge {
        /// The bound, bytes.
        max: u64,
    },
    /// Too many jobs queued or running.
    #[error("too many jobs ({active} queued or running); try again later")]
    Busy {
        /// Jobs queued or running.
        active: usize,
    },
    /// The graph pool or the bus is not reachable yet.
    #[error("not ready: the graph server or the bus is not reachable yet")]
    NotReady,
    /// The service is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// Settings are wrong.
    #[error(transparent)]
    Config(#[from] ServiceError),
    /// Listening or file I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Something else failed (the cause is logged; clients see a correlation id).
    #[error("{0}")]
    Internal(String),
}

/// Command line of `weir-ingestd`.
#[derive(Debug, Parser)]
#[command(
    name = "weir-ingestd",
    version,
    about = "Weir's ingest service: an HTTP job API publishing graph changes to the bus."
)]
pub struct Cli {
    /// TOML config file (see `weir-ingestd config show` for every setting). Env `WEIR_CONFIG`.
    #[arg(long, short, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the job API (overrides the file and `WEIR_BIND`).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Jobs running at once (overrides the file and `WEIR_MAX_JOBS`).
    #[arg(long)]
    pub max_jobs: Option<usize>,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to do; default `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Resolves the settings: defaults, the file, `env`, then the flags; validated.
    pub fn resolve(&self, env: &Env) -> Result<IngestdConfig, ServiceError> {
        let mut c: IngestdConfig = crate::config::load_file(self.config.as_deref())?;
        c.apply_env(env)?;
        if let Some(b) = self.bind {
            c.bind = b;
        }
        if let Some(n) = self.max_jobs {
            c.jobs.max_concurrent = n;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Binds `config.bind` and runs the service until `shutdown` fires.
pub async fn run(config: IngestdConfig, shutdown: CancellationToken) -> Result<(), IngestdError> {
    let listener = TcpListener::bind(config.bind).await?;
    run_on(config, listener, shutdown).await
}

/// Runs the service on `listener` until `shutdown` fires: stops accepting, lets running jobs
/// write their checkpoints (within `shutdown_grace`), then closes the pool.
pub async fn run_on(
    config: IngestdConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngestdError> {
    config.validate()?;
    let auth = Arc::new(Authenticator::new(&config.auth));
    let pool = Pool::new(config.graph.clone(), config.pool.clone())
        .map_err(|e| IngestdError::Internal(format!("graph pool: {e}")))?;
    let bus = BusSlot::connect_in_background(config.bus.clone(), shutdown.clone());
    let hard_stop = CancellationToken::new();
    let publisher = BusPublisher::new(bus.clone(), config.jobs.events.clone(), hard_stop.clone());
    let jobs = JobManager::new(
        config.jobs.clone(),
        pool.clone(),
        bus.clone(),
        publisher,
        shutdown.clone(),
    );
    let health = Health::new("weir-ingestd", shutdown.clone(), Duration::from_secs(5))
        .with("graph", Arc::new(PoolProbe(pool.clone())))
        .with("bus", Arc::new(BusProbe(bus.clone())));
    let bus_for_metrics = bus;
    let app = health::layer(
        jobs_router(JobsApi {
            jobs: jobs.clone(),
            auth,
        }),
        health,
    );
    let admin = match config.admin_bind {
        Some(bind) => Some(
            crate::admin::spawn_admin(
                "weir-ingestd",
                bind,
                config.admin_token.clone(),
                config.jobs.memory_limit,
                vec![
                    ("pool", {
                        let p = pool.clone();
                        Arc::new(weir_metrics::pool_source(move || p.status())) as _
                    }),
                    ("bus", crate::admin::bus_metrics(bus_for_metrics)),
                ],
                shutdown.clone(),
            )
            .await?
            .1,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "weir-ingestd listening");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    tracing::info!("weir-ingestd stopping: waiting for jobs to write their checkpoints");
    jobs.wait_stopped(config.shutdown_grace).await;
    hard_stop.cancel();
    pool.close().await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    tracing::info!("weir-ingestd stopped");
    served.map_err(IngestdError::Io)
}
