//! NATS stopped for a while, with a private `nats-server` this test starts and stops:
//! publishing fails fast (bounded, nothing queued without limit), the caller's retries of the
//! same batch are deduplicated, and after NATS returns every batch is delivered once, in order.

mod common;

use std::time::Duration;

use weir_bus::{Bus, BusConfig, BusError, NatsBusConfig};
use weir_test_support::nats_server::PrivateNatsServer;

fn config(server: &PrivateNatsServer, client_capacity: usize) -> NatsBusConfig {
    NatsBusConfig {
        publish_timeout: Duration::from_millis(400),
        client_capacity,
        ..common::nats_config(&server.url(), "OUTAGE")
    }
}

/// Waits until `check_ready` answers `want` (connected or not); panics after 20 s.
async fn wait_ready(bus: &Bus, want: bool) {
    for _ in 0..200 {
        if bus.check_ready().await.is_ok() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("bus readiness did not become {want} within 20 s");
}

/// The ingest pipeline's publishing loop: each batch is retried (same batch id) until the
/// bus accepts it; transient errors pause it. Returns the number of failed attempts.
async fn publish_all(bus: Bus, from: usize, to: usize) -> u64 {
    let mut failures = 0;
    for i in from..=to {
        let batch = common::batch("j", &format!("j-{i}"));
        loop {
            match bus.publish_changes(batch.clone()).await {
                Ok(p) => {
                    assert_eq!(p.seq, i as u64, "batch j-{i} got seq {}", p.seq);
                    break;
                }
                Err(e) if e.is_transient() => {
                    assert!(
                        matches!(e, BusError::PublishTimeout { .. }),
                        "unexpected error while NATS is down: {e}"
                    );
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("non-transient publish error: {e}"),
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_pauses_publishing_then_resumes_with_nothing_lost_or_doubled() {
    let mut server = PrivateNatsServer::start_new();
    let config = BusConfig::Nats(config(&server, 8));
    let ingest = Bus::connect(&config).await.unwrap();
    let gateway = Bus::connect(&config).await.unwrap();
    let mut sub = gateway.subscribe_changes(None).await.unwrap();

    assert_eq!(publish_all(ingest.clone(), 1, 10).await, 0);
    let before = common::take(&mut sub, 10).await;
    assert_eq!(before.last().unwrap().0, 10);

    server.stop();
    wait_ready(&ingest, false).await;
    let publisher = tokio::spawn(publish_all(ingest.clone(), 11, 30));
    // Let the publisher fail (and retry batch 11) a few times while NATS is down.
    for _ in 0..200 {
        if ingest.metrics().snapshot().publish_errors >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = ingest.metrics().snapshot();
    assert!(
        during.publish_errors >= 3,
        "publishes must fail fast while NATS is down"
    );
    assert_eq!(
        during.published, 10,
        "nothing is accepted while NATS is down"
    );

    server.start();
    let failures = publisher.await.unwrap();
    assert!(failures >= 3);

    // Every batch once, in order, on the gateway that was subscribed through the outage.
    let after = common::take(&mut sub, 20).await;
    let want: Vec<(u64, String)> = (11..=30).map(|i| (i as u64, format!("j-{i}"))).collect();
    assert_eq!(after, want);
    common::assert_quiet(&mut sub, 500).await;

    // The stream holds exactly 30 messages: the retries of batch 11 were deduplicated.
    let Bus::Nats(n) = &ingest else {
        panic!("a NATS bus")
    };
    assert_eq!(n.retained_range().await.unwrap(), (1, 30));
    let m = ingest.metrics().snapshot();
    // Each batch acknowledged exactly once to the caller: as new, or (when a timed-out copy
    // from the client buffer reached the stream first) as a duplicate of itself.
    assert_eq!(m.published + m.duplicates, 30);
    // A late subscriber replaying from the start sees the same 30.
    let mut replay = gateway.subscribe_changes(Some(0)).await.unwrap();
    let all = common::take(&mut replay, 30).await;
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as u64 + 1)
    );
    common::assert_quiet(&mut replay, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_buffer_is_bounded_by_client_capacity() {
    const CAPACITY: usize = 4;
    const ATTEMPTS: usize = 40;
    let mut server = PrivateNatsServer::start_new();
    let bus = Bus::connect(&BusConfig::Nats(config(&server, CAPACITY)))
        .await
        .unwrap();
    server.stop();
    wait_ready(&bus, false).await;

    // Many distinct batches while NATS is down: every publish fails with a timeout instead of
    // piling up in the client.
    let tasks: Vec<_> = (0..ATTEMPTS)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.publish_changes(common::batch("j", &format!("offline-{i}")))
                    .await
            })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            Err(BusError::PublishTimeout { .. }) => {}
            other => panic!("expected PublishTimeout while NATS is down, got {other:?}"),
        }
    }
    assert_eq!(bus.metrics().snapshot().publish_errors, ATTEMPTS as u64);

    server.start();
    wait_ready(&bus, true).await;
    let marker = loop {
        match bus.publish_changes(common::batch("j", "marker")).await {
            Ok(p) => break p,
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    };
    // What reached the stream from the outage is what the bounded client buffer held: at most
    // `client_capacity` commands (the rest were refused to their callers).
    let buffered = marker.seq - 1;
    assert!(
        buffered <= CAPACITY as u64,
        "{buffered} offline publishes were buffered, bound is {CAPACITY}"
    );
    let mut sub = bus.subscribe_changes(Some(0)).await.unwrap();
    let got = common::take(&mut sub, usize::try_from(marker.seq).unwrap()).await;
    assert_eq!(got.last().unwrap().1, "marker");
    assert!(
        got[..got.len() - 1]
            .iter()
            .all(|(_, id)| id.starts_with("offline-"))
    );
    println!("offline publishes buffered and delivered after reconnect: {buffered} of {ATTEMPTS}");
}

#[tokio::test]
async fn connect_and_readiness_report_an_unreachable_nats() {
    let mut server = PrivateNatsServer::start_new();
    server.stop();
    let mut config = config(&server, 8);
    config.connect_timeout = Duration::from_secs(1);
    match Bus::connect(&BusConfig::Nats(config)).await {
        Err(e @ BusError::Unavailable { .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains(&server.url()), "{e}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
