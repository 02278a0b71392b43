//! The in-process bus: one bounded ring of change batches shared by every subscriber.
//!
//! There is no queue per subscriber: a subscription is a cursor (the next seq it wants) into
//! the ring, woken through a `watch` channel when a batch is published, and it is handed the
//! ring's own `Arc` of each batch (nothing is copied). Memory is therefore bounded by the
//! ring's bounds ([`InProcessConfig::capacity`] batches, [`InProcessConfig::max_bytes`] bytes of
//! change events, the newest batch always kept) whatever the number or speed of subscribers; a
//! subscriber that falls behind the ring gets [`BusError::Lagged`] and resubscribes with
//! `since`. Progress events use a bounded `broadcast` channel: a slow reader skips to the
//! newest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use weir_events::{ChangeBatch, ProgressEvent};

use crate::{BusError, BusMetrics, ChangeStream, InProcessConfig, ProgressStream, Published};

/// The in-process bus. Cheap to clone; clones share the ring.
#[derive(Clone, Debug)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ring: Mutex<Ring>,
    /// The newest published seq; subscribers wait on it.
    tip: watch::Sender<u64>,
    progress: broadcast::Sender<ProgressEvent>,
    metrics: Arc<BusMetrics>,
}

#[derive(Debug)]
struct Ring {
    capacity: usize,
    max_bytes: u64,
    /// Retained batches, oldest first, with their estimated bytes.
    batches: VecDeque<(Arc<ChangeBatch>, usize)>,
    /// Sum of the retained batches' bytes.
    bytes: u64,
    /// Batch id -> seq, for the batches in `batches` (so it is bounded by the same bounds).
    ids: HashMap<String, u64>,
    /// The seq the next new batch gets (starts at 1).
    next_seq: u64,
}

impl Ring {
    /// The oldest retained seq (`next_seq` when empty).
    fn first(&self) -> u64 {
        self.next_seq - self.batches.len() as u64
    }

    /// The newest published seq (0 before the first publish).
    fn last(&self) -> u64 {
        self.next_seq - 1
    }

    /// Drops the oldest batches while a bound is exceeded, keeping at least the newest one.
    fn evict(&mut self) {
        while self.batches.len() > 1
            && (self.batches.len() > self.capacity || self.bytes > self.max_bytes)
        {
            if let Some((old, bytes)) = self.batches.pop_front() {
                self.bytes -= bytes as u64;
                self.ids.remove(&old.batch_id);
            }
        }
    }
}

