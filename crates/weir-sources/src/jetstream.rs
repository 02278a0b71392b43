//! NATS JetStream as a streaming source: a durable pull consumer shared by any number of
//! workers, messages acknowledged after their records are committed.
//!
//! A message body holds one JSON object, or several as JSON Lines (one per line; blank lines
//! are skipped). Each record goes through the pipeline like a line of a file. A message is
//! acknowledged once every record in it is committed or dead-lettered (dead letters are on disk
//! first); what a worker holds when it stops is handed back (NAK) for immediate redelivery, and
//! what a killed worker held is redelivered by the server after `ack_wait`. Records can thus be
//! written more than once (MERGE makes that harmless); none is lost.
//!
//! Bounds: the consumer's `max_ack_pending` caps the messages delivered and not acknowledged
//! across all workers; each worker also stops pulling while it holds that many, and hands the
//! pipeline at most one pull's worth (`fetch_messages`, `fetch_max_bytes`) ahead of what the
//! pipeline took.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_config::Backoff;
use weir_metrics::{Encoder, MetricSource, names};
use weir_stream::{Position, RawRecord, RecordKind, Source, SourceNames, StreamError};

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The server could not be reached.
    #[error("NATS at {endpoint}: {reason}")]
    Connect {
        /// The URL, credentials masked.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The stream could not be found or created.
    #[error("JetStream stream `{stream}`: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// What failed.
        reason: String,
    },
    /// The durable consumer could not be found or created.
    #[error("JetStream consumer `{consumer}`: {reason}")]
    Consumer {
        /// The consumer.
        consumer: String,
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
    #[error("publishing to `{subject}`: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// What failed.
        reason: String,
    },
}

/// Where a new durable consumer starts in the stream (an existing one keeps its place).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliverFrom {
    /// Every message the stream holds.
    #[default]
    All,
    /// Only messages published after the consumer is created.
    New,
    /// The last message, then new ones.
    Last,
}

/// Settings of a JetStream source.
#[derive(Clone, Debug, PartialEq)]
pub struct JetStreamSourceConfig {
    /// NATS URL (credentials in it are never logged). Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream to read. Default `WEIR_INGEST`.
    pub stream: String,
    /// Subject filter of the consumer, and the subject the stream is created with when it
    /// does not exist. Default `weir.ingest`.
    pub subject: String,
    /// Durable consumer name: workers with the same name share the work. Default `weir`.
    pub consumer: String,
    /// Where a new consumer starts. Default [`DeliverFrom::All`].
    pub deliver: DeliverFrom,
    /// How long the server waits for an ack before it redelivers a message (to any worker).
    /// Longer than the slowest batch write, retries included. Default 30 s.
    pub ack_wait: Duration,
    /// Most messages delivered and not acknowledged, across all workers of the consumer.
    /// Default 20,000.
    pub max_ack_pending: usize,
    /// Most messages per pull. Default 1,000.
    pub fetch_messages: usize,
    /// Most bytes per pull. Default 4 MiB.
    pub fetch_max_bytes: usize,
    /// How long a pull waits for messages. Default 1 s.
    pub fetch_expires: Duration,
    /// Records longer than this are dead-lettered (the pipeline's `max_record_bytes`).
    /// Default 1 MiB.
    pub max_record_bytes: usize,
    /// How long connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How often the consumer's lag is read from the server for the metrics. Default 5 s.
    pub info_interval: Duration,
}

impl Default for JetStreamSourceConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "WEIR_INGEST".into(),
            subject: "weir.ingest".into(),
            consumer: "weir".into(),
            deliver: DeliverFrom::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            fetch_messages: 1_000,
            fetch_max_bytes: 4 << 20,
            fetch_expires: Duration::from_secs(1),
            max_record_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            info_interval: Duration::from_secs(5),
        }
    }
}

