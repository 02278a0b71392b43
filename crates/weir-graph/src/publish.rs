//! Where change events of committed batches go: a small trait the bus implements, plus a
//! no-op and a bounded in-memory implementation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use weir_events::ChangeBatch;

/// A publisher could not take a batch. The batch is committed in the graph regardless.
#[derive(Debug, thiserror::Error)]
#[error("publishing change batch failed: {0}")]
pub struct PublishError(pub String);

/// Receives one [`ChangeBatch`] per committed graph batch, in commit order per writer task.
#[async_trait]
pub trait ChangePublisher: Send + Sync + 'static {
    /// Takes the events of one committed batch.
    async fn publish(&self, batch: ChangeBatch) -> Result<(), PublishError>;

    /// Whether events should be built at all (a no-op publisher saves the work).
    fn wants_events(&self) -> bool {
        true
    }
}

/// Discards everything; events are not even built.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopPublisher;

#[async_trait]
impl ChangePublisher for NoopPublisher {
    async fn publish(&self, _batch: ChangeBatch) -> Result<(), PublishError> {
        Ok(())
    }

    fn wants_events(&self) -> bool {
        false
    }
}

/// Keeps the newest `capacity` batches in memory (oldest dropped first, and counted).
#[derive(Debug)]
pub struct MemoryPublisher {
    capacity: usize,
    batches: Mutex<VecDeque<ChangeBatch>>,
    dropped: AtomicU64,
}

impl MemoryPublisher {
    /// A publisher holding at most `capacity` batches (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            batches: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Takes every held batch, oldest first.
    pub fn drain(&self) -> Vec<ChangeBatch> {
        self.batches.lock().drain(..).collect()
    }

    /// Batches dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Batches held now.
    pub fn len(&self) -> usize {
        self.batches.lock().len()
    }

    /// Whether no batch is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ChangePublisher for MemoryPublisher {
    async fn publish(&self, batch: ChangeBatch) -> Result<(), PublishError> {
        let mut q = self.batches.lock();
        if q.len() == self.capacity {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: &str) -> ChangeBatch {
        weir_events::fixture::batch("j", id, vec![])
    }

    #[tokio::test]
    async fn memory_publisher_is_bounded_and_drops_oldest() {
        let p = MemoryPublisher::new(2);
        for id in ["a", "b", "c"] {
            p.publish(batch(id)).await.unwrap();
        }
        assert_eq!(p.len(), 2);
        assert_eq!(p.dropped(), 1);
        let ids: Vec<String> = p.drain().into_iter().map(|b| b.batch_id).collect();
        assert_eq!(ids, vec!["b", "c"]);
        assert!(p.is_empty());
        assert!(!NoopPublisher.wants_events());
    }
}
