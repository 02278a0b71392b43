//! Preparing ahead (paused clock): the sink encodes the next batch (`Sink::prepare`) while the
//! write before it is in flight, at most one batch ahead; the prepared value reaches that
//! batch's first write and only it; retries and the parts of a split batch are written afresh.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{GenReader, Row, map_row};
use tokio::time::Instant;
use weir_stream::{
    CancellationToken, MemoryDeadLetters, Pipeline, PipelineConfig, Prepared, ReaderSource, Sink,
    SinkBatch, SinkError,
};

/// What the sink saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Prepare {
        seq: u64,
    },
    /// `prepared` is the batch's first id as `prepare` wrote it into its value.
    WritePrepared {
        seq: u64,
        prepared: u64,
    },
    Write {
        seq: u64,
        attempt: u32,
        len: usize,
    },
}

/// Writes take 100 ms. Batch 3's first write fails as transient; batch 5 holds a bad record
/// (id 57), refused as a data error until it is isolated.
#[derive(Default)]
struct Preparing {
    calls: Mutex<Vec<(Instant, Call)>>,
    /// Batches prepared whose first write has not started.
    waiting: Mutex<BTreeSet<u64>>,
    max_waiting: AtomicUsize,
    in_flight: AtomicUsize,
    /// Most batches prepared but not yet written, plus batches being written, at any time.
    max_held: AtomicUsize,
    /// When each write finished: (seq, at).
    finished: Mutex<Vec<(u64, Instant)>>,
}

impl Preparing {
    fn call(&self, c: Call) {
        self.calls.lock().unwrap().push((Instant::now(), c));
    }

    fn held(&self) -> usize {
        self.waiting.lock().unwrap().len() + self.in_flight.load(Ordering::SeqCst)
    }

    async fn write_common(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        self.waiting.lock().unwrap().remove(&batch.seq);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.max_held.fetch_max(self.held(), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.finished
            .lock()
            .unwrap()
            .push((batch.seq, Instant::now()));
        if batch.seq == 3 && batch.attempt == 1 {
            return Err(SinkError::Transient("connection reset".into()));
        }
        if batch.items.iter().any(|s| s.item.id == 57) {
            return Err(SinkError::Data {
                message: "id 57 refused".into(),
                bad_items: None,
            });
        }
        Ok(())
    }
}

impl Sink for Preparing {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        self.call(Call::Write {
            seq: batch.seq,
            attempt: batch.attempt,
            len: batch.items.len(),
        });
        self.write_common(batch).await
    }

    fn prepare(&self, batch: &SinkBatch<'_, Row>) -> Option<Prepared> {
        self.call(Call::Prepare { seq: batch.seq });
        let waiting = {
            let mut w = self.waiting.lock().unwrap();
            w.insert(batch.seq);
            w.len()
        };
        self.max_waiting.fetch_max(waiting, Ordering::SeqCst);
        self.max_held.fetch_max(self.held(), Ordering::SeqCst);
        Some(Prepared::new(batch.items[0].item.id))
    }

    async fn write_prepared(
        &self,
        batch: &SinkBatch<'_, Row>,
        prepared: Prepared,
    ) -> Result<(), SinkError> {
        let prepared = prepared.downcast::<u64>().expect("the value prepare made");
        self.call(Call::WritePrepared {
            seq: batch.seq,
            prepared,
        });
        self.write_common(batch).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_prepared_while_the_current_one_is_written() {
    let cfg = PipelineConfig {
        batch_records: 10,
        min_batch_records: 1,
        concurrency: 1,
        ..Default::default()
    };
    let sink = std::sync::Arc::new(Preparing::default());
    let dead = std::sync::Arc::new(MemoryDeadLetters::new(100));
    let source = ReaderSource::new(GenReader::new(Some(100)), "g.csv", &cfg);
    let s = Pipeline::new(cfg, map_row, sink.clone())
        .with_dead_letters(dead.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((s.records_committed, s.records_dead_lettered), (99, 1));
    assert_eq!(dead.letters().len(), 1);

    let calls = sink.calls.lock().unwrap().clone();
    let finished = sink.finished.lock().unwrap().clone();
    for seq in 0..10u64 {
        // Prepared exactly once, and its first write is the prepared one, with its own value.
        let prepares: Vec<_> = calls
            .iter()
            .filter(|(_, c)| *c == Call::Prepare { seq })
            .collect();
        assert_eq!(prepares.len(), 1, "batch {seq}: {calls:?}");
        let first_write = calls
            .iter()
            .find(|(_, c)| !matches!(c, Call::Prepare { .. }) && call_seq(c) == seq)
            .unwrap();
        assert_eq!(
            first_write.1,
            Call::WritePrepared {
                seq,
                prepared: seq * 10
            }
        );
        // Prepared while the write before it was still on the wire.
        if seq > 0 {
            let prev_first_end = finished.iter().find(|(s, _)| *s == seq - 1).unwrap().1;
            assert!(
                prepares[0].0 < prev_first_end,
                "batch {seq} prepared at {:?}, after batch {} was written at {prev_first_end:?}",
                prepares[0].0,
                seq - 1
            );
        }
    }
    // Nothing but first writes got the prepared value: the retry of batch 3 and the halves
    // of batch 5 went to `write`.
    let later: Vec<_> = calls
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Write { seq, attempt, len } => Some((*seq, *attempt, *len)),
            _ => None,
        })
        .collect();
    assert!(later.contains(&(3, 2, 10)), "{later:?}");
    assert!(later.iter().any(|&(seq, _, len)| seq == 5 && len < 10));
    assert!(later.iter().all(|&(seq, _, _)| seq == 3 || seq == 5));
    // The bound: one batch prepared ahead of the one write in flight, never more.
    assert_eq!(sink.max_waiting.load(Ordering::SeqCst), 1);
    assert_eq!(sink.max_held.load(Ordering::SeqCst), 2);
}

fn call_seq(c: &Call) -> u64 {
    match c {
        Call::Prepare { seq } | Call::WritePrepared { seq, .. } | Call::Write { seq, .. } => *seq,
    }
}
