//! Pipeline settings and the memory bound they imply.

use std::time::Duration;

use weir_config::Backoff;

use crate::{Format, StreamError};

/// Settings of one pipeline run. Plain data with a hand-written [`Default`]; check with
/// [`PipelineConfig::validate`] (done by [`crate::Pipeline::run`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// Job id reported in progress events and checkpoints. Default `"ingest"`.
    pub job_id: String,
    /// Input format. Default CSV with a header row and `,` as separator.
    pub format: Format,
    /// Most records per batch. Default 1000.
    pub batch_records: usize,
    /// Most estimated bytes per batch ([`crate::Mapper::item_bytes`]). Default 4 MiB: a guard
    /// against unusually large records, sized so that `batch_records` (1000) ordinary records
    /// fit (a row of the people example is estimated at about 2.1 KiB, so 1 MiB cut such
    /// batches to about 490 rows, twice the transactions).
    pub batch_bytes: usize,
    /// Fewest records per batch when memory pressure shrinks batches. Default 16.
    pub min_batch_records: usize,
    /// A batch is sent at most this long after its first record arrived. Default 200 ms.
    pub linger: Duration,
    /// Most batches in flight to the sink at once. Default 4.
    pub concurrency: usize,
    /// Whether the in-flight limit adapts between 1 and `concurrency`: it starts at 1, rises
    /// while writes go through cleanly and halves when they contend (retries, deadlocks); see
    /// [`crate::ConcurrencyLimit`]. Off: always `concurrency`. Default on.
    pub adaptive_concurrency: bool,
    /// Most batches queued between the batcher and the sink stage. Default 4.
    pub batch_queue: usize,
    /// Most estimated bytes queued between the batcher and the sink stage. Default 4 MiB.
    pub batch_queue_bytes: usize,
    /// Bytes read from the input per read call. Default 64 KiB.
    pub read_chunk_bytes: usize,
    /// Most records framed into one chunk. Default 1024.
    pub chunk_records: usize,
    /// Most chunks queued between the reader and the decoder. Default 8.
    pub chunk_queue: usize,
    /// Longest record accepted, terminator excluded; longer ones are dead-lettered ("record
    /// exceeds N bytes") and never buffered beyond this. Default 1 MiB.
    pub max_record_bytes: usize,
    /// Most raw bytes copied into a dead letter. Default 4 KiB. A letter also names the
    /// record's exact byte range in the input (`offset`, `len`), so a longer record is found
    /// whole there.
    pub dead_letter_raw_bytes: usize,
    /// Memory use over its limit above which intake pauses. Default 0.80.
    pub high_watermark: f64,
    /// Memory use over its limit below which paused intake resumes. Default 0.70.
    pub low_watermark: f64,
    /// How often the memory gauge is read. Default 100 ms.
    pub pressure_sample_interval: Duration,
    /// How long intake stays paused with nothing queued or in flight while memory stays above
    /// the low watermark. Past it the memory is not the pipeline's to give back (the limit is
    /// below what the rest of the process holds): intake resumes with the smallest batches and
    /// pauses again only if usage grows by the watermark gap above that level, so a run never
    /// waits forever on memory it cannot free. Default 5 s.
    pub pressure_stall_after: Duration,
    /// Most dead-lettered records before the run stops; `None` for no budget. Default `None`.
    pub max_errors: Option<u64>,
    /// Most bytes one gzip input may decompress to; past it the input fails (a small gzip of
    /// garbage can expand into gigabytes). `None` for no bound. Default `None` (`weir ingest`
    /// reads what the user gives it); jobs set `jobs.max_decompressed_bytes`.
    pub max_decompressed_bytes: Option<u64>,
    /// Retries of transient sink errors (deadlocks, lost connections): the pipeline is the one
    /// layer that retries them for its writes, and each one lowers the adaptive concurrency
    /// limit. Default [`Backoff::default`]: 5 attempts, 100 ms doubling to 10 s, jitter 0.5.
    pub retry: Backoff,
    /// Least time a batch keeps retrying transient errors, counted from its first failure,
    /// even past `retry.max_attempts` (waits stay at `retry.max`): an outage of the graph
    /// server shorter than this pauses the run (the queues fill, intake stops reading) instead
    /// of failing it. `None`: attempts only. Default `None`; `weir ingest`, `weir consume` and
    /// ingestd jobs set 5 min.
    pub retry_budget: Option<Duration>,
    /// How long in-flight batches may take to finish after cancellation. Default 10 s.
    pub grace_period: Duration,
    /// Least time between two checkpoint writes (the last one is always written). Default 1 s.
    pub checkpoint_interval: Duration,
    /// How often a progress event is published. Default 1 s.
    pub progress_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            job_id: "ingest".to_owned(),
            format: Format::csv(),
            batch_records: 1000,
            batch_bytes: 4 << 20,
            min_batch_records: 16,
            linger: Duration::from_millis(200),
            concurrency: 4,
            adaptive_concurrency: true,
            batch_queue: 4,
            batch_queue_bytes: 4 << 20,
            read_chunk_bytes: 64 << 10,
            chunk_records: 1024,
            chunk_queue: 8,
            max_record_bytes: 1 << 20,
            dead_letter_raw_bytes: 4 << 10,
            high_watermark: 0.80,
            low_watermark: 0.70,
            pressure_sample_interval: Duration::from_millis(100),
            pressure_stall_after: Duration::from_secs(5),
            max_errors: None,
            max_decompressed_bytes: None,
            retry: Backoff::default(),
            retry_budget: None,
            grace_period: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(1),
            progress_interval: Duration::from_secs(1),
        }
    }
}

