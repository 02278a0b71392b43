//! Against the shared NATS: publishing assigns the stream sequence, a republished batch id is
//! a duplicate with the original seq, and a subscriber sees it once.

mod common;

use weir_bus::{Bus, BusConfig};

#[tokio::test]
async fn republished_batch_is_deduplicated_and_delivered_once() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("DEDUP");
    let bus = Bus::connect(&BusConfig::Nats(common::nats_config(
        &nats.settings.url,
        &stream,
    )))
    .await
    .unwrap();
    bus.check_ready().await.unwrap();
    let mut sub = bus.subscribe_changes(None).await.unwrap();

    let first = bus
        .publish_changes(common::batch("j", "j-1"))
        .await
        .unwrap();
    let second = bus
        .publish_changes(common::batch("j", "j-2"))
        .await
        .unwrap();
    // The retry of j-1 (e.g. after a lost ack) is recognised, with j-1's seq.
    let retry = bus
        .publish_changes(common::batch("j", "j-1"))
        .await
        .unwrap();
    let third = bus
        .publish_changes(common::batch("j", "j-3"))
        .await
        .unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    assert_eq!((second.seq, second.duplicate), (2, false));
    assert_eq!((retry.seq, retry.duplicate), (1, true));
    assert_eq!((third.seq, third.duplicate), (3, false));

    let got = common::take(&mut sub, 3).await;
    assert_eq!(
        got,
        [(1, "j-1".into()), (2, "j-2".into()), (3, "j-3".into())]
    );
    common::assert_quiet(&mut sub, 300).await;
    let m = bus.metrics().snapshot();
    assert_eq!((m.published, m.duplicates, m.consumed), (3, 1, 3));
}

#[tokio::test]
async fn events_carry_seq_and_index_after_the_bus() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("SEQ");
    let bus = Bus::connect(&BusConfig::Nats(common::nats_config(
        &nats.settings.url,
        &stream,
    )))
    .await
    .unwrap();
    let mut sub = bus.subscribe_changes(Some(0)).await.unwrap();
    let p = bus
        .publish_changes(common::batch("j", "j-1"))
        .await
        .unwrap();
    let b = common::next(&mut sub).await.unwrap();
    assert_eq!(b.seq, p.seq);
    let positions: Vec<(u64, u32)> = b.events.iter().map(|e| (e.seq, e.index)).collect();
    assert_eq!(positions, [(p.seq, 0), (p.seq, 1)]);
    assert_eq!(b.events[1].start.as_ref().unwrap().key, "a");
}
