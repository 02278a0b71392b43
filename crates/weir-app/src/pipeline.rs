//! One way to put a graph-writing pipeline together, for every kind of job: file jobs and
//! stream jobs of `weir-ingestd` / `weir serve`, `weir ingest` (and its dry run) and
//! `weir consume`.
//!
//! A [`JobTuning`] says how the job is tuned (batches, concurrency, error and retry budgets,
//! the memory limit the buffers are sized to); a [`JobPipeline`] adds the mapping, the change
//! publisher, the dead-letter sink and the checkpoint, and [`JobPipeline::build`] creates the
//! graph writer over the write pool, ensures the mapping's key constraints and returns the
//! [`Pipeline`] with the memory gauge and the process's [`StreamMetrics`] attached. The caller
//! opens the source (with [`JobPipeline::config`]), adds a commit watch when it acks a
//! stream, and runs it.
//!
//! ```ignore
//! let tuning = JobTuning { batch_size: 500, ..JobTuning::new("j1", format) };
//! let job = JobPipeline::new(tuning, mapping)
//!     .publisher(publisher)
//!     .dead_letters(dead)
//!     .checkpoint(CheckpointFile::new(path));
//! let source = FileSource::open(&inputs, job.config(), resume.as_ref())?;
//! let (pipeline, follower) = job.build(&pool, &metrics).await?;
//! let result = pipeline.run(source, cancel).await;
//! let _ = follower.await;
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use weir_graph::{
    ChangePublisher, GraphError, GraphMapper, GraphSink, GraphWriter, MappedRecord, Mapping,
    NoopPublisher, WriterConfig,
};
use weir_metrics::StreamMetrics;
use weir_pool::Pool;
use weir_sources::{JetStreamSourceConfig, KafkaSourceConfig};
use weir_stream::{
    CheckpointFile, DeadLetterSink, Format, NullSink, Pipeline, PipelineConfig, ProcessGauge, Sink,
    StreamError,
};

/// A pipeline that writes to the graph through the write pool.
pub type GraphPipeline = Pipeline<GraphMapper, GraphSink<Pool>>;

/// A pipeline that reads, decodes and maps, and writes nothing (`weir ingest --dry-run`).
pub type DryRunPipeline = Pipeline<GraphMapper, NullSink<MappedRecord>>;

/// How a graph-writing job is tuned. Start from [`JobTuning::new`] (the defaults of
/// `weir ingest` and of `[jobs]`) and change what the job sets.
#[derive(Clone, Debug, PartialEq)]
pub struct JobTuning {
    /// Job id: in progress events, checkpoints and change events (batch ids).
    pub job_id: String,
    /// Input format.
    pub format: Format,
    /// Most records per batch (one write transaction each). Default 1000.
    pub batch_size: usize,
    /// Longest a started batch waits for more records. Default 200 ms.
    pub linger: Duration,
    /// Most batches written at once. Default 1.
    pub concurrency: usize,
    /// Whether the batches in flight adapt between 1 and `concurrency`. Default true.
    pub adaptive_concurrency: bool,
    /// Most dead-lettered records before the run fails; `None`: no budget. Default `None`.
    pub max_errors: Option<u64>,
    /// Most bytes one gzip input may decompress to; `None`: no bound. Default `None`.
    pub max_decompressed_bytes: Option<u64>,
    /// How long a batch keeps retrying transient graph errors before the run fails (intake
    /// pauses meanwhile). Default 5 min.
    pub retry_for: Duration,
    /// The memory limit, bytes: intake pauses under it, and the pipeline's buffers (and a
    /// stream source's pulls) are shrunk to fit it. Default `None`: the gauge's own (the
    /// cgroup limit, if any), buffers as configured.
    pub memory_limit: Option<u64>,
}

impl JobTuning {
    /// The defaults for job `job_id` reading `format`.
    pub fn new(job_id: impl Into<String>, format: Format) -> Self {
        Self {
            job_id: job_id.into(),
            format,
            batch_size: 1000,
            linger: PipelineConfig::default().linger,
            concurrency: 1,
            adaptive_concurrency: true,
            max_errors: None,
            max_decompressed_bytes: None,
            retry_for: Duration::from_secs(300),
            memory_limit: None,
        }
    }