fn positive(field: &'static str, v: usize) -> Result<(), StreamError> {
    if v == 0 {
        return Err(StreamError::InvalidConfig {
            field,
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

impl PipelineConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), StreamError> {
        positive("batch_records", self.batch_records)?;
        positive("batch_bytes", self.batch_bytes)?;
        positive("min_batch_records", self.min_batch_records)?;
        positive("concurrency", self.concurrency)?;
        positive("batch_queue", self.batch_queue)?;
        positive("read_chunk_bytes", self.read_chunk_bytes)?;
        positive("chunk_records", self.chunk_records)?;
        positive("chunk_queue", self.chunk_queue)?;
        positive("max_record_bytes", self.max_record_bytes)?;
        if self.retry.max_attempts.is_none() {
            return Err(StreamError::InvalidConfig {
                field: "retry.max_attempts",
                reason: "must be bounded (a write retried forever stalls the run)".into(),
            });
        }
        positive(
            "retry.max_attempts",
            self.retry.max_attempts.unwrap_or(0) as usize,
        )?;
        if self.min_batch_records > self.batch_records {
            return Err(StreamError::InvalidConfig {
                field: "min_batch_records",
                reason: "must not exceed batch_records".into(),
            });
        }
        if self.batch_queue_bytes < self.batch_bytes {
            return Err(StreamError::InvalidConfig {
                field: "batch_queue_bytes",
                reason: "must hold at least one full batch (batch_bytes)".into(),
            });
        }
        if !(self.low_watermark > 0.0
            && self.low_watermark < self.high_watermark
            && self.high_watermark <= 1.0)
        {
            return Err(StreamError::InvalidConfig {
                field: "low_watermark",
                reason: "need 0 < low_watermark < high_watermark <= 1".into(),
            });
        }
        if self.pressure_sample_interval.is_zero() {
            return Err(StreamError::InvalidConfig {
                field: "pressure_sample_interval",
                reason: "must be above zero".into(),
            });
        }
        Ok(())
    }

    /// Largest chunk the reader can hand over, in bytes: one read plus a record that spans
    /// reads, plus the per-record framing structs.
    pub fn max_chunk_bytes(&self) -> usize {
        self.read_chunk_bytes
            + self.max_record_bytes
            + self.chunk_records * std::mem::size_of::<crate::RawRecord>()
    }

    /// Upper bound, in bytes, of the memory the pipeline itself holds, computed from these
    /// settings (see the crate documentation for the formula and what it assumes).
    pub fn memory_bound_bytes(&self) -> usize {
        let chunk = self.max_chunk_bytes();
        // A batch holds its items' estimated bytes, plus at most two read buffers its raw
        // slices keep alive at its edges.
        let batch = self.batch_bytes + 2 * chunk;
        let chunks = (self.chunk_queue + 2) * chunk;
        let queued_batches = self
            .batch_queue_bytes
            .min(self.batch_queue * self.batch_bytes)
            + self.batch_queue * 2 * chunk;
        // Being built, prepared ahead of its write (`Sink::prepare`), in flight, queued.
        let batches = (2 + self.concurrency) * batch + queued_batches;
        chunks + batches + 2 * self.dead_letter_raw_bytes + 64 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bound_under_64_mib() {
        let c = PipelineConfig::default();
        c.validate().unwrap();
        assert!(
            c.memory_bound_bytes() < 64 << 20,
            "{}",
            c.memory_bound_bytes()
        );
        // The figure the crate documentation states.
        assert_eq!(c.memory_bound_bytes(), 65_806_336);
    }

    #[test]
    fn validation_names_the_field() {
        let c = PipelineConfig {
            concurrency: 0,
            ..Default::default()
        };
        match c.validate() {
            Err(StreamError::InvalidConfig { field, .. }) => assert_eq!(field, "concurrency"),
            other => panic!("{other:?}"),
        }
        let c = PipelineConfig {
            low_watermark: 0.9,
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(StreamError::InvalidConfig {
                field: "low_watermark",
                ..
            })
        ));
    }
}
