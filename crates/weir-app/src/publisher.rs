//! The graph writer's change publisher over the bus, and the policy that says what a failed
//! publish does to the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weir_config::Backoff;
use weir_events::ChangeBatch;
use weir_graph::{ChangePublisher, PublishError};

use crate::BusSlot;

/// What happens to a job's change events when they cannot be published.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventsPolicy {
    /// Every committed batch's changes must reach the bus (the default wherever a bus is
    /// configured). While the bus is unreachable the job pauses and retries (up to
    /// [`EventsConfig::max_wait`]); a batch whose changes can never be published (the stream
    /// was deleted, one change is larger than a bus message) fails the job with that error,
    /// and its checkpoint stays before that batch, so a rerun writes and publishes it again.
    #[default]
    Required,
    /// Publish what can be published; a batch whose changes cannot be is counted
    /// (`events_unpublished` in the job's status and the summary) and logged, and the job
    /// goes on.
    BestEffort,
    /// Build no change events at all (subscribers see nothing of this job).
    Off,
}

impl std::fmt::Display for EventsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Required => "required",
            Self::BestEffort => "best_effort",
            Self::Off => "off",
        })
    }
}

/// Change-event publishing settings of ingest jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// See [`EventsPolicy`]. Default `required`.
    pub policy: EventsPolicy,
    /// With `required`: how long one batch's publish may keep failing with transient errors
    /// (bus unreachable, timeouts) before the job fails. The job is paused meanwhile. Default
    /// 10 min.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_wait: Duration,
    /// Wait before the first retry, doubled each time. Default 100 ms.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    /// Longest wait between retries. Default 2 s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
}

impl EventsConfig {
    /// The retry policy of a required publish: waits doubling from `initial_backoff` to
    /// `max_backoff`, no bound on attempts (`max_wait` and the stop signal end it).
    pub fn retry(&self) -> Backoff {
        Backoff::exponential(self.initial_backoff, self.max_backoff)
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            policy: EventsPolicy::Required,
            max_wait: Duration::from_secs(600),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Publishes each committed batch to the bus, once, in the order the writer hands them over,
/// as its [`EventsPolicy`] says.
///
/// A transient failure (NATS away, publish timeout) is retried with the *same* batch — the bus
/// deduplicates by batch id, so a publish whose ack was lost is not delivered twice. While it
/// retries, the writer task waits, so the pipeline's bounded queues fill and intake pauses:
/// ingestion pauses instead of buffering without bound. Retrying ends when `stop` fires (the
/// service's hard stop after its shutdown grace), or, for `required`, after `max_wait`; the
/// batch is then reported unpublished and the job fails. With `best_effort` the batch is
/// counted in [`BusPublisher::unpublished`] instead.
#[derive(Clone, Debug)]
pub struct BusPublisher {
    slot: BusSlot,
    config: EventsConfig,
    stop: CancellationToken,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    retries: AtomicU64,
    published: AtomicU64,
    unpublished: AtomicU64,
}

impl BusPublisher {
    /// A publisher to the bus in `slot`, with `config`'s policy, retrying until `stop` fires.
    pub fn new(slot: BusSlot, config: EventsConfig, stop: CancellationToken) -> Self {
        Self {
            slot,
            config,
            stop,
            counters: Arc::default(),
        }
    }

    /// The same publisher with counters of its own (one per job).
    pub fn for_job(&self) -> Self {
        Self {
            counters: Arc::default(),
            ..self.clone()
        }
    }

    /// The policy.
    pub fn policy(&self) -> EventsPolicy {
        self.config.policy
    }

    /// Publish attempts retried so far.
    pub fn retries(&self) -> u64 {
        self.counters.retries.load(Ordering::Relaxed)
    }

    /// Batches published so far (duplicates included).
    pub fn published(&self) -> u64 {
        self.counters.published.load(Ordering::Relaxed)
    }

    /// Batches whose changes were given up under `best_effort`.
    pub fn unpublished(&self) -> u64 {
        self.counters.unpublished.load(Ordering::Relaxed)
    }

    async fn publish_required(&self, batch: ChangeBatch) -> Result<(), PublishError> {
        let policy = self.config.retry();
        let mut failures = 0u32;
        let mut failing_since: Option<Instant> = None;
        let started = Instant::now();
        loop {
            let waited = tokio::time::timeout(
                self.config.max_wait.saturating_sub(started.elapsed()),
                self.slot.wait(&self.stop),
            )
            .await;
            let bus = match waited {
                Ok(Some(bus)) => bus,
                Ok(None) => {
                    return Err(PublishError(format!(
                        "stopped before the bus was reachable to publish batch {}",
                        batch.batch_id
                    )));
                }
                Err(_) => {
                    return Err(PublishError(format!(
                        "the bus was not reachable for {:?} (events.max_wait) to publish batch {}",
                        self.config.max_wait, batch.batch_id
                    )));
                }
            };
            match bus.publish_changes(batch.clone()).await {
                Ok(p) => {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(seq = p.seq, duplicate = p.duplicate, batch = %batch.batch_id, "published");
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.config.max_wait {
                        return Err(PublishError(format!(
                            "the bus did not take batch {} for {:?} (events.max_wait): {e}",
                            batch.batch_id, self.config.max_wait
                        )));
                    }
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    let delay = policy.jittered(failures);
                    tracing::warn!(error = %e, batch = %batch.batch_id, retry_in = ?delay, "publish failed; the job waits and retries the same batch");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.stop.cancelled() => {
                            return Err(PublishError(format!("stopped while retrying batch {}", batch.batch_id)));
                        }
                    }
                }
                Err(e) => {
                    return Err(PublishError(format!(
                        "batch {} cannot be published: {e}",
                        batch.batch_id
                    )));
                }
            }
        }
    }

    async fn publish_best_effort(&self, batch: ChangeBatch) {
        let result = match self.slot.get() {
            Some(bus) => bus.publish_changes(batch).await.map(|_| ()),
            None => Err(weir_bus::BusError::Closed),
        };
        match result {
            Ok(()) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let n = self.counters.unpublished.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(error = %e, unpublished = n, "change batch not published (events = best_effort): subscribers miss its changes");
            }
        }
    }
}