    /// The pipeline settings: these, the rest at their defaults, the smallest batch memory
    /// pressure may shrink to no larger than `batch_size`, and the buffers shrunk to fit the
    /// memory limit: their bound kept within 40 % of it (the rest is the runtime, the allocator,
    /// the pool and the graph driver), down to a floor set by `max_record_bytes`.
    pub fn pipeline_config(&self) -> PipelineConfig {
        let defaults = PipelineConfig::default();
        let mut cfg = PipelineConfig {
            job_id: self.job_id.clone(),
            format: self.format.clone(),
            batch_records: self.batch_size,
            min_batch_records: defaults.min_batch_records.min(self.batch_size),
            linger: self.linger,
            concurrency: self.concurrency,
            adaptive_concurrency: self.adaptive_concurrency,
            max_errors: self.max_errors,
            max_decompressed_bytes: self.max_decompressed_bytes,
            retry_budget: Some(self.retry_for),
            ..defaults
        };
        if let Some(limit) = self.memory_limit {
            fit_to_limit(&mut cfg, limit);
        }
        cfg
    }
}

/// Shrinks the pipeline's buffers until their bound fits in 40 % of `limit` (the rest is the
/// runtime, the allocator, the pool and the graph driver), down to a floor set by
/// `max_record_bytes` (1 MiB) and the concurrency.
fn fit_to_limit(cfg: &mut PipelineConfig, limit: u64) {
    let budget = (limit as f64 * 0.4) as usize;
    while cfg.memory_bound_bytes() > budget {
        if cfg.batch_bytes > 64 << 10 {
            cfg.batch_bytes /= 2;
            cfg.batch_queue_bytes = (cfg.batch_queue_bytes / 2).max(cfg.batch_bytes);
        } else if cfg.chunk_queue > 2 || cfg.batch_queue > 1 {
            cfg.chunk_queue = (cfg.chunk_queue / 2).max(2);
            cfg.batch_queue = (cfg.batch_queue / 2).max(1);
        } else if cfg.chunk_records > 128 || cfg.read_chunk_bytes > 16 << 10 {
            cfg.chunk_records = (cfg.chunk_records / 2).max(128);
            cfg.read_chunk_bytes = (cfg.read_chunk_bytes / 2).max(16 << 10);
        } else {
            break;
        }
    }
}

/// Bytes per pull under a memory limit: a sixteenth of it, never more than `default` and never
/// less than a NATS message can be (1 MiB payload and its headers), or the pull could never
/// return the next message.
fn fetch_bytes_for_limit(limit: u64, default: usize) -> usize {
    const MIN: usize = (1 << 20) + (64 << 10);
    usize::try_from(limit / 16)
        .unwrap_or(usize::MAX)
        .clamp(MIN, default.max(MIN))
}

/// Why a job's pipeline could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    /// The mapping's key constraints could not be created.
    #[error("creating key constraints: {0}")]
    Schema(GraphError),
    /// The checkpoint file could not be read.
    #[error(transparent)]
    Checkpoint(StreamError),
}

/// A graph-writing job's pipeline being put together: its tuning, its mapping and, optionally,
/// the change publisher (default: none), the dead-letter sink (default: the pipeline's, in
/// memory) and the checkpoint file (default: none).
pub struct JobPipeline {
    config: PipelineConfig,
    memory_limit: Option<u64>,
    mapping: Arc<Mapping>,
    publisher: Arc<dyn ChangePublisher>,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    checkpoint: Option<CheckpointFile>,
}

