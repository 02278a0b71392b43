//! Weir's observability surface: metric names, Prometheus text exposition, and the
//! health / memory / metrics HTTP endpoints every Weir binary mounts.
//!
//! - [`names`]: every metric, `weir_<subsystem>_<name>_<unit>[_total]`, in one place.
//! - [`Registry`]: [`MetricSource`]s collected at scrape time (subsystems do not depend on
//!   this crate; small adapters read their status) plus [`Histogram`]s fed as things happen.
//! - [`Encoder`]: what sources write into; checks each sample against [`names`], groups the
//!   families and has the `prometheus-client` crate write the text (Prometheus 0.0.4, see
//!   [`encode`]); [`Histogram`] is prometheus-client's.
//! - [`MemorySource`]: the memory watcher's figures as metrics; [`adapters`]: the graph pool,
//!   bus, subscriptions and stream processor's status as metrics ([`StreamMetrics::attach`]
//!   wires a pipeline).
//! - [`admin_router`]: `/health`, `/health/memory`, `/api/memory/*`, `/metrics` over an
//!   [`AdminState`], with optional bearer-token admin auth; [`memory_router`]: the read-only
//!   memory routes alone, for a listener with its own authentication.
//!
//! ```
//! use std::sync::Arc;
//! use weir_memwatch::{MemoryWatcher, WatcherConfig};
//! use weir_metrics::{AdminState, MemorySource, Registry, admin_router};
//!
//! let watcher = MemoryWatcher::for_process(WatcherConfig::default(), None).unwrap();
//! let registry = Arc::new(Registry::new());
//! registry
//!     .register_source("memory", Arc::new(MemorySource::new(watcher.clone())))
//!     .unwrap();
//! let router: axum::Router = admin_router(AdminState::new("weir-serve", watcher, registry));
//! # let _ = router;
//! ```

pub mod adapters;
pub mod admin;
pub mod encode;
pub mod error;
pub mod histogram;
pub mod memory;
pub mod names;
pub mod registry;

pub use adapters::{
    BatchObserver, StreamMetrics, TimedSink, bus_source, pool_source, subscriptions_source,
};
pub use admin::{
    AdminState, ComponentHealth, HealthCheck, HealthStatus, admin_router, memory_router,
};
pub use encode::{CONTENT_TYPE, Encoder};
pub use error::MetricsError;
pub use histogram::{DURATION_BUCKETS, Histogram, HistogramSnapshot};
pub use memory::MemorySource;
pub use registry::{MAX_SOURCES, MetricSource, Registry};
