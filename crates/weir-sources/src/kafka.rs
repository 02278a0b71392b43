//! Kafka as a streaming source: a consumer group over one or more topics (or patterns), each
//! partition's offsets committed only after the graph commit of everything before them.
//!
//! A message value holds one JSON object, or several as JSON Lines, framed like a JetStream
//! body. The source has two halves, like [`crate::jetstream`]:
//!
//! * the **poll thread** (librdkafka's consumer is polled from one OS thread) frames messages
//!   into chunks and hands them to the pipeline through a one-chunk queue; it registers every
//!   message it hands over in the [`Ledger`] (its partition, offset, and the position in this
//!   worker's record stream after its last record);
//! * the **committer** (a task watching [`weir_stream::Pipeline::with_commit_watch`]) moves the
//!   ledger to the pipeline's commit frontier: a message whose records all lie before it is
//!   done, and a partition's offset is committed up to its last done message. Messages of one
//!   partition reach the pipeline in offset order and the frontier only moves over a contiguous
//!   prefix of finished batches, so the committed offset never passes a record that is not in
//!   the graph (or in the dead-letter file).
//!
//! # Rebalances
//!
//! When partitions are revoked, librdkafka calls the rebalance callback on the poll thread,
//! which holds the revoke until every message of those partitions handed to the pipeline is
//! committed (at most `revoke_wait`), commits their offsets synchronously, and forgets the
//! rest: records read but not yet handed over are dropped, and messages still in flight after
//! the wait are **abandoned** (never committed by this worker; the partition's next owner reads
//! them again). Nothing is skipped. A record abandoned that way may still be written after the
//! next owner wrote a later one of the same key: only a versioned mapping
//! (`[input] version_field`) keeps the graph from going back then.
//!
//! # Order
//!
//! A partition's records reach the pipeline in offset order, interleaved with other
//! partitions'. The pipeline writes them in that order with one batch in flight
//! (`concurrency` 1, `weir consume`'s default); with more, batches commit in any order, and a
//! versioned mapping is what keeps the last version. Partitions run in parallel across
//! workers of the group (each owns some).
//!
//! # Back-pressure
//!
//! The poll thread pauses every assigned partition while the hand-over queue is full (the
//! pipeline is not taking records: memory pressure, an open circuit, writes behind) or the
//! messages or bytes handed over and not committed reach their bounds, and keeps polling (so
//! the group membership and rebalances go on); it resumes them once there is room again.
//! librdkafka drops what it fetched for a paused partition and fetches it again on resume.
//!
//! # Positions and dead letters
//!
//! A record's [`Position::line`] is its message's offset, and the source name
//! ([`Position::file`] indexes [`Source::names`]) is `kafka:<topic>/<partition>`: a dead letter
//! names topic, partition and offset. Partitions that did not exist when the worker started
//! share the name `kafka:<unlisted partition>`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_metrics::{Encoder, MetricSource, names};
use weir_stream::{Position, RawRecord, Source, SourceNames, StreamError};

use crate::jetstream::frame;

/// Why a Kafka source, admin call or publisher could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// The client could not be created (a bad property, usually).
    #[error("Kafka client for {brokers}: {reason}")]
    Client {
        /// The bootstrap brokers.
        brokers: String,
        /// What failed.
        reason: String,
    },
    /// Subscribing or reading the cluster's metadata failed.
    #[error("Kafka topics {topics}: {reason}")]
    Topics {
        /// The topics or patterns.
        topics: String,
        /// What failed.
        reason: String,
    },
    /// A setting is out of range.
    #[error("invalid setting `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Publishing failed.
    #[error("publishing to Kafka topic `{topic}`: {reason}")]
    Publish {
        /// The topic.
        topic: String,
        /// What failed.
        reason: String,
    },
}

/// Where a group without committed offsets starts reading a partition (`auto.offset.reset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest message the partition holds.
    #[default]
    Earliest,
    /// Only messages produced after the consumer joined.
    Latest,
}

/// Settings of a Kafka source.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port[,host:port...]` (`bootstrap.servers`).
    pub brokers: String,
    /// Consumer group id: workers with the same id share the partitions.
    pub group: String,
    /// Topics to read; one starting with `^` is a regular expression matched against the
    /// cluster's topic names (librdkafka's pattern subscription).
    pub topics: Vec<String>,
    /// librdkafka properties passed through as given (`security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, `ssl.ca.location`, `session.timeout.ms`, ...); they
    /// override Weir's own settings. Values are never logged.
    pub properties: Vec<(String, String)>,
    /// Where a partition without a committed offset starts. Default [`StartFrom::Earliest`].
    pub start: StartFrom,
    /// Most messages handed to the pipeline and not yet committed (this worker). Default 20,000.
    pub max_in_flight_messages: usize,
    /// Most message bytes handed to the pipeline and not yet committed. Default 64 MiB.
    pub max_in_flight_bytes: usize,
    /// Most records per chunk handed over. Default 1,000.
    pub chunk_records: usize,
    /// Most bytes per chunk handed over. Default 4 MiB.
    pub chunk_bytes: usize,
    /// Records longer than this are dead-lettered (the pipeline's `max_record_bytes`).
    /// Default 1 MiB.
    pub max_record_bytes: usize,
    /// Longest a revoke waits for the revoked partitions' records in flight to be committed
    /// before it abandons them. Keep it below `max.poll.interval.ms` (5 min). Default 60 s.
    pub revoke_wait: Duration,
    /// How long start-up may take to reach the cluster (metadata). Default 10 s.
    pub connect_timeout: Duration,
    /// How often each assigned partition's lag is read from the broker. Default 5 s.
    pub info_interval: Duration,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group: "weir".into(),
            topics: vec!["weir-ingest".into()],
            properties: Vec::new(),
            start: StartFrom::Earliest,
            max_in_flight_messages: 20_000,
            max_in_flight_bytes: 64 << 20,
            chunk_records: 1_000,
            chunk_bytes: 4 << 20,
            max_record_bytes: 1 << 20,
            revoke_wait: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            info_interval: Duration::from_secs(5),
        }
    }
}

