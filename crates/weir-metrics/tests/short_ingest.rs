//! After a short ingest with every subsystem wired (a real graph pool against the local graph
//! server, the in-process bus, the subscription manager, a stream pipeline attached to the
//! stream metrics),
//! `/metrics` carries every metric in `weir_metrics::names::ALL` and passes
//! `promtool check metrics`.
//!
//! Needs the graph server of `scripts/dev.sh up`; fails loudly without it.

use std::io::{Cursor, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use tower::ServiceExt;
use weir_events::fixture;
use weir_events::{ChangeBatch, EntityKind, Operation};
use weir_memwatch::{MemoryWatcher, WatcherConfig};
use weir_metrics::names::ALL;
use weir_metrics::{
    AdminState, MemorySource, Registry, StreamMetrics, admin_router, bus_source, pool_source,
    subscriptions_source,
};
use weir_stream::{
    CancellationToken, Decoded, DecodedRecord, MapError, MemoryDeadLetters, NullSink, Pipeline,
    PipelineConfig, ReaderSource,
};
use weir_subscriptions::{ChangeFilter, SubscribeOptions, SubscriptionManager, Topic};

fn map_row(rec: &DecodedRecord<'_>) -> Result<u64, MapError> {
    match &rec.value {
        Decoded::Csv(row) => row
            .get("id")
            .ok_or_else(|| MapError::field("id", "missing"))?
            .parse::<u64>()
            .map_err(|e| MapError::field("id", e.to_string())),
        Decoded::Json(_) => Err(MapError::record("expected CSV")),
    }
}

fn change_batch(n: u64) -> ChangeBatch {
    fixture::batch(
        "metrics-test",
        &format!("b{n}"),
        vec![fixture::event(
            EntityKind::Node,
            "Person",
            &n.to_string(),
            Operation::Created,
        )],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_every_defined_metric_after_a_short_ingest() {
    let registry = Arc::new(Registry::new());

    // Memory.
    let watcher = MemoryWatcher::for_process(WatcherConfig::default(), Some(8 << 30)).unwrap();
    watcher.sample_now();
    registry
        .register_source("memory", Arc::new(MemorySource::new(watcher.clone())))
        .unwrap();

    // Graph pool against the real server.
    let settings = weir_test_support::settings();
    let pool = weir_pool::Pool::new(settings.graph.clone(), weir_pool::PoolConfig::default())
        .expect("pool");
    assert!(
        pool.wait_ready(Duration::from_secs(15)).await,
        "graph server not reachable at {}\n  -> {}",
        settings.graph.uri,
        weir_test_support::START_HINT
    );
    for _ in 0..3 {
        pool.execute(weir_pool::query("RETURN 1 AS x"))
            .await
            .expect("RETURN 1");
    }
    let p = pool.clone();
    registry
        .register_source("pool", Arc::new(pool_source("write", move || p.status())))
        .unwrap();

    // Bus (in-process) and subscriptions.
    let bus = weir_bus::InProcessBus::new(&weir_bus::InProcessConfig::default()).unwrap();
    registry
        .register_source("bus", Arc::new(bus_source(bus.metrics().clone())))
        .unwrap();
    let mut changes = bus.subscribe_changes(None).unwrap();
    let manager = SubscriptionManager::new(Default::default()).unwrap();
    let m = manager.clone();
    registry
        .register_source(
            "subscriptions",
            Arc::new(subscriptions_source(move || m.stats())),
        )
        .unwrap();
    let conn = manager.connect();
    let mut sub = conn
        .subscribe(
            Topic::Changes(ChangeFilter::default()),
            SubscribeOptions::default(),
        )
        .unwrap();
    for n in 0..3 {
        bus.publish_changes(change_batch(n));
    }
    for _ in 0..3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("bus delivers")
            .expect("stream open")
            .expect("batch");
        manager.publish(batch);
    }
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(first, Ok(Some(_))), "subscription got an event");
    drop(sub);

    // Stream: 1000 rows, 10 of them bad (dead-lettered), attached to the stream metrics.
    let stream_metrics = StreamMetrics::new();
    registry
        .register_source("stream", Arc::new(stream_metrics.clone()))
        .unwrap();
    let mut csv = String::from("id,name\n");
    for i in 0..1000 {
        if i % 100 == 7 {
            csv.push_str("not-a-number,x\n");
        } else {
            csv.push_str(&format!("{i},n{i}\n"));
        }
    }
    let cfg = PipelineConfig {
        job_id: "metrics-test".into(),
        ..PipelineConfig::default()
    };
    let source = ReaderSource::new(Cursor::new(csv.into_bytes()), "m.csv", &cfg);
    let (pipeline, follower) = stream_metrics.attach(
        Pipeline::new(cfg, map_row, NullSink::<u64>::new())
            .with_dead_letters(Arc::new(MemoryDeadLetters::new(100))),
    );
    let summary = pipeline
        .run(source, CancellationToken::new())
        .await
        .expect("ingest");
    assert_eq!(summary.records_committed, 990);
    follower.await.unwrap();

    // Scrape through the endpoint.
    let router = admin_router(AdminState::new("weir-test", watcher, registry));
    let resp = router
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();

    let missing: Vec<&str> = ALL
        .iter()
        .filter(|d| !text.contains(&format!("# TYPE {} {}\n", d.name, d.kind.as_str())))
        .map(|d| d.name)
        // Present only with jemalloc / in a limited cgroup: checked where they apply; the
        // consumer's come from a `weir consume` worker, scraped by tests/tests/consume.rs.
        .filter(|n| {
            !n.starts_with("weir_memory_allocator_")
                && !n.starts_with("weir_memory_cgroup_")
                && !n.starts_with("weir_consumer_")
        })
        .collect();
    assert!(missing.is_empty(), "missing metrics: {missing:?}\n{text}");
    assert!(
        text.contains("weir_stream_records_committed_total 990\n"),
        "{text}"
    );
    assert!(text.contains("weir_stream_records_dead_lettered_total 10\n"));
    assert!(
        text.contains("weir_stream_batch_duration_seconds_count ")
            && !text.contains("weir_stream_batch_duration_seconds_count 0\n"),
        "batches timed: {text}"
    );
    assert!(text.contains("weir_bus_published_batches_total 3\n"));
    assert!(text.contains("weir_subscriptions_created_total 1\n"));
    assert!(text.contains("weir_pool_circuit_state{pool=\"write\",state=\"closed\"} 1\n"));

    // promtool parses it.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib/ensure-promtool.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "promtool unavailable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let promtool = String::from_utf8(out.stdout).unwrap();
    let mut child = Command::new(promtool.trim())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pool.close().await;
}
