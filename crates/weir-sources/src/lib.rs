//! Streaming sources for Weir's pipeline: records from an unbounded stream, acknowledged only
//! after the pipeline committed (or dead-lettered) them.
//!
//! # The abstraction
//!
//! A streaming source is two halves that meet at the pipeline's commit frontier
//! ([`weir_stream::Pipeline::with_commit_watch`]):
//!
//! * a [`weir_stream::Source`] that hands the pipeline records as they arrive, pulling more
//!   only when the pipeline takes them (a bounded hand-over queue: when intake pauses on memory
//!   pressure or the writes fall behind, pulling stops);
//! * an acker ([`AckTask`]) that watches the frontier and acknowledges each message once every
//!   record in it lies before the frontier; on shutdown it hands the rest back for redelivery.
//!
//! Positions of streamed records: `offset` is the byte offset in this worker's stream of
//! records (monotonic, what acks are decided by) and `line` the message's stream sequence
//! (what dead letters show). NATS JetStream ([`jetstream`]) is the first such source; Kafka
//! ([`kafka`]) commits each partition's offsets where JetStream acks messages (there `line` is
//! the message's offset in its partition, and the input name `kafka:<topic>/<partition>`).

pub mod jetstream;
pub mod kafka;

pub use jetstream::{
    AckTask, ConsumerMetrics, DeliverFrom, JetStreamSource, JetStreamSourceConfig, SourceError,
    connect_nats, publish_records,
};
pub use kafka::{
    KafkaCommitter, KafkaMetrics, KafkaSource, KafkaSourceConfig, KafkaSourceError, StartFrom,
    ensure_topic, publish_kafka,
};

/// The half of a started source that outlives its pipeline, whichever broker it reads: the
/// JetStream acker or the Kafka committer. Await [`SourceFinisher::finish`] after the pipeline
/// ended and the source's stop token fired.
pub enum SourceFinisher {
    /// Acks the last committed messages and hands back the rest ([`AckTask`]).
    JetStream(AckTask),
    /// Commits the final frontier's offsets and leaves the group ([`KafkaCommitter`]).
    Kafka(KafkaCommitter),
}

impl SourceFinisher {
    /// Waits until the last acks (offsets) are sent and the consumer is let go.
    pub async fn finish(self) {
        match self {
            Self::JetStream(acks) => acks.finish().await,
            Self::Kafka(committer) => committer.finish().await,
        }
    }
}

impl From<AckTask> for SourceFinisher {
    fn from(acks: AckTask) -> Self {
        Self::JetStream(acks)
    }
}

impl From<KafkaCommitter> for SourceFinisher {
    fn from(committer: KafkaCommitter) -> Self {
        Self::Kafka(committer)
    }
}