impl KafkaSourceConfig {
    /// Checks ranges and names.
    pub fn validate(&self) -> Result<(), KafkaSourceError> {
        let bad = |field, reason: &str| {
            Err(KafkaSourceError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.brokers.trim().is_empty() {
            return bad("brokers", "at least one host:port");
        }
        if self.group.is_empty() || self.group.len() > 249 {
            return bad("group", "1 to 249 characters");
        }
        if self.topics.is_empty() {
            return bad("topics", "at least one topic or ^pattern");
        }
        for t in &self.topics {
            if let Some(p) = t.strip_prefix('^') {
                if let Err(e) = regex::Regex::new(&format!("^{p}")) {
                    return bad("topics", &format!("pattern `{t}`: {e}"));
                }
            } else if t.is_empty()
                || t.len() > 249
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
            {
                return bad(
                    "topics",
                    &format!("`{t}`: 1 to 249 letters, digits, `.`, `_` or `-` (or a ^pattern)"),
                );
            }
        }
        if self.max_in_flight_messages == 0
            || self.max_in_flight_bytes == 0
            || self.chunk_records == 0
            || self.chunk_bytes == 0
        {
            return bad(
                "max_in_flight_messages / max_in_flight_bytes / chunk_records / chunk_bytes",
                "must be at least 1",
            );
        }
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match self.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// A librdkafka client config: `brokers` plus `properties` passed through.
fn plain_config(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Creates `topic` with `partitions` partitions (replication factor 1) unless it exists.
pub async fn ensure_topic(
    brokers: &str,
    properties: &[(String, String)],
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), KafkaSourceError> {
    let admin: AdminClient<DefaultClientContext> = plain_config(brokers, properties)
        .create()
        .map_err(|e| KafkaSourceError::Client {
            brokers: brokers.to_owned(),
            reason: e.to_string(),
        })?;
    let err = |reason: String| KafkaSourceError::Topics {
        topics: topic.to_owned(),
        reason,
    };
    let res = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                partitions.max(1),
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(timeout)),
        )
        .await
        .map_err(|e| err(e.to_string()))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(err(code.to_string())),
        }
    }
    Ok(())
}

/// Produces `bodies` (an optional key and a value each) to `topic`, waiting for the broker's
/// acknowledgement of each (`acks=all`, idempotent), at most `in_flight` unacknowledged at once.
/// Messages with one key go to one partition, in order. Returns the messages produced.
pub async fn publish_kafka<I>(
    brokers: &str,
    properties: &[(String, String)],
    topic: &str,
    bodies: I,
    in_flight: usize,
) -> Result<u64, KafkaSourceError>
where
    I: IntoIterator<Item = Result<(Option<Bytes>, Bytes), KafkaSourceError>>,
{
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    for (k, v) in properties {
        config.set(k, v);
    }
    let producer: FutureProducer = config.create().map_err(|e| KafkaSourceError::Client {
        brokers: brokers.to_owned(),
        reason: e.to_string(),
    })?;
    let err = |reason: String| KafkaSourceError::Publish {
        topic: topic.to_owned(),
        reason,
    };
    let mut pending = VecDeque::new();
    let mut sent = 0u64;
    for body in bodies {
        let (key, value) = body?;
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(&value[..]);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    match pending.pop_front() {
                        Some(d) => await_delivery(d, &err).await?,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => return Err(err(e.to_string())),
            }
        };
        pending.push_back(delivery);
        if pending.len() >= in_flight.max(1)
            && let Some(d) = pending.pop_front()
        {
            await_delivery(d, &err).await?;
        }
        sent += 1;
    }
    for d in pending {
        await_delivery(d, &err).await?;
    }
    Ok(sent)
}

async fn await_delivery(
    d: rdkafka::producer::DeliveryFuture,
    err: &impl Fn(String) -> KafkaSourceError,
) -> Result<(), KafkaSourceError> {
    match d.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(err(e.to_string())),
        Err(_) => Err(err("the producer went away".into())),
    }
}

/// One partition's lag and committed offset, for the metrics.
#[derive(Clone, Debug, Default)]
struct PartitionGauges {
    lag: Option<u64>,
    committed: Option<i64>,
}

/// The counters of one worker's Kafka consumer, exported as `weir_consumer_*` (label
/// `consumer` = the group id; per-partition gauges also carry `topic` and `partition`).
#[derive(Debug)]
pub struct KafkaMetrics {
    group: String,
    received: AtomicU64,
    committed: AtomicU64,
    poll_errors: AtomicU64,
    revoked: AtomicU64,
    abandoned: AtomicU64,
    paused: AtomicBool,
    partitions: Mutex<HashMap<(Arc<str>, i32), PartitionGauges>>,
}

impl KafkaMetrics {
    fn new(group: &str) -> Self {
        Self {
            group: group.to_owned(),
            received: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            partitions: Mutex::default(),
        }
    }

