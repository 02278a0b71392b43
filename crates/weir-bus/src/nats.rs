//! The NATS JetStream bus.
//!
//! - One stream (`NatsBusConfig::stream`) holding the subject `<prefix>.changes`, with
//!   limits retention (`max_age`, `max_bytes`, discard old) and a `duplicate_window`.
//! - `publish_changes`: one message per batch, `Nats-Msg-Id` = batch id; the ack's stream
//!   sequence is the batch's seq (for a duplicate the server answers the original seq).
//! - `subscribe_changes`: an ordered pull consumer per subscription (ephemeral, recreated by
//!   async-nats after reconnects), starting at `since + 1`. On top of it this module checks
//!   that seqs are contiguous: a seq already seen is dropped (counted as redelivered), a gap
//!   means retention dropped what the subscriber needed and ends the subscription with an
//!   error — so a subscription delivers each batch exactly once, in order, or says it cannot.
//! - Progress: core NATS on `<prefix>.progress` (live only).
//!
//! Server compatibility: works with nats-server 2.9 (the typed account-info request of
//! async-nats 0.51 fails to parse 2.9's answer, so it is never used; stream create/update,
//! stream info, ordered consumers and publish acks are).

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use weir_config::Backoff;
use weir_events::{ChangeBatch, EVENT_FORMAT_VERSION, ProgressEvent};

use crate::parts::{self, Assembled, Assembler, SkipKind};
use crate::{
    BusError, BusMetrics, ChangeStream, NatsBusConfig, ProgressStream, Published, StorageKind,
};

/// NATS's default `max_payload`, used while the server's is not known.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The NATS JetStream bus. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBus {
    s: Arc<Shared>,
}

struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Held while the parts of one multi-part batch are published.
    publish_parts: tokio::sync::Mutex<()>,
    config: NatsBusConfig,
    endpoint: String,
    metrics: Arc<BusMetrics>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("endpoint", &self.s.endpoint)
            .field("stream", &self.s.config.stream)
            .finish_non_exhaustive()
    }
}

/// The URL without user info, for messages (credentials are never logged).
fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

