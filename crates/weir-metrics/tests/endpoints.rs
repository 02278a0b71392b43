//! Every endpoint answers with the JSON documented in `schemas/memory.schema.json`; admin auth;
//! `/health` aggregates injected component checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;
use weir_config::Secret;
use weir_memwatch::{MemoryGauge, MemoryUsage, MemoryWatcher, UsageSource, WatcherConfig};
use weir_metrics::{
    AdminState, ComponentHealth, HealthCheck, MemorySource, Registry, admin_router, memory_router,
};

const MIB: u64 = 1 << 20;

fn schema_for(def: &str) -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/memory.schema.json"
    );
    let text = std::fs::read_to_string(path).expect("schemas/memory.schema.json");
    let mut schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    assert!(
        schema["$defs"].get(def).is_some(),
        "schema has no $defs/{def}"
    );
    schema["$ref"] = Value::String(format!("#/$defs/{def}"));
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn assert_valid(def: &str, doc: &Value) {
    let v = schema_for(def);
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{def}: {errors:#?}\n{doc:#}");
}

/// A watcher on an injected gauge (limit 1000 MiB) with `n` samples taken.
fn watcher(used_mib: Arc<AtomicU64>, n: usize) -> MemoryWatcher {
    let g: Arc<dyn MemoryGauge> = Arc::new(move || MemoryUsage {
        used_bytes: used_mib.load(Ordering::Relaxed) * MIB,
        limit_bytes: Some(1000 * MIB),
        source: UsageSource::Injected,
    });
    let w = MemoryWatcher::new(WatcherConfig::default(), g).unwrap();
    for _ in 0..n {
        w.sample_now();
    }
    w
}

fn router(w: MemoryWatcher, token: Option<&str>) -> Router {
    let registry = Arc::new(Registry::new());
    registry
        .register_source("memory", Arc::new(MemorySource::new(w.clone())))
        .unwrap();
    admin_router(AdminState::new("weir-test", w, registry).with_admin_token(token.map(Secret::new)))
}

async fn call(r: &Router, method: &str, uri: &str, token: Option<&str>) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = r
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec();
    (status, body)
}

async fn json(r: &Router, method: &str, uri: &str) -> (StatusCode, Value) {
    let (s, b) = call(r, method, uri, None).await;
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{uri} is not JSON ({e}): {}", String::from_utf8_lossy(&b)));
    (s, v)
}

#[tokio::test]
async fn every_endpoint_matches_its_schema() {
    let used = Arc::new(AtomicU64::new(750));
    let w = watcher(used.clone(), 12);
    let r = router(w, None);

    let (s, v) = json(&r, "GET", "/health").await;
    assert_eq!(s, StatusCode::OK);
    assert_valid("health", &v);
    assert_eq!(
        v["components"]["memory"]["status"], "degraded",
        "75 % is warning"
    );

    let (s, v) = json(&r, "GET", "/health/memory").await;
    assert_eq!(s, StatusCode::OK);
    assert_valid("health_memory", &v);
    assert_eq!(v["level"], "warning");
    assert_eq!(v["used_bytes"], 750 * MIB);

    let (s, v) = json(&r, "GET", "/api/memory/stats").await;
    assert_eq!(s, StatusCode::OK);
    assert_valid("stats", &v);
    assert_eq!(v["samples_taken"], 12);
    assert_eq!(v["history_capacity"], 1000);

    let (s, v) = json(&r, "GET", "/api/memory/history?limit=5").await;
    assert_eq!(s, StatusCode::OK);
    assert_valid("history", &v);
    assert_eq!(v["samples"].as_array().unwrap().len(), 5);
    assert_eq!(v["total"], 12);

    let (s, v) = json(&r, "GET", "/api/memory/leak-detection").await;
    assert_eq!(s, StatusCode::OK);
    assert_valid("leak_detection", &v);

    let (s, v) = json(&r, "GET", "/api/memory/report").await;
    assert_eq!(s, StatusCode::OK);
    assert_valid("report", &v);
    assert_eq!(v["history"].as_array().unwrap().len(), 12);
    assert_eq!(v["recent_alerts"][0]["kind"], "level_changed");

    // Profiling is off in this build: the endpoint says so, with no profile bytes.
    let (s, v) = json(&r, "POST", "/api/memory/snapshot").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_valid("error", &v);
    assert_eq!(v["error"], "profiling_unavailable");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("heap profiling is off")
    );

    let (s, body) = call(&r, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("weir_memory_used_bytes 786432000\n"),
        "{text}"
    );
    assert!(text.contains("weir_memory_pressure_ratio 0.75\n"));
}