    fn parts(&self) -> MutexGuard<'_, HashMap<(Arc<str>, i32), PartitionGauges>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages received.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Messages whose offsets were committed (their records committed or dead-lettered).
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Partitions revoked from this worker.
    pub fn revoked(&self) -> u64 {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Messages left uncommitted for the next owner of a revoked partition.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// The summed lag of the assigned partitions, once every one was read.
    pub fn lag(&self) -> Option<u64> {
        let parts = self.parts();
        parts
            .values()
            .map(|g| g.lag)
            .try_fold(0u64, |a, l| l.map(|l| a + l))
    }
}

impl MetricSource for KafkaMetrics {
    fn collect(&self, e: &mut Encoder) {
        let l = [("consumer", self.group.as_str())];
        if let Some(p) = self.lag() {
            e.gauge(&names::CONSUMER_PENDING_MESSAGES, &l, p as f64);
        }
        e.counter(
            &names::CONSUMER_MESSAGES_RECEIVED_TOTAL,
            &l,
            self.received(),
        );
        e.counter(&names::CONSUMER_MESSAGES_ACKED_TOTAL, &l, self.committed());
        e.counter(
            &names::CONSUMER_PULL_ERRORS_TOTAL,
            &l,
            self.poll_errors.load(Ordering::Relaxed),
        );
        e.counter(
            &names::CONSUMER_PARTITIONS_REVOKED_TOTAL,
            &l,
            self.revoked(),
        );
        e.counter(
            &names::CONSUMER_MESSAGES_ABANDONED_TOTAL,
            &l,
            self.abandoned(),
        );
        e.gauge(
            &names::CONSUMER_PAUSED,
            &l,
            if self.paused.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        let mut parts: Vec<_> = self
            .parts()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        for ((topic, partition), g) in parts {
            let p = partition.to_string();
            let l = [
                ("consumer", self.group.as_str()),
                ("topic", &*topic),
                ("partition", p.as_str()),
            ];
            if let Some(lag) = g.lag {
                e.gauge(&names::CONSUMER_PARTITION_LAG_MESSAGES, &l, lag as f64);
            }
            if let Some(c) = g.committed {
                e.gauge(&names::CONSUMER_PARTITION_COMMITTED_OFFSET, &l, c as f64);
            }
        }
    }
}

/// A message handed to the pipeline and not yet committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Done once the frontier's offset reaches this (its last record's end; for a message
    /// without records, where the stream stood before it).
    end: u64,
    slot: u32,
    offset: i64,
    bytes: usize,
}

/// A partition this worker has seen.
#[derive(Debug)]
struct Slot {
    topic: Arc<str>,
    partition: i32,
    /// Index into the source's names.
    name: u32,
    assigned: bool,
    /// The offset after the last done message (what to commit).
    done_next: Option<i64>,
    /// What was last committed.
    committed: Option<i64>,
}

/// What the poll thread handed over and the frontier has not passed, per partition: the pure
/// bookkeeping of commits and revokes (no I/O).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    slots: Vec<Slot>,
    index: HashMap<(Arc<str>, i32), u32>,
    /// Source names known at start: (topic, partition) -> name index.
    names: NameIndex,
    /// Name index for partitions not known at start.
    unlisted: u32,
    waiting: VecDeque<Entry>,
    bytes: usize,
    frontier: u64,
    /// Slots revoked since the poll thread last looked (to drop what it has not handed over).
    revoked: Vec<u32>,
    /// Set once the final commit is done: revokes no longer wait.
    closing: bool,
    /// Set by an assignment: the poll thread pauses the new partitions when it is paused.
    assigned: bool,
}

impl Ledger {
    fn slot(&mut self, topic: &str, partition: i32) -> u32 {
        if let Some(s) = self.index.get(&(Arc::from(topic), partition)) {
            return *s;
        }
        let topic: Arc<str> = Arc::from(topic);
        let id = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        let name = self
            .names
            .get(&(topic.clone(), partition))
            .copied()
            .unwrap_or(self.unlisted);
        self.slots.push(Slot {
            topic: topic.clone(),
            partition,
            name,
            assigned: false,
            done_next: None,
            committed: None,
        });
        self.index.insert((topic, partition), id);
        id
    }

