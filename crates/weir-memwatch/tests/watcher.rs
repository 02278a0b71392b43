//! The watcher on an injected gauge, on tokio's paused clock: sampling cadence, the history
//! bound, alerts only on changes, verdict debouncing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_memwatch::{
    LeakConfig, LeakVerdict, MemoryAlert, MemoryGauge, MemoryUsage, MemoryWatcher, PressureLevel,
    UsageSource, WatcherConfig,
};

const MIB: u64 = 1 << 20;

/// A gauge whose reading the test sets; limit 1000 MiB.
fn gauge() -> (Arc<AtomicU64>, Arc<dyn MemoryGauge>) {
    let used = Arc::new(AtomicU64::new(100 * MIB));
    let u = used.clone();
    let g = move || MemoryUsage {
        used_bytes: u.load(Ordering::Relaxed),
        limit_bytes: Some(1000 * MIB),
        source: UsageSource::Injected,
    };
    (used, Arc::new(g))
}

fn config() -> WatcherConfig {
    WatcherConfig {
        interval: Duration::from_secs(10),
        history_capacity: 1000,
        leak: LeakConfig {
            window: Duration::from_secs(3600),
            min_span: Duration::from_secs(300),
            ..LeakConfig::default()
        },
        ..WatcherConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn samples_on_the_interval_until_cancelled() {
    let (_, g) = gauge();
    let w = MemoryWatcher::new(config(), g).unwrap();
    let cancel = CancellationToken::new();
    let task = w.spawn(cancel.clone());
    // First sample at once, then one every 10 s: t = 0, 10, ..., 100 -> 11 samples.
    tokio::time::sleep(Duration::from_secs(105)).await;
    assert_eq!(w.stats().samples_taken, 11);
    let h = w.history();
    let gaps: Vec<f64> = h
        .windows(2)
        .map(|p| p[1].uptime_seconds - p[0].uptime_seconds)
        .collect();
    assert!(gaps.iter().all(|g| (g - 10.0).abs() < 1e-6), "{gaps:?}");
    cancel.cancel();
    task.await.unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(w.stats().samples_taken, 11, "no sampling after cancel");
}

#[tokio::test(start_paused = true)]
async fn history_never_exceeds_its_bound() {
    let (used, g) = gauge();
    let cfg = WatcherConfig {
        history_capacity: 50,
        ..config()
    };
    let w = MemoryWatcher::new(cfg, g).unwrap();
    for i in 0..500u64 {
        used.store(100 * MIB + i, Ordering::Relaxed);
        w.sample_now();
        assert!(w.history().len() <= 50);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let h = w.history();
    assert_eq!(h.len(), 50);
    assert_eq!(
        h.first().unwrap().used_bytes,
        100 * MIB + 450,
        "keeps the newest"
    );
    assert_eq!(w.stats().samples_taken, 500);
    assert_eq!(w.report().history.len(), 50);
}

#[tokio::test(start_paused = true)]
async fn default_history_bound_is_1000() {
    let (_, g) = gauge();
    let w = MemoryWatcher::new(WatcherConfig::default(), g).unwrap();
    for _ in 0..1200 {
        w.sample_now();
    }
    assert_eq!(w.history().len(), 1000);
    assert_eq!(w.stats().history_capacity, 1000);
}

#[tokio::test(start_paused = true)]
async fn level_alerts_fire_only_on_changes() {
    let (used, g) = gauge();
    let w = MemoryWatcher::new(config(), g).unwrap();
    let mut rx = w.subscribe();
    let mut levels = Vec::new();
    // normal x3, warning x3, critical x3, normal x3.
    for mib in [100, 200, 300, 750, 760, 770, 950, 960, 940, 100, 100, 100] {
        used.store(mib * MIB, Ordering::Relaxed);
        w.sample_now();
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    while let Ok(a) = rx.try_recv() {
        if let MemoryAlert::LevelChanged { from, to, .. } = a {
            levels.push((from, to));
        }
    }
    use PressureLevel::*;
    assert_eq!(
        levels,
        vec![
            (Unknown, Normal),
            (Normal, Warning),
            (Warning, Critical),
            (Critical, Normal)
        ]
    );
    assert_eq!(w.level(), Normal);
    assert_eq!(w.report().recent_alerts.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn growing_series_is_flagged_once_and_flat_one_is_not() {
    let (used, g) = gauge();
    let w = MemoryWatcher::new(config(), g).unwrap();
    let mut rx = w.subscribe();
    // Flat for 30 minutes (180 samples): the verdict settles on stable.
    for _ in 0..180 {
        w.sample_now();
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    assert_eq!(w.leak_status().verdict, LeakVerdict::Stable);
    // Then +1 MiB per minute (60 %/h of 100 MiB) for an hour.
    for i in 0..360u64 {
        used.store(100 * MIB + i * MIB / 6, Ordering::Relaxed);
        w.sample_now();
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    let st = w.leak_status();
    assert_eq!(st.verdict, LeakVerdict::Leaking, "{st:?}");
    let verdicts: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|a| match a {
            MemoryAlert::VerdictChanged { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    // insufficient -> stable, then (possibly via growing) -> leaking; each change once.
    assert_eq!(verdicts.first(), Some(&LeakVerdict::Stable));
    assert_eq!(verdicts.last(), Some(&LeakVerdict::Leaking));
    assert!(verdicts.len() <= 3, "{verdicts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_short_burst_does_not_change_the_verdict() {
    let (used, g) = gauge();
    let w = MemoryWatcher::new(config(), g).unwrap();
    let mut verdicts = std::collections::HashSet::new();
    for i in 0..400u64 {
        // Flat with a 2-sample burst to 600 MiB every 100 samples.
        let burst = i % 100 == 50 || i % 100 == 51;
        used.store(if burst { 600 } else { 100 } * MIB, Ordering::Relaxed);
        w.sample_now();
        verdicts.insert(w.leak_status().verdict);
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    verdicts.remove(&LeakVerdict::InsufficientData);
    assert_eq!(
        verdicts.into_iter().collect::<Vec<_>>(),
        vec![LeakVerdict::Stable]
    );
}

#[tokio::test(start_paused = true)]
async fn verdict_needs_consecutive_confirmations() {
    let (_, g) = gauge();
    let cfg = WatcherConfig {
        verdict_confirmations: 5,
        leak: LeakConfig {
            min_samples: 3,
            min_span: Duration::from_secs(1),
            ..config().leak
        },
        ..config()
    };
    let w = MemoryWatcher::new(cfg, g).unwrap();
    // Samples 1 and 2: insufficient; from sample 3 on the analysis says stable, and the
    // reported verdict follows only at the 5th stable analysis (sample 7).
    for n in 1..=7 {
        w.sample_now();
        tokio::time::advance(Duration::from_secs(10)).await;
        let expected = if n < 7 {
            LeakVerdict::InsufficientData
        } else {
            LeakVerdict::Stable
        };
        assert_eq!(w.leak_status().verdict, expected, "after sample {n}");
    }
}

#[test]
fn invalid_config_is_rejected_with_the_field() {
    let (_, g) = gauge();
    let e = MemoryWatcher::new(
        WatcherConfig {
            history_capacity: 1,
            ..WatcherConfig::default()
        },
        g,
    )
    .unwrap_err();
    assert!(e.to_string().contains("history_capacity"), "{e}");
}

#[tokio::test]
async fn the_watcher_is_a_gauge_reading_live() {
    let (used, g) = gauge();
    let w = MemoryWatcher::new(config(), g).unwrap();
    used.store(900 * MIB, Ordering::Relaxed);
    assert_eq!(MemoryGauge::usage(&w).ratio(), Some(0.9));
}

#[tokio::test(start_paused = true)]
async fn process_memory_log_is_off_at_zero_and_stops_when_cancelled() {
    use weir_memwatch::spawn_process_memory_log;
    let cancel = CancellationToken::new();
    assert!(
        spawn_process_memory_log(Duration::ZERO, None, cancel.clone())
            .unwrap()
            .is_none()
    );
    let task = spawn_process_memory_log(Duration::from_millis(100), None, cancel.clone())
        .unwrap()
        .expect("a task for a positive interval");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!task.is_finished());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops on cancel")
        .unwrap();
}
