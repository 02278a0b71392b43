//! The bus's error type.

use std::time::Duration;

/// Everything that can go wrong on the bus. Each variant is a kind a caller can match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The configuration is invalid; `field` names the offending setting.
    #[error("invalid bus setting `{field}`: {reason}")]
    Config {
        /// The setting, e.g. `nats.max_bytes`.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The bus could not be reached (connect, or a readiness check failed).
    #[error("bus unavailable at {endpoint}: {reason}")]
    Unavailable {
        /// Where we tried (a URL; never contains credentials).
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// A publish was not acknowledged within the publish timeout (for example while NATS is
    /// down). The caller should pause and retry the *same* batch: its id deduplicates it.
    #[error("publish of batch {batch_id} not acknowledged within {timeout:?}")]
    PublishTimeout {
        /// The batch id (or `progress` for a progress event).
        batch_id: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// A message is larger than the server accepts.
    #[error("message of {bytes} bytes exceeds the bus limit of {max} bytes")]
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The stream that holds change events does not exist (it was deleted while services
    /// ran). Not retried: publishing resumes only once the stream is there again (a service
    /// creates it when it connects).
    #[error(
        "the bus stream `{stream}` does not exist (deleted?); restart the service to recreate it"
    )]
    StreamNotFound {
        /// The stream name.
        stream: String,
    },
    /// The server refused or failed a publish for another reason.
    #[error("publish failed: {0}")]
    Publish(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `since` is older than what the bus retains: the changes right after it are gone.
    #[error(
        "cannot replay from seq {since}: the oldest retained change is seq {first_retained} \
         (changes {since}+1..{first_retained} fell out of retention); resubscribe without \
         `since` and resynchronise from the graph"
    )]
    SinceTooOld {
        /// The requested sequence (the last one the subscriber saw).
        since: u64,
        /// The oldest sequence still retained.
        first_retained: u64,
    },
    /// `since` is newer than anything the bus has published (e.g. the bus was reset).
    #[error("cannot replay from seq {since}: the newest published change is seq {last}")]
    SinceAhead {
        /// The requested sequence.
        since: u64,
        /// The newest sequence published.
        last: u64,
    },
    /// A live subscriber fell so far behind that changes it had not read fell out of
    /// retention. The subscription ends; resubscribe with `since` = the last seq read.
    #[error("subscriber lagged: seq {next} is no longer retained (oldest is {first_retained})")]
    Lagged {
        /// The seq the subscriber needed next.
        next: u64,
        /// The oldest sequence still retained.
        first_retained: u64,
    },
    /// A message could not be decoded.
    #[error("cannot decode bus message at seq {seq}: {source}")]
    Decode {
        /// Its bus sequence (0 for a progress message).
        seq: u64,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A message carries an event format version this build does not know.
    #[error("unsupported event format version {found} at seq {seq} (this build reads {expected})")]
    UnsupportedVersion {
        /// The message's version.
        found: u32,
        /// [`weir_events::EVENT_FORMAT_VERSION`].
        expected: u32,
        /// Its bus sequence.
        seq: u64,
    },
    /// A subscription failed (consumer creation or delivery).
    #[error("subscription failed: {0}")]
    Subscribe(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A JetStream management request (stream create/info) failed.
    #[error("JetStream request failed: {0}")]
    JetStream(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The bus was closed.
    #[error("bus closed")]
    Closed,
}

impl BusError {
    /// Whether retrying the same call later may succeed (timeouts, unavailability): the ingest
    /// pipeline pauses and retries on these and fails the job on the others.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::PublishTimeout { .. } | Self::Unavailable { .. } | Self::JetStream(_)
        )
    }
}