    fn assign(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.assigned = true;
            s.done_next = None;
            s.committed = None;
        }
    }

    fn push(&mut self, e: Entry) {
        self.bytes += e.bytes;
        self.waiting.push_back(e);
    }

    fn has_waiting(&self, slot: u32) -> bool {
        self.waiting.iter().any(|e| e.slot == slot)
    }

    /// Moves to `frontier`; returns the messages done and the offsets to commit now.
    fn advance(&mut self, frontier: u64) -> (u64, Vec<(u32, i64)>) {
        self.frontier = self.frontier.max(frontier);
        let mut done = 0u64;
        let mut touched = Vec::new();
        while let Some(e) = self.waiting.front().copied() {
            if e.end > self.frontier {
                break;
            }
            self.waiting.pop_front();
            self.bytes -= e.bytes;
            let s = &mut self.slots[e.slot as usize];
            if s.assigned {
                s.done_next = Some(e.offset + 1);
                done += 1;
                if !touched.contains(&e.slot) {
                    touched.push(e.slot);
                }
            }
        }
        let commits = touched
            .into_iter()
            .filter_map(|i| {
                let s = &mut self.slots[i as usize];
                let next = s.done_next?;
                (s.committed < Some(next)).then(|| {
                    s.committed = Some(next);
                    (i, next)
                })
            })
            .collect();
        (done, commits)
    }

    /// Every assigned partition's done offset (the final commit).
    fn all_done(&self) -> Vec<(u32, i64)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.assigned)
            .filter_map(|(i, s)| Some((i as u32, s.done_next?)))
            .collect()
    }

    /// Takes `slots` away: returns their done offsets (to commit) and the messages abandoned.
    fn revoke(&mut self, slots: &[u32]) -> (Vec<(u32, i64)>, u64) {
        let mut commits = Vec::new();
        for &i in slots {
            if let Some(s) = self.slots.get_mut(i as usize) {
                if s.assigned
                    && let Some(n) = s.done_next
                {
                    commits.push((i, n));
                }
                s.assigned = false;
                s.done_next = None;
                s.committed = None;
            }
        }
        let before = self.waiting.len();
        let mut freed = 0usize;
        self.waiting.retain(|e| {
            let keep = !slots.contains(&e.slot);
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        self.bytes -= freed;
        self.revoked.extend_from_slice(slots);
        (commits, (before - self.waiting.len()) as u64)
    }

    fn tpl(&self, offsets: &[(u32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &(i, o) in offsets {
            let s = &self.slots[i as usize];
            let _ = tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(o));
        }
        tpl
    }
}

/// The ledger and what waits on it, shared by the poll thread, the committer and the
/// rebalance callback.
struct Shared {
    ledger: Mutex<Ledger>,
    changed: Condvar,
    metrics: Arc<KafkaMetrics>,
    revoke_wait: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_commits(&self, ledger: &Ledger, offsets: &[(u32, i64)]) {
        let mut parts = self.metrics.parts();
        for &(i, o) in offsets {
            let s = &ledger.slots[i as usize];
            parts
                .entry((s.topic.clone(), s.partition))
                .or_default()
                .committed = Some(o);
        }
    }
}

/// The consumer's context: the rebalance callback.
struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut ledger = self.shared.lock();
                let slots: Vec<u32> = tpl
                    .elements()
                    .iter()
                    .map(|e| ledger.slot(e.topic(), e.partition()))
                    .collect();
                // What was handed over finishes first (or the wait runs out).
                let deadline = Instant::now() + self.shared.revoke_wait;
                while !ledger.closing && slots.iter().any(|s| ledger.has_waiting(*s)) {
                    let now = Instant::now();
                    if now >= deadline {
                        warn!(wait = ?self.shared.revoke_wait, "revoked partitions still have records in flight; abandoning them (the next owner reads them again)");
                        break;
                    }
                    ledger = self
                        .shared
                        .changed
                        .wait_timeout(ledger, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let (commits, abandoned) = ledger.revoke(&slots);
                if !commits.is_empty() {
                    let list = ledger.tpl(&commits);
                    if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                        warn!(error = %e, "committing revoked partitions' offsets failed (their next owner reads from the last commit)");
                    } else {
                        self.shared.note_commits(&ledger, &commits);
                    }
                }
                let mut parts = self.shared.metrics.parts();
                for &s in &slots {
                    let s = &ledger.slots[s as usize];
                    parts.remove(&(s.topic.clone(), s.partition));
                }
                drop(parts);
                drop(ledger);
                let m = &self.shared.metrics;
                m.revoked.fetch_add(slots.len() as u64, Ordering::Relaxed);
                m.abandoned.fetch_add(abandoned, Ordering::Relaxed);
                info!(
                    partitions = slots.len(),
                    abandoned, "partitions revoked; their finished records are committed"
                );
            }
            Rebalance::Assign(tpl) => {
                let mut ledger = self.shared.lock();
                let mut parts = self.shared.metrics.parts();
                for e in tpl.elements() {
                    let s = ledger.slot(e.topic(), e.partition());
                    ledger.assign(s);
                    parts
                        .entry((Arc::from(e.topic()), e.partition()))
                        .or_default();
                }
                info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition's pause across a revoke and a later assignment of
            // it: start every assigned partition fetching, and let the poll thread pause them
            // again if it is paused.
            if let Err(e) = consumer.resume(tpl) {
                debug!(error = %e, "resuming assigned partitions");
            }
            self.shared.lock().assigned = true;
        }
    }
}

type KafkaConsumer = BaseConsumer<Ctx>;

/// The record half of a Kafka source: a [`Source`] for the pipeline.
pub struct KafkaSource {
    rx: mpsc::Receiver<Vec<RawRecord>>,
    names: SourceNames,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("names", &self.names.len())
            .finish_non_exhaustive()
    }
}

impl Source for KafkaSource {
    async fn next_chunk(&mut self) -> Result<Option<Vec<RawRecord>>, StreamError> {
        // `recv` is cancel-safe: a chunk is either taken or stays queued.
        Ok(self.rx.recv().await)
    }

    fn names(&self) -> SourceNames {
        self.names.clone()
    }
}

/// The commit half of a Kafka source. Await [`KafkaCommitter::finish`] before the process
/// exits: it commits the final frontier and leaves the group.
pub struct KafkaCommitter {
    task: JoinHandle<()>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCommitter").finish_non_exhaustive()
    }
}

impl KafkaCommitter {
    /// Waits until the last offsets are committed and the consumer has left the group (after
    /// the pipeline ended and `stop` fired).
    pub async fn finish(mut self) {
        let _ = (&mut self.task).await;
        if let Some(p) = self.poller.take() {
            let _ = tokio::task::spawn_blocking(move || p.join()).await;
        }
    }
}

