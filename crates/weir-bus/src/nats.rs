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
use weir_events::{ChangeBatch, EVENT_FORMAT_VERSION, ProgressEvent};

use crate::{
    BusError, BusMetrics, ChangeStream, NatsBusConfig, ProgressStream, Published, StorageKind,
};

/// The NATS JetStream bus. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBus {
    s: Arc<Shared>,
}

struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
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
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

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
        let endpoint = redact(&config.url);
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
                let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(50u64 << exp.min(10)).min(max_delay)
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
        let payload = serde_json::to_vec(batch).map_err(|e| BusError::Publish(boxed(e)))?;
        let max = self.s.client.server_info().max_payload;
        if max > 0 && payload.len() > max {
            return Err(BusError::TooLarge {
                bytes: payload.len(),
                max,
            });
        }
        let timeout = self.s.config.publish_timeout;
        let timed_out = || BusError::PublishTimeout {
            batch_id: batch.batch_id.clone(),
            timeout,
        };
        let publish = async {
            let ack = self
                .s
                .js
                .send_publish(
                    self.s.config.changes_subject(),
                    PublishMessage::build()
                        .payload(payload.into())
                        .message_id(&batch.batch_id),
                )
                .await?;
            ack.await
        };
        match tokio::time::timeout(timeout, publish).await {
            Err(_) => Err(timed_out()),
            Ok(Err(e)) => match e.kind() {
                PublishErrorKind::TimedOut => Err(timed_out()),
                PublishErrorKind::MaxPayloadExceeded => Err(BusError::TooLarge { bytes: 0, max }),
                _ => Err(BusError::Publish(boxed(e))),
            },
            Ok(Ok(ack)) => Ok(Published {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
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
        .map_err(|e| BusError::JetStream(boxed(e)))?
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
                            cur.watch_connection().await;
                            continue;
                        }
                    };
                    match item {
                        None => cur.reopen().await,
                        Some(Err(e)) => {
                            tracing::warn!(
                                error = %e,
                                last_seen = cur.last_seen,
                                "bus consumer failed; reopening after the last seq delivered"
                            );
                            cur.reopen().await;
                        }
                        Some(Ok(msg)) => match cur.accept(&msg) {
                            Step::Skip => {}
                            Step::Fail(e) => return Some((Err(e), None)),
                            Step::Deliver(batch) => return Some((Ok(batch), Some(cur))),
                        },
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
    async fn watch_connection(&mut self) {
        let client = self.js.client();
        if client.connection_state() == State::Connected && self.connects() > self.connects_at_open
        {
            tracing::info!(
                last_seen = self.last_seen,
                "NATS is back; reopening the bus consumer"
            );
            self.reopen().await;
        }
    }

    /// Replaces the consumer with a new one starting after the last seq delivered, retrying
    /// (with back-off up to `max_delay`) until NATS answers.
    async fn reopen(&mut self) {
        let mut delay = Duration::from_millis(100);
        loop {
            match open_consumer(&self.js, &self.stream, &self.template, self.last_seen).await {
                Ok(m) => {
                    self.messages = m;
                    self.connects_at_open = self.connects();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the bus consumer failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_delay);
                }
            }
        }
    }

    fn accept(&mut self, msg: &jetstream::Message) -> Step {
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
        let mut batch: ChangeBatch = match serde_json::from_slice(&msg.payload) {
            Ok(b) => b,
            Err(source) => return Step::Fail(BusError::Decode { seq, source }),
        };
        if batch.version != EVENT_FORMAT_VERSION {
            return Step::Fail(BusError::UnsupportedVersion {
                found: batch.version,
                expected: EVENT_FORMAT_VERSION,
                seq,
            });
        }
        batch.assign_seq(seq);
        self.metrics.on_consume(pending);
        Step::Deliver(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_credentials() {
        assert_eq!(
            redact("nats://user:pw@10.0.0.1:4222"),
            "nats://***@10.0.0.1:4222"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact("tok@host:4222"), "***@host:4222");
    }
}
