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
