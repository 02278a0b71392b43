//! The admin listener: `/metrics` (Prometheus) and `/api/memory/*` from weir-metrics, on an
//! address of its own (off unless configured), protected by an admin token when one is set.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_config::Secret;
use weir_memwatch::{MemoryWatcher, WatcherConfig};
use weir_metrics::{AdminState, MemorySource, MetricSource, Registry, admin_router};

use crate::{BusSlot, ServiceError};

/// Metric sources a service registers besides memory.
pub type Sources = Vec<(&'static str, Arc<dyn MetricSource>)>;

/// The bus metrics of whatever bus the slot holds (nothing before it connects).
pub fn bus_metrics(slot: BusSlot) -> Arc<dyn MetricSource> {
    Arc::new(move |e: &mut weir_metrics::Encoder| {
        if let Some(bus) = slot.get() {
            weir_metrics::adapters::encode_bus(e, &bus.metrics().snapshot());
        }
    })
}

/// Starts the memory watcher and serves the admin routes on `bind` until `shutdown` fires.
/// Returns the bound address and the server task.
pub async fn spawn_admin(
    service: &'static str,
    bind: SocketAddr,
    token: Option<Secret>,
    memory_limit: Option<u64>,
    sources: Sources,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServiceError> {
    let invalid = |reason: String| ServiceError::Invalid {
        field: "admin_bind",
        reason,
    };
    let watcher = MemoryWatcher::for_process(WatcherConfig::default(), memory_limit)
        .map_err(|e| invalid(e.to_string()))?;
    watcher.spawn(shutdown.clone());
    let registry = Arc::new(Registry::new());
    registry
        .register_source("memory", Arc::new(MemorySource::new(watcher.clone())))
        .map_err(|e| invalid(e.to_string()))?;
    for (name, s) in sources {
        registry
            .register_source(name, s)
            .map_err(|e| invalid(e.to_string()))?;
    }
    let state = AdminState::new(service, watcher, registry).with_admin_token(token);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| invalid(format!("cannot listen on {bind}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| invalid(e.to_string()))?;
    tracing::info!(%addr, "admin listener (metrics, memory) listening");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, admin_router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok((addr, task))
}
