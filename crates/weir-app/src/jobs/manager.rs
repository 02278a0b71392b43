//! Jobs: submitted, queued (bounded), run through the pipeline (bounded concurrency),
//! checkpointed, reported.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::{BusPublisher, BusSlot};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_events::{JobState, ProgressEvent};
use weir_graph::Mapping;
use weir_metrics::StreamMetrics;
use weir_metrics::{Encoder, MetricSource};
use weir_pool::Pool;
use weir_sources::{ConsumerMetrics, KafkaMetrics};
use weir_stream::{
    CheckpointFile, DeadLetterSink, FileSource, Format, JsonlDeadLetters, RunOutcome, StreamError,
};

use crate::jobs::IngestdError;
use crate::jobs::config::{DeliverPolicy, JobsConfig, KafkaInput, StreamSource};
use crate::pipeline::JobPipeline;

/// Input format of a job: `"csv"` or `"jsonl"` in the job API (`"jsonlines"` and `"ndjson"`
/// are read as `"jsonl"`, as in mapping files).
pub use weir_stream::InputFormat;

/// Where a job's records come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobInput {
    /// A file or directory on the server, inside one of the configured input roots.
    Path(PathBuf),
    /// A request body spooled to this file; deleted when the job ends.
    Spooled(PathBuf),
    /// A JetStream durable consumer: the job runs until it is stopped.
    Stream(StreamInput),
    /// A Kafka consumer group: the job runs until it is stopped.
    Kafka(KafkaInput),
}

/// The JetStream side of a stream job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInput {
    /// The stream (created with `subject` when missing).
    pub stream: String,
    /// The consumer's subject filter.
    pub subject: String,
    /// Durable consumer name, shared by every worker of the consumer.
    pub consumer: String,
    /// Where a new consumer starts.
    pub deliver: DeliverPolicy,
    /// NATS URL; `None`: the service's (see [`JobManager::new`]).
    pub url: Option<String>,
    /// How long the server waits for an ack before it redelivers.
    pub ack_wait: Duration,
    /// Most messages delivered and not acknowledged across every worker.
    pub max_ack_pending: usize,
}

/// What kind of job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A file or upload: ends when its input does.
    File,
    /// A stream consumer: runs until stopped.
    Stream,
}

/// Which kind of consumer a stream job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerSource {
    /// A JetStream durable consumer.
    Jetstream,
    /// A Kafka consumer group.
    Kafka,
}

/// A stream job's consumer, as its status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerStatus {
    /// `jetstream` or `kafka`.
    pub source: ConsumerSource,
    /// The stream (JetStream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The subject filter (JetStream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The topics or `^patterns` (Kafka).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The durable consumer (JetStream) or the consumer group (Kafka): the `consumer` label
    /// of the job's `weir_consumer_*` metrics.
    pub consumer: String,
    /// Messages this job received.
    pub messages_received: u64,
    /// Messages this job acknowledged (JetStream) or whose offsets it committed (Kafka):
    /// their records committed or dead-lettered.
    pub messages_acked: u64,
    /// Messages this job received that had been delivered before (JetStream; 0 for Kafka,
    /// which does not tell).
    pub messages_redelivered: u64,
    /// The consumer's lag, as last read: messages not yet delivered to any worker
    /// (JetStream), or the summed lag of the partitions assigned to this job (Kafka).
    pub messages_pending: Option<u64>,
}

/// A running stream job's consumer counters.
#[derive(Clone, Debug)]
pub(super) enum LiveConsumer {
    JetStream(Arc<ConsumerMetrics>),
    Kafka(Arc<KafkaMetrics>),
}

impl LiveConsumer {
    fn fill(&self, c: &mut ConsumerStatus) {
        match self {
            Self::JetStream(m) => {
                c.messages_received = m.received();
                c.messages_acked = m.acked();
                c.messages_redelivered = m.redelivered();
                c.messages_pending = m.pending();
            }
            Self::Kafka(m) => {
                c.messages_received = m.received();
                c.messages_acked = m.committed();
                c.messages_pending = m.lag();
            }
        }
    }

    pub(super) fn collect(&self, enc: &mut Encoder) {
        match self {
            Self::JetStream(m) => m.collect(enc),
            Self::Kafka(m) => m.collect(enc),
        }
    }
}

