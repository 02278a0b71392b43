//! Against the shared NATS: a subscriber that does not read holds at most
//! `consumer_max_batch` batches on the client side; the server keeps the rest.

mod common;

use std::time::Duration;

use futures::TryStreamExt;
use weir_bus::{Bus, BusConfig, NatsBusConfig};

#[tokio::test]
async fn an_idle_subscriber_pulls_at_most_consumer_max_batch() {
    const MAX_BATCH: usize = 16;
    let nats = weir_test_support::nats().await;
    let stream = nats.name("BOUND");
    let config = NatsBusConfig {
        consumer_max_batch: MAX_BATCH,
        ..common::nats_config(&nats.settings.url, &stream)
    };
    let bus = Bus::connect(&BusConfig::Nats(config)).await.unwrap();
    let mut sub = bus.subscribe_changes(None).await.unwrap();
    for i in 1..=150 {
        bus.publish_changes(common::batch("j", &format!("j-{i}")))
            .await
            .unwrap();
    }
    // Reading one starts the consumer's pulls; then it stays idle.
    assert_eq!(common::next(&mut sub).await.unwrap().seq, 1);
    // Give the consumer time to pull whatever it is allowed to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumers: Vec<_> = nats
        .jetstream
        .get_stream(&stream)
        .await
        .unwrap()
        .consumers()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(consumers.len(), 1, "one consumer per subscription");
    let delivered = consumers[0].delivered.stream_sequence;
    println!("delivered to the client: {delivered}");
    // One pull being read plus at most one more requested ahead.
    let bound = 1 + 2 * MAX_BATCH as u64;
    assert!(
        delivered <= bound,
        "{delivered} batches pushed to an idle subscriber, bound is {bound}"
    );
    assert!(consumers[0].num_pending >= 150 - bound);
    // Reading drains everything, in order.
    let got: Vec<u64> = common::take(&mut sub, 149)
        .await
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(got, (2..=150).collect::<Vec<u64>>());
}