/// (topic, partition) -> index into the source's names.
type NameIndex = HashMap<(Arc<str>, i32), u32>;

/// The source names of the partitions that exist now among `topics`, and the name index of
/// partitions found later.
fn partition_names(
    consumer: &KafkaConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<(Vec<Arc<str>>, NameIndex), String> {
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| e.to_string())?;
    let patterns: Vec<regex::Regex> = topics
        .iter()
        .filter_map(|t| t.strip_prefix('^'))
        .filter_map(|p| regex::Regex::new(&format!("^{p}")).ok())
        .collect();
    let mut names = Vec::new();
    let mut index = HashMap::new();
    let mut found: Vec<_> = md
        .topics()
        .iter()
        .filter(|t| {
            topics.iter().any(|n| n == t.name()) || patterns.iter().any(|p| p.is_match(t.name()))
        })
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(move |p| (t.name().to_owned(), p.id()))
        })
        .collect();
    found.sort();
    for (topic, p) in found {
        let topic: Arc<str> = Arc::from(topic.as_str());
        index.insert((topic.clone(), p), names.len() as u32);
        names.push(Arc::from(format!("kafka:{topic}/{p}")));
    }
    names.push(Arc::from("kafka:<unlisted partition>"));
    Ok((names, index))
}

impl KafkaSource {
    /// Creates the consumer, subscribes to the topics and starts polling on a thread of its
    /// own. Returns the source for the pipeline, the sender to give
    /// [`weir_stream::Pipeline::with_commit_watch`], the committer and the metrics. Polling
    /// stops when `stop` fires; the committer commits the final frontier once the pipeline
    /// dropped the sender, then the consumer leaves the group.
    pub async fn start(
        config: &KafkaSourceConfig,
        stop: CancellationToken,
    ) -> Result<
        (
            Self,
            watch::Sender<Position>,
            KafkaCommitter,
            Arc<KafkaMetrics>,
        ),
        KafkaSourceError,
    > {
        config.validate()?;
        let metrics = Arc::new(KafkaMetrics::new(&config.group));
        let shared = Arc::new(Shared {
            ledger: Mutex::default(),
            changed: Condvar::new(),
            metrics: metrics.clone(),
            revoke_wait: config.revoke_wait,
        });
        let cfg = config.clone();
        let sh = shared.clone();
        let (consumer, names) = tokio::task::spawn_blocking(move || {
            let consumer: KafkaConsumer = cfg
                .client_config()
                .create_with_context(Ctx { shared: sh })
                .map_err(|e| KafkaSourceError::Client {
                    brokers: cfg.brokers.clone(),
                    reason: e.to_string(),
                })?;
            let topics = cfg.topics.join(",");
            let (names, index) = partition_names(&consumer, &cfg.topics, cfg.connect_timeout)
                .map_err(|reason| KafkaSourceError::Topics {
                    topics: topics.clone(),
                    reason,
                })?;
            let refs: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&refs)
                .map_err(|e| KafkaSourceError::Topics {
                    topics,
                    reason: e.to_string(),
                })?;
            Ok::<_, KafkaSourceError>((consumer, (names, index)))
        })
        .await
        .map_err(|e| KafkaSourceError::Client {
            brokers: config.brokers.clone(),
            reason: e.to_string(),
        })??;
        let (names, index) = names;
        {
            let mut l = shared.lock();
            l.unlisted = (names.len() - 1) as u32;
            l.names = index;
        }
        info!(brokers = %config.brokers, group = %config.group, topics = ?config.topics, partitions = names.len() - 1, "consuming from Kafka");
        let consumer = Arc::new(consumer);
        // One chunk handed over ahead of the one the intake is working on.
        let (tx, rx) = mpsc::channel(1);
        let (commit_tx, commit_rx) = watch::channel(Position::default());
        let poller = {
            let poll = Poller {
                consumer: consumer.clone(),
                shared: shared.clone(),
                config: config.clone(),
                stop,
                offset: 0,
                last_end: 0,
                paused: false,
            };
            std::thread::Builder::new()
                .name("weir-kafka-poll".into())
                .spawn(move || poll.run(tx))
                .map_err(|e| KafkaSourceError::Client {
                    brokers: config.brokers.clone(),
                    reason: format!("starting the poll thread: {e}"),
                })?
        };
        let task = tokio::spawn(commit_loop(commit_rx, shared, consumer));
        Ok((
            Self {
                rx,
                names: Arc::from(names),
            },
            commit_tx,
            KafkaCommitter {
                task,
                poller: Some(poller),
            },
            metrics,
        ))
    }
}

/// Commits offsets as the frontier passes their messages; at the end, commits the final
/// frontier synchronously and lets the poll thread close the consumer.
async fn commit_loop(
    mut commits: watch::Receiver<Position>,
    shared: Arc<Shared>,
    consumer: Arc<KafkaConsumer>,
) {
    loop {
        let ended = commits.changed().await.is_err();
        let frontier = commits.borrow_and_update().offset;
        {
            let mut ledger = shared.lock();
            let (done, offsets) = ledger.advance(frontier);
            // Under the lock, so a revoke's commit never races an older one of this task.
            commit(&consumer, &shared, &ledger, &offsets, CommitMode::Async);
            shared.metrics.committed.fetch_add(done, Ordering::Relaxed);
        }
        shared.changed.notify_all();
        if ended {
            break;
        }
    }
    let sh = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut ledger = sh.lock();
        let offsets = ledger.all_done();
        commit(&consumer, &sh, &ledger, &offsets, CommitMode::Sync);
        let left = ledger.waiting.len();
        if left > 0 {
            info!(
                messages = left,
                "leaving messages not committed to the partitions' next owner"
            );
        }
        ledger.closing = true;
        drop(ledger);
        drop(consumer);
        sh.changed.notify_all();
    })
    .await;
}