/// A job to run.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Job id (letters, digits, `-`, `_`; at most 64). A job submitted again with the id of
    /// an interrupted one resumes after its checkpoint. Default: a new UUID.
    pub id: Option<String>,
    /// The records.
    pub input: JobInput,
    /// The mapping, as TOML text.
    pub mapping: String,
    /// Input format; default: the mapping's `[input] format`, else from the file name.
    pub format: Option<InputFormat>,
    /// Prefix for every label and relationship type.
    pub label_prefix: String,
}

/// What a client sees of a job.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    /// Job id (also the `job_id` of its change and progress events).
    pub id: String,
    /// File or stream.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// The input, for display (uploads show `upload`).
    pub input: String,
    /// Records read so far.
    pub records_read: u64,
    /// Records committed to the graph so far.
    pub records_committed: u64,
    /// Records dead-lettered so far.
    pub records_dead_lettered: u64,
    /// Bytes read so far.
    pub bytes_read: u64,
    /// The fatal error, if it failed.
    pub error: Option<String>,
    /// Change batches committed whose events could not be published (only with
    /// `events.policy = "best_effort"`; under `required` the job fails instead).
    pub events_unpublished: u64,
    /// The checkpoint file (kept when the job did not complete, so it can resume); none for a
    /// stream job, whose durable consumer keeps its place.
    pub checkpoint: Option<PathBuf>,
    /// The dead-letter file.
    pub dead_letters: PathBuf,
    /// Submission time, RFC 3339.
    pub submitted_at: String,
    /// A stream job's consumer and its counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<ConsumerStatus>,
}

pub(super) struct Entry {
    pub(super) status: Mutex<JobStatus>,
    pub(super) cancel: CancellationToken,
    /// A running stream job's consumer counters.
    pub(super) consumer: Mutex<Option<LiveConsumer>>,
}

impl Entry {
    /// The status, with a stream job's consumer counters read now.
    pub(super) fn snapshot(&self) -> JobStatus {
        let mut s = self.status.lock().clone();
        if let (Some(c), Some(m)) = (s.consumer.as_mut(), self.consumer.lock().as_ref()) {
            m.fill(c);
        }
        s
    }

    pub(super) fn update(&self, p: &ProgressEvent) {
        let mut s = self.status.lock();
        // A stream job ends when its source has acknowledged or committed its last messages
        // (and left its group), after the pipeline's last event: its run sets the final state.
        let ends_later = s.kind == JobKind::Stream && p.state.is_terminal();
        if !s.state.is_terminal() && !ends_later {
            s.state = p.state;
        }
        s.records_read = p.records_read;
        s.records_committed = p.records_committed;
        s.records_dead_lettered = p.records_dead_lettered;
        s.bytes_read = p.bytes_read;
        if p.error.is_some() {
            s.error.clone_from(&p.error);
        }
    }
}

/// The jobs of one service. Cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: JobsConfig,
    pub(super) pool: Pool,
    pub(super) bus: BusSlot,
    pub(super) publisher: BusPublisher,
    pub(super) metrics: StreamMetrics,
    slots: Arc<Semaphore>,
    /// Uploads being received (`jobs.max_concurrent_uploads`).
    uploads: Arc<Semaphore>,
    pub(super) jobs: Mutex<VecDeque<(String, Arc<Entry>)>>,
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: TaskTracker,
    /// Stream jobs' NATS URL when they name none.
    pub(super) nats_url: String,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager")
            .field("jobs", &self.inner.jobs.lock().len())
            .finish_non_exhaustive()
    }
}

pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl JobManager {
    /// A manager running jobs on `pool`, publishing to the bus in `bus` through `publisher`;
    /// every job's records, batches and backpressure go into `metrics` (the process's
    /// `weir_stream_*` families). Jobs stop (writing their checkpoints) when `shutdown` fires.
    /// Stream jobs that name no NATS URL use `nats_url`.
    pub fn new(
        config: JobsConfig,
        pool: Pool,
        bus: BusSlot,
        publisher: BusPublisher,
        metrics: StreamMetrics,
        shutdown: CancellationToken,
        nats_url: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.max_concurrent)),
                uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
                config,
                pool,
                bus,
                publisher,
                metrics,
                jobs: Mutex::new(VecDeque::new()),
                shutdown,
                tasks: TaskTracker::new(),
                nats_url,
            }),
        }
    }

    /// Refuses (429) when as many jobs are queued or running as `jobs.max_concurrent` +
    /// `jobs.max_queued` allow: checked before an upload is spooled, and again on submit.
    pub fn check_capacity(&self) -> Result<(), IngestdError> {
        let active = self.active();
        let c = &self.inner.config;
        if active >= c.max_concurrent + c.max_queued {
            return Err(IngestdError::Busy { active });
        }
        Ok(())
    }

    /// A slot for one upload being received, or 429 past `jobs.max_concurrent_uploads`.
    pub fn upload_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, IngestdError> {
        self.inner
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| IngestdError::TooManyUploads {
                max: self.inner.config.max_concurrent_uploads,
            })
    }

    /// The settings.
    pub fn config(&self) -> &JobsConfig {
        &self.inner.config
    }

    /// Whether the graph pool and the bus are reachable (jobs are refused until they are).
    pub async fn ready(&self) -> bool {
        self.inner.pool.ready() && self.inner.bus.check_ready().await.is_ok()
    }

    /// Checks that `path` lies inside a configured input root (after resolving `..` and
    /// links); returns the canonical path.
    pub fn allowed_path(&self, path: &Path) -> Result<PathBuf, IngestdError> {
        let canon = path
            .canonicalize()
            .map_err(|_| IngestdError::InputNotFound(path.display().to_string()))?;
        let inside = self.inner.config.input_roots.iter().any(|root| {
            root.canonicalize()
                .map(|r| canon.starts_with(r))
                .unwrap_or(false)
        });
        if inside {
            Ok(canon)
        } else {
            Err(IngestdError::PathNotAllowed(path.display().to_string()))
        }
    }

    /// File jobs queued or running (stream jobs have their own bound).
    fn active(&self) -> usize {
        self.inner
            .jobs
            .lock()
            .iter()
            .filter(|(_, e)| {
                let s = e.status.lock();
                s.kind == JobKind::File && !s.state.is_terminal()
            })
            .count()
    }

    /// Accepts a job: checks the mapping and the input, the queue bound and readiness, then
    /// queues it. Returns its first status.
    pub async fn submit(&self, spec: JobSpec) -> Result<JobStatus, IngestdError> {
        let stream = match &spec.input {
            JobInput::Stream(input) => Some(StreamSource::JetStream(input.clone())),
            JobInput::Kafka(input) => Some(StreamSource::Kafka(input.clone())),
            JobInput::Path(_) | JobInput::Spooled(_) => None,
        };
        if let Some(source) = stream {
            return self
                .submit_stream(spec.id, source, &spec.mapping, &spec.label_prefix, true)
                .await;
        }
        let result = self.submit_inner(spec.clone()).await;
        if result.is_err()
            && let JobInput::Spooled(p) = &spec.input
        {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    async fn submit_inner(&self, spec: JobSpec) -> Result<JobStatus, IngestdError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(IngestdError::ShuttingDown);
        }
        if spec.mapping.len() > inner.config.max_mapping_bytes {
            return Err(IngestdError::BadRequest(format!(
                "mapping larger than {} bytes",
                inner.config.max_mapping_bytes
            )));
        }
        let mapping = Mapping::parse(&spec.mapping, "mapping")
            .map_err(|e| IngestdError::InvalidMapping(e.to_string()))?
            .with_label_prefix(&spec.label_prefix)
            .map_err(|e| IngestdError::InvalidMapping(format!("label prefix: {e}")))?;
        let (path, shown) = match &spec.input {
            JobInput::Path(p) => (self.allowed_path(p)?, p.display().to_string()),
            JobInput::Spooled(p) => (p.clone(), "upload".to_owned()),
            JobInput::Stream(_) | JobInput::Kafka(_) => {
                unreachable!("stream jobs are submitted by submit_stream")
            }
        };
        let id = match spec.id.clone() {
            Some(id) if valid_id(&id) => id,
            Some(_) => {
                return Err(IngestdError::BadRequest(
                    "job id: 1 to 64 letters, digits, `-` or `_`".into(),
                ));
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        if !self.ready().await {
            return Err(IngestdError::NotReady);
        }
        let format = spec
            .format
            .or(mapping.input.format)
            .unwrap_or_else(|| InputFormat::from_file_name(&path))
            .decoder(mapping.input.delimiter.unwrap_or(b','));
        crate::jobs::private_dir(&inner.config.job_dir)
            .map_err(|e| IngestdError::Internal(format!("job dir: {e}")))?;
        let checkpoint = inner.config.job_dir.join(format!("{id}.checkpoint.json"));
        let entry = Arc::new(Entry {
            status: Mutex::new(JobStatus {
                id: id.clone(),
                kind: JobKind::File,
                state: JobState::Queued,
                input: shown,
                records_read: 0,
                records_committed: 0,
                records_dead_lettered: 0,
                bytes_read: 0,
                error: None,
                events_unpublished: 0,
                checkpoint: Some(checkpoint.clone()),
                dead_letters: inner
                    .config
                    .job_dir
                    .join(format!("{id}.dead-letters.jsonl")),
                submitted_at: chrono::Utc::now().to_rfc3339(),
                consumer: None,
            }),
            cancel: inner.shutdown.child_token(),
            consumer: Mutex::new(None),
        });
        {
            let mut jobs = inner.jobs.lock();
            if jobs
                .iter()
                .any(|(j, e)| *j == id && !e.status.lock().state.is_terminal())
            {
                return Err(IngestdError::Conflict(id));
            }
            let active = jobs
                .iter()
                .filter(|(_, e)| {
                    let s = e.status.lock();
                    s.kind == JobKind::File && !s.state.is_terminal()
                })
                .count();
            if active >= inner.config.max_concurrent + inner.config.max_queued {
                return Err(IngestdError::Busy { active });
            }
            self.enlist(&mut jobs, &id, entry.clone());
        }
        let first = entry.status.lock().clone();
        let this = self.clone();
        let spooled = matches!(spec.input, JobInput::Spooled(_));
        inner.tasks.spawn(async move {
            let permit = tokio::select! {
                p = this.inner.slots.clone().acquire_owned() => p.ok(),
                () = entry.cancel.cancelled() => None,
            };
            match permit {
                Some(_permit) => {
                    let r = this
                        .run_job(
                            &id,
                            &entry,
                            path.clone(),
                            format,
                            Arc::new(mapping),
                            checkpoint,
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::error!(job = %id, error = %e, "job failed");
                        let mut s = entry.status.lock();
                        s.state = JobState::Failed;
                        s.error = Some(e.to_string());
                    }
                }
                None => {
                    entry.status.lock().state = JobState::Cancelled;
                }
            }
            if spooled {
                let _ = std::fs::remove_file(&path);
            }
            let last = entry.status.lock().clone();
            this.publish_final(&last).await;
        });
        Ok(first)
    }

    /// Puts a new entry in the list (replacing a finished job of the same id) and forgets the
    /// oldest finished jobs beyond `jobs.history`.
    pub(super) fn enlist(
        &self,
        jobs: &mut VecDeque<(String, Arc<Entry>)>,
        id: &str,
        entry: Arc<Entry>,
    ) {
        jobs.retain(|(j, _)| j != id);
        jobs.push_back((id.to_owned(), entry));
        let mut finished = jobs
            .iter()
            .filter(|(_, e)| e.status.lock().state.is_terminal())
            .count();
        while finished > self.inner.config.history {
            match jobs
                .iter()
                .position(|(_, e)| e.status.lock().state.is_terminal())
            {
                Some(i) => {
                    jobs.remove(i);
                    finished -= 1;
                }
                None => break,
            }
        }
    }

    pub(super) async fn publish_final(&self, s: &JobStatus) {
        if let Some(bus) = self.inner.bus.get() {
            let ev = ProgressEvent {
                version: weir_events::EVENT_FORMAT_VERSION,
                job_id: s.id.clone(),
                state: s.state,
                records_read: s.records_read,
                records_committed: s.records_committed,
                records_dead_lettered: s.records_dead_lettered,
                bytes_read: s.bytes_read,
                bytes_total: None,
                records_per_sec: 0.0,
                batches_in_flight: 0,
                pressure: weir_events::PressureState::Normal,
                pressure_ratio: None,
                eta_secs: None,
                elapsed_secs: 0.0,
                error: s.error.clone(),
            };
            if let Err(e) = bus.publish_progress(&ev).await {
                tracing::debug!(job = %s.id, error = %e, "final progress not published");
            }
        }
    }

    async fn run_job(
        &self,
        id: &str,
        entry: &Arc<Entry>,
        path: PathBuf,
        format: Format,
        mapping: Arc<Mapping>,
        checkpoint: PathBuf,
    ) -> Result<(), IngestdError> {
        let inner = &self.inner;
        let publisher = inner.publisher.for_job();
        let job = JobPipeline::new(inner.config.tuning(id, format), mapping)
            .publisher(Arc::new(publisher.clone()))
            .checkpoint(CheckpointFile::new(&checkpoint));
        let resume = CheckpointFile::new(&checkpoint)
            .load()
            .map_err(|e| IngestdError::Internal(e.to_string()))?;
        let source = FileSource::open(std::slice::from_ref(&path), job.config(), resume.as_ref())
            .map_err(|e| IngestdError::InputNotFound(e.to_string()))?;
        let (pipeline, follower) = job
            .dead_letters(self.dead_letters(entry)?)
            .build(&inner.pool, &inner.metrics)
            .await
            .map_err(|e| IngestdError::Internal(e.to_string()))?;
        let forward = self.forward_progress(entry, &publisher, pipeline.subscribe());
        entry.status.lock().state = JobState::Running;
        tracing::info!(job = %id, input = %path.display(), "job started");
        let result = pipeline.run(source, entry.cancel.clone()).await;
        let _ = forward.await;
        let _ = follower.await;
        let summary = match result {
            Ok(s) => s,
            Err(StreamError::Failed { cause, summary }) => {
                let mut st = entry.status.lock();
                st.error = Some(cause.to_string());
                drop(st);
                *summary
            }
            Err(e) => return Err(IngestdError::Internal(e.to_string())),
        };
        let mut st = entry.status.lock();
        st.events_unpublished = publisher.unpublished();
        st.records_read = summary.records_read;
        st.records_committed = summary.records_committed;
        st.records_dead_lettered = summary.records_dead_lettered;
        st.bytes_read = summary.bytes_read;
        st.state = match summary.outcome {
            RunOutcome::Completed => JobState::Completed,
            RunOutcome::Cancelled => JobState::Cancelled,
            RunOutcome::Failed => JobState::Failed,
        };
        tracing::info!(job = %id, state = ?st.state, committed = st.records_committed, "job ended");
        if st.state == JobState::Completed {
            let _ = std::fs::remove_file(&checkpoint);
        }
        Ok(())
    }

    /// A job's dead-letter file (its status's `dead_letters`, appended), capped by
    /// `jobs.max_dead_letter_bytes`.
    pub(super) fn dead_letters(
        &self,
        entry: &Entry,
    ) -> Result<Arc<dyn DeadLetterSink>, IngestdError> {
        let path = entry.status.lock().dead_letters.clone();
        let dead = JsonlDeadLetters::open(path)
            .map_err(|e| IngestdError::Internal(format!("dead-letter file: {e}")))?
            .with_max_bytes(self.inner.config.max_dead_letter_bytes);
        Ok(Arc::new(dead))
    }

    /// Copies a running job's progress into its status and onto the bus (`ingestProgress`).
    pub(super) fn forward_progress(
        &self,
        entry: &Arc<Entry>,
        publisher: &BusPublisher,
        mut rx: tokio::sync::watch::Receiver<ProgressEvent>,
    ) -> tokio::task::JoinHandle<()> {
        let entry = entry.clone();
        let bus = self.inner.bus.clone();
        let publisher = publisher.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                entry.update(&p);
                entry.status.lock().events_unpublished = publisher.unpublished();
                // Progress is lossy by design: a snapshot superseded by the next one.
                if let Some(bus) = bus.get() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), bus.publish_progress(&p))
                        .await;
                }
                if p.state.is_terminal() {
                    break;
                }
            }
        })
    }

    /// The status of one job.
    pub fn status(&self, id: &str) -> Option<JobStatus> {
        self.inner
            .jobs
            .lock()
            .iter()
            .find(|(j, _)| j == id)
            .map(|(_, e)| e.snapshot())
    }

    /// Every job still known, oldest first.
    pub fn list(&self) -> Vec<JobStatus> {
        self.inner
            .jobs
            .lock()
            .iter()
            .map(|(_, e)| e.snapshot())
            .collect()
    }

    /// Asks a job to stop (it writes its checkpoint). `false` when unknown or already done.
    pub fn cancel(&self, id: &str) -> bool {
        let jobs = self.inner.jobs.lock();
        match jobs.iter().find(|(j, _)| j == id) {
            Some((_, e)) if !e.status.lock().state.is_terminal() => {
                e.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Jobs queued or running now (file and stream).
    pub fn active_jobs(&self) -> usize {
        self.inner
            .jobs
            .lock()
            .iter()
            .filter(|(_, e)| !e.status.lock().state.is_terminal())
            .count()
    }

    /// Waits, at most `grace`, for every job to stop after the shutdown token fired (running
    /// jobs finish their in-flight batches and write checkpoints). `false` when it had to
    /// give up.
    pub async fn wait_stopped(&self, grace: Duration) -> bool {
        self.inner.tasks.close();
        let done = tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                ?grace,
                jobs = self.active(),
                "jobs still running after the shutdown grace"
            );
        }
        done
    }
}
