//! The events Weir's parts hand each other.
//!
//! - [`ChangeEvent`]: one node or relationship written by a committed batch. The graph writer
//!   makes them, the bus carries them (grouped per batch in a [`ChangeBatch`]), the
//!   subscription manager matches them to subscriptions, the gateway delivers them.
//! - [`ProgressEvent`]: where an ingest job stands. The stream processor makes them, the CLI's
//!   progress bar and the gateway's `ingestProgress` subscription read them.
//!
//! Both carry [`EVENT_FORMAT_VERSION`] so a consumer can refuse a format it does not know. The
//! JSON form is described by `schemas/events.schema.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "fixtures"))]
pub mod fixture;

/// Version of the event format. Bump on any incompatible change.
pub const EVENT_FORMAT_VERSION: u32 = 1;

/// What kind of graph element changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// A node; `label` is its label.
    Node,
    /// A relationship; `label` is its type.
    Relationship,
}

/// What happened to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// It did not exist before the batch.
    Created,
    /// It existed; properties were set.
    Updated,
    /// Written by MERGE where the database could not tell created from updated.
    Merged,
    /// It was deleted.
    Deleted,
}

/// Where in the input a record came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Input name (file path, `-` for stdin, or a stream name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// 1-based line (or record) number in that input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Byte offset of the record's start in that input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// A reference to a node by label and key (the end points of a relationship).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// The node's label.
    pub label: String,
    /// Its key in canonical string form (see [`ChangeEvent::key`]).
    pub key: String,
}

/// One node or relationship written by a committed batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Event format version; [`EVENT_FORMAT_VERSION`].
    pub version: u32,
    /// Position of the batch in the bus's total order (0 until the bus assigns it). Events of
    /// one batch share it and are ordered by `index`.
    #[serde(default)]
    pub seq: u64,
    /// Index of this event within its batch.
    #[serde(default)]
    pub index: u32,
    /// Node or relationship.
    pub kind: EntityKind,
    /// The node label or the relationship type.
    pub label: String,
    /// The key in canonical string form: the key value for a single-property key
    /// (`"42"`, `"alice"`), `name=value` pairs joined by `,` in key order for a composite key.
    /// For a relationship: `<start key>-><end key>`.
    pub key: String,
    /// What happened.
    pub operation: Operation,
    /// The properties written (changed properties where the database can tell).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
    /// Start node, for a relationship.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<NodeRef>,
    /// End node, for a relationship.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<NodeRef>,
    /// The ingest job that wrote it.
    pub job_id: String,
    /// The batch that wrote it (unique per job and batch; also the bus's dedup id).
    pub batch_id: String,
    /// Where the record came from.
    #[serde(default)]
    pub source: SourcePosition,
    /// Commit time, milliseconds since the Unix epoch.
    pub committed_at_ms: i64,
}

/// The change events of one committed batch, as published on the bus (one message per batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Event format version; [`EVENT_FORMAT_VERSION`].
    pub version: u32,
    /// The bus sequence of this batch (0 until the bus assigns it).
    #[serde(default)]
    pub seq: u64,
    /// The ingest job.
    pub job_id: String,
    /// The batch id (unique per job; the bus's dedup id).
    pub batch_id: String,
    /// The events, in write order.
    pub events: Vec<ChangeEvent>,
}

impl ChangeBatch {
    /// Sets the bus sequence on the batch and on every event in it (with their indexes).
    pub fn assign_seq(&mut self, seq: u64) {
        self.seq = seq;
        for (i, e) in self.events.iter_mut().enumerate() {
            e.seq = seq;
            e.index = u32::try_from(i).unwrap_or(u32::MAX);
        }
    }
}

impl ChangeEvent {
    /// Estimated heap bytes this event holds (its strings, property map and values), for
    /// byte-bounded buffers. An estimate: allocator overhead is approximated, not measured.
    pub fn approx_bytes(&self) -> usize {
        let node_ref = |n: &Option<NodeRef>| {
            n.as_ref()
                .map_or(0, |n| n.label.capacity() + n.key.capacity())
        };
        std::mem::size_of::<Self>()
            + self.label.capacity()
            + self.key.capacity()
            + self.job_id.capacity()
            + self.batch_id.capacity()
            + self.source.source.as_ref().map_or(0, String::capacity)
            + node_ref(&self.start)
            + node_ref(&self.end)
            + self
                .properties
                .iter()
                .map(|(k, v)| BTREE_ENTRY_BYTES + k.capacity() + json_heap_bytes(v))
                .sum::<usize>()
    }
}