#[async_trait]
impl ChangePublisher for BusPublisher {
    async fn publish(&self, batch: ChangeBatch) -> Result<(), PublishError> {
        match self.config.policy {
            EventsPolicy::Required => self.publish_required(batch).await,
            EventsPolicy::BestEffort => {
                self.publish_best_effort(batch).await;
                Ok(())
            }
            EventsPolicy::Off => Ok(()),
        }
    }

    fn wants_events(&self) -> bool {
        self.config.policy != EventsPolicy::Off
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use weir_bus::{Bus, BusConfig, InProcessConfig};

    use super::*;

    fn batch(id: &str) -> ChangeBatch {
        weir_events::fixture::batch("j", id, Vec::new())
    }

    #[tokio::test]
    async fn publishes_once_per_batch_id() {
        let bus = Bus::connect(&BusConfig::InProcess(InProcessConfig::default()))
            .await
            .unwrap();
        let mut sub = bus.subscribe_changes(None).await.unwrap();
        let p = BusPublisher::new(
            BusSlot::ready(bus),
            EventsConfig::default(),
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

    fn unreachable_slot() -> BusSlot {
        BusSlot::connect_in_background(
            BusConfig::Nats(weir_bus::NatsBusConfig {
                url: "nats://127.0.0.1:9".into(),
                connect_timeout: Duration::from_millis(100),
                ..Default::default()
            }),
            CancellationToken::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn required_gives_up_after_max_wait_with_a_clear_error() {
        let p = BusPublisher::new(
            unreachable_slot(),
            EventsConfig {
                max_wait: Duration::from_secs(60),
                ..EventsConfig::default()
            },
            CancellationToken::new(),
        );
        let started = tokio::time::Instant::now();
        let err = p.publish(batch("x")).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_secs(60));
        assert!(err.0.contains("events.max_wait"), "{err}");
        assert!(p.wants_events());
    }

    #[tokio::test]
    async fn best_effort_counts_what_it_could_not_publish_and_goes_on() {
        let p = BusPublisher::new(
            unreachable_slot(),
            EventsConfig {
                policy: EventsPolicy::BestEffort,
                ..EventsConfig::default()
            },
            CancellationToken::new(),
        );
        p.publish(batch("x")).await.unwrap();
        p.publish(batch("y")).await.unwrap();
        assert_eq!((p.unpublished(), p.published()), (2, 0));
        let job = p.for_job();
        assert_eq!(job.unpublished(), 0, "each job counts its own");
        let off = BusPublisher::new(
            unreachable_slot(),
            EventsConfig {
                policy: EventsPolicy::Off,
                ..EventsConfig::default()
            },
            CancellationToken::new(),
        );
        assert!(!off.wants_events());
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
        let p = BusPublisher::new(slot, EventsConfig::default(), stop.clone());
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
