//! Change events and batches for tests, without spelling out every field.
//!
//! Behind the `fixtures` feature: enable it where tests use it, as a dev-dependency only.
//!
//! ```toml
//! [dev-dependencies]
//! weir-events = { workspace = true, features = ["fixtures"] }
//! ```
//!
//! [`event`] makes an event with what a test usually cares about (kind, label, key,
//! operation) and the rest empty or zero; the [`EventFixture`] methods set the other fields;
//! [`batch`] puts events in a batch of one job, as the graph writer does.
//!
//! ```
//! use serde_json::json;
//! use weir_events::fixture::{EventFixture, batch, event, node_ref};
//! use weir_events::{EntityKind, Operation};
//!
//! let alice = event(EntityKind::Node, "Person", "alice", Operation::Created)
//!     .with_property("name", json!("Alice"));
//! let knows = event(EntityKind::Relationship, "KNOWS", "alice->bob", Operation::Merged)
//!     .with_ends(node_ref("Person", "alice"), node_ref("Person", "bob"));
//! let b = batch("job", "job-7", vec![alice, knows]);
//! assert_eq!(b.events[1].batch_id, "job-7");
//! assert_eq!(b.events[0].properties["name"], "Alice");
//! ```

use std::collections::BTreeMap;

use crate::{
    ChangeBatch, ChangeEvent, EVENT_FORMAT_VERSION, EntityKind, NodeRef, Operation, SourcePosition,
};

/// The job id [`event`] gives an event ([`batch`] replaces it with the batch's).
pub const JOB: &str = "job";

/// The batch id [`event`] gives an event ([`batch`] replaces it with the batch's).
pub const BATCH_ID: &str = "job-1";

/// A change event: `kind`, `label`, `key` and `op` as given; format version
/// [`EVENT_FORMAT_VERSION`], `seq` and `index` 0, no properties, no end nodes, job [`JOB`],
/// batch [`BATCH_ID`], no source position, committed at 0.
pub fn event(kind: EntityKind, label: &str, key: &str, op: Operation) -> ChangeEvent {
    ChangeEvent {
        version: EVENT_FORMAT_VERSION,
        seq: 0,
        index: 0,
        kind,
        label: label.into(),
        key: key.into(),
        operation: op,
        properties: BTreeMap::new(),
        start: None,
        end: None,
        job_id: JOB.into(),
        batch_id: BATCH_ID.into(),
        source: SourcePosition::default(),
        committed_at_ms: 0,
    }
}

/// A batch of `events` written by `job` as `batch_id`, `seq` 0 (see
/// [`ChangeBatch::assign_seq`]). Every event gets the batch's job and batch id, as the graph
/// writer gives them; their `seq` and `index` are left as they are.
pub fn batch(job: &str, batch_id: &str, events: Vec<ChangeEvent>) -> ChangeBatch {
    let events = events
        .into_iter()
        .map(|e| e.with_job(job, batch_id))
        .collect();
    ChangeBatch {
        version: EVENT_FORMAT_VERSION,
        seq: 0,
        job_id: job.into(),
        batch_id: batch_id.into(),
        events,
    }
}

/// A reference to the node labelled `label` with `key` (an end of a relationship).
pub fn node_ref(label: &str, key: &str) -> NodeRef {
    NodeRef {
        label: label.into(),
        key: key.into(),
    }
}

/// Setters for the fields [`event`] leaves empty, each taking and returning the event.
pub trait EventFixture: Sized {
    /// Adds (or replaces) one property.
    fn with_property(self, name: &str, value: serde_json::Value) -> Self;

    /// Adds (or replaces) properties.
    fn with_properties<'a>(
        self,
        properties: impl IntoIterator<Item = (&'a str, serde_json::Value)>,
    ) -> Self;

    /// Sets the start and end nodes (of a relationship).
    fn with_ends(self, start: NodeRef, end: NodeRef) -> Self;

    /// Sets the bus sequence and the index within the batch.
    fn with_seq(self, seq: u64, index: u32) -> Self;

    /// Sets the job and batch ids.
    fn with_job(self, job: &str, batch_id: &str) -> Self;

    /// Sets where in the input the record came from.
    fn with_source(self, source: &str, line: u64, offset: u64) -> Self;

    /// Sets the commit time, milliseconds since the Unix epoch.
    fn committed_at(self, ms: i64) -> Self;
}

impl EventFixture for ChangeEvent {
    fn with_property(mut self, name: &str, value: serde_json::Value) -> Self {
        self.properties.insert(name.into(), value);
        self
    }

    fn with_properties<'a>(
        mut self,
        properties: impl IntoIterator<Item = (&'a str, serde_json::Value)>,
    ) -> Self {
        self.properties
            .extend(properties.into_iter().map(|(k, v)| (k.to_owned(), v)));
        self
    }

    fn with_ends(mut self, start: NodeRef, end: NodeRef) -> Self {
        self.start = Some(start);
        self.end = Some(end);
        self
    }

    fn with_seq(mut self, seq: u64, index: u32) -> Self {
        self.seq = seq;
        self.index = index;
        self
    }

    fn with_job(mut self, job: &str, batch_id: &str) -> Self {
        self.job_id = job.into();
        self.batch_id = batch_id.into();
        self
    }

    fn with_source(mut self, source: &str, line: u64, offset: u64) -> Self {
        self.source = SourcePosition {
            source: Some(source.into()),
            line: Some(line),
            offset: Some(offset),
        };
        self
    }

    fn committed_at(mut self, ms: i64) -> Self {
        self.committed_at_ms = ms;
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn event_defaults_and_setters() {
        let e = event(EntityKind::Node, "Person", "7", Operation::Updated);
        assert_eq!(
            e,
            ChangeEvent {
                version: EVENT_FORMAT_VERSION,
                seq: 0,
                index: 0,
                kind: EntityKind::Node,
                label: "Person".into(),
                key: "7".into(),
                operation: Operation::Updated,
                properties: BTreeMap::new(),
                start: None,
                end: None,
                job_id: "job".into(),
                batch_id: "job-1".into(),
                source: SourcePosition::default(),
                committed_at_ms: 0,
            }
        );
        let e = e
            .with_properties([("a", json!(1)), ("b", json!("x"))])
            .with_property("a", json!(2))
            .with_ends(node_ref("P", "1"), node_ref("Q", "2"))
            .with_seq(4, 1)
            .with_job("j", "j-9")
            .with_source("in.csv", 3, 40)
            .committed_at(5);
        assert_eq!(e.properties.len(), 2);
        assert_eq!(e.properties["a"], json!(2));
        assert_eq!(e.end.as_ref().map(|n| n.key.as_str()), Some("2"));
        assert_eq!((e.seq, e.index, e.committed_at_ms), (4, 1, 5));
        assert_eq!((e.job_id.as_str(), e.batch_id.as_str()), ("j", "j-9"));
        assert_eq!(e.source.line, Some(3));
    }

    #[test]
    fn batch_stamps_its_ids_on_its_events() {
        let e = event(EntityKind::Node, "A", "1", Operation::Created).with_seq(3, 2);
        let b = batch("other", "other-2", vec![e]);
        assert_eq!((b.version, b.seq), (EVENT_FORMAT_VERSION, 0));
        assert_eq!(
            (b.job_id.as_str(), b.batch_id.as_str()),
            ("other", "other-2")
        );
        let e = &b.events[0];
        assert_eq!(
            (e.job_id.as_str(), e.batch_id.as_str()),
            ("other", "other-2")
        );
        assert_eq!((e.seq, e.index), (3, 2));
    }
}
