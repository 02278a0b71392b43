//! Stream jobs: a JetStream durable consumer or a Kafka consumer group inside the service, the
//! same worker as `weir consume` (`--topic` for Kafka). Messages (one JSON object, or JSON
//! Lines) go through the job's mapping into the graph and are acknowledged (JetStream), or
//! their partitions' offsets committed (Kafka), after their records are committed or
//! dead-lettered; a stream job runs until it is stopped (`DELETE /jobs/{id}` or shutdown:
//! in-flight batches finish and are acknowledged or committed, what it still holds is handed
//! back for redelivery, and a Kafka job leaves its group).
//!
//! Stream jobs are bounded by `jobs.max_stream_jobs`, not by the file jobs' slots. They have no
//! checkpoint file: the durable consumer (the group's committed offsets) is their checkpoint,
//! so a job started again with the same consumer (group) goes on where the last one stopped
//! (with every worker of that consumer, whichever process it is in). Dead letters go to
//! `<job_dir>/<id>.dead-letters.jsonl` (appended, capped by `jobs.max_dead_letter_bytes`); a
//! Kafka record's names `kafka:<topic>/<partition>` and its offset.
//!
//! A Kafka job's librdkafka properties may hold credentials: they are never shown (its status
//! names topics, group and brokers) and its errors are redacted
//! ([`crate::jobs::config::KafkaProperties::redact`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use weir_config::Backoff;
use weir_events::JobState;
use weir_graph::Mapping;
use weir_metrics::{Encoder, MetricSource};
use weir_sources::{
    DeliverFrom, JetStreamSource, JetStreamSourceConfig, KafkaSource, KafkaSourceConfig,
    KafkaSourceError, SourceFinisher, StartFrom,
};
use weir_stream::{
    CancellationToken, Format, Position, RunOutcome, RunSummary, Source, StreamError,
};

use crate::BusPublisher;
use crate::jobs::IngestdError;
use crate::jobs::config::{DeliverPolicy, KafkaInput, KafkaProperties, KafkaStart, StreamSource};
use crate::jobs::manager::{
    ConsumerSource, ConsumerStatus, Entry, JobKind, JobManager, JobStatus, LiveConsumer,
    StreamInput, valid_id,
};
use crate::pipeline::{JobPipeline, JobTuning};

impl From<KafkaStart> for StartFrom {
    fn from(s: KafkaStart) -> Self {
        match s {
            KafkaStart::Earliest => Self::Earliest,
            KafkaStart::Latest => Self::Latest,
        }
    }
}

/// A stream job's source settings, checked.
enum Prepared {
    JetStream(JetStreamSourceConfig),
    /// The properties again, to redact errors with.
    Kafka(KafkaSourceConfig, KafkaProperties),
}

impl From<DeliverPolicy> for DeliverFrom {
    fn from(d: DeliverPolicy) -> Self {
        match d {
            DeliverPolicy::All => Self::All,
            DeliverPolicy::New => Self::New,
            DeliverPolicy::Last => Self::Last,
        }
    }
}

