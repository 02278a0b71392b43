//! The fast path for `graphChanges`: a change event rendered straight to the JSON a
//! subscriber receives, without running the GraphQL executor once per event and subscriber.
//!
//! async-graphql runs resolvers, builds a `Value` tree and serialises it for every item of
//! every subscription: the gateway's main cost when a 1,000-row batch yields thousands of
//! changes for each subscriber. A [`ChangePlan`] is the subscription's selection set (fields,
//! aliases, `__typename`, the `start`/`end` sub-selections), read once from the resolver's
//! look-ahead; it renders `{"data":{"<field>":{...}}}` for an event directly.
//!
//! Safety net: before anything is delivered, the resolver's stream yields one synthetic
//! [`probe`] change (a relationship with both ends, properties of every JSON kind, text that
//! needs escaping); the executor renders it, and the plan is used only if its rendering is
//! equal (see `ws::run_op`; the probe itself is never sent). The executor's per-subscription
//! state is then dropped, which is also what keeps an idle subscription small. Selections the
//! plan does not cover (directives, a response key used twice, a field it does not know) keep
//! the ordinary path throughout.

use std::fmt::Write as _;

use std::sync::Arc;

use async_graphql::SelectionField;
use weir_events::{
    ChangeBatch, ChangeEvent, EVENT_FORMAT_VERSION, EntityKind, NodeRef, Operation, SourcePosition,
};
use weir_subscriptions::EventRef;

/// One selected field of `GraphChange`, with the response key it is written under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Field {
    Seq,
    Index,
    Kind,
    Label,
    Key,
    Operation,
    Properties,
    Start(Vec<(String, RefField)>),
    End(Vec<(String, RefField)>),
    JobId,
    BatchId,
    CommittedAtMs,
    Missed,
    Typename,
}

/// One selected field of `NodeRef`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RefField {
    Label,
    Key,
    Typename,
}

/// How to render a change for one selection set (see the module docs). Equal plans are
/// shared between subscriptions (`GatewayState::intern_plan`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChangePlan {
    /// `{"data":{"<root key>":` with the key escaped.
    head: String,
    /// Each field's `"<response key>":` (escaped) and what it is.
    fields: Vec<(String, Field)>,
}

fn json_key(k: &str) -> String {
    let mut s = serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into());
    s.push(':');
    s
}

/// The response key of a selected field, or `None` when the field carries a directive (the
/// plan does not evaluate directives).
fn key_of(f: &SelectionField<'_>) -> Option<String> {
    if !f.directives().ok()?.is_empty() {
        return None;
    }
    Some(f.alias().unwrap_or(f.name()).to_owned())
}

fn ref_fields(f: &SelectionField<'_>) -> Option<Vec<(String, RefField)>> {
    let mut out: Vec<(String, RefField)> = Vec::new();
    for sub in f.selection_set() {
        let key = key_of(&sub)?;
        let field = match sub.name() {
            "label" => RefField::Label,
            "key" => RefField::Key,
            "__typename" => RefField::Typename,
            _ => return None,
        };
        if out.iter().any(|(k, _)| *k == key) {
            return None;
        }
        out.push((json_key(&key), field));
    }
    Some(out)
}

impl ChangePlan {
    /// The plan for the `graphChanges` field `root`, or `None` when its selection is not one
    /// the plan covers.
    pub(crate) fn new(root: &SelectionField<'_>) -> Option<Self> {
        let root_key = key_of(root)?;
        let mut fields: Vec<(String, Field)> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for f in root.selection_set() {
            let key = key_of(&f)?;
            if keys.contains(&key) {
                // Field merging of a repeated response key: leave it to the executor.
                return None;
            }
            let field = match f.name() {
                "seq" => Field::Seq,
                "index" => Field::Index,
                "kind" => Field::Kind,
                "label" => Field::Label,
                "key" => Field::Key,
                "operation" => Field::Operation,
                "properties" => Field::Properties,
                "start" => Field::Start(ref_fields(&f)?),
                "end" => Field::End(ref_fields(&f)?),
                "jobId" => Field::JobId,
                "batchId" => Field::BatchId,
                "committedAtMs" => Field::CommittedAtMs,
                "missed" => Field::Missed,
                "__typename" => Field::Typename,
                _ => return None,
            };
            fields.push((json_key(&key), field));
            keys.push(key);
        }
        Some(Self {
            head: format!("{{\"data\":{{{}", json_key(&root_key)),
            fields,
        })
    }

