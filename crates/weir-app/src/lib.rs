//! Pieces shared by Weir's services (`weir-ingestd`, `weir-gatewayd` and `weir serve`).
//!
//! - [`config`]: one way in for every service — defaults, a TOML file, the environment
//!   (`NEO4J_*`, `NATS_URL`, `WEIR_*`), then flags — and [`config::show`], which prints the
//!   result with every secret masked.
//! - [`Authenticator`]: bearer-token check with the gateway's [`weir_gateway::AuthConfig`], so
//!   every service is authenticated the same way.
//! - [`BusSlot`]: the bus, connected in the background with retries, so a service starts
//!   not-ready instead of failing when NATS is down, and never queues work meanwhile.
//! - [`BusPublisher`]: the graph writer's [`weir_graph::ChangePublisher`] over the bus:
//!   publishes each committed batch once, retrying transient failures with the same batch id
//!   (the bus deduplicates), so ingestion pauses while the bus is away instead of buffering.
//! - [`health`]: `/health` and `/ready` that reflect the graph pool and the bus.
//! - [`admin`]: the admin listener (`/metrics`, `/api/memory/*`) of weir-metrics.
//! - [`BusReplay`]: the gateway's `graphChanges(since:)` catch-up, read from the bus.
//! - [`pipeline`]: the one way a graph-writing pipeline is put together, for every kind of
//!   job (file and stream jobs, `weir ingest`, `weir consume`).

pub mod admin;
pub mod app;
mod bus;
pub mod cli;
pub mod config;
mod error;
pub mod figures;
pub mod gateway;
pub mod health;
pub mod health_check;
pub mod jobs;
pub mod pipeline;
mod publisher;
mod replay;
pub mod settings;
mod signal;

pub use bus::BusSlot;
pub use error::ServiceError;
pub use publisher::{BusPublisher, EventsConfig, EventsPolicy};
pub use replay::BusReplay;
pub use signal::cancel_on_signal;
pub use weir_gateway::{Authenticator, bearer};