impl std::fmt::Debug for JobPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobPipeline")
            .field("config", &self.config)
            .field("memory_limit", &self.memory_limit)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl JobPipeline {
    /// A job tuned by `tuning`, mapping its records with `mapping`.
    pub fn new(tuning: JobTuning, mapping: Arc<Mapping>) -> Self {
        Self {
            config: tuning.pipeline_config(),
            memory_limit: tuning.memory_limit,
            mapping,
            publisher: Arc::new(NoopPublisher),
            dead_letters: None,
            checkpoint: None,
        }
    }

    /// Publishes each committed batch's changes through `publisher`.
    pub fn publisher(mut self, publisher: Arc<dyn ChangePublisher>) -> Self {
        self.publisher = publisher;
        self
    }

    /// Sends dead letters to `sink`.
    pub fn dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = Some(sink);
        self
    }

    /// Keeps checkpoints in `file`, resuming after the one it holds (open the source with the
    /// same checkpoint).
    pub fn checkpoint(mut self, file: CheckpointFile) -> Self {
        self.checkpoint = Some(file);
        self
    }

    /// The pipeline settings ([`JobTuning::pipeline_config`]), to open the source with.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// `source` tuned for this job: pulls of as many messages as a batch holds, records no
    /// longer than the pipeline takes, and under a memory limit pulls of at most a sixteenth
    /// of it (never less than one largest NATS message).
    pub fn stream_source(&self, source: JetStreamSourceConfig) -> JetStreamSourceConfig {
        let fetch_max_bytes = match self.memory_limit {
            Some(limit) => fetch_bytes_for_limit(limit, source.fetch_max_bytes),
            None => source.fetch_max_bytes,
        };
        JetStreamSourceConfig {
            fetch_messages: self.config.batch_records,
            max_record_bytes: self.config.max_record_bytes,
            fetch_max_bytes,
            ..source
        }
    }

    /// `source` tuned for this job: chunks of as many messages as a batch holds, records no
    /// longer than the pipeline takes, and under a memory limit at most an eighth of it in
    /// flight (never less than 2 MiB) in chunks of at most a quarter of that (never less than
    /// 1 MiB).
    pub fn kafka_source(&self, source: KafkaSourceConfig) -> KafkaSourceConfig {
        let (max_in_flight_bytes, chunk_bytes) = match self.memory_limit {
            Some(limit) => {
                let cap = usize::try_from(limit / 8).unwrap_or(usize::MAX);
                (
                    source.max_in_flight_bytes.min(cap).max(2 << 20),
                    source.chunk_bytes.min(cap / 4).max(1 << 20),
                )
            }
            None => (source.max_in_flight_bytes, source.chunk_bytes),
        };
        KafkaSourceConfig {
            chunk_records: self.config.batch_records,
            max_record_bytes: self.config.max_record_bytes,
            max_in_flight_bytes,
            chunk_bytes,
            ..source
        }
    }

    /// The pipeline writing to the graph through `pool`: a [`GraphWriter`] built as every
    /// pipeline's is ([`WriterConfig::for_pipeline`]: the pipeline retries), the mapping's key
    /// constraints ensured, then the memory gauge, the dead letters, the checkpoint and
    /// `metrics` attached. Returns it with the metrics' follower task (await it after the run).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn build(
        self,
        pool: &Pool,
        metrics: &StreamMetrics,
    ) -> Result<(GraphPipeline, JoinHandle<()>), AssemblyError> {
        let job_id = self.config.job_id.clone();
        let writer = Arc::new(GraphWriter::new(
            pool.clone(),
            self.mapping.clone(),
            self.publisher.clone(),
            WriterConfig::for_pipeline(job_id.clone()),
        ));
        writer
            .ensure_schema()
            .await
            .map_err(AssemblyError::Schema)?;
        let sink = GraphSink::new(writer, job_id);
        self.finish(sink, metrics)
    }

    /// The pipeline of a dry run: everything read, decoded and mapped, nothing written (no
    /// pool, no schema), with the same gauge, dead letters, checkpoint (if set) and `metrics`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn dry_run(
        self,
        metrics: &StreamMetrics,
    ) -> Result<(DryRunPipeline, JoinHandle<()>), AssemblyError> {
        self.finish(NullSink::new(), metrics)
    }

    fn finish<S: Sink<Item = MappedRecord>>(
        self,
        sink: S,
        metrics: &StreamMetrics,
    ) -> Result<(Pipeline<GraphMapper, S>, JoinHandle<()>), AssemblyError> {
        let mut pipeline = Pipeline::new(self.config, GraphMapper::new(self.mapping), sink)
            .with_gauge(Arc::new(ProcessGauge::new(self.memory_limit)));
        if let Some(dead) = self.dead_letters {
            pipeline = pipeline.with_dead_letters(dead);
        }
        if let Some(file) = self.checkpoint {
            pipeline = pipeline
                .with_checkpoint(file)
                .map_err(AssemblyError::Checkpoint)?;
        }
        Ok(metrics.attach(pipeline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_shrink_to_fit_a_small_limit() {
        let default = PipelineConfig::default().memory_bound_bytes();
        for limit in [48u64 << 20, 64 << 20] {
            let mut cfg = PipelineConfig::default();
            fit_to_limit(&mut cfg, limit);
            let bound = cfg.memory_bound_bytes() as u64;
            assert!(bound <= limit * 2 / 5, "{limit}: {bound}");
            cfg.validate().unwrap();
        }
        // Below the floor it shrinks as far as it can and stays valid.
        let mut cfg = PipelineConfig::default();
        fit_to_limit(&mut cfg, 4 << 20);
        assert!(cfg.memory_bound_bytes() < default);
        cfg.validate().unwrap();
        // A roomy limit changes nothing.
        let mut cfg = PipelineConfig::default();
        fit_to_limit(&mut cfg, 1 << 30);
        assert_eq!(cfg, PipelineConfig::default());
    }

    #[test]
    fn pulls_shrink_with_the_memory_limit_but_still_fit_one_message() {
        let default = 4 << 20;
        assert_eq!(fetch_bytes_for_limit(1 << 30, default), default);
        assert_eq!(fetch_bytes_for_limit(40 << 20, default), (40 << 20) / 16);
        assert_eq!(
            fetch_bytes_for_limit(8 << 20, default),
            (1 << 20) + (64 << 10)
        );
    }

    #[test]
    fn tuning_sets_the_pipeline_and_clamps_the_smallest_batch() {
        let t = JobTuning {
            batch_size: 8,
            concurrency: 3,
            adaptive_concurrency: false,
            max_errors: Some(5),
            retry_for: Duration::from_secs(7),
            ..JobTuning::new("j", Format::JsonLines)
        };
        let cfg = t.pipeline_config();
        assert_eq!(cfg.job_id, "j");
        assert_eq!(cfg.format, Format::JsonLines);
        assert_eq!((cfg.batch_records, cfg.min_batch_records), (8, 8));
        assert_eq!((cfg.concurrency, cfg.adaptive_concurrency), (3, false));
        assert_eq!(cfg.max_errors, Some(5));
        assert_eq!(cfg.retry_budget, Some(Duration::from_secs(7)));
        cfg.validate().unwrap();
        // Without a limit the buffers are the defaults; a small one shrinks them.
        let roomy = JobTuning::new("j", Format::JsonLines).pipeline_config();
        assert_eq!(roomy.batch_bytes, PipelineConfig::default().batch_bytes);
        let small = JobTuning {
            memory_limit: Some(48 << 20),
            ..JobTuning::new("j", Format::JsonLines)
        }
        .pipeline_config();
        assert!(small.memory_bound_bytes() <= (48 << 20) * 2 / 5);
    }

    #[test]
    fn stream_sources_take_the_batch_size_record_bound_and_memory_limit() {
        let toml = r#"
[[nodes]]
label = "P"
key = ["id"]
properties = [{ name = "id" }]
"#;
        let mapping = Arc::new(Mapping::parse(toml, "m").unwrap());
        let tuning = JobTuning {
            batch_size: 250,
            memory_limit: Some(40 << 20),
            ..JobTuning::new("s", Format::JsonLines)
        };
        let job = JobPipeline::new(tuning, mapping);
        let src = job.stream_source(JetStreamSourceConfig::default());
        assert_eq!(src.fetch_messages, 250);
        assert_eq!(src.max_record_bytes, job.config().max_record_bytes);
        assert_eq!(src.fetch_max_bytes, (40 << 20) / 16);
    }

    #[test]
    fn kafka_sources_take_the_batch_size_record_bound_and_memory_limit() {
        let toml = r#"
[[nodes]]
label = "P"
key = ["id"]
properties = [{ name = "id" }]
"#;
        let mapping = Arc::new(Mapping::parse(toml, "m").unwrap());
        let defaults = KafkaSourceConfig::default();
        let roomy = JobPipeline::new(
            JobTuning {
                batch_size: 250,
                ..JobTuning::new("k", Format::JsonLines)
            },
            mapping.clone(),
        );
        let src = roomy.kafka_source(KafkaSourceConfig::default());
        assert_eq!(src.chunk_records, 250);
        assert_eq!(src.max_record_bytes, roomy.config().max_record_bytes);
        assert_eq!(src.max_in_flight_bytes, defaults.max_in_flight_bytes);
        assert_eq!(src.chunk_bytes, defaults.chunk_bytes);
        let small = JobPipeline::new(
            JobTuning {
                memory_limit: Some(32 << 20),
                ..JobTuning::new("k", Format::JsonLines)
            },
            mapping,
        );
        let src = small.kafka_source(KafkaSourceConfig::default());
        // An eighth of 32 MiB in flight, chunks at their 1 MiB floor.
        assert_eq!(
            (src.max_in_flight_bytes, src.chunk_bytes),
            (4 << 20, 1 << 20)
        );
        src.validate().unwrap();
    }
}
