//! The JSON Schema in `schemas/events.schema.json` matches what the event types serialize to.

mod common;

use serde_json::{Value, json};
use weir_events::{EVENT_FORMAT_VERSION, JobState, PressureState, ProgressEvent};

fn schema() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/events.schema.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).expect("the schema is JSON")
}

/// A validator for one definition of the schema (or the whole schema with `None`).
fn validator(def: Option<&str>) -> jsonschema::Validator {
    let mut s = schema();
    if let Some(def) = def {
        s["$ref"] = json!(format!("#/$defs/{def}"));
        s.as_object_mut().unwrap().remove("oneOf");
    }
    jsonschema::validator_for(&s).expect("the schema compiles")
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value) {
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{instance}\nis invalid: {errors:#?}");
}

fn progress(full: bool) -> ProgressEvent {
    ProgressEvent {
        version: EVENT_FORMAT_VERSION,
        job_id: "job-1".into(),
        state: if full {
            JobState::Failed
        } else {
            JobState::Running
        },
        records_read: 10,
        records_committed: 8,
        records_dead_lettered: 1,
        bytes_read: 1000,
        bytes_total: full.then_some(5000),
        records_per_sec: 12.5,
        batches_in_flight: 2,
        pressure: if full {
            PressureState::High
        } else {
            PressureState::Normal
        },
        pressure_ratio: full.then_some(0.91),
        eta_secs: full.then_some(3.0),
        elapsed_secs: 1.5,
        error: full.then(|| "graph unreachable".into()),
    }
}

#[test]
fn schema_version_matches_the_code() {
    assert_eq!(
        schema()["$defs"]["Version"]["const"],
        json!(EVENT_FORMAT_VERSION)
    );
}

#[test]
fn serialized_change_batches_validate() {
    let v = validator(Some("ChangeBatch"));
    let all = validator(None);
    let mut b = common::batch("job-1", "job-1-7");
    assert_valid(&v, &serde_json::to_value(&b).unwrap());
    b.assign_seq(42);
    let json = serde_json::to_value(&b).unwrap();
    assert_valid(&v, &json);
    assert_valid(&all, &json);
    // Every optional field absent (as serde writes a minimal event).
    b.events[1].start = None;
    b.events[1].end = None;
    b.events[1].source = Default::default();
    assert_valid(&v, &serde_json::to_value(&b).unwrap());
}

#[test]
fn serialized_progress_events_validate() {
    let v = validator(Some("ProgressEvent"));
    let all = validator(None);
    for full in [false, true] {
        let json = serde_json::to_value(progress(full)).unwrap();
        assert_valid(&v, &json);
        assert_valid(&all, &json);
    }
}

#[test]
fn the_schema_rejects_what_the_types_would_not_produce() {
    let batches = validator(Some("ChangeBatch"));
    let good = serde_json::to_value(common::batch("j", "b")).unwrap();
    let mut cases = Vec::new();
    let mut m = good.clone();
    m["version"] = json!(EVENT_FORMAT_VERSION + 1);
    cases.push(("unknown version", m));
    let mut m = good.clone();
    m["events"][0]["operation"] = json!("upserted");
    cases.push(("unknown operation", m));
    let mut m = good.clone();
    m.as_object_mut().unwrap().remove("batch_id");
    cases.push(("missing batch_id", m));
    let mut m = good.clone();
    m["events"][0]["surprise"] = json!(1);
    cases.push(("unknown field (schema drift)", m));
    let mut m = good;
    m["seq"] = json!(-1);
    cases.push(("negative seq", m));
    for (what, instance) in cases {
        assert!(!batches.is_valid(&instance), "{what} should be rejected");
    }
    let mut p = serde_json::to_value(progress(false)).unwrap();
    p["state"] = json!("sleeping");
    assert!(!validator(Some("ProgressEvent")).is_valid(&p));
    // The top-level schema accepts exactly the two message kinds.
    assert!(!validator(None).is_valid(&json!({"version": 1})));
}