impl JetStreamSourceConfig {
    /// Checks ranges and names.
    pub fn validate(&self) -> Result<(), SourceError> {
        let bad = |field, reason: &str| {
            Err(SourceError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.stream) {
            return bad("stream", "1 to 64 letters, digits, `-` or `_`");
        }
        if !name_ok(&self.consumer) {
            return bad("consumer", "1 to 64 letters, digits, `-` or `_`");
        }
        if self.subject.is_empty()
            || self.subject.split('.').any(str::is_empty)
            || self.subject.bytes().any(|b| b.is_ascii_whitespace())
        {
            return bad(
                "subject",
                "tokens separated by `.`, no blanks (`*` and `>` allowed)",
            );
        }
        if self.fetch_messages == 0 || self.max_ack_pending == 0 || self.fetch_max_bytes == 0 {
            return bad(
                "fetch_messages / max_ack_pending / fetch_max_bytes",
                "must be at least 1",
            );
        }
        if self.ack_wait < Duration::from_secs(1) {
            return bad("ack_wait", "at least 1 s");
        }
        Ok(())
    }
}

/// Connects to NATS with unlimited reconnects (backing off to 2 s) within `timeout`.
pub async fn connect_nats(url: &str, timeout: Duration) -> Result<async_nats::Client, SourceError> {
    let endpoint = weir_config::redact_url(url);
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .delay(attempt.saturating_add(1), 0.0)
        });
    match tokio::time::timeout(timeout, options.connect(url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(SourceError::Connect {
            endpoint,
            reason: e.to_string(),
        }),
        Err(_) => Err(SourceError::Connect {
            endpoint,
            reason: format!("no connection within {timeout:?}"),
        }),
    }
}

/// The stream `name`, created with `subject` (file storage, limits retention) when missing.
async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> Result<stream::Stream, SourceError> {
    js.get_or_create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| SourceError::Stream {
        stream: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Publishes `bodies` to `subject` of `stream` (created with that subject when missing),
/// waiting for the server's ack of each, at most `in_flight` unacknowledged at once. Returns
/// the messages published.
pub async fn publish_records<I>(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    bodies: I,
    in_flight: usize,
) -> Result<u64, SourceError>
where
    I: IntoIterator<Item = Result<Bytes, SourceError>>,
{
    let js = jetstream::new(client.clone());
    ensure_stream(&js, stream, subject).await?;
    let err = |e: &dyn std::fmt::Display| SourceError::Publish {
        subject: subject.to_owned(),
        reason: e.to_string(),
    };
    let mut pending = VecDeque::new();
    let mut sent = 0u64;
    for body in bodies {
        let body = body?;
        let ack = js
            .publish(subject.to_owned(), body)
            .await
            .map_err(|e| err(&e))?;
        pending.push_back(ack);
        if pending.len() >= in_flight.max(1)
            && let Some(a) = pending.pop_front()
        {
            a.await.map_err(|e| err(&e))?;
        }
        sent += 1;
    }
    for a in pending {
        a.await.map_err(|e| err(&e))?;
    }
    Ok(sent)
}

/// The counters of one worker's consumer, exported as `weir_consumer_*`.
#[derive(Debug)]
pub struct ConsumerMetrics {
    consumer: String,
    received: AtomicU64,
    acked: AtomicU64,
    redelivered: AtomicU64,
    naked: AtomicU64,
    pull_errors: AtomicU64,
    /// `u64::MAX` until read from the server.
    pending: AtomicU64,
    ack_pending: AtomicU64,
}

impl ConsumerMetrics {
    fn new(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            received: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            naked: AtomicU64::new(0),
            pull_errors: AtomicU64::new(0),
            pending: AtomicU64::new(u64::MAX),
            ack_pending: AtomicU64::new(u64::MAX),
        }
    }

    /// Messages received.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Messages acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Messages received that had been delivered before.
    pub fn redelivered(&self) -> u64 {
        self.redelivered.load(Ordering::Relaxed)
    }

    /// Messages handed back on shutdown.
    pub fn naked(&self) -> u64 {
        self.naked.load(Ordering::Relaxed)
    }

    /// The consumer's lag as last read, if read yet.
    pub fn pending(&self) -> Option<u64> {
        Some(self.pending.load(Ordering::Relaxed)).filter(|v| *v != u64::MAX)
    }
}

impl MetricSource for ConsumerMetrics {
    fn collect(&self, e: &mut Encoder) {
        let l = [("consumer", self.consumer.as_str())];
        if let Some(p) = self.pending() {
            e.gauge(&names::CONSUMER_PENDING_MESSAGES, &l, p as f64);
        }
        let ap = self.ack_pending.load(Ordering::Relaxed);
        if ap != u64::MAX {
            e.gauge(&names::CONSUMER_ACK_PENDING_MESSAGES, &l, ap as f64);
        }
        e.counter(
            &names::CONSUMER_MESSAGES_RECEIVED_TOTAL,
            &l,
            self.received(),
        );
        e.counter(&names::CONSUMER_MESSAGES_ACKED_TOTAL, &l, self.acked());
        e.counter(&names::CONSUMER_REDELIVERIES_TOTAL, &l, self.redelivered());
        e.counter(&names::CONSUMER_MESSAGES_NAKED_TOTAL, &l, self.naked());
        e.counter(
            &names::CONSUMER_PULL_ERRORS_TOTAL,
            &l,
            self.pull_errors.load(Ordering::Relaxed),
        );
    }
}

/// A message waiting for its records to be committed: acked once the frontier's offset
/// reaches `end`.
struct Waiting {
    end: u64,
    acker: jetstream::message::Acker,
}

type WaitingQueue = Arc<Mutex<VecDeque<Waiting>>>;

fn lock(q: &WaitingQueue) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The record half of a JetStream source: a [`Source`] for the pipeline.
pub struct JetStreamSource {
    rx: mpsc::Receiver<Vec<RawRecord>>,
    names: SourceNames,
}

impl std::fmt::Debug for JetStreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSource")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Source for JetStreamSource {
    async fn next_chunk(&mut self) -> Result<Option<Vec<RawRecord>>, StreamError> {
        // `recv` is cancel-safe: a chunk is either taken or stays queued.
        Ok(self.rx.recv().await)
    }

    fn names(&self) -> SourceNames {
        self.names.clone()
    }
}

