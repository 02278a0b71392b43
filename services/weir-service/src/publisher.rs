//! The graph writer's change publisher over the bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use weir_events::ChangeBatch;
use weir_graph::{ChangePublisher, PublishError};

use crate::BusSlot;

/// Retry timing of [`BusPublisher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Wait before the first retry, doubled each time. Default 100 ms.
    pub initial_backoff: Duration,
    /// Longest wait between retries. Default 2 s.
    pub max_backoff: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Publishes each committed batch to the bus, once, in the order the writer hands them over.
///
/// A transient failure (NATS away, publish timeout) is retried with the *same* batch — the bus
/// deduplicates by batch id, so a publish whose ack was lost is not delivered twice. While it
/// retries, the writer task waits, so the pipeline's bounded queues fill and intake pauses:
/// ingestion pauses instead of buffering without bound. Retrying stops only when `stop` fires
/// (the service's hard stop after its shutdown grace); that batch is then reported unpublished.
#[derive(Clone, Debug)]
pub struct BusPublisher {
    slot: BusSlot,
    config: PublisherConfig,
    stop: CancellationToken,
    retries: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
}

impl BusPublisher {
    /// A publisher to the bus in `slot`, retrying until `stop` fires.
    pub fn new(slot: BusSlot, config: PublisherConfig, stop: CancellationToken) -> Self {
        Self {
            slot,
            config,
            stop,
            retries: Arc::new(AtomicU64::new(0)),
            published: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Publish attempts retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Batches published so far (duplicates included).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl ChangePublisher for BusPublisher {
    async fn publish(&self, batch: ChangeBatch) -> Result<(), PublishError> {
        let mut delay = self.config.initial_backoff;
        loop {
            let Some(bus) = self.slot.wait(&self.stop).await else {
                return Err(PublishError("stopped before the bus was reachable".into()));
            };
            match bus.publish_changes(batch.clone()).await {
                Ok(p) => {
                    self.published.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(seq = p.seq, duplicate = p.duplicate, batch = %batch.batch_id, "published");
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, batch = %batch.batch_id, retry_in = ?delay, "publish failed; retrying the same batch");
                }
                Err(e) => return Err(PublishError(e.to_string())),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => {
                    return Err(PublishError(format!("stopped while retrying batch {}", batch.batch_id)));
                }
            }
            delay = (delay * 2).min(self.config.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use weir_bus::{Bus, BusConfig, InProcessConfig};
    use weir_events::EVENT_FORMAT_VERSION;

    use super::*;

    fn batch(id: &str) -> ChangeBatch {
        ChangeBatch {
            version: EVENT_FORMAT_VERSION,
            seq: 0,
            job_id: "j".into(),
            batch_id: id.into(),
            events: Vec::new(),
        }
    }

    #[tokio::test]
    async fn publishes_once_per_batch_id() {
        let bus = Bus::connect(&BusConfig::InProcess(InProcessConfig::default()))
            .await
            .unwrap();
        let mut sub = bus.subscribe_changes(None).await.unwrap();
        let p = BusPublisher::new(
            BusSlot::ready(bus),
            PublisherConfig::default(),
            CancellationToken::new(),
        );
        p.publish(batch("a")).await.unwrap();
        p.publish(batch("a")).await.unwrap();
        p.publish(batch("b")).await.unwrap();
        let first = sub.next().await.unwrap().unwrap();
        let second = sub.next().await.unwrap().unwrap();
        assert_eq!((first.batch_id.as_str(), first.seq), ("a", 1));
        assert_eq!((second.batch_id.as_str(), second.seq), ("b", 2));
        assert_eq!(p.published(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_bus_and_gives_up_only_on_stop() {
        let slot = BusSlot::connect_in_background(
            BusConfig::Nats(weir_bus::NatsBusConfig {
                url: "nats://127.0.0.1:9".into(),
                connect_timeout: Duration::from_millis(100),
                ..Default::default()
            }),
            CancellationToken::new(),
        );
        let stop = CancellationToken::new();
        let p = BusPublisher::new(slot, PublisherConfig::default(), stop.clone());
        let task = tokio::spawn(async move { p.publish(batch("x")).await });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            !task.is_finished(),
            "publish must wait while the bus is away"
        );
        stop.cancel();
        let r = task.await.unwrap();
        assert!(r.is_err());
    }
}
