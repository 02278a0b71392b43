//! A channel bounded both in items and in bytes: a sender takes semaphore permits sized by the
//! item's bytes before the item enters the channel, and the receiver returns them on receipt.
//! Full-buffer policy: the sender waits (never drops). An item larger than the byte capacity
//! takes all permits and so travels alone.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Sending half.
#[derive(Debug)]
pub(crate) struct QueueSender<T> {
    tx: mpsc::Sender<(T, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

/// Receiving half.
#[derive(Debug)]
pub(crate) struct QueueReceiver<T> {
    rx: mpsc::Receiver<(T, OwnedSemaphorePermit)>,
}

/// A queue holding at most `items` items and `bytes` bytes.
pub(crate) fn bounded<T>(items: usize, bytes: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let max_bytes = u32::try_from(bytes.max(1))
        .unwrap_or(u32::MAX >> 3)
        .min(Semaphore::MAX_PERMITS as u32);
    let (tx, rx) = mpsc::channel(items.max(1));
    (
        QueueSender {
            tx,
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
        },
        QueueReceiver { rx },
    )
}

impl<T> QueueSender<T> {
    /// Waits for room, then enqueues. `Err` returns the item when the receiver is gone.
    pub(crate) async fn send(&self, item: T, bytes: usize) -> Result<(), T> {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        let Ok(permit) = self.bytes.clone().acquire_many_owned(n).await else {
            return Err(item);
        };
        self.tx.send((item, permit)).await.map_err(|e| e.0.0)
    }

    /// Whether nothing is queued (every byte permit is back).
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.available_permits() == self.max_bytes as usize
    }
}

impl<T> QueueReceiver<T> {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await.map(|(item, _permit)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn sender_waits_when_bytes_are_full_and_resumes_on_receive() {
        let (tx, mut rx) = bounded::<u32>(10, 100);
        tx.send(1, 60).await.unwrap();
        tx.send(2, 40).await.unwrap();
        // 100 bytes queued: a third item must wait.
        let blocked = tokio::time::timeout(Duration::from_secs(1), tx.send(3, 1)).await;
        assert!(blocked.is_err(), "send went through a full byte budget");
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(1), tx.send(3, 50))
            .await
            .expect("room after receive")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn sender_waits_when_items_are_full() {
        let (tx, mut rx) = bounded::<u32>(2, 1 << 20);
        tx.send(1, 1).await.unwrap();
        tx.send(2, 1).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_secs(1), tx.send(3, 1)).await;
        assert!(blocked.is_err());
        assert_eq!(rx.recv().await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_item_travels_alone() {
        let (tx, mut rx) = bounded::<u32>(10, 100);
        tx.send(1, 10_000).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_secs(1), tx.send(2, 1)).await;
        assert!(blocked.is_err());
        assert_eq!(rx.recv().await, Some(1));
        tx.send(2, 1).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
    }
}