impl JobManager {
    /// Accepts a stream job: checks the mapping, the consumer settings, the bound on stream
    /// jobs and (when `require_ready`) readiness, then starts it. Until the graph and the bus
    /// are ready, and then NATS (the Kafka cluster) answers, the job is `queued` with the
    /// reason in its `error`.
    pub(crate) async fn submit_stream(
        &self,
        id: Option<String>,
        input: StreamSource,
        mapping: &str,
        label_prefix: &str,
        require_ready: bool,
    ) -> Result<JobStatus, IngestdError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(IngestdError::ShuttingDown);
        }
        if mapping.len() > inner.config.max_mapping_bytes {
            return Err(IngestdError::BadRequest(format!(
                "mapping larger than {} bytes",
                inner.config.max_mapping_bytes
            )));
        }
        let mapping = Mapping::parse(mapping, "mapping")
            .map_err(|e| IngestdError::InvalidMapping(e.to_string()))?
            .with_label_prefix(label_prefix)
            .map_err(|e| IngestdError::InvalidMapping(format!("label prefix: {e}")))?;
        let (source, shown, consumer) = match &input {
            StreamSource::JetStream(js) => {
                let source = self.source_config(js);
                source
                    .validate()
                    .map_err(|e| IngestdError::BadRequest(e.to_string()))?;
                let shown = format!(
                    "nats: stream {} subject {} consumer {}",
                    js.stream, js.subject, js.consumer
                );
                let consumer = ConsumerStatus {
                    source: ConsumerSource::Jetstream,
                    stream: Some(js.stream.clone()),
                    subject: Some(js.subject.clone()),
                    topics: Vec::new(),
                    consumer: js.consumer.clone(),
                    messages_received: 0,
                    messages_acked: 0,
                    messages_redelivered: 0,
                    messages_pending: None,
                };
                (Prepared::JetStream(source), shown, consumer)
            }
            StreamSource::Kafka(k) => {
                let source = kafka_config(k);
                source
                    .validate()
                    .map_err(|e| IngestdError::BadRequest(k.properties.redact(&e.to_string())))?;
                // Topics, group and brokers only: the properties may hold credentials.
                let shown = format!(
                    "kafka: topics {} group {} brokers {}",
                    k.topics.join(","),
                    k.group,
                    k.brokers
                );
                let consumer = ConsumerStatus {
                    source: ConsumerSource::Kafka,
                    stream: None,
                    subject: None,
                    topics: k.topics.clone(),
                    consumer: k.group.clone(),
                    messages_received: 0,
                    messages_acked: 0,
                    messages_redelivered: 0,
                    messages_pending: None,
                };
                (
                    Prepared::Kafka(source, k.properties.clone()),
                    shown,
                    consumer,
                )
            }
        };
        let id = match id {
            Some(id) if valid_id(&id) => id,
            Some(_) => {
                return Err(IngestdError::BadRequest(
                    "job id: 1 to 64 letters, digits, `-` or `_`".into(),
                ));
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        if require_ready && !self.ready().await {
            return Err(IngestdError::NotReady);
        }
        crate::jobs::private_dir(&inner.config.job_dir)
            .map_err(|e| IngestdError::Internal(format!("job dir: {e}")))?;
        let entry = Arc::new(Entry {
            status: Mutex::new(JobStatus {
                id: id.clone(),
                kind: JobKind::Stream,
                state: JobState::Queued,
                input: shown,
                records_read: 0,
                records_committed: 0,
                records_dead_lettered: 0,
                bytes_read: 0,
                error: None,
                events_unpublished: 0,
                checkpoint: None,
                dead_letters: inner
                    .config
                    .job_dir
                    .join(format!("{id}.dead-letters.jsonl")),
                submitted_at: chrono::Utc::now().to_rfc3339(),
                consumer: Some(consumer),
            }),
            cancel: inner.shutdown.child_token(),
            consumer: Mutex::new(None),
        });
        {
            let mut jobs = inner.jobs.lock();
            let running = |e: &Arc<Entry>| !e.status.lock().state.is_terminal();
            if jobs.iter().any(|(j, e)| *j == id && running(e)) {
                return Err(IngestdError::Conflict(id));
            }
            let streams = jobs
                .iter()
                .filter(|(_, e)| running(e) && e.status.lock().kind == JobKind::Stream)
                .count();
            if streams >= inner.config.max_stream_jobs {
                return Err(IngestdError::BadRequest(format!(
                    "{streams} stream jobs are running, jobs.max_stream_jobs allows {}",
                    inner.config.max_stream_jobs
                )));
            }
            self.enlist(&mut jobs, &id, entry.clone());
        }
        let first = entry.status.lock().clone();
        let this = self.clone();
        inner.tasks.spawn(async move {
            while !this.ready().await {
                entry.status.lock().error =
                    Some("waiting: the graph server or the bus is not reachable yet".into());
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = entry.cancel.cancelled() => {
                        entry.status.lock().state = JobState::Cancelled;
                        return;
                    }
                }
            }
            let mapping = Arc::new(mapping);
            let result = match source {
                Prepared::JetStream(source) => this.run_stream(&id, &entry, source, mapping).await,
                Prepared::Kafka(source, properties) => {
                    this.run_kafka(&id, &entry, source, &properties, mapping)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::error!(job = %id, error = %e, "stream job failed");
                let mut s = entry.status.lock();
                s.state = JobState::Failed;
                s.error = Some(e.to_string());
            }
            let last = entry.snapshot();
            this.publish_final(&last).await;
        });
        Ok(first)
    }

    /// Starts the `[[jobs.streams]]` jobs: listed at once, each waits until the graph and
    /// the bus are ready, then runs until shutdown. An unreadable or invalid mapping file, or
    /// an entry naming fields of both sources, fails here, naming the job.
    pub async fn start_configured_streams(&self) -> Result<(), IngestdError> {
        for c in self.inner.config.streams.clone() {
            let mapping = std::fs::read_to_string(&c.mapping).map_err(|e| {
                IngestdError::Internal(format!(
                    "jobs.streams `{}`: mapping {}: {e}",
                    c.id,
                    c.mapping.display()
                ))
            })?;
            let input = c
                .source(&self.inner.config.kafka)
                .map_err(|e| IngestdError::Internal(e.to_string()))?;
            self.submit_stream(Some(c.id.clone()), input, &mapping, &c.label_prefix, false)
                .await
                .map_err(|e| IngestdError::Internal(format!("jobs.streams `{}`: {e}", c.id)))?;
        }
        Ok(())
    }

    /// The running stream jobs' consumer counters (`weir_consumer_*`), for `/metrics`.
    pub fn consumer_metrics(&self) -> Arc<dyn MetricSource> {
        let this = self.clone();
        Arc::new(move |enc: &mut Encoder| {
            let live: Vec<_> = this
                .inner
                .jobs
                .lock()
                .iter()
                .filter_map(|(_, e)| e.consumer.lock().clone())
                .collect();
            for m in live {
                m.collect(enc);
            }
        })
    }

    /// The consumer of `input` (pulls are sized by the job's tuning when it runs:
    /// [`JobPipeline::stream_source`]).
    fn source_config(&self, input: &StreamInput) -> JetStreamSourceConfig {
        JetStreamSourceConfig {
            url: input
                .url
                .clone()
                .unwrap_or_else(|| self.inner.nats_url.clone()),
            stream: input.stream.clone(),
            subject: input.subject.clone(),
            consumer: input.consumer.clone(),
            deliver: input.deliver.into(),
            ack_wait: input.ack_wait,
            max_ack_pending: input.max_ack_pending,
            ..JetStreamSourceConfig::default()
        }
    }

    /// A stream job's pipeline (no error budget by count: an unbounded input has none; the
    /// dead-letter file's cap bounds the disk) and the publisher of its changes.
    fn stream_job(&self, id: &str, mapping: Arc<Mapping>) -> (JobPipeline, BusPublisher) {
        let publisher = self.inner.publisher.for_job();
        let tuning = JobTuning {
            max_errors: None,
            ..self.inner.config.tuning(id, Format::JsonLines)
        };
        let job = JobPipeline::new(tuning, mapping).publisher(Arc::new(publisher.clone()));
        (job, publisher)
    }

    /// Starts a job's source, retrying with backoff while it fails with [`StartError::Wait`]
    /// (the job stays `queued` with the reason in its `error`). `None`: the job was stopped
    /// meanwhile (it is then `cancelled`).
    async fn start_source<T, Fut>(
        &self,
        id: &str,
        entry: &Entry,
        what: &str,
        mut start: impl FnMut() -> Fut,
    ) -> Result<Option<T>, IngestdError>
    where
        Fut: Future<Output = Result<T, StartError>>,
    {
        let backoff = Backoff::exponential(Duration::from_millis(500), Duration::from_secs(10))
            .with_jitter(0.3);
        let mut attempt = 0;
        loop {
            let started = tokio::select! {
                r = start() => r,
                () = entry.cancel.cancelled() => Err(StartError::Stopped),
            };
            let reason = match started {
                Ok(started) => {
                    entry.status.lock().error = None;
                    return Ok(Some(started));
                }
                Err(StartError::Wait(reason)) => reason,
                Err(StartError::Fatal(e)) => return Err(e),
                Err(StartError::Stopped) => {
                    entry.status.lock().state = JobState::Cancelled;
                    return Ok(None);
                }
            };
            tracing::warn!(job = %id, error = %reason, "stream job waiting for {what}");
            entry.status.lock().error = Some(format!("waiting: {reason}"));
            attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(backoff.jittered(attempt)) => {}
                () = entry.cancel.cancelled() => {
                    entry.status.lock().state = JobState::Cancelled;
                    return Ok(None);
                }
            }
        }
    }

    /// A JetStream stream job: waits until NATS answers, then consumes until it is stopped;
    /// the acker acks the last commits and hands back the rest after the pipeline ends.
    async fn run_stream(
        &self,
        id: &str,
        entry: &Arc<Entry>,
        source_cfg: JetStreamSourceConfig,
        mapping: Arc<Mapping>,
    ) -> Result<(), IngestdError> {
        let (job, publisher) = self.stream_job(id, mapping);
        let source_cfg = job.stream_source(source_cfg);
        // Pulling stops when the job is stopped, or when its pipeline ended by itself.
        let pull_stop = entry.cancel.child_token();
        let started = self
            .start_source(id, entry, "NATS", || async {
                JetStreamSource::start(&source_cfg, pull_stop.clone())
                    .await
                    .map_err(|e| StartError::Wait(e.to_string()))
            })
            .await?;
        let Some((source, commits, acks, consumer)) = started else {
            return Ok(());
        };
        *entry.consumer.lock() = Some(LiveConsumer::JetStream(consumer));
        let run = Started {
            source,
            commits,
            finisher: acks.into(),
            stop: pull_stop,
        };
        self.run_started(id, entry, job, &publisher, run, &|e| e.to_string())
            .await
    }

    /// A Kafka stream job: waits until the cluster answers, then consumes the group's
    /// partitions until it is stopped; the committer commits the last frontier and leaves the
    /// group after the pipeline ends. Every error is redacted of `properties`' values.
    async fn run_kafka(
        &self,
        id: &str,
        entry: &Arc<Entry>,
        source_cfg: KafkaSourceConfig,
        properties: &KafkaProperties,
        mapping: Arc<Mapping>,
    ) -> Result<(), IngestdError> {
        let redact = |e: &dyn std::fmt::Display| properties.redact(&e.to_string());
        let (job, publisher) = self.stream_job(id, mapping);
        let source_cfg = job.kafka_source(source_cfg);
        // Polling stops when the job is stopped, or when its pipeline ended by itself.
        let poll_stop = entry.cancel.child_token();
        let started = self
            .start_source(id, entry, "Kafka", || async {
                match KafkaSource::start(&source_cfg, poll_stop.clone()).await {
                    Ok(started) => Ok(started),
                    // Not reaching the cluster (its metadata): wait, as for NATS.
                    Err(e @ KafkaSourceError::Topics { .. }) => Err(StartError::Wait(redact(&e))),
                    // A client librdkafka refuses (a wrong property) does not get better.
                    Err(e) => Err(StartError::Fatal(IngestdError::Internal(redact(&e)))),
                }
            })
            .await?;
        let Some((source, commits, committer, consumer)) = started else {
            return Ok(());
        };
        *entry.consumer.lock() = Some(LiveConsumer::Kafka(consumer));
        let run = Started {
            source,
            commits,
            finisher: committer.into(),
            stop: poll_stop,
        };
        self.run_started(id, entry, job, &publisher, run, &redact)
            .await
    }

    /// Builds a stream job's pipeline (dead letters to the job's file) and runs it over its
    /// started source until the job is stopped, then finishes the source and records the end
    /// ([`Self::end_stream`]); a pipeline that cannot be built lets the source go first.
    async fn run_started(
        &self,
        id: &str,
        entry: &Arc<Entry>,
        job: JobPipeline,
        publisher: &BusPublisher,
        run: Started<impl Source>,
        shown: &(dyn Fn(&dyn std::fmt::Display) -> String + Sync),
    ) -> Result<(), IngestdError> {
        let inner = &self.inner;
        let built = match self.dead_letters(entry) {
            Ok(dead) => job
                .dead_letters(dead)
                .build(&inner.pool, &inner.metrics)
                .await
                .map_err(|e| IngestdError::Internal(e.to_string())),
            Err(e) => Err(e),
        };
        let (pipeline, follower) = match built {
            Ok(built) => built,
            Err(e) => {
                run.stop.cancel();
                drop(run.commits);
                run.finisher.finish().await;
                *entry.consumer.lock() = None;
                return Err(e);
            }
        };
        let pipeline = pipeline.with_commit_watch(run.commits);
        let forward = self.forward_progress(entry, publisher, pipeline.subscribe());
        let input = {
            let mut st = entry.status.lock();
            st.state = JobState::Running;
            st.input.clone()
        };
        tracing::info!(job = %id, %input, "stream job started");
        let result = pipeline.run(run.source, entry.cancel.clone()).await;
        // The pipeline is done (its commit sender dropped): stop reading, ack (commit) the
        // last commits, hand back the rest (leave the group).
        run.stop.cancel();
        run.finisher.finish().await;
        let _ = forward.await;
        let _ = follower.await;
        self.end_stream(id, entry, publisher, result, shown)
    }

    /// Records how a stream job's run ended in its status (`cancelled` unless it failed:
    /// a stream has no end of its own), with its consumer's final counters.
    fn end_stream(
        &self,
        id: &str,
        entry: &Arc<Entry>,
        publisher: &BusPublisher,
        result: Result<RunSummary, StreamError>,
        shown: &(dyn Fn(&dyn std::fmt::Display) -> String + Sync),
    ) -> Result<(), IngestdError> {
        let summary = match result {
            Ok(s) => s,
            Err(StreamError::Failed { cause, summary }) => {
                entry.status.lock().error = Some(shown(&cause));
                *summary
            }
            Err(e) => {
                *entry.consumer.lock() = None;
                return Err(IngestdError::Internal(shown(&e)));
            }
        };
        let final_counts = entry.snapshot().consumer;
        *entry.consumer.lock() = None;
        let mut st = entry.status.lock();
        st.consumer = final_counts;
        st.events_unpublished = publisher.unpublished();
        st.records_read = summary.records_read;
        st.records_committed = summary.records_committed;
        st.records_dead_lettered = summary.records_dead_lettered;
        st.bytes_read = summary.bytes_read;
        // A stream has no end of its own: a run that was not failed was stopped.
        st.state = match summary.outcome {
            RunOutcome::Failed => JobState::Failed,
            RunOutcome::Completed | RunOutcome::Cancelled => JobState::Cancelled,
        };
        tracing::info!(job = %id, state = ?st.state, committed = st.records_committed, "stream job ended");
        Ok(())
    }
}

/// Why a stream job's source did not start.
enum StartError {
    /// Not reachable yet: wait and try again.
    Wait(String),
    /// Will not get better: the job fails.
    Fatal(IngestdError),
    /// The job was stopped meanwhile.
    Stopped,
}

/// A stream job's started source: records, the commit frontier it watches, what finishes it,
/// and the token that stops its reading.
struct Started<S> {
    source: S,
    commits: tokio::sync::watch::Sender<Position>,
    finisher: SourceFinisher,
    stop: CancellationToken,
}

/// The source of a Kafka stream job (chunks and bytes in flight are sized by the job's
/// tuning when it runs: [`JobPipeline::kafka_source`]).
fn kafka_config(k: &KafkaInput) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: k.brokers.clone(),
        group: k.group.clone(),
        topics: k.topics.clone(),
        properties: k.properties.pairs(),
        start: k.start.into(),
        max_in_flight_messages: k.max_in_flight,
        ..KafkaSourceConfig::default()
    }
}