/// The ack half of a JetStream source: acknowledges messages as the pipeline's commit frontier
/// passes them, and on the frontier's end (the pipeline dropped its sender) hands back what is
/// left. Await [`AckTask::finish`] before the process exits.
pub struct AckTask {
    task: JoinHandle<()>,
    puller: JoinHandle<()>,
}

impl std::fmt::Debug for AckTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckTask").finish_non_exhaustive()
    }
}

impl AckTask {
    /// Waits until the last acks and NAKs are sent (after the pipeline ended and `stop` fired).
    pub async fn finish(self) {
        let _ = self.puller.await;
        let _ = self.task.await;
    }
}

impl JetStreamSource {
    /// Connects, finds or creates the stream and the durable pull consumer, and starts pulling.
    /// Returns the source for the pipeline, the sender to give
    /// [`weir_stream::Pipeline::with_commit_watch`], the ack task and the metrics. Pulling stops
    /// when `stop` fires; the ack task ends once the pipeline dropped the sender.
    pub async fn start(
        config: &JetStreamSourceConfig,
        stop: CancellationToken,
    ) -> Result<(Self, watch::Sender<Position>, AckTask, Arc<ConsumerMetrics>), SourceError> {
        config.validate()?;
        let client = connect_nats(&config.url, config.connect_timeout).await?;
        let js = jetstream::new(client.clone());
        let stream = ensure_stream(&js, &config.stream, &config.subject).await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &config.consumer,
                consumer::pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    filter_subject: config.subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_ack_pending: i64::try_from(config.max_ack_pending).unwrap_or(i64::MAX),
                    deliver_policy: match config.deliver {
                        DeliverFrom::All => consumer::DeliverPolicy::All,
                        DeliverFrom::New => consumer::DeliverPolicy::New,
                        DeliverFrom::Last => consumer::DeliverPolicy::Last,
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| SourceError::Consumer {
                consumer: config.consumer.clone(),
                reason: e.to_string(),
            })?;
        info!(stream = %config.stream, subject = %config.subject, consumer = %config.consumer, "consuming");
        let metrics = Arc::new(ConsumerMetrics::new(&config.consumer));
        let waiting: WaitingQueue = Arc::default();
        // One chunk (one pull) handed over ahead of the one the intake is working on.
        let (tx, rx) = mpsc::channel(1);
        let (commit_tx, commit_rx) = watch::channel(Position::default());
        let puller = tokio::spawn(
            Puller {
                consumer,
                config: config.clone(),
                waiting: waiting.clone(),
                metrics: metrics.clone(),
                offset: 0,
                stop,
            }
            .run(tx),
        );
        let task = tokio::spawn(ack_loop(commit_rx, waiting, metrics.clone(), client));
        let names: SourceNames = Arc::from(vec![Arc::<str>::from(format!(
            "nats:{}/{}",
            config.stream, config.subject
        ))]);
        Ok((
            Self { rx, names },
            commit_tx,
            AckTask { task, puller },
            metrics,
        ))
    }
}

