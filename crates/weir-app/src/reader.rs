//! The gateway's graph reader, gated on the bus.

use std::time::Duration;

use async_trait::async_trait;
use weir_config::GraphSettings;
use weir_gateway::{
    GatewayError, GraphNode, GraphReader, Ident, Neighbour, NeighbourQuery, NodeKey,
};

use crate::{BusSlot, ServiceError};

/// Reads the graph through a neo4rs connection pool that connects lazily (so a service starts
/// while the graph server is still down), and is ready only when both the graph answers and
/// the bus is reachable. Readiness probes are bounded by `probe_timeout`.
pub struct GatedGraphReader {
    graph: neo4rs::Graph,
    bus: BusSlot,
    probe_timeout: Duration,
}

impl std::fmt::Debug for GatedGraphReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedGraphReader").finish_non_exhaustive()
    }
}

impl GatedGraphReader {
    /// A reader over `settings` with at most `max_connections` connections.
    pub fn new(
        settings: &GraphSettings,
        max_connections: usize,
        bus: BusSlot,
        probe_timeout: Duration,
    ) -> Result<Self, ServiceError> {
        let config = neo4rs::ConfigBuilder::default()
            .uri(&settings.uri)
            .user(&settings.user)
            .password(settings.password.expose())
            .db(settings.database.as_str())
            .max_connections(max_connections.max(1))
            .build()
            .map_err(|e| ServiceError::Invalid {
                field: "graph.uri",
                reason: e.to_string(),
            })?;
        let graph = neo4rs::Graph::connect(config).map_err(|e| ServiceError::Invalid {
            field: "graph.uri",
            reason: e.to_string(),
        })?;
        Ok(Self {
            graph,
            bus,
            probe_timeout,
        })
    }

    /// Whether the graph answers `RETURN 1` within the probe timeout.
    pub async fn graph_ready(&self) -> bool {
        tokio::time::timeout(self.probe_timeout, self.graph.ready())
            .await
            .unwrap_or(false)
    }

    /// The bus slot this reader is gated on.
    pub fn bus(&self) -> &BusSlot {
        &self.bus
    }
}

#[async_trait]
impl GraphReader for GatedGraphReader {
    async fn node(&self, key: &NodeKey) -> Result<Option<GraphNode>, GatewayError> {
        self.graph.node(key).await
    }

    async fn neighbours(&self, q: &NeighbourQuery) -> Result<Vec<Neighbour>, GatewayError> {
        self.graph.neighbours(q).await
    }

    async fn count(&self, label: &Ident) -> Result<i64, GatewayError> {
        self.graph.count(label).await
    }

    async fn ready(&self) -> bool {
        let bus = tokio::time::timeout(self.probe_timeout, self.bus.check_ready()).await;
        matches!(bus, Ok(Ok(()))) && self.graph_ready().await
    }
}
