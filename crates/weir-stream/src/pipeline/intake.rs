//! The intake task: read -> decode -> map -> batch, with pauses on memory pressure.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_events::{JobState, PressureState, ProgressEvent};

use super::summary::Counters;
use super::{Batch, Errors, PipelineObserver};
use crate::pressure::Pressure;
use crate::queue::QueueSender;
use crate::{
    Decoder, Mapper, PipelineConfig, Position, RawRecord, RecordKind, Source, Stage, Staged,
    StreamError,
};

/// Read -> decode -> map -> batch, on one task.
pub(super) struct Intake<M: Mapper> {
    pub(super) cfg: Arc<PipelineConfig>,
    pub(super) mapper: Arc<M>,
    pub(super) errors: Arc<Errors>,
    pub(super) counters: Arc<Counters>,
    pub(super) pressure: Pressure,
    pub(super) stop: CancellationToken,
    pub(super) tx: QueueSender<Batch<M::Item>>,
    pub(super) frontier: Position,
    pub(super) seq: u64,
    pub(super) progress: watch::Sender<ProgressEvent>,
    pub(super) observer: Option<Arc<dyn PipelineObserver>>,
}

struct Building<I> {
    items: Vec<Staged<I>>,
    bytes: usize,
    started: Option<Instant>,
    dirty: bool,
}

impl<M: Mapper> Intake<M> {
    pub(super) async fn run(mut self, source: impl Source) -> Result<(), StreamError> {
        let r = self.run_inner(source).await;
        if r.is_err() {
            // Set before the queue's sender drops with `self`, so the sink stage sees it
            // when it finds the queue closed.
            self.counters.intake_failed.store(true, Ordering::SeqCst);
        }
        r
    }

