//! A subscription whose stream is deleted ends with `StreamNotFound` (what it held past the
//! last seq delivered is gone): the gateway tells its subscribers instead of waiting silently.

mod common;

use std::time::Duration;

use futures::StreamExt;
use weir_bus::{Bus, BusConfig, BusError};

#[tokio::test]
async fn a_deleted_stream_ends_its_subscriptions_with_stream_not_found() {
    let nats = weir_test_support::nats().await;
    let stream = nats.name("DELETED");
    let bus = Bus::connect(&BusConfig::Nats(common::nats_config(
        &nats.settings.url,
        &stream,
    )))
    .await
    .unwrap();
    bus.publish_changes(common::batch("j", "j-1"))
        .await
        .unwrap();
    let mut sub = bus.subscribe_changes(Some(0)).await.unwrap();
    assert_eq!(common::next(&mut sub).await.unwrap().seq, 1);
    nats.jetstream.delete_stream(&stream).await.unwrap();
    let started = std::time::Instant::now();
    let item = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("the subscription reacts to the deletion");
    assert!(
        matches!(item, Some(Err(BusError::StreamNotFound { .. }))),
        "{item:?}"
    );
    eprintln!("noticed after {:?}", started.elapsed());
    assert!(sub.next().await.is_none());
    // Subscribing while it is gone says so too.
    assert!(matches!(
        bus.subscribe_changes(None).await,
        Err(BusError::StreamNotFound { .. })
    ));
}