impl InProcessBus {
    /// A new, empty bus.
    pub fn new(config: &InProcessConfig) -> Result<Self, BusError> {
        config.validate()?;
        let (tip, _) = watch::channel(0);
        let (progress, _) = broadcast::channel(config.progress_capacity);
        Ok(Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    capacity: config.capacity,
                    max_bytes: config.max_bytes,
                    batches: VecDeque::with_capacity(config.capacity.min(1024)),
                    bytes: 0,
                    ids: HashMap::new(),
                    next_seq: 1,
                }),
                tip,
                progress,
                metrics: Arc::new(BusMetrics::default()),
            }),
        })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters of this bus.
    pub fn metrics(&self) -> &Arc<BusMetrics> {
        &self.inner.metrics
    }

    /// Number of batches retained now (never above the capacity).
    pub fn retained(&self) -> usize {
        self.ring().batches.len()
    }

    /// Estimated bytes of the batches retained now (above `max_bytes` only when the newest
    /// batch alone is larger).
    pub fn retained_bytes(&self) -> u64 {
        self.ring().bytes
    }

    /// Publishes a committed batch; see [`crate::Bus::publish_changes`]. A batch id still in
    /// the ring is a duplicate and gets its original seq back.
    pub fn publish_changes(&self, mut batch: ChangeBatch) -> Published {
        let bytes = batch.approx_bytes();
        let seq = {
            let mut ring = self.ring();
            if let Some(&seq) = ring.ids.get(&batch.batch_id) {
                drop(ring);
                self.inner.metrics.on_publish(true);
                return Published {
                    seq,
                    duplicate: true,
                };
            }
            let seq = ring.next_seq;
            ring.next_seq += 1;
            batch.assign_seq(seq);
            ring.ids.insert(batch.batch_id.clone(), seq);
            ring.batches.push_back((Arc::new(batch), bytes));
            ring.bytes += bytes as u64;
            ring.evict();
            seq
        };
        self.inner.tip.send_replace(seq);
        self.inner.metrics.on_publish(false);
        Published {
            seq,
            duplicate: false,
        }
    }

    /// Publishes a progress event to the current progress subscribers (none is fine).
    pub fn publish_progress(&self, event: &ProgressEvent) {
        let _ = self.inner.progress.send(event.clone());
        self.inner.metrics.on_progress_published();
    }

    /// Subscribes to change batches; see [`crate::Bus::subscribe_changes`].
    pub fn subscribe_changes(&self, since: Option<u64>) -> Result<ChangeStream, BusError> {
        self.subscribe_changes_at(since).map(|(stream, _)| stream)
    }

    /// Like [`InProcessBus::subscribe_changes`], also returning the newest seq published when
    /// the subscription opened; see [`crate::Bus::subscribe_changes_at`].
    pub fn subscribe_changes_at(
        &self,
        since: Option<u64>,
    ) -> Result<(ChangeStream, u64), BusError> {
        let tip = self.inner.tip.subscribe();
        let (next, newest) = {
            let ring = self.ring();
            let (first, last) = (ring.first(), ring.last());
            let next = match since {
                None => last + 1,
                Some(since) if since > last => return Err(BusError::SinceAhead { since, last }),
                Some(since) if since + 1 < first => {
                    return Err(BusError::SinceTooOld {
                        since,
                        first_retained: first,
                    });
                }
                Some(since) => since + 1,
            };
            (next, last)
        };
        let bus = self.clone();
        let stream = futures::stream::unfold(Some((bus, next, tip)), |state| async move {
            let (bus, next, mut tip) = state?;
            loop {
                // Mark the tip seen *before* looking, so a publish after the look wakes us.
                tip.borrow_and_update();
                let found = {
                    let ring = bus.ring();
                    let (first, last) = (ring.first(), ring.last());
                    if next < first {
                        Some(Err(BusError::Lagged {
                            next,
                            first_retained: first,
                        }))
                    } else if next <= last {
                        let idx = usize::try_from(next - first).unwrap_or(usize::MAX);
                        ring.batches
                            .get(idx)
                            .map(|(b, _)| Ok((b.clone(), last - next)))
                    } else {
                        None
                    }
                };
                match found {
                    Some(Ok((batch, lag))) => {
                        bus.inner.metrics.on_consume(lag);
                        return Some((Ok(batch), Some((bus, next + 1, tip))));
                    }
                    // A lagged subscription ends after saying so.
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => {
                        if tip.changed().await.is_err() {
                            return None;
                        }
                    }
                }
            }
        });
        Ok((stream.boxed(), newest))
    }

    /// Subscribes to progress events from now on; a reader that falls more than
    /// `progress_capacity` events behind skips to the newest (counted in the metrics).
    pub fn subscribe_progress(&self) -> ProgressStream {
        let metrics = self.inner.metrics.clone();
        BroadcastStream::new(self.inner.progress.subscribe())
            .filter_map(move |item| {
                let out = match item {
                    Ok(ev) => Some(Ok(ev)),
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        metrics.on_progress_dropped(n);
                        None
                    }
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_events::{EVENT_FORMAT_VERSION, JobState, PressureState};

    use super::*;
    use crate::test_batch;

    fn bus(capacity: usize) -> InProcessBus {
        InProcessBus::new(&InProcessConfig {
            capacity,
            progress_capacity: 2,
            ..InProcessConfig::default()
        })
        .unwrap()
    }

    async fn next(s: &mut ChangeStream) -> Result<Arc<ChangeBatch>, BusError> {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("a batch within 5 s")
            .expect("stream open")
    }

    #[tokio::test]
    async fn publish_assigns_increasing_seqs_and_dedups_batch_ids() {
        let bus = bus(8);
        let a = bus.publish_changes(test_batch("j", "b1", 2));
        let b = bus.publish_changes(test_batch("j", "b2", 1));
        let again = bus.publish_changes(test_batch("j", "b1", 2));
        assert_eq!((a.seq, a.duplicate), (1, false));
        assert_eq!((b.seq, b.duplicate), (2, false));
        assert_eq!((again.seq, again.duplicate), (1, true));
        let m = bus.metrics().snapshot();
        assert_eq!((m.published, m.duplicates), (2, 1));

        let mut s = bus.subscribe_changes(Some(0)).unwrap();
        let first = next(&mut s).await.unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(
            first
                .events
                .iter()
                .map(|e| (e.seq, e.index))
                .collect::<Vec<_>>(),
            [(1, 0), (1, 1)]
        );
        assert_eq!(next(&mut s).await.unwrap().seq, 2);
        // Nothing more: the duplicate was not stored twice.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), s.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn ring_is_bounded_and_since_too_old_is_a_typed_error() {
        let bus = bus(3);
        for i in 1..=5 {
            bus.publish_changes(test_batch("j", &format!("b{i}"), 1));
        }
        assert_eq!(bus.retained(), 3);
        // Seqs 3, 4, 5 retained: since = 2 is the oldest replayable point.
        let mut s = bus.subscribe_changes(Some(2)).unwrap();
        for want in 3..=5 {
            assert_eq!(next(&mut s).await.unwrap().seq, want);
        }
        match bus.subscribe_changes(Some(1)) {
            Err(BusError::SinceTooOld {
                since: 1,
                first_retained: 3,
            }) => {}
            other => panic!("expected SinceTooOld, got {:?}", other.map(|_| ())),
        }
        match bus.subscribe_changes(Some(6)) {
            Err(BusError::SinceAhead { since: 6, last: 5 }) => {}
            other => panic!("expected SinceAhead, got {:?}", other.map(|_| ())),
        }
        // An evicted batch id is forgotten too: the id map is bounded by the ring.
        assert_eq!(bus.ring().ids.len(), 3);
        assert!(!bus.publish_changes(test_batch("j", "b1", 1)).duplicate);
    }

    #[tokio::test]
    async fn retention_is_bounded_in_bytes_and_keeps_the_newest_batch() {
        let one = test_batch("j", "size", 100).approx_bytes() as u64;
        let bus = InProcessBus::new(&InProcessConfig {
            capacity: 1000,
            // Room for three batches of 100 events, not four.
            max_bytes: one * 3 + one / 2,
            ..InProcessConfig::default()
        })
        .unwrap();
        for i in 1..=10 {
            bus.publish_changes(test_batch("j", &format!("b{i}"), 100));
            assert!(bus.retained_bytes() <= one * 3 + one / 2);
        }
        assert_eq!(bus.retained(), 3);
        assert!(matches!(
            bus.subscribe_changes(Some(6)),
            Err(BusError::SinceTooOld {
                since: 6,
                first_retained: 8
            })
        ));
        // A batch larger than the whole bound is still kept (alone): any batch fits.
        bus.publish_changes(test_batch("j", "huge", 1000));
        assert_eq!(bus.retained(), 1);
        let mut s = bus.subscribe_changes(Some(10)).unwrap();
        let got = next(&mut s).await.unwrap();
        assert_eq!((got.seq, got.events.len()), (11, 1000));
        assert_eq!(bus.ring().ids.len(), 1, "the id map shrinks with the ring");
    }

    #[tokio::test]
    async fn subscribers_share_the_rings_batches() {
        let bus = bus(8);
        let mut a = bus.subscribe_changes(None).unwrap();
        let mut b = bus.subscribe_changes(None).unwrap();
        bus.publish_changes(test_batch("j", "b1", 3));
        let (x, y) = (next(&mut a).await.unwrap(), next(&mut b).await.unwrap());
        assert!(
            Arc::ptr_eq(&x, &y),
            "one batch in memory, not a copy per subscriber"
        );
    }

    #[tokio::test]
    async fn live_subscribers_each_get_every_batch_once_in_order() {
        let bus = bus(64);
        let mut a = bus.subscribe_changes(None).unwrap();
        let mut b = bus.subscribe_changes(None).unwrap();
        let publisher = {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 1..=40 {
                    bus.publish_changes(test_batch("j", &format!("b{i}"), 1));
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        for s in [&mut a, &mut b] {
            for want in 1..=40u64 {
                let got = next(s).await.unwrap();
                assert_eq!(got.seq, want);
                assert_eq!(got.batch_id, format!("b{want}"));
            }
        }
        publisher.await.unwrap();
        assert_eq!(bus.metrics().snapshot().consumed, 80);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_out_of_the_ring_gets_lagged_and_ends() {
        let bus = bus(2);
        let mut s = bus.subscribe_changes(None).unwrap();
        for i in 1..=5 {
            bus.publish_changes(test_batch("j", &format!("b{i}"), 1));
        }
        match next(&mut s).await {
            Err(BusError::Lagged {
                next: 1,
                first_retained: 4,
            }) => {}
            other => panic!("expected Lagged, got {other:?}"),
        }
        assert!(s.next().await.is_none(), "a lagged subscription ends");
        // Resubscribing from the last seq still retained works.
        let mut s = bus.subscribe_changes(Some(3)).unwrap();
        assert_eq!(next(&mut s).await.unwrap().seq, 4);
    }

    #[tokio::test]
    async fn progress_is_bounded_per_subscriber_and_skips_to_newest() {
        let bus = bus(2);
        let mut p = bus.subscribe_progress();
        let ev = |n: u64| ProgressEvent {
            version: EVENT_FORMAT_VERSION,
            job_id: "j".into(),
            state: JobState::Running,
            records_read: n,
            records_committed: n,
            records_dead_lettered: 0,
            bytes_read: n,
            bytes_total: None,
            records_per_sec: 0.0,
            batches_in_flight: 0,
            pressure: PressureState::Normal,
            pressure_ratio: None,
            eta_secs: None,
            elapsed_secs: 0.0,
            error: None,
        };
        for n in 1..=5 {
            bus.publish_progress(&ev(n));
        }
        // Capacity 2: the three oldest are skipped, the two newest arrive.
        let got: Vec<u64> = vec![
            p.next().await.unwrap().unwrap().records_read,
            p.next().await.unwrap().unwrap().records_read,
        ];
        assert_eq!(got, [4, 5]);
        assert_eq!(bus.metrics().snapshot().progress_dropped, 3);
    }
}
