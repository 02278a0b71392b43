//! Against the shared NATS: `since` replays what a subscriber missed; a `since` older than the
//! retention, or newer than anything published, is a typed error.

mod common;

use weir_bus::{Bus, BusConfig, BusError};

#[tokio::test]
async fn since_replays_missed_batches_then_continues_live() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("SINCE");
    let bus = Bus::connect(&BusConfig::Nats(common::nats_config(
        &nats.settings.url,
        &stream,
    )))
    .await
    .unwrap();
    for i in 1..=5 {
        bus.publish_changes(common::batch("j", &format!("j-{i}")))
            .await
            .unwrap();
    }
    // A client that saw up to seq 2 reconnects.
    let mut sub = bus.subscribe_changes(Some(2)).await.unwrap();
    let seqs: Vec<u64> = common::take(&mut sub, 3)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    bus.publish_changes(common::batch("j", "j-6"))
        .await
        .unwrap();
    assert_eq!(common::next(&mut sub).await.unwrap().seq, 6);
    common::assert_quiet(&mut sub, 300).await;

    // Caught up exactly: nothing to replay, live from here.
    let mut tail = bus.subscribe_changes(Some(6)).await.unwrap();
    common::assert_quiet(&mut tail, 200).await;
    bus.publish_changes(common::batch("j", "j-7"))
        .await
        .unwrap();
    assert_eq!(common::next(&mut tail).await.unwrap().seq, 7);

    match bus.subscribe_changes(Some(99)).await {
        Err(BusError::SinceAhead { since: 99, last: 7 }) => {}
        other => panic!("expected SinceAhead, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn since_older_than_retention_is_a_clear_error() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("OLD");
    let mut config = common::nats_config(&nats.settings.url, &stream);
    // Room for a few batches only: older ones are dropped by the byte limit.
    config.max_bytes = 4096;
    let bus = Bus::connect(&BusConfig::Nats(config)).await.unwrap();
    let mut last = 0;
    for i in 1..=30 {
        last = bus
            .publish_changes(common::batch("j", &format!("j-{i}")))
            .await
            .unwrap()
            .seq;
    }
    assert_eq!(last, 30);
    let Bus::Nats(nats_bus) = &bus else {
        panic!("a NATS bus")
    };
    let (first, newest) = nats_bus.retained_range().await.unwrap();
    assert_eq!(newest, 30);
    assert!(
        first > 2 && first <= 30,
        "retention dropped old batches: first = {first}"
    );

    let err = match bus.subscribe_changes(Some(1)).await {
        Err(e) => e,
        Ok(_) => panic!("since = 1 must be too old"),
    };
    match &err {
        BusError::SinceTooOld {
            since: 1,
            first_retained,
        } => assert_eq!(*first_retained, first),
        other => panic!("expected SinceTooOld, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("oldest retained change is seq"), "{text}");

    // The oldest replayable point still works and replays everything retained.
    let mut sub = bus.subscribe_changes(Some(first - 1)).await.unwrap();
    let got = common::take(&mut sub, usize::try_from(30 - first + 1).unwrap()).await;
    assert_eq!(got.first().unwrap().0, first);
    assert_eq!(got.last().unwrap().0, 30);
}
