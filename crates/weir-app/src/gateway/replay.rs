//! `GET /changes?since=<seq>`: what a reconnecting client missed.
//!
//! HTTP twin of `graphChanges(since:)`, for clients that want history without a WebSocket
//! (or a larger catch-up than they want to hold a subscription for): page through
//! `GET /changes?since=<last seq it saw>` (filters as in the subscription: `labels`, `types`,
//! `keys`, comma-separated) until `complete` is true, skipping events at or below the last
//! `(seq, index)` it already has. Each page reads at
//! most `replay.max_batches` batches and `replay.max_events` events from the bus, through a
//! consumer of its own that is dropped with the page. `410` (`SINCE_TOO_OLD`) when retention
//! already dropped what is asked for, `400` (`SINCE_AHEAD`) for a seq not yet published.

use std::sync::Arc;

use crate::{Authenticator, BusSlot};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use weir_bus::BusError;
use weir_subscriptions::ChangeFilter;

use crate::gateway::config::ReplayConfig;

/// State of the replay route.
#[derive(Clone, Debug)]
pub struct ReplayApi {
    /// The bus.
    pub bus: BusSlot,
    /// The bearer-token check (the gateway's settings).
    pub auth: Arc<Authenticator>,
    /// Page limits.
    pub config: ReplayConfig,
    /// Pages being read (`replay.max_concurrent`).
    pub running: Arc<tokio::sync::Semaphore>,
}