/// Pulls messages while the pipeline takes them.
struct Puller {
    consumer: consumer::PullConsumer,
    config: JetStreamSourceConfig,
    waiting: WaitingQueue,
    metrics: Arc<ConsumerMetrics>,
    /// Bytes of records handed over so far: the offset of the next record.
    offset: u64,
    stop: CancellationToken,
}

impl Puller {
    async fn run(mut self, tx: mpsc::Sender<Vec<RawRecord>>) {
        let mut failures = 0u32;
        let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
            .with_jitter(0.5);
        let mut next_info = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_info {
                self.read_info().await;
                next_info = tokio::time::Instant::now() + self.config.info_interval;
            }
            // Room in the hand-over queue first: while the pipeline is not taking records
            // (memory pressure, writes behind, graph down) nothing is pulled.
            let permit = tokio::select! {
                () = self.stop.cancelled() => return,
                p = tx.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            // And fewer than `max_ack_pending` messages held by this worker.
            let held = lock(&self.waiting).len();
            if held >= self.config.max_ack_pending {
                drop(permit);
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(20)) => continue,
                }
            }
            let want = self
                .config
                .fetch_messages
                .min(self.config.max_ack_pending - held);
            // Not cut short by `stop` (a pull lasts at most `fetch_expires`): what it took is
            // in the waiting queue, acked or handed back, never left to `ack_wait`.
            let pulled = self.pull(want).await;
            match pulled {
                Ok(chunk) => {
                    failures = 0;
                    if !chunk.is_empty() {
                        permit.send(chunk);
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.pull_errors.fetch_add(1, Ordering::Relaxed);
                    if failures == 1 || failures.is_power_of_two() {
                        warn!(error = %e, failures, "pull from JetStream failed; retrying");
                    }
                    drop(permit);
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.jittered(failures)) => {}
                    }
                }
            }
        }
    }

    async fn read_info(&mut self) {
        match tokio::time::timeout(self.config.connect_timeout, self.consumer.info()).await {
            Ok(Ok(info)) => {
                self.metrics
                    .pending
                    .store(info.num_pending, Ordering::Relaxed);
                self.metrics
                    .ack_pending
                    .store(info.num_ack_pending as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => debug!(error = %e, "consumer info"),
            Err(_) => debug!("consumer info timed out"),
        }
    }

    /// One pull of at most `want` messages, framed into records. Messages taken are in the
    /// waiting queue (or acked, when they hold no record) before the chunk is handed over.
    async fn pull(&mut self, want: usize) -> Result<Vec<RawRecord>, String> {
        let expires = self.config.fetch_expires;
        let mut batch = tokio::time::timeout(
            expires + self.config.connect_timeout,
            self.consumer
                .batch()
                .max_messages(want)
                .max_bytes(self.config.fetch_max_bytes)
                .expires(expires)
                .messages(),
        )
        .await
        .map_err(|_| "no answer to the pull".to_owned())?
        .map_err(|e| e.to_string())?;
        let mut chunk = Vec::new();
        let deadline = tokio::time::Instant::now() + expires + self.config.connect_timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, batch.next()).await;
            let msg = match next {
                Err(_) | Ok(None) => break,
                Ok(Some(Err(e))) => {
                    // What was taken so far is kept; the next pull goes on.
                    if chunk.is_empty() {
                        return Err(e.to_string());
                    }
                    debug!(error = %e, "pull ended early");
                    break;
                }
                Ok(Some(Ok(m))) => m,
            };
            let (seq, delivered) = match msg.info() {
                Ok(i) => (i.stream_sequence, i.delivered),
                Err(_) => (0, 1),
            };
            self.metrics.received.fetch_add(1, Ordering::Relaxed);
            if delivered > 1 {
                self.metrics.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            let (msg, acker) = msg.split();
            let before = chunk.len();
            self.offset = frame(
                &msg.payload,
                seq,
                self.offset,
                self.config.max_record_bytes,
                &mut chunk,
            );
            if chunk.len() == before {
                // Nothing to commit: done now.
                if acker.ack().await.is_ok() {
                    self.metrics.acked.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            // Acked once the frontier reaches its last record's end.
            let end = chunk.last().map_or(self.offset, |r| r.next.offset);
            lock(&self.waiting).push_back(Waiting { end, acker });
        }
        Ok(chunk)
    }
}

/// Frames a message body into records (one per non-blank line), starting at byte `offset` of
/// the worker's record stream; returns the offset after the body. Positions carry the
/// message's stream sequence as `line`.
pub(crate) fn frame(
    payload: &Bytes,
    seq: u64,
    offset: u64,
    max: usize,
    out: &mut Vec<RawRecord>,
) -> u64 {
    let mut at = 0usize;
    let len = payload.len();
    while at < len {
        let end = memchr_newline(&payload[at..]).map_or(len, |i| at + i);
        let mut line_end = end;
        if line_end > at && payload[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line = &payload[at..line_end];
        if !line.iter().all(u8::is_ascii_whitespace) {
            let start = offset + at as u64;
            let next = offset + (end + 1).min(len + 1) as u64;
            let rec_len = (line_end - at) as u64;
            let (data, kind) = if line.len() > max {
                (
                    payload.slice(at..at + max),
                    RecordKind::Oversized { len: rec_len },
                )
            } else {
                (payload.slice(at..line_end), RecordKind::Data)
            };
            out.push(RawRecord {
                position: Position {
                    file: 0,
                    line: seq,
                    offset: start,
                },
                next: Position {
                    file: 0,
                    line: seq,
                    offset: next,
                },
                data,
                kind,
            });
        }
        at = end + 1;
    }
    // The body and its implied terminator.
    offset + len as u64 + 1
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Acks messages the frontier passed; at the end, acks what the final frontier covers and
/// hands the rest back.
async fn ack_loop(
    mut commits: watch::Receiver<Position>,
    waiting: WaitingQueue,
    metrics: Arc<ConsumerMetrics>,
    client: async_nats::Client,
) {
    loop {
        let ended = commits.changed().await.is_err();
        let frontier = commits.borrow_and_update().offset;
        let done: Vec<Waiting> = {
            let mut q = lock(&waiting);
            let n = q.iter().take_while(|w| w.end <= frontier).count();
            q.drain(..n).collect()
        };
        for w in done {
            match w.acker.ack().await {
                Ok(()) => {
                    metrics.acked.fetch_add(1, Ordering::Relaxed);
                }
                // Redelivered after `ack_wait` and written again: harmless (MERGE).
                Err(e) => debug!(error = %e, "ack failed"),
            }
        }
        if ended {
            break;
        }
    }
    let rest: Vec<Waiting> = lock(&waiting).drain(..).collect();
    if !rest.is_empty() {
        info!(messages = rest.len(), "handing back messages not processed");
    }
    for w in rest {
        if w.acker.ack_with(AckKind::Nak(None)).await.is_ok() {
            metrics.naked.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_frame_into_records_with_monotonic_offsets_and_the_sequence() {
        let mut out = Vec::new();
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n{\"a\":2}");
        let next = frame(&body, 7, 100, 1 << 20, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0].data[..], b"{\"a\":1}");
        assert_eq!(&out[1].data[..], b"{\"a\":2}");
        assert_eq!(out[0].position.line, 7);
        assert_eq!(out[0].position.offset, 100);
        assert!(out[0].next.offset <= out[1].position.offset);
        assert!(out[1].next.offset <= next);
        assert_eq!(next, 100 + body.len() as u64 + 1);
        // A blank body gives no record and still moves on.
        let mut none = Vec::new();
        assert_eq!(
            frame(&Bytes::from_static(b" \n"), 8, next, 64, &mut none),
            next + 3
        );
        assert!(none.is_empty());
        // An oversized record keeps a bounded prefix and its real length.
        let mut big = Vec::new();
        frame(&Bytes::from(vec![b'x'; 100]), 9, 0, 10, &mut big);
        assert_eq!(big[0].data.len(), 10);
        assert_eq!(big[0].kind, RecordKind::Oversized { len: 100 });
    }

    #[test]
    fn settings_are_checked() {
        JetStreamSourceConfig::default().validate().unwrap();
        for c in [
            JetStreamSourceConfig {
                stream: "a b".into(),
                ..Default::default()
            },
            JetStreamSourceConfig {
                subject: "a..b".into(),
                ..Default::default()
            },
            JetStreamSourceConfig {
                max_ack_pending: 0,
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