impl NatsBus {
    /// Connects (within `connect_timeout`) with bounded client buffers and unlimited
    /// reconnects, then creates the stream or updates its limits.
    pub async fn connect(config: &NatsBusConfig) -> Result<Self, BusError> {
        config.validate()?;
        let endpoint = weir_config::redact_url(&config.url);
        let unavailable = |reason: String| BusError::Unavailable {
            endpoint: endpoint.clone(),
            reason,
        };
        let max_delay = config.reconnect_max_delay;
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.connect_timeout))
            .client_capacity(config.client_capacity)
            .subscription_capacity(config.subscription_capacity)
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| {
                let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
                Backoff::exponential(Duration::from_millis(50), max_delay)
                    .delay(attempt.saturating_add(1), 0.0)
            });
        let client = match tokio::time::timeout(
            config.connect_timeout,
            options.connect(config.url.as_str()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no connection within {:?}",
                    config.connect_timeout
                )));
            }
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .max_ack_inflight(config.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let stream_config = stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.changes_subject()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: config.max_age,
            max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
            duplicate_window: config.duplicate_window,
            storage: match config.storage {
                StorageKind::File => stream::StorageType::File,
                StorageKind::Memory => stream::StorageType::Memory,
            },
            num_replicas: 1,
            ..Default::default()
        };
        match tokio::time::timeout(
            config.connect_timeout,
            js.create_or_update_stream(stream_config),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(BusError::JetStream(boxed(e))),
            Err(_) => {
                return Err(unavailable(format!(
                    "JetStream did not answer within {:?}",
                    config.connect_timeout
                )));
            }
        }
        tracing::info!(endpoint = %endpoint, stream = %config.stream, "connected to the NATS bus");
        Ok(Self {
            s: Arc::new(Shared {
                client,
                js,
                publish_parts: tokio::sync::Mutex::new(()),
                config: config.clone(),
                endpoint,
                metrics: Arc::new(BusMetrics::default()),
            }),
        })
    }

    /// The counters of this bus.
    pub fn metrics(&self) -> &Arc<BusMetrics> {
        &self.s.metrics
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsBusConfig {
        &self.s.config
    }

    /// Publishes one batch; see [`crate::Bus::publish_changes`].
    pub async fn publish_changes(&self, batch: ChangeBatch) -> Result<Published, BusError> {
        let result = self.publish_changes_inner(&batch).await;
        match &result {
            Ok(p) => self.s.metrics.on_publish(p.duplicate),
            Err(e) => {
                self.s.metrics.on_publish_error();
                tracing::warn!(batch_id = %batch.batch_id, error = %e, "publish failed");
            }
        }
        result
    }

    async fn publish_changes_inner(&self, batch: &ChangeBatch) -> Result<Published, BusError> {
        let max = match self.s.client.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            m => m,
        };
        let messages = parts::encode(batch, max.saturating_sub(parts::HEADER_ROOM))?;
        if messages.len() == 1 {
            let payload = messages.into_iter().next().unwrap_or_default();
            let msg = PublishMessage::build()
                .payload(payload.into())
                .message_id(&batch.batch_id);
            return self.publish_one(&batch.batch_id, msg, max).await;
        }
        // The parts of one batch go out one after the other, each naming the sequences of the
        // parts before it, and no other multi-part batch of this process interleaves with them.
        let _one_at_a_time = self.s.publish_parts.lock().await;
        let n = messages.len();
        let mut seqs: Vec<u64> = Vec::with_capacity(n);
        let mut duplicate = true;
        for (i, payload) in messages.into_iter().enumerate() {
            let earlier = seqs
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let msg = PublishMessage::build()
                .payload(payload.into())
                .message_id(format!("{}#{i}/{n}", batch.batch_id))
                .header(parts::BATCH_HEADER, batch.batch_id.as_str())
                .header(parts::PART_HEADER, format!("{i}/{n}").as_str())
                .header(parts::PART_SEQS_HEADER, earlier.as_str());
            let p = self.publish_one(&batch.batch_id, msg, max).await?;
            duplicate &= p.duplicate;
            seqs.push(p.seq);
        }
        self.s.metrics.on_parts_published(n as u64);
        tracing::debug!(batch_id = %batch.batch_id, parts = n, "published a change batch in parts");
        Ok(Published {
            seq: seqs.last().copied().unwrap_or(0),
            duplicate,
        })
    }

    /// Publishes one message and waits for its ack, within `publish_timeout`.
    async fn publish_one(
        &self,
        batch_id: &str,
        msg: PublishMessage,
        max: usize,
    ) -> Result<Published, BusError> {
        let timeout = self.s.config.publish_timeout;
        let timed_out = || BusError::PublishTimeout {
            batch_id: batch_id.to_owned(),
            timeout,
        };
        let publish = async {
            let ack = self
                .s
                .js
                .send_publish(self.s.config.changes_subject(), msg)
                .await?;
            ack.await
        };
        match tokio::time::timeout(timeout, publish).await {
            Err(_) => Err(timed_out()),
            Ok(Err(e)) => match e.kind() {
                PublishErrorKind::TimedOut => Err(timed_out()),
                PublishErrorKind::MaxPayloadExceeded => Err(BusError::TooLarge { bytes: 0, max }),
                PublishErrorKind::StreamNotFound => Err(self.stream_missing().await),
                _ => Err(BusError::Publish(boxed(e))),
            },
            Ok(Ok(ack)) => Ok(Published {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
        }
    }

    /// After a publish found no stream: [`BusError::StreamNotFound`] when JetStream says the
    /// stream does not exist, else (JetStream not answering, e.g. still recovering after a
    /// restart) a transient error, so the publisher waits and retries.
    async fn stream_missing(&self) -> BusError {
        let info = tokio::time::timeout(
            self.s.config.connect_timeout,
            self.s.js.get_stream(&self.s.config.stream),
        )
        .await;
        match info {
            Ok(Err(e)) if is_stream_not_found(&e) => BusError::StreamNotFound {
                stream: self.s.config.stream.clone(),
            },
            Ok(Ok(_)) => BusError::Unavailable {
                endpoint: self.s.endpoint.clone(),
                reason: "the stream exists but did not answer a publish; retrying".into(),
            },
            _ => BusError::Unavailable {
                endpoint: self.s.endpoint.clone(),
                reason: "JetStream did not answer (no stream responded to a publish)".into(),
            },
        }
    }

    /// Publishes a progress event on core NATS (waits at most `publish_timeout` for room in
    /// the client buffer).
    pub async fn publish_progress(&self, event: &ProgressEvent) -> Result<(), BusError> {
        let payload = serde_json::to_vec(event).map_err(|e| BusError::Publish(boxed(e)))?;
        let timeout = self.s.config.publish_timeout;
        match tokio::time::timeout(
            timeout,
            self.s
                .client
                .publish(self.s.config.progress_subject(), payload.into()),
        )
        .await
        {
            Ok(Ok(())) => {
                self.s.metrics.on_progress_published();
                Ok(())
            }
            Ok(Err(e)) => Err(BusError::Publish(boxed(e))),
            Err(_) => Err(BusError::PublishTimeout {
                batch_id: "progress".into(),
                timeout,
            }),
        }
    }

    /// The retained range of the stream now: (oldest retained seq, newest published seq).
    /// When nothing is retained the oldest is `newest + 1`.
    pub async fn retained_range(&self) -> Result<(u64, u64), BusError> {
        let info = tokio::time::timeout(
            self.s.config.connect_timeout,
            self.s.js.get_stream(&self.s.config.stream),
        )
        .await
        .map_err(|_| BusError::Unavailable {
            endpoint: self.s.endpoint.clone(),
            reason: "stream info timed out".into(),
        })?
        .map_err(|e| stream_error(e, &self.s.config.stream))?
        .cached_info()
        .state
        .clone();
        let last = info.last_sequence;
        let first = if info.messages == 0 {
            last + 1
        } else {
            info.first_sequence
        };
        Ok((first, last))
    }

    /// Subscribes through a new ordered consumer; see [`crate::Bus::subscribe_changes`].
    pub async fn subscribe_changes(&self, since: Option<u64>) -> Result<ChangeStream, BusError> {
        Ok(self.subscribe_changes_at(since).await?.0)
    }

    /// Like [`NatsBus::subscribe_changes`], also returning the stream's newest seq when the
    /// subscription opened (from the same stream-info request); see
    /// [`crate::Bus::subscribe_changes_at`].
    pub async fn subscribe_changes_at(
        &self,
        since: Option<u64>,
    ) -> Result<(ChangeStream, u64), BusError> {
        let (first, last) = self.retained_range().await?;
        let since = match since {
            None => last,
            Some(since) if since > last => return Err(BusError::SinceAhead { since, last }),
            Some(since) if since + 1 < first => {
                return Err(BusError::SinceTooOld {
                    since,
                    first_retained: first,
                });
            }
            Some(since) => since,
        };
        let template = OrderedConfig {
            filter_subject: self.s.config.changes_subject(),
            // The pull expiry is capped to this, and the idle heartbeat to half of it.
            max_expires: self.s.config.consumer_heartbeat * 2,
            // Caps each pull (the library asks for 500 by default): a bounded client buffer.
            max_batch: i64::try_from(self.s.config.consumer_max_batch).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let messages = open_consumer(&self.s.js, &self.s.config.stream, &template, since).await?;
        let mut state = Cursor {
            messages,
            since,
            last_seen: since,
            started: false,
            metrics: self.s.metrics.clone(),
            js: self.s.js.clone(),
            stream: self.s.config.stream.clone(),
            template,
            max_delay: self.s.config.reconnect_max_delay,
            check_every: (self.s.config.consumer_heartbeat / 4).max(Duration::from_millis(50)),
            connects_at_open: 0,
            assembler: Assembler::default(),
            idle_check: self.s.config.consumer_heartbeat,
            last_activity: tokio::time::Instant::now(),
        };
        state.connects_at_open = state.connects();
        Ok((
            futures::stream::unfold(Some(state), |state| async move {
                let mut cur = state?;
                let mut tick = tokio::time::interval(cur.check_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let item = tokio::select! {
                        item = cur.messages.next() => item,
                        _ = tick.tick() => {
                            if let Step::Fail(e) = cur.watch_connection().await {
                                return Some((Err(e), None));
                            }
                            continue;
                        }
                    };
                    let step = match item {
                        None => cur.reopen().await,
                        Some(Err(e)) => {
                            tracing::warn!(
                                error = %e,
                                last_seen = cur.last_seen,
                                "bus consumer failed; reopening after the last seq delivered"
                            );
                            cur.reopen().await
                        }
                        Some(Ok(msg)) => {
                            cur.last_activity = tokio::time::Instant::now();
                            cur.accept(&msg).await
                        }
                    };
                    match step {
                        Step::Skip => {}
                        Step::Fail(e) => return Some((Err(e), None)),
                        Step::Deliver(batch) => return Some((Ok(Arc::new(batch)), Some(cur))),
                    }
                }
            })
            .boxed(),
            last,
        ))
    }

    /// Subscribes to progress events on core NATS from now on.
    pub async fn subscribe_progress(&self) -> Result<ProgressStream, BusError> {
        let sub = self
            .s
            .client
            .subscribe(self.s.config.progress_subject())
            .await
            .map_err(|e| BusError::Subscribe(boxed(e)))?;
        Ok(sub
            .map(|m| {
                let ev: ProgressEvent = serde_json::from_slice(&m.payload)
                    .map_err(|source| BusError::Decode { seq: 0, source })?;
                if ev.version != EVENT_FORMAT_VERSION {
                    return Err(BusError::UnsupportedVersion {
                        found: ev.version,
                        expected: EVENT_FORMAT_VERSION,
                        seq: 0,
                    });
                }
                Ok(ev)
            })
            .boxed())
    }

    /// Readiness: connected, and the stream answers within `connect_timeout`.
    pub async fn check_ready(&self) -> Result<(), BusError> {
        if self.s.client.connection_state() != State::Connected {
            return Err(BusError::Unavailable {
                endpoint: self.s.endpoint.clone(),
                reason: "not connected (reconnecting)".into(),
            });
        }
        self.retained_range().await.map(|_| ())
    }
}

type Messages = std::pin::Pin<Box<jetstream::consumer::pull::Ordered>>;

/// Creates an ordered consumer starting after `after` and opens its message stream.
async fn open_consumer(
    js: &jetstream::Context,
    stream: &str,
    template: &OrderedConfig,
    after: u64,
) -> Result<Messages, BusError> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| BusError::JetStream(boxed(e)))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..template.clone()
        })
        .await
        .map_err(|e| BusError::Subscribe(boxed(e)))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::Subscribe(boxed(e)))?;
    Ok(Box::pin(messages))
}

