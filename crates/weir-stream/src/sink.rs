//! Where batches go: the [`Sink`] trait and its error classification.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{SourceNames, Staged};

/// How a sink write failed; decides what the pipeline does next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying as is (connection lost, timeout, deadlock): the batch is retried with
    /// backoff, up to the retry policy's attempts. Nothing of the batch may have been kept
    /// half-written in a way a retry cannot repeat (writes are idempotent MERGEs).
    #[error("transient: {0}")]
    Transient(String),
    /// Some items are bad (constraint, type). With `bad_items` (indexes into the batch given to
    /// `write`), those are dead-lettered and the rest written again; without, the batch is split
    /// in halves until the bad items are isolated. Nothing of the batch was committed.
    #[error("data error: {message}")]
    Data {
        /// What is wrong.
        message: String,
        /// Indexes of the bad items, when the sink knows them.
        bad_items: Option<Vec<usize>>,
    },
    /// Give up: the run stops after what was committed.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// One write handed to the sink: a batch, or part of one while bad items are isolated.
#[derive(Debug)]
pub struct SinkBatch<'a, I> {
    /// The batch's sequence number in this run (unique per run; parts of a split batch share
    /// it).
    pub seq: u64,
    /// The run's id: random for a new run, the interrupted run's for a resumed one (see
    /// [`crate::Checkpoint::run_id`]). With `seq` it names the batch uniquely across runs.
    pub run_id: &'a str,
    /// Attempt number of this write, from 1.
    pub attempt: u32,
    /// The items, in input order.
    pub items: &'a [Staged<I>],
    /// Input names, indexed by [`crate::Position::file`].
    pub sources: &'a SourceNames,
    /// Where the sink reports contention it absorbed itself (see [`Contention`]).
    pub contention: &'a Contention,
}

/// A sink's report that a write succeeded only after retrying contention of its own (a
/// deadlock, a lock timeout, a refused concurrent transaction). The pipeline treats it like a
/// transient error it retried: the adaptive concurrency limit comes down.
#[derive(Debug, Default)]
pub struct Contention(AtomicBool);

impl Contention {
    /// Records that this write met contention.
    pub fn report(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether contention was reported.
    pub fn reported(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A sink's own encoding of a batch, made by [`Sink::prepare`] before the batch's turn to be
/// written and handed back to [`Sink::write_prepared`]. Opaque to the pipeline.
pub struct Prepared(Box<dyn Any + Send>);

impl Prepared {
    /// Wraps a sink's encoding.
    pub fn new<T: Any + Send>(value: T) -> Self {
        Self(Box::new(value))
    }

    /// The encoding, if it is a `T`; else `self` back.
    pub fn downcast<T: Any>(self) -> Result<T, Self> {
        self.0.downcast::<T>().map(|b| *b).map_err(Self)
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

/// Writes batches atomically: on `Ok` every item is committed; on `Err` none is.
pub trait Sink: Send + Sync + 'static {
    /// What it writes.
    type Item: Send + Sync + 'static;

    /// Writes one batch.
    fn write(
        &self,
        batch: &SinkBatch<'_, Self::Item>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Does the CPU work of writing `batch` that needs no connection (encoding its items into
    /// the driver's values, say), so the pipeline can do it while earlier batches are still
    /// being written: a server that writes one batch at a time then never waits for the
    /// client between batches. The pipeline prepares at most one batch ahead of the writes in
    /// flight, and hands the result to [`Sink::write_prepared`] for the batch's first write
    /// (retries and the parts of a split batch go to [`Sink::write`]). Default: nothing.
    fn prepare(&self, batch: &SinkBatch<'_, Self::Item>) -> Option<Prepared> {
        let _ = batch;
        None
    }

    /// Writes `batch` using what [`Sink::prepare`] made of it. Same contract as
    /// [`Sink::write`]. Default: ignores `prepared` and calls `write`.
    fn write_prepared(
        &self,
        batch: &SinkBatch<'_, Self::Item>,
        prepared: Prepared,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        drop(prepared);
        self.write(batch)
    }
}

/// A sink that accepts everything and keeps nothing (benchmarks, dry runs).
#[derive(Clone, Copy, Debug, Default)]
pub struct NullSink<I>(std::marker::PhantomData<fn(I)>);

impl<I> NullSink<I> {
    /// A null sink.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<I: Send + Sync + 'static> Sink for NullSink<I> {
    type Item = I;

    async fn write(&self, batch: &SinkBatch<'_, I>) -> Result<(), SinkError> {
        std::hint::black_box(batch.items.len());
        Ok(())
    }
}

impl<S: Sink> Sink for std::sync::Arc<S> {
    type Item = S::Item;

    fn write(
        &self,
        batch: &SinkBatch<'_, Self::Item>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).write(batch)
    }

    fn prepare(&self, batch: &SinkBatch<'_, Self::Item>) -> Option<Prepared> {
        (**self).prepare(batch)
    }

    fn write_prepared(
        &self,
        batch: &SinkBatch<'_, Self::Item>,
        prepared: Prepared,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).write_prepared(batch, prepared)
    }
}