    async fn run_inner(&mut self, mut source: impl Source) -> Result<(), StreamError> {
        let mut decoder = Decoder::new(self.cfg.format.clone());
        // Every header the source can tell ahead is checked before anything is mapped.
        for (file, raw) in source.header_rows() {
            let input = self.errors.names.get(file as usize).map_or("", |n| &**n);
            crate::map::take_header(&mut decoder, &*self.mapper, input, &raw)?;
        }
        let mut b = Building {
            items: Vec::with_capacity(self.cfg.batch_records),
            bytes: 0,
            started: None,
            dirty: false,
        };
        let mut next_sample = Instant::now();
        loop {
            if Instant::now() >= next_sample {
                self.sample();
                if self.pressure.state() == PressureState::High {
                    // Flush what we hold so the sink can drain it, then wait below the low
                    // watermark.
                    if !self.flush(&mut b).await {
                        return Ok(());
                    }
                    if !self.wait_for_relief().await {
                        return Ok(());
                    }
                }
                next_sample = Instant::now() + self.cfg.pressure_sample_interval;
            }
            let deadline = b.started.map(|s| s + self.cfg.linger);
            let chunk = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(()),
                () = sleep_until_opt(deadline) => {
                    if !self.flush(&mut b).await {
                        return Ok(());
                    }
                    continue;
                }
                c = source.next_chunk() => c?,
            };
            let Some(chunk) = chunk else {
                b.dirty = true;
                self.flush(&mut b).await;
                return Ok(());
            };
            // Linger runs from when the batch took its first record (`take_records` stamps
            // it), not from when the chunk arrived: a flush in the middle of a chunk can wait
            // long on a full queue, and the rest of the chunk then starts a fresh batch.
            if !self.take_chunk(chunk, &mut decoder, &mut b).await? {
                return Ok(());
            }
        }
    }

    fn sample(&mut self) {
        let state = self.pressure.sample();
        let c = &self.counters;
        c.paused
            .store(u8::from(state == PressureState::High), Ordering::Relaxed);
        let ratio = self.pressure.ratio().unwrap_or(f64::NAN);
        c.ratio_bits.store(ratio.to_bits(), Ordering::Relaxed);
        if let Some(p) = self.pressure.peak_used() {
            c.peak_used.fetch_max(p, Ordering::Relaxed);
        }
    }

    /// Paused: samples until the gauge is at or below the low watermark. `false` when stopped.
    async fn wait_for_relief(&mut self) -> bool {
        warn!(ratio = ?self.pressure.ratio(), "memory pressure high: intake paused");
        if let Some(o) = &self.observer {
            o.pressure_changed(PressureState::High, self.pressure.ratio());
        }
        self.progress.send_modify(|p| {
            p.state = JobState::Paused;
            p.pressure = PressureState::High;
            p.pressure_ratio = self.pressure.ratio();
        });
        let mut drained_since: Option<Instant> = None;
        while self.pressure.state() == PressureState::High {
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(self.cfg.pressure_sample_interval) => self.sample(),
            }
            let drained =
                self.tx.is_empty() && self.counters.in_flight.load(Ordering::Relaxed) == 0;
            if !drained {
                drained_since = None;
                continue;
            }
            let since = *drained_since.get_or_insert_with(Instant::now);
            if self.pressure.state() == PressureState::High
                && since.elapsed() >= self.cfg.pressure_stall_after
            {
                // Nothing of ours is left to free: waiting longer would wait forever.
                self.pressure.accept_floor();
                self.sample();
                warn!(
                    ratio = ?self.pressure.ratio(),
                    floor = ?self.pressure.floor(),
                    "memory stays above the low watermark with nothing queued or in flight: \
                     the memory limit is below what the process holds outside the pipeline \
                     (raise it); intake goes on with the smallest batches and pauses again if \
                     usage grows further"
                );
            }
        }
        info!(ratio = ?self.pressure.ratio(), "memory pressure back to normal: intake resumed");
        if let Some(o) = &self.observer {
            o.pressure_changed(PressureState::Normal, self.pressure.ratio());
        }
        self.progress.send_modify(|p| {
            p.state = JobState::Running;
            p.pressure = PressureState::Normal;
            p.pressure_ratio = self.pressure.ratio();
        });
        true
    }

    /// Decodes, maps and batches one chunk. `Ok(false)` when stopped.
    async fn take_chunk(
        &mut self,
        chunk: Vec<RawRecord>,
        decoder: &mut Decoder,
        b: &mut Building<M::Item>,
    ) -> Result<bool, StreamError> {
        let (mut read, mut bytes_read) = (0u64, 0u64);
        let r = self
            .take_records(chunk, decoder, b, &mut read, &mut bytes_read)
            .await;
        // Counted on every path, errors included, so the summary balances.
        self.counters.read.fetch_add(read, Ordering::Relaxed);
        self.counters
            .bytes_read
            .fetch_add(bytes_read, Ordering::Relaxed);
        r
    }

    async fn take_records(
        &mut self,
        chunk: Vec<RawRecord>,
        decoder: &mut Decoder,
        b: &mut Building<M::Item>,
        read: &mut u64,
        bytes_read: &mut u64,
    ) -> Result<bool, StreamError> {
        let limit = self
            .pressure
            .batch_limit(self.cfg.batch_records, self.cfg.min_batch_records);
        for rec in chunk {
            *bytes_read += rec.span_bytes();
            match rec.kind {
                RecordKind::Header => {
                    let input = self.errors.names.get(rec.position.file as usize);
                    let input = input.map_or("", |n| &**n);
                    crate::map::take_header(decoder, &*self.mapper, input, &rec.data)?;
                }
                RecordKind::Oversized { len } => {
                    *read += 1;
                    self.errors.dead_letter(
                        rec.position,
                        Stage::Read,
                        format!(
                            "record exceeds {} bytes ({len} bytes)",
                            self.cfg.max_record_bytes
                        ),
                        &rec.data,
                        len,
                    )?;
                }
                RecordKind::Data => {
                    *read += 1;
                    let mapped = match decoder.decode(rec.position, &rec.data) {
                        Err(e) => Err((Stage::Decode, e.to_string())),
                        Ok(d) => self.mapper.map(&d).map_err(|e| (Stage::Map, e.to_string())),
                    };
                    match mapped {
                        Ok(item) => {
                            let bytes = self.mapper.item_bytes(&item, rec.data.len());
                            b.bytes += bytes;
                            b.items.push(Staged {
                                item,
                                position: rec.position,
                                raw: rec.data,
                                bytes,
                            });
                        }
                        Err((stage, msg)) => {
                            self.errors.dead_letter(
                                rec.position,
                                stage,
                                msg,
                                &rec.data,
                                rec.data.len() as u64,
                            )?;
                        }
                    }
                }
            }
            self.frontier = rec.next;
            b.dirty = true;
            if b.started.is_none() {
                b.started = Some(Instant::now());
            }
            if b.items.len() >= limit || b.bytes >= self.cfg.batch_bytes {
                // Count before the batch can be committed, so progress never shows more
                // committed than read.
                self.counters.read.fetch_add(*read, Ordering::Relaxed);
                self.counters
                    .bytes_read
                    .fetch_add(*bytes_read, Ordering::Relaxed);
                (*read, *bytes_read) = (0, 0);
                if !self.flush(b).await {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Sends the batch being built (even without items when the frontier moved over dead
    /// letters). `false` when stopped.
    async fn flush(&mut self, b: &mut Building<M::Item>) -> bool {
        b.started = None;
        if !b.dirty {
            return true;
        }
        b.dirty = false;
        let cap = self
            .pressure
            .batch_limit(self.cfg.batch_records, self.cfg.min_batch_records);
        let items = std::mem::replace(&mut b.items, Vec::with_capacity(cap));
        let bytes = std::mem::take(&mut b.bytes);
        let batch = Batch {
            seq: self.seq,
            items,
            end: self.frontier,
        };
        self.seq += 1;
        tokio::select! {
            biased;
            () = self.stop.cancelled() => false,
            r = self.tx.send(batch, bytes) => r.is_ok(),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