    /// Appends the `next` payload for `event` (`{"data":{...}}`) to `out`.
    pub(crate) fn render(&self, event: &ChangeEvent, out: &mut String) {
        out.push_str(&self.head);
        out.push('{');
        for (i, (key, field)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            match field {
                Field::Seq => {
                    let _ = write!(out, "{}", event.seq);
                }
                Field::Index => {
                    let _ = write!(out, "{}", event.index);
                }
                Field::Kind => out.push_str(match event.kind {
                    EntityKind::Node => "\"NODE\"",
                    EntityKind::Relationship => "\"RELATIONSHIP\"",
                }),
                Field::Label => push_str(out, &event.label),
                Field::Key => push_str(out, &event.key),
                Field::Operation => out.push_str(match event.operation {
                    Operation::Created => "\"CREATED\"",
                    Operation::Updated => "\"UPDATED\"",
                    Operation::Merged => "\"MERGED\"",
                    Operation::Deleted => "\"DELETED\"",
                }),
                Field::Properties => match serde_json::to_string(&event.properties) {
                    Ok(s) => out.push_str(&s),
                    Err(_) => out.push_str("null"),
                },
                Field::Start(sub) => render_ref(out, event.start.as_ref(), sub),
                Field::End(sub) => render_ref(out, event.end.as_ref(), sub),
                Field::JobId => push_str(out, &event.job_id),
                Field::BatchId => push_str(out, &event.batch_id),
                Field::CommittedAtMs => {
                    let _ = write!(out, "{}", event.committed_at_ms);
                }
                Field::Missed => out.push('0'),
                Field::Typename => out.push_str("\"GraphChange\""),
            }
        }
        out.push_str("}}}");
    }

    /// The payload for `event`, as a JSON value (to compare with the executor's).
    pub(crate) fn render_value(&self, event: &ChangeEvent) -> Option<serde_json::Value> {
        let mut s = String::new();
        self.render(event, &mut s);
        serde_json::from_str(&s).ok()
    }
}

fn push_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(j) => out.push_str(&j),
        Err(_) => out.push_str("\"\""),
    }
}

fn render_ref(out: &mut String, node: Option<&NodeRef>, sub: &[(String, RefField)]) {
    let Some(n) = node else {
        out.push_str("null");
        return;
    };
    out.push('{');
    for (i, (key, field)) in sub.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key);
        match field {
            RefField::Label => push_str(out, &n.label),
            RefField::Key => push_str(out, &n.key),
            RefField::Typename => out.push_str("\"NodeRef\""),
        }
    }
    out.push('}');
}

/// The synthetic change a plan is checked against: every field set, both relationship ends,
/// properties of every JSON kind, strings that need escaping.
pub(crate) fn probe() -> EventRef {
    let text = "probe \"quoted\" \\ back\nslash \u{e9}\u{1F600}\u{1}";
    let event = ChangeEvent {
        version: EVENT_FORMAT_VERSION,
        seq: 18_446_744_073_709_551_000,
        index: 4_294_967_000,
        kind: EntityKind::Relationship,
        label: "PROBE_TYPE".into(),
        key: text.into(),
        operation: Operation::Updated,
        properties: [
            ("s".to_owned(), serde_json::json!(text)),
            (
                "i".to_owned(),
                serde_json::json!(-9_007_199_254_740_993_i64),
            ),
            ("f".to_owned(), serde_json::json!(1.25e-7)),
            ("b".to_owned(), serde_json::json!(true)),
            ("n".to_owned(), serde_json::Value::Null),
            (
                "l".to_owned(),
                serde_json::json!([1, "two", [3.5], {"k": null}]),
            ),
            (
                "o".to_owned(),
                serde_json::json!({"z": 1, "a": {"b": [false]}}),
            ),
        ]
        .into_iter()
        .collect(),
        start: Some(NodeRef {
            label: "ProbeStart".into(),
            key: "start \"key\"".into(),
        }),
        end: Some(NodeRef {
            label: "ProbeEnd".into(),
            key: "end\tkey".into(),
        }),
        job_id: "probe-job".into(),
        batch_id: "probe-batch".into(),
        source: SourcePosition::default(),
        committed_at_ms: -1_700_000_000_123,
    };
    let batch = ChangeBatch {
        version: EVENT_FORMAT_VERSION,
        seq: event.seq,
        job_id: event.job_id.clone(),
        batch_id: event.batch_id.clone(),
        events: vec![event],
    };
    EventRef::new(Arc::new(batch), 0).expect("one event")
}