#[tokio::test]
async fn the_schema_rejects_a_drifted_document() {
    // Proves the validation above can fail: a renamed field and a wrong enum value.
    let w = watcher(Arc::new(AtomicU64::new(100)), 2);
    let r = router(w, None);
    let (_, mut v) = json(&r, "GET", "/api/memory/stats").await;
    v["level"] = Value::String("amber".into());
    assert!(!schema_for("stats").is_valid(&v));
    let (_, mut v) = json(&r, "GET", "/health/memory").await;
    let x = v.as_object_mut().unwrap().remove("ratio").unwrap();
    v["pressure"] = x;
    assert!(!schema_for("health_memory").is_valid(&v));
}

#[tokio::test]
async fn admin_routes_need_the_token_and_health_stays_open() {
    let w = watcher(Arc::new(AtomicU64::new(100)), 1);
    let r = router(w, Some("s3cret-token"));
    for (method, uri) in [
        ("GET", "/api/memory/stats"),
        ("GET", "/api/memory/history"),
        ("GET", "/api/memory/leak-detection"),
        ("GET", "/api/memory/report"),
        ("POST", "/api/memory/snapshot"),
        ("GET", "/metrics"),
    ] {
        let (s, b) = call(&r, method, uri, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} without token");
        assert_valid("error", &serde_json::from_slice(&b).unwrap());
        let (s, _) = call(&r, method, uri, Some("wrong")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} with a wrong token");
        let (s, _) = call(&r, method, uri, Some("s3cret-token")).await;
        assert_ne!(s, StatusCode::UNAUTHORIZED, "{uri} with the token");
    }
    for uri in ["/health", "/health/memory"] {
        let (s, _) = call(&r, "GET", uri, None).await;
        assert_eq!(s, StatusCode::OK, "{uri} is open");
    }
}

#[tokio::test]
async fn memory_router_serves_the_read_only_memory_routes_alone() {
    let w = watcher(Arc::new(AtomicU64::new(100)), 3);
    let r = memory_router(AdminState::new("weir-test", w, Arc::new(Registry::new())));
    for (uri, def) in [
        ("/api/memory/stats", "stats"),
        ("/api/memory/history?limit=2", "history"),
        ("/api/memory/leak-detection", "leak_detection"),
        ("/api/memory/report", "report"),
    ] {
        let (s, v) = json(&r, "GET", uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert_valid(def, &v);
    }
    let (_, v) = json(&r, "GET", "/api/memory/history?limit=2").await;
    assert_eq!(v["samples"].as_array().unwrap().len(), 2);
    // Writes, metrics and health are the admin listener's (and the binary's) own.
    for (method, uri) in [
        ("POST", "/api/memory/snapshot"),
        ("GET", "/metrics"),
        ("GET", "/health"),
    ] {
        let (s, _) = call(&r, method, uri, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}");
    }
}

struct Slow;

#[async_trait::async_trait]
impl HealthCheck for Slow {
    async fn check(&self) -> ComponentHealth {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        ComponentHealth::up(None)
    }
}

#[tokio::test(start_paused = true)]
async fn health_aggregates_components_and_times_out_slow_checks() {
    let w = watcher(Arc::new(AtomicU64::new(100)), 1);
    let registry = Arc::new(Registry::new());
    let state = AdminState::new("weir-test", w.clone(), registry.clone())
        .with_check("graph_pool", Arc::new(|| ComponentHealth::up(None)))
        .with_check(
            "bus",
            Arc::new(|| ComponentHealth::degraded("reconnecting")),
        );
    let r = admin_router(state);
    let (s, v) = json(&r, "GET", "/health").await;
    assert_eq!(s, StatusCode::OK);
    assert_valid("health", &v);
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["components"]["graph_pool"]["status"], "up");
    assert_eq!(v["components"]["bus"]["detail"], "reconnecting");

    let state = AdminState::new("weir-test", w, registry)
        .with_check("graph_pool", Arc::new(Slow))
        .with_check_timeout(Duration::from_secs(2));
    let r = admin_router(state);
    let (s, v) = json(&r, "GET", "/health").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_valid("health", &v);
    assert_eq!(v["status"], "down");
    assert_eq!(v["components"]["graph_pool"]["status"], "down");
}

#[tokio::test]
async fn history_endpoint_is_bounded_by_the_ring() {
    let w = watcher(Arc::new(AtomicU64::new(100)), 1500);
    let r = router(w, None);
    let (_, v) = json(&r, "GET", "/api/memory/history").await;
    assert_eq!(v["samples"].as_array().unwrap().len(), 1000);
    assert_eq!(v["total"], 1000);
    let (_, v) = json(&r, "GET", "/api/memory/history?limit=100000").await;
    assert_eq!(v["samples"].as_array().unwrap().len(), 1000);
}
