//! A bounded soak: subscription churn plus repeated ingests for `WEIR_SOAK_SECS` seconds
//! (default 150: the issue asks for a few minutes), with the memory watcher sampling this
//! process's real RSS every 100 ms. The history never exceeds its bound and the leak
//! detector's verdict never turns to growing or leaking.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use weir_events::fixture::{self, EventFixture};
use weir_events::{ChangeBatch, EntityKind, Operation};
use weir_memwatch::{LeakConfig, LeakVerdict, MemoryAlert, MemoryWatcher, WatcherConfig};
use weir_stream::{
    CancellationToken, Decoded, DecodedRecord, MapError, NullSink, Pipeline, PipelineConfig,
    ReaderSource,
};
use weir_subscriptions::{ChangeFilter, SubscribeOptions, SubscriptionManager, Topic};

const HISTORY: usize = 200;

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

fn batch(n: u64) -> ChangeBatch {
    let events = (0..20)
        .map(|i| {
            fixture::event(
                EntityKind::Node,
                "Person",
                &format!("{n}-{i}"),
                Operation::Created,
            )
            .with_seq(0, i)
        })
        .collect();
    let mut b = fixture::batch("soak", &format!("b{n}"), events);
    b.seq = n;
    b
}

async fn ingest_once(rows: usize) {
    let mut csv = String::from("id\n");
    for i in 0..rows {
        csv.push_str(&format!("{i}\n"));
    }
    let cfg = PipelineConfig {
        job_id: "soak".into(),
        ..PipelineConfig::default()
    };
    let source = ReaderSource::new(Cursor::new(csv.into_bytes()), "soak.csv", &cfg);
    let s = Pipeline::new(cfg, map_row, NullSink::<u64>::new())
        .run(source, CancellationToken::new())
        .await
        .expect("ingest");
    assert_eq!(s.records_committed, rows as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_ingest_stay_stable_and_bounded() {
    let secs: u64 = std::env::var("WEIR_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let manager = SubscriptionManager::new(Default::default()).unwrap();

    // Warm up once so allocator pools and runtime threads exist before sampling starts.
    ingest_once(20_000).await;

    let watcher = MemoryWatcher::for_process(
        WatcherConfig {
            interval: Duration::from_millis(100),
            history_capacity: HISTORY,
            leak: LeakConfig {
                window: Duration::from_secs(20),
                min_samples: 30,
                min_span: Duration::from_secs(5),
                min_growth_bytes: 16 << 20,
                ..LeakConfig::default()
            },
            ..WatcherConfig::default()
        },
        None,
    )
    .unwrap();
    let mut alerts = watcher.subscribe();
    let cancel = CancellationToken::new();
    let sampler = watcher.spawn(cancel.clone());
    let stop = Arc::new(AtomicBool::new(false));

    // Subscription churn: open 50, publish, drain, drop; repeat.
    let churn = {
        let manager = manager.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let conn = manager.connect();
                let mut subs: Vec<_> = (0..50)
                    .map(|_| {
                        conn.subscribe(
                            Topic::Changes(ChangeFilter::default()),
                            SubscribeOptions::default(),
                        )
                        .unwrap()
                    })
                    .collect();
                for _ in 0..5 {
                    n += 1;
                    manager.publish(std::sync::Arc::new(batch(n)));
                }
                for s in subs.iter_mut().take(10) {
                    let _ = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
                }
                drop(subs);
                drop(conn);
                tokio::task::yield_now().await;
            }
        })
    };
    let ingest = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ingest_once(20_000).await;
            }
        })
    };

    let mut max_len = 0;
    let mut verdicts = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        max_len = max_len.max(watcher.history().len());
        verdicts.insert(watcher.leak_status().verdict);
    }
    stop.store(true, Ordering::Relaxed);
    churn.await.unwrap();
    ingest.await.unwrap();
    cancel.cancel();
    sampler.await.unwrap();

    assert!(max_len <= HISTORY, "history reached {max_len}");
    if secs >= 25 {
        assert_eq!(max_len, HISTORY, "the soak filled the ring");
    }
    assert_eq!(manager.active(), 0, "every subscription removed");
    let status = watcher.leak_status();
    assert!(
        !verdicts.contains(&LeakVerdict::Leaking) && !verdicts.contains(&LeakVerdict::Growing),
        "verdicts seen {verdicts:?}; last {status:?}"
    );
    assert_eq!(status.verdict, LeakVerdict::Stable, "{status:?}");
    while let Ok(a) = alerts.try_recv() {
        if let MemoryAlert::VerdictChanged { to, analysis, .. } = a {
            assert!(
                matches!(to, LeakVerdict::Stable | LeakVerdict::InsufficientData),
                "{to:?}: {analysis:?}"
            );
        }
    }
}
