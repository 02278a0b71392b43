//! Figures for `/api/console/figures`: each a closure that reads a status snapshot (no I/O)
//! and returns it as JSON. The page shows a few fields of each.

use std::sync::Arc;

use crate::BusSlot;
use crate::health::Detail;
use serde_json::json;
use weir_gateway::GatewayState;
use weir_pool::Pool;

/// The graph session pool: sizes, waiters, circuit state and counters
/// ([`weir_pool::PoolStatus`]).
pub fn pool(pool: Pool) -> Detail {
    Arc::new(move || {
        let s = pool.status();
        json!({
            "max_size": s.max_size,
            "size": s.size,
            "idle": s.idle,
            "in_use": s.in_use,
            "waiting": s.waiting,
            "ready": s.ready,
            "circuit": s.circuit,
            "sessions_created": s.sessions_created,
            "connect_failures": s.connect_failures,
            "acquire_timeouts": s.acquire_timeouts,
        })
    })
}

/// The bus's counters, or `{"connected": false}` before it has connected.
pub fn bus(slot: BusSlot) -> Detail {
    Arc::new(move || match slot.get() {
        None => json!({"connected": false}),
        Some(bus) => {
            let m = bus.metrics().snapshot();
            json!({
                "connected": true,
                "published": m.published,
                "duplicates": m.duplicates,
                "publish_errors": m.publish_errors,
                "consumed": m.consumed,
                "redelivered": m.redelivered,
                "lag": m.lag,
                "progress_published": m.progress_published,
                "progress_dropped": m.progress_dropped,
            })
        }
    })
}

/// The gateway: open WebSocket connections and the subscription registry's counters.
pub fn gateway(state: GatewayState) -> Detail {
    Arc::new(move || {
        let s = state.manager().stats();
        json!({
            "sockets": state.open_sockets(),
            "subscriptions": s.active,
            "created": s.created,
            "delivered_events": s.delivered_events,
            "dropped_events": s.dropped_events,
            "completed_ttl": s.completed_ttl,
            "completed_lagged": s.completed_lagged,
            "rejected_limit": s.rejected_limit,
        })
    })
}