/// Whether JetStream answered that the stream does not exist.
fn is_stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// A stream lookup's error: [`BusError::StreamNotFound`] when it does not exist.
fn stream_error(e: async_nats::jetstream::context::GetStreamError, stream: &str) -> BusError {
    if is_stream_not_found(&e) {
        BusError::StreamNotFound {
            stream: stream.to_owned(),
        }
    } else {
        BusError::JetStream(boxed(e))
    }
}

/// After a quiet spell: fails when the stream was deleted ([`BusError::StreamNotFound`]:
/// what it held past the last seq delivered is gone) or starts over below the last seq
/// delivered ([`BusError::SinceAhead`]). Other errors (NATS away) are left to the
/// connection checks.
async fn check_stream(js: &jetstream::Context, name: &str, last_seen: u64, wait: Duration) -> Step {
    let info = tokio::time::timeout(wait, async {
        let mut stream = js
            .get_stream(name)
            .await
            .map_err(|e| stream_error(e, name))?;
        stream
            .info()
            .await
            .map(|i| i.state.last_sequence)
            .map_err(|e| BusError::JetStream(boxed(e)))
    })
    .await;
    match info {
        Ok(Err(e @ BusError::StreamNotFound { .. })) => {
            tracing::error!(error = %e, last_seen = last_seen, "the bus stream was deleted");
            Step::Fail(e)
        }
        Ok(Ok(last)) if last < last_seen => {
            tracing::error!(
                last,
                last_seen = last_seen,
                "the bus stream starts over below the last seq delivered (deleted and created again?)"
            );
            Step::Fail(BusError::SinceAhead {
                since: last_seen,
                last,
            })
        }
        _ => Step::Skip,
    }
}

