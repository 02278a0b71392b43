//! Against the shared NATS: two gateway replicas, each with its own connection and consumer,
//! each receive every batch exactly once and in order; progress reaches both.

mod common;

use std::time::Duration;

use futures::StreamExt;
use weir_bus::{Bus, BusConfig};
use weir_events::{EVENT_FORMAT_VERSION, JobState, PressureState, ProgressEvent};

#[tokio::test]
async fn two_replicas_each_get_every_batch_once_in_order() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("REPLICAS");
    let config = BusConfig::Nats(common::nats_config(&nats.settings.url, &stream));
    let ingest = Bus::connect(&config).await.unwrap();
    let replica_a = Bus::connect(&config).await.unwrap();
    let replica_b = Bus::connect(&config).await.unwrap();
    let mut a = replica_a.subscribe_changes(None).await.unwrap();
    let mut b = replica_b.subscribe_changes(None).await.unwrap();
    let mut pa = replica_a.subscribe_progress().await.unwrap();
    let mut pb = replica_b.subscribe_progress().await.unwrap();

    const N: usize = 200;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            let p = ingest
                .publish_changes(common::batch("j", &format!("j-{i}")))
                .await
                .unwrap();
            assert_eq!(p.seq, i as u64);
        }
        ingest
    });
    let (got_a, got_b) = tokio::join!(common::take(&mut a, N), common::take(&mut b, N));
    let want: Vec<(u64, String)> = (1..=N).map(|i| (i as u64, format!("j-{i}"))).collect();
    assert_eq!(got_a, want);
    assert_eq!(got_b, want);
    common::assert_quiet(&mut a, 300).await;
    common::assert_quiet(&mut b, 10).await;
    let ingest = publisher.await.unwrap();
    assert_eq!(replica_a.metrics().snapshot().consumed, N as u64);
    assert_eq!(replica_b.metrics().snapshot().consumed, N as u64);

    // Core NATS subscriptions become active asynchronously: flush-by-request first.
    replica_a.check_ready().await.unwrap();
    replica_b.check_ready().await.unwrap();
    let ev = ProgressEvent {
        version: EVENT_FORMAT_VERSION,
        job_id: "j".into(),
        state: JobState::Completed,
        records_read: N as u64,
        records_committed: N as u64,
        records_dead_lettered: 0,
        bytes_read: 1,
        bytes_total: Some(1),
        records_per_sec: 1.0,
        batches_in_flight: 0,
        pressure: PressureState::Normal,
        pressure_ratio: None,
        eta_secs: None,
        elapsed_secs: 1.0,
        error: None,
    };
    ingest.publish_progress(&ev).await.unwrap();
    for p in [&mut pa, &mut pb] {
        let got = tokio::time::timeout(Duration::from_secs(10), p.next())
            .await
            .expect("progress within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(got, ev);
    }
}

#[tokio::test]
async fn a_killed_replica_catches_up_with_since_while_the_other_keeps_delivering() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("FAILOVER");
    let config = BusConfig::Nats(common::nats_config(&nats.settings.url, &stream));
    let ingest = Bus::connect(&config).await.unwrap();
    let survivor = Bus::connect(&config).await.unwrap();
    let mut s = survivor.subscribe_changes(None).await.unwrap();
    let doomed = Bus::connect(&config).await.unwrap();
    let mut d = doomed.subscribe_changes(None).await.unwrap();

    for i in 1..=5 {
        ingest
            .publish_changes(common::batch("j", &format!("j-{i}")))
            .await
            .unwrap();
    }
    let seen = common::take(&mut d, 3).await;
    let last_seen = seen.last().unwrap().0;
    assert_eq!(last_seen, 3);
    // The replica dies: its connection and consumer go away with it.
    drop(d);
    drop(doomed);
    for i in 6..=10 {
        ingest
            .publish_changes(common::batch("j", &format!("j-{i}")))
            .await
            .unwrap();
    }
    let all: Vec<u64> = common::take(&mut s, 10)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(all, (1..=10).collect::<Vec<u64>>());

    // Restarted, its client resubscribes with the last seq it received.
    let restarted = Bus::connect(&config).await.unwrap();
    let mut r = restarted.subscribe_changes(Some(last_seen)).await.unwrap();
    let missed: Vec<u64> = common::take(&mut r, 7)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(missed, (4..=10).collect::<Vec<u64>>());
    common::assert_quiet(&mut r, 300).await;
}