/// What one entry of a `BTreeMap<String, Value>` costs beyond its key's and value's own heap:
/// the key and value slots plus a share of the node (B-tree nodes hold up to 11 entries).
const BTREE_ENTRY_BYTES: usize =
    std::mem::size_of::<String>() + std::mem::size_of::<serde_json::Value>() + 16;

/// Estimated heap bytes of a JSON value (not counting the value's own slot).
pub fn json_heap_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity(),
        Value::Array(a) => {
            a.capacity() * std::mem::size_of::<Value>()
                + a.iter().map(json_heap_bytes).sum::<usize>()
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| BTREE_ENTRY_BYTES + k.capacity() + json_heap_bytes(v))
            .sum(),
    }
}

impl ChangeBatch {
    /// Estimated heap bytes of the batch with its events: what a buffer that holds it pays.
    /// Byte-bounded buffers (the in-process bus, the gateway's slow-consumer window) count
    /// batches with it.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.job_id.capacity()
            + self.batch_id.capacity()
            + (self.events.capacity() - self.events.len()) * std::mem::size_of::<ChangeEvent>()
            + self
                .events
                .iter()
                .map(ChangeEvent::approx_bytes)
                .sum::<usize>()
    }
}

/// Where an ingest job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// Reading and writing.
    Running,
    /// Intake paused by memory pressure.
    Paused,
    /// Shutting down: in-flight batches finishing.
    Draining,
    /// Done; every record committed or dead-lettered.
    Completed,
    /// Stopped by a fatal error (what was committed stays committed).
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Memory pressure as the stream processor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PressureState {
    /// Below the high watermark (or back below the low one).
    Normal,
    /// Above the high watermark: intake paused.
    High,
}

/// A snapshot of an ingest job's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// Event format version; [`EVENT_FORMAT_VERSION`].
    pub version: u32,
    /// The job.
    pub job_id: String,
    /// Its state.
    pub state: JobState,
    /// Records read from the source.
    pub records_read: u64,
    /// Records committed to the graph.
    pub records_committed: u64,
    /// Records sent to the dead-letter file.
    pub records_dead_lettered: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Total input bytes, when known (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Records committed per second, recent average.
    pub records_per_sec: f64,
    /// Batches handed to the sink and not yet finished.
    pub batches_in_flight: u32,
    /// Memory pressure.
    pub pressure: PressureState,
    /// Memory in use over its limit (0.0..), when a limit is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure_ratio: Option<f64>,
    /// Estimated seconds left, when the total is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    /// Seconds since the job started.
    pub elapsed_secs: f64,
    /// The fatal error, when `state` is `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::fixture::{EventFixture, batch, event};
    use super::*;

    #[test]
    fn assign_seq_numbers_events_in_order() {
        let ev = |k: &str| event(EntityKind::Node, "Person", k, Operation::Merged);
        let mut b = batch("j", "j-1", vec![ev("a"), ev("b")]);
        b.assign_seq(7);
        assert_eq!((b.events[1].seq, b.events[1].index), (7, 1));
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json["events"][0]["operation"], "merged");
        let back: ChangeBatch = serde_json::from_value(json).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn approx_bytes_grows_with_content() {
        let mut e = event(EntityKind::Node, "Person", "1", Operation::Merged).with_job("j", "j-1");
        let bare = e.approx_bytes();
        assert!(bare >= std::mem::size_of::<ChangeEvent>());
        e.properties
            .insert("blob".into(), serde_json::Value::String("x".repeat(10_000)));
        assert!(e.approx_bytes() >= bare + 10_000);
        let b = batch("j", "j-1", vec![e.clone(), e]);
        assert!(b.approx_bytes() >= 20_000);
    }
}