/// Reads the part of a change batch stored at `seq`.
async fn fetch_part(
    js: &jetstream::Context,
    stream: &str,
    seq: u64,
) -> Result<ChangeBatch, String> {
    let stream = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| e.to_string())?;
    let raw = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| format!("part at seq {seq}: {e}"))?;
    parts::decode(&raw.payload).map_err(|k| format!("part at seq {seq}: {k:?}"))
}

/// One subscription's position, checking contiguity of the stream sequence.
struct Cursor {
    messages: Messages,
    since: u64,
    last_seen: u64,
    started: bool,
    metrics: Arc<BusMetrics>,
    js: jetstream::Context,
    stream: String,
    template: OrderedConfig,
    max_delay: Duration,
    /// How often the connection state is checked.
    check_every: Duration,
    /// The client's connection count when the consumer was (re)opened.
    connects_at_open: u64,
    /// Change batches published in parts, being put back together.
    assembler: Assembler,
    /// How long without a message (or a check) before the stream is looked at: the ordered
    /// consumer does not report its stream being deleted, it waits forever.
    idle_check: Duration,
    /// The last message received, or the last check of the stream.
    last_activity: tokio::time::Instant,
}

enum Step {
    Skip,
    Fail(BusError),
    Deliver(ChangeBatch),
}