fn commit(
    consumer: &KafkaConsumer,
    shared: &Shared,
    ledger: &Ledger,
    offsets: &[(u32, i64)],
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    match consumer.commit(&ledger.tpl(offsets), mode) {
        Ok(()) => shared.note_commits(ledger, offsets),
        // A later commit of the partition covers it; a revoke commits synchronously.
        Err(e) => warn!(error = %e, "committing offsets failed"),
    }
}

/// The chunk being built on the poll thread: records, the slot of each record, and the
/// messages they came from.
#[derive(Default)]
struct Building {
    records: Vec<RawRecord>,
    record_slots: Vec<u32>,
    entries: Vec<Entry>,
    bytes: usize,
}

/// Polls the consumer on its own thread while the pipeline takes records.
struct Poller {
    consumer: Arc<KafkaConsumer>,
    shared: Arc<Shared>,
    config: KafkaSourceConfig,
    stop: CancellationToken,
    /// Bytes of messages framed so far: the offset of the next record in this worker's stream.
    offset: u64,
    /// The end of the last record framed: where a message without records is done.
    last_end: u64,
    paused: bool,
}

impl Poller {
    fn run(mut self, tx: mpsc::Sender<Vec<RawRecord>>) {
        let lag = {
            let consumer = self.consumer.clone();
            let shared = self.shared.clone();
            let every = self.config.info_interval;
            std::thread::Builder::new()
                .name("weir-kafka-lag".into())
                .spawn(move || lag_loop(&consumer, &shared, every))
                .ok()
        };
        let mut chunk = Building::default();
        let mut errors = 0u32;
        while !self.stop.is_cancelled() {
            self.drop_revoked(&mut chunk);
            if std::mem::take(&mut self.shared.lock().assigned) && self.paused {
                self.paused = false;
                self.set_paused(true);
            }
            let full = self.full(&chunk);
            if !full {
                let timeout = if chunk.entries.is_empty() {
                    Duration::from_millis(100)
                } else if tx.capacity() == 0 {
                    Duration::from_millis(10)
                } else {
                    Duration::ZERO
                };
                let consumer = self.consumer.clone();
                match consumer.poll(timeout) {
                    Some(Ok(msg)) => {
                        errors = 0;
                        self.take(&msg, &mut chunk);
                        continue;
                    }
                    Some(Err(e)) => {
                        errors = errors.saturating_add(1);
                        self.shared
                            .metrics
                            .poll_errors
                            .fetch_add(1, Ordering::Relaxed);
                        if errors == 1 || errors.is_power_of_two() {
                            warn!(error = %e, errors, "Kafka consumer error; polling on");
                        }
                    }
                    None => {}
                }
            }
            // Nothing more right now, or the chunk is full: hand it over if there is room.
            if !chunk.entries.is_empty() {
                match tx.try_reserve() {
                    Ok(permit) => {
                        self.hand_over(std::mem::take(&mut chunk), permit);
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => break,
                    Err(mpsc::error::TrySendError::Full(())) => {}
                }
            }
            if full {
                // The pipeline is not taking records, or too much is in flight: pause
                // fetching, and keep serving the group (rebalances, heartbeats) meanwhile.
                self.set_paused(true);
                self.serve(&mut chunk, Duration::from_millis(20));
            } else {
                self.set_paused(false);
            }
        }
        // Stopping: nothing more is handed over; what was not is read again by the next owner.
        self.set_paused(true);
        drop(tx);
        // Keep serving the group until the committer's final commit, then leave it.
        loop {
            let closing = {
                let l = self.shared.lock();
                let (l, _) = self
                    .shared
                    .changed
                    .wait_timeout(l, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner());
                l.closing
            };
            if closing {
                break;
            }
            let _ = self.consumer.poll(Duration::ZERO);
        }
        if let Some(l) = lag {
            let _ = l.join();
        }
        // Leave the group (a revoke with nothing left to wait for), within a bound.
        close(self.consumer, CLOSE_WAIT);
    }

    /// Whether fetching must pause: the chunk is at its bounds, or the messages or bytes in
    /// flight (handed over and not committed, plus the chunk) are. Once paused, fetching
    /// resumes below three quarters of the in-flight bounds, so it does not flap.
    fn full(&self, chunk: &Building) -> bool {
        let (in_flight, in_bytes) = {
            let l = self.shared.lock();
            (l.waiting.len(), l.bytes)
        };
        let c = &self.config;
        let (max_msgs, max_bytes) = if self.paused {
            (
                (c.max_in_flight_messages / 4 * 3).max(1),
                (c.max_in_flight_bytes / 4 * 3).max(1),
            )
        } else {
            (c.max_in_flight_messages, c.max_in_flight_bytes)
        };
        chunk.records.len() >= c.chunk_records
            || chunk.bytes >= c.chunk_bytes
            || in_flight + chunk.entries.len() >= max_msgs
            || in_bytes + chunk.bytes >= max_bytes
    }

    /// Polls once while paused: rebalances and errors are served. A message of a partition
    /// assigned since the pause (a rebalance assigns partitions unpaused) joins the chunk (it
    /// must not be skipped), and the whole assignment is paused again.
    fn serve(&mut self, chunk: &mut Building, timeout: Duration) {
        let consumer = self.consumer.clone();
        if let Some(Ok(msg)) = consumer.poll(timeout) {
            debug!("message received while paused");
            self.take(&msg, chunk);
            drop(msg);
            self.paused = false;
            self.set_paused(true);
        }
    }

    fn set_paused(&mut self, pause: bool) {
        if pause == self.paused {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let r = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match r {
            Ok(()) => {
                self.paused = pause;
                self.shared.metrics.paused.store(pause, Ordering::Relaxed);
                debug!(paused = pause, "Kafka fetching");
            }
            Err(e) => debug!(error = %e, "pausing or resuming partitions"),
        }
    }

    /// Frames `msg` into `chunk`.
    fn take(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>, chunk: &mut Building) {
        self.shared.metrics.received.fetch_add(1, Ordering::Relaxed);
        let (slot, name) = {
            let mut l = self.shared.lock();
            let s = l.slot(msg.topic(), msg.partition());
            (s, l.slots[s as usize].name)
        };
        let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
        let before = chunk.records.len();
        self.offset = frame(
            &payload,
            u64::try_from(msg.offset()).unwrap_or(0),
            self.offset,
            self.config.max_record_bytes,
            &mut chunk.records,
        );
        for r in &mut chunk.records[before..] {
            r.position.file = name;
            r.next.file = name;
            chunk.record_slots.push(slot);
        }
        if let Some(r) = chunk.records[before..].last() {
            self.last_end = r.next.offset;
        }
        chunk.bytes += payload.len();
        chunk.entries.push(Entry {
            end: self.last_end,
            slot,
            offset: msg.offset(),
            bytes: payload.len(),
        });
    }

    /// Registers the chunk's messages, then hands its records over.
    fn hand_over(&self, chunk: Building, permit: mpsc::Permit<'_, Vec<RawRecord>>) {
        {
            let mut l = self.shared.lock();
            for e in &chunk.entries {
                l.push(*e);
            }
            // Messages without records may be done already.
            let frontier = l.frontier;
            let (done, offsets) = l.advance(frontier);
            commit(
                &self.consumer,
                &self.shared,
                &l,
                &offsets,
                CommitMode::Async,
            );
            self.shared
                .metrics
                .committed
                .fetch_add(done, Ordering::Relaxed);
        }
        if !chunk.records.is_empty() {
            permit.send(chunk.records);
        }
    }

    /// Drops what was read but not handed over of partitions revoked meanwhile (their next
    /// owner reads it again).
    fn drop_revoked(&self, chunk: &mut Building) {
        let revoked = std::mem::take(&mut self.shared.lock().revoked);
        if revoked.is_empty() || chunk.entries.is_empty() {
            return;
        }
        let before = chunk.entries.len();
        chunk.entries.retain(|e| !revoked.contains(&e.slot));
        let mut slots = std::mem::take(&mut chunk.record_slots).into_iter();
        let records = std::mem::take(&mut chunk.records);
        for (r, s) in records.into_iter().zip(slots.by_ref()) {
            if !revoked.contains(&s) {
                chunk.records.push(r);
                chunk.record_slots.push(s);
            }
        }
        chunk.bytes = chunk.entries.iter().map(|e| e.bytes).sum();
        self.shared
            .metrics
            .abandoned
            .fetch_add((before - chunk.entries.len()) as u64, Ordering::Relaxed);
    }
}

/// Longest the consumer's close (leaving the group) may take once the final commit is done.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Closes the consumer (its revoke and leaving the group served here), waiting at most
/// `within` for librdkafka to report it closed. Returns whether it closed.
///
/// Dropping a `BaseConsumer` closes it the same way but polls until it is closed, without a
/// bound: with the broker gone, librdkafka's close can wait for the group coordinator forever
/// (seen with tansu SIGKILLed mid-run: a SIGTERMed `weir consume` never exited; the stack was
/// `BaseConsumer::drop` polling). Past `within`, the consumer is leaked instead: `weir consume`
/// exits right after, a stream job's librdkafka threads stay until the process ends. Its
/// uncommitted offsets are the next owner's to read again, as with any worker that dies.
fn close(consumer: Arc<KafkaConsumer>, within: Duration) -> bool {
    if let Err(e) = consumer.close_queue() {
        // Closed already (or not a group consumer): dropping it does not wait.
        debug!(error = %e, "closing the Kafka consumer");
        return true;
    }
    let deadline = Instant::now() + within;
    while !consumer.closed() {
        if Instant::now() >= deadline {
            warn!(wait = ?within, "the Kafka consumer did not close (broker or group coordinator unreachable); leaving without it");
            std::mem::forget(consumer);
            return false;
        }
        let _ = consumer.poll(Duration::from_millis(100));
    }
    true
}

/// Reads each assigned partition's high watermark every `every` for the lag gauges.
fn lag_loop(consumer: &KafkaConsumer, shared: &Shared, every: Duration) {
    loop {
        let (parts, closing) = {
            let l = shared.lock();
            let parts: Vec<(Arc<str>, i32, Option<i64>)> = l
                .slots
                .iter()
                .filter(|s| s.assigned)
                .map(|s| (s.topic.clone(), s.partition, s.committed))
                .collect();
            (parts, l.closing)
        };
        if closing {
            return;
        }
        let position = consumer.position().ok();
        for (topic, partition, committed) in parts {
            let Ok((_, high)) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(2))
            else {
                continue;
            };
            let next = committed.or_else(|| {
                position
                    .as_ref()
                    .and_then(|p| p.find_partition(&topic, partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            });
            if let Some(next) = next {
                let lag = u64::try_from(high - next).unwrap_or(0);
                // Only while still assigned (a revoke removes the entry meanwhile).
                if let Some(g) = shared.metrics.parts().get_mut(&(topic, partition)) {
                    g.lag = Some(lag);
                }
            }
        }
        let l = shared.lock();
        let (l, _) = shared
            .changed
            .wait_timeout_while(l, every, |l| !l.closing)
            .unwrap_or_else(|p| p.into_inner());
        if l.closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (Ledger, u32, u32) {
        let mut l = Ledger::default();
        let a = l.slot("t", 0);
        let b = l.slot("t", 1);
        l.assign(a);
        l.assign(b);
        (l, a, b)
    }

    fn entry(end: u64, slot: u32, offset: i64) -> Entry {
        Entry {
            end,
            slot,
            offset,
            bytes: 10,
        }
    }

    #[test]
    fn offsets_commit_only_up_to_the_frontier_per_partition() {
        let (mut l, a, b) = ledger();
        // Stream order interleaves the partitions; each partition's offsets ascend.
        l.push(entry(10, a, 5));
        l.push(entry(20, b, 40));
        l.push(entry(30, a, 6));
        l.push(entry(40, b, 41));
        assert_eq!(l.bytes, 40);
        // Nothing before the first message's end is done.
        assert_eq!(l.advance(9), (0, vec![]));
        // The frontier inside the third message: a's offset 5 and b's 40 are done; a's 6 is not.
        assert_eq!(l.advance(25), (2, vec![(a, 6), (b, 41)]));
        assert_eq!(l.waiting.len(), 2);
        // A frontier never goes back.
        assert_eq!(l.advance(3), (0, vec![]));
        assert_eq!(l.advance(40), (2, vec![(a, 7), (b, 42)]));
        assert_eq!(l.bytes, 0);
        assert_eq!(l.all_done(), vec![(a, 7), (b, 42)]);
        // Moving again commits nothing new.
        assert_eq!(l.advance(50), (0, vec![]));
    }

    #[test]
    fn a_message_without_records_is_done_with_what_came_before_it() {
        let (mut l, a, _) = ledger();
        l.push(entry(10, a, 0));
        // A blank message's end is the end of the record before it.
        l.push(entry(10, a, 1));
        l.push(entry(20, a, 2));
        assert_eq!(l.advance(10), (2, vec![(a, 2)]));
        assert_eq!(l.advance(20), (1, vec![(a, 3)]));
    }

    #[test]
    fn a_revoke_commits_what_is_done_and_abandons_the_rest_of_that_partition_only() {
        let (mut l, a, b) = ledger();
        l.push(entry(10, a, 5));
        l.push(entry(20, b, 7));
        l.push(entry(30, a, 6));
        l.push(entry(40, b, 8));
        assert_eq!(l.advance(10), (1, vec![(a, 6)]));
        assert!(l.has_waiting(a));
        let (commits, abandoned) = l.revoke(&[a]);
        assert_eq!(commits, vec![(a, 6)]);
        assert_eq!(abandoned, 1, "a's offset 6 is left to the next owner");
        assert!(!l.has_waiting(a));
        assert_eq!(l.revoked, vec![a]);
        assert_eq!(l.bytes, 20);
        // The frontier passing a's abandoned message later commits nothing for a.
        assert_eq!(l.advance(40), (2, vec![(b, 9)]));
        assert_eq!(l.all_done(), vec![(b, 9)]);
        // Assigned again (another generation): starts from nothing done.
        l.assign(a);
        assert_eq!(l.all_done(), vec![(b, 9)]);
        l.push(entry(50, a, 6));
        assert_eq!(l.advance(50), (1, vec![(a, 7)]));
    }

    #[test]
    fn partitions_get_their_names_or_the_unlisted_one() {
        let mut l = Ledger {
            unlisted: 2,
            ..Ledger::default()
        };
        l.names.insert((Arc::from("t"), 0), 0);
        l.names.insert((Arc::from("t"), 1), 1);
        let s0 = l.slot("t", 1);
        let s1 = l.slot("u", 0);
        assert_eq!(l.slot("t", 1), s0, "one slot per partition");
        assert_eq!(l.slots[s0 as usize].name, 1);
        assert_eq!(l.slots[s1 as usize].name, 2);
    }

    #[test]
    fn settings_are_checked() {
        KafkaSourceConfig::default().validate().unwrap();
        for c in [
            KafkaSourceConfig {
                topics: vec![],
                ..Default::default()
            },
            KafkaSourceConfig {
                topics: vec!["a b".into()],
                ..Default::default()
            },
            KafkaSourceConfig {
                topics: vec!["^(".into()],
                ..Default::default()
            },
            KafkaSourceConfig {
                group: String::new(),
                ..Default::default()
            },
            KafkaSourceConfig {
                max_in_flight_messages: 0,
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let ok = KafkaSourceConfig {
            topics: vec!["people".into(), "^orders-.*".into()],
            ..Default::default()
        };
        ok.validate().unwrap();
        // Passed-through properties override Weir's own.
        let c = KafkaSourceConfig {
            properties: vec![
                ("enable.partition.eof".into(), "false".into()),
                ("security.protocol".into(), "SASL_SSL".into()),
            ],
            ..Default::default()
        }
        .client_config();
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }
}