impl ReplayApi {
    /// The route's state: pages read from `bus`, callers checked by `auth`, `config`'s limits.
    pub fn new(bus: BusSlot, auth: Arc<Authenticator>, config: ReplayConfig) -> Self {
        Self {
            running: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
            bus,
            auth,
            config,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    since: u64,
    #[serde(default)]
    labels: Option<String>,
    #[serde(default)]
    types: Option<String>,
    #[serde(default)]
    keys: Option<String>,
}

fn list(s: Option<String>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The `/changes` route.
pub fn replay_router(api: ReplayApi) -> Router {
    Router::new()
        .route("/changes", get(changes))
        .with_state(api)
}

async fn changes(
    State(api): State<ReplayApi>,
    headers: HeaderMap,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = api.auth.check_headers(&headers) {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", e.to_string());
    }
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.body_text()),
    };
    let Ok(_page) = api.running.clone().try_acquire_owned() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REPLAYS",
            format!(
                "{} pages of /changes are being read (replay.max_concurrent); try again shortly",
                api.config.max_concurrent
            ),
        );
    };
    let filter = ChangeFilter {
        labels: list(p.labels),
        types: list(p.types),
        keys: list(p.keys),
        operations: Vec::new(),
    };
    if filter.labels.len() + filter.types.len() + filter.keys.len() > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "at most 100 labels, types and keys together".into(),
        );
    }
    let Some(bus) = api.bus.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            "the bus is not reachable yet".into(),
        );
    };
    let mut stream = match bus.subscribe_changes(Some(p.since)).await {
        Ok(s) => s,
        Err(e @ BusError::SinceTooOld { .. }) => {
            return error(StatusCode::GONE, "SINCE_TOO_OLD", e.to_string());
        }
        Err(e @ BusError::SinceAhead { .. }) => {
            return error(StatusCode::BAD_REQUEST, "SINCE_AHEAD", e.to_string());
        }
        Err(e) => {
            let id = uuid::Uuid::new_v4();
            tracing::error!(correlation_id = %id, error = %e, "replay subscribe failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "BUS_UNAVAILABLE",
                format!("the bus failed (correlation id {id})"),
            );
        }
    };
    let mut events = Vec::new();
    let mut last_seq = p.since;
    let mut batches = 0usize;
    let mut complete = true;
    while batches < api.config.max_batches && events.len() < api.config.max_events {
        match tokio::time::timeout(api.config.idle, stream.next()).await {
            Ok(Some(Ok(batch))) => {
                batches += 1;
                last_seq = batch.seq;
                events.extend(batch.events.iter().filter(|e| filter.matches(e)).cloned());
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "replay stream ended early");
                complete = false;
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    if batches == api.config.max_batches || events.len() >= api.config.max_events {
        complete = false;
    }
    axum::Json(json!({"events": events, "last_seq": last_seq, "complete": complete}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;
    use weir_bus::{Bus, BusConfig, InProcessConfig};
    use weir_config::Secret;
    use weir_events::fixture::{self, event};
    use weir_events::{ChangeBatch, EntityKind, Operation};
    use weir_gateway::AuthConfig;

    use super::*;

    fn batch(id: &str, labels: &[&str]) -> ChangeBatch {
        let events = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                event(
                    EntityKind::Node,
                    l,
                    &format!("{id}-{i}"),
                    Operation::Created,
                )
            })
            .collect();
        fixture::batch("j", id, events)
    }

    async fn get(
        router: &Router,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::get(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn setup(capacity: usize, max_batches: usize) -> (Bus, Router) {
        let bus = Bus::connect(&BusConfig::InProcess(InProcessConfig {
            capacity,
            ..Default::default()
        }))
        .await
        .unwrap();
        let router = replay_router(ReplayApi::new(
            BusSlot::ready(bus.clone()),
            Arc::new(Authenticator::new(&AuthConfig::ApiKeys {
                keys: vec![Secret::new("k")],
            })),
            ReplayConfig {
                max_batches,
                ..Default::default()
            },
        ));
        (bus, router)
    }

    #[tokio::test]
    async fn pages_read_at_once_are_bounded() {
        let bus = Bus::connect(&BusConfig::InProcess(InProcessConfig::default()))
            .await
            .unwrap();
        bus.publish_changes(batch("b0", &["A"])).await.unwrap();
        let router = replay_router(ReplayApi::new(
            BusSlot::ready(bus.clone()),
            Arc::new(Authenticator::new(&AuthConfig::ApiKeys {
                keys: vec![Secret::new("k")],
            })),
            ReplayConfig {
                max_concurrent: 1,
                idle: Duration::from_secs(2),
                ..Default::default()
            },
        ));
        // The first page waits `idle` for more batches; meanwhile a second is refused.
        let first = {
            let router = router.clone();
            tokio::spawn(async move { get(&router, "/changes?since=0", Some("k")).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = get(&router, "/changes?since=0", Some("k")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "TOO_MANY_REPLAYS");
        let (status, body) = first.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        // Its slot is back.
        let (status, _) = tokio::time::timeout(
            Duration::from_secs(10),
            get(&router, "/changes?since=0", Some("k")),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn replays_what_was_missed_filtered_and_paged() {
        let (bus, router) = setup(64, 2).await;
        for i in 0..3 {
            bus.publish_changes(batch(&format!("b{i}"), &["Person", "Company"]))
                .await
                .unwrap();
        }
        let (s, body) = get(&router, "/changes?since=1&labels=Person", Some("k")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let evs = body["events"].as_array().unwrap();
        assert_eq!(evs.len(), 2, "one Person per batch 2 and 3: {body}");
        assert!(evs.iter().all(|e| e["label"] == "Person"));
        assert_eq!(evs[0]["seq"], 2);
        assert_eq!(evs[1]["seq"], 3);
        assert_eq!(body["last_seq"], 3);
        assert_eq!(body["complete"], false, "page bound reached");
        let (_, body) = get(&router, "/changes?since=3", Some("k")).await;
        assert_eq!(body["events"].as_array().unwrap().len(), 0);
        assert_eq!(body["complete"], true);
    }

    #[tokio::test]
    async fn too_old_ahead_and_unauthenticated_are_distinct() {
        let (bus, router) = setup(2, 10).await;
        for i in 0..5 {
            bus.publish_changes(batch(&format!("b{i}"), &["A"]))
                .await
                .unwrap();
        }
        let (s, body) = get(&router, "/changes?since=0", Some("k")).await;
        assert_eq!(s, StatusCode::GONE);
        assert_eq!(body["error"]["code"], "SINCE_TOO_OLD");
        let (s, body) = get(&router, "/changes?since=99", Some("k")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "SINCE_AHEAD");
        let (s, _) = get(&router, "/changes?since=4", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = get(&router, "/changes?since=4", Some("wrong")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}