impl Cursor {
    /// Connections (initial one included) the client has made so far.
    fn connects(&self) -> u64 {
        self.js
            .client()
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After the connection comes back from an outage, reopens the consumer at once: the
    /// server may have lost it (a restarted NATS forgets ephemeral consumers) and waiting for
    /// the library's missed-heartbeat recovery takes tens of seconds. Reopening a consumer
    /// that survived is harmless: delivery restarts after the last seq seen.
    async fn watch_connection(&mut self) -> Step {
        if self.last_activity.elapsed() >= self.idle_check {
            self.last_activity = tokio::time::Instant::now();
            if let Step::Fail(e) =
                check_stream(&self.js, &self.stream, self.last_seen, self.idle_check).await
            {
                return Step::Fail(e);
            }
        }
        let client = self.js.client();
        if client.connection_state() == State::Connected && self.connects() > self.connects_at_open
        {
            tracing::info!(
                last_seen = self.last_seen,
                "NATS is back; reopening the bus consumer"
            );
            return self.reopen().await;
        }
        Step::Skip
    }

    /// Replaces the consumer with a new one starting after the last seq delivered, retrying
    /// (with back-off up to `max_delay`) until NATS answers. Fails when the stream now ends
    /// before the last seq delivered: it was deleted and created again, and its sequences
    /// start over (resubscribing with `since` then says [`BusError::SinceAhead`]).
    async fn reopen(&mut self) -> Step {
        let policy = Backoff::exponential(Duration::from_millis(100), self.max_delay);
        let mut failures = 0u32;
        loop {
            let checked = async {
                let mut stream = self
                    .js
                    .get_stream(&self.stream)
                    .await
                    .map_err(|e| stream_error(e, &self.stream))?;
                let last = stream
                    .info()
                    .await
                    .map_err(|e| BusError::JetStream(boxed(e)))?
                    .state
                    .last_sequence;
                if last < self.last_seen {
                    return Ok(Err(BusError::SinceAhead {
                        since: self.last_seen,
                        last,
                    }));
                }
                open_consumer(&self.js, &self.stream, &self.template, self.last_seen)
                    .await
                    .map(Ok)
            };
            match checked.await {
                Ok(Ok(m)) => {
                    self.messages = m;
                    self.connects_at_open = self.connects();
                    return Step::Skip;
                }
                Ok(Err(reset)) => {
                    tracing::error!(
                        error = %reset,
                        "the bus stream starts over below the last seq delivered (deleted and created again?)"
                    );
                    return Step::Fail(reset);
                }
                Err(e @ BusError::StreamNotFound { .. }) => {
                    // Deleted: what it held past the last seq delivered is gone with it.
                    tracing::error!(error = %e, last_seen = self.last_seen, "the bus stream was deleted");
                    return Step::Fail(e);
                }
                Err(e) => {
                    failures += 1;
                    let delay = policy.delay(failures, 0.0);
                    tracing::warn!(error = %e, retry_in = ?delay, "reopening the bus consumer failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Counts and logs a message that is skipped (the first of each kind at WARN, later ones
    /// at DEBUG: a stream full of garbage must not flood the log).
    fn skip(&self, seq: u64, kind: SkipKind) -> Step {
        if self.metrics.on_skipped(seq, kind) {
            tracing::warn!(seq, kind = ?kind, "skipping a bus message this build cannot read (counted in weir_bus_messages_skipped_total; further ones are logged at debug level)");
        } else {
            tracing::debug!(seq, kind = ?kind, "skipping a bus message this build cannot read");
        }
        Step::Skip
    }

    async fn accept(&mut self, msg: &jetstream::Message) -> Step {
        let (seq, pending) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => return Step::Fail(BusError::Subscribe(e)),
        };
        if seq <= self.last_seen {
            self.metrics.on_redelivered();
            return Step::Skip;
        }
        if seq != self.last_seen + 1 {
            let e = if self.started {
                BusError::Lagged {
                    next: self.last_seen + 1,
                    first_retained: seq,
                }
            } else {
                BusError::SinceTooOld {
                    since: self.since,
                    first_retained: seq,
                }
            };
            return Step::Fail(e);
        }
        self.started = true;
        self.last_seen = seq;
        let part = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(parts::PART_HEADER))
            .and_then(|v| parts::parse_part(v.as_str()));
        let mut batch = match parts::decode(&msg.payload) {
            Ok(b) => b,
            Err(kind) => return self.skip(seq, kind),
        };
        if let Some((index, count)) = part.filter(|(_, n)| *n > 1) {
            batch = match self.assemble(msg, batch, index, count).await {
                Some(whole) => whole,
                None => return Step::Skip,
            };
        }
        batch.assign_seq(seq);
        self.metrics.on_consume(pending);
        Step::Deliver(batch)
    }

    /// Adds part `index` of `count`; the whole batch once its last part is in. A part whose
    /// earlier parts this consumer has not read (it started in the middle of the batch)
    /// fetches them by the sequences its header lists.
    async fn assemble(
        &mut self,
        msg: &jetstream::Message,
        part: ChangeBatch,
        index: usize,
        count: usize,
    ) -> Option<ChangeBatch> {
        let batch_id = part.batch_id.clone();
        if index > 0 && !self.assembler.is_open(&batch_id) {
            let seqs = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(parts::PART_SEQS_HEADER))
                .and_then(|v| parts::parse_seqs(v.as_str()))
                .unwrap_or_default();
            if seqs.len() != index {
                self.incomplete(&batch_id, "its part header lists no earlier parts");
                return None;
            }
            for (i, s) in seqs.into_iter().enumerate() {
                match fetch_part(&self.js, &self.stream, s).await {
                    Ok(p) if p.batch_id == batch_id => {
                        let (_, given_up) = self.assembler.add(p, i, count);
                        self.count_given_up(given_up);
                    }
                    Ok(_) => {
                        self.incomplete(
                            &batch_id,
                            "an earlier part's sequence holds another batch",
                        );
                        return None;
                    }
                    Err(e) => {
                        self.incomplete(&batch_id, &e);
                        return None;
                    }
                }
            }
        }
        let (assembled, given_up) = self.assembler.add(part, index, count);
        self.count_given_up(given_up);
        match assembled {
            Assembled::Whole(b) => Some(b),
            Assembled::Incomplete => None,
        }
    }

    fn incomplete(&mut self, batch_id: &str, why: &str) {
        self.assembler.abandon(batch_id);
        if self.metrics.on_incomplete(1) {
            tracing::warn!(
                batch_id,
                why,
                "skipping a change batch whose parts cannot all be read (counted in weir_bus_messages_skipped_total{{reason=\"incomplete\"}})"
            );
        } else {
            tracing::debug!(batch_id, why, "skipping an incomplete change batch");
        }
    }

    fn count_given_up(&self, n: usize) {
        if n > 0 && self.metrics.on_incomplete(n as u64) {
            tracing::warn!(
                given_up = n,
                "too many change batches open at once: gave up the oldest"
            );
        }
    }
}
