//! `POST /api/mapping/validate`: checks a mapping before a job is started with it (the web
//! console validates as you type, before uploading anything).
//!
//! Body (JSON): `{"mapping": "<TOML>", "label_prefix": "..."}` (`label_prefix` optional, as
//! on a job). Answers 200 with the verdict, the same one a job submission would reach:
//!
//! - `{"valid": true, "nodes": [{"label", "key": [..], "properties": [{"name", "field",
//!   "type"}]}], "relationships": [{"type", "start", "end"}], "format": "csv"|"jsonl"|null}`
//! - `{"valid": false, "errors": [{"line": 3 | null, "field": "nodes[0].key[0]",
//!   "message": "..."}]}`
//!
//! 400 when the body is not such a document or the mapping is larger than
//! `jobs.max_mapping_bytes`; 401 without a valid bearer token. Nothing is written anywhere.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_graph::{InputFormat, Mapping, MappingError};

use crate::jobs::IngestdError;
use crate::jobs::http::JobsApi;

/// Body of `POST /api/mapping/validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateRequest {
    mapping: String,
    #[serde(default)]
    label_prefix: String,
}

pub(crate) async fn validate_mapping(
    State(api): State<JobsApi>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, IngestdError> {
    api.auth
        .check_headers(&headers)
        .map_err(|e| IngestdError::Unauthenticated(e.to_string()))?;
    let req: ValidateRequest = serde_json::from_slice(&body).map_err(|e| {
        IngestdError::BadRequest(format!("the body is not {{\"mapping\": \"<TOML>\"}}: {e}"))
    })?;
    let max = api.jobs.config().max_mapping_bytes;
    if req.mapping.len() > max {
        return Err(IngestdError::BadRequest(format!(
            "mapping larger than {max} bytes"
        )));
    }
    Ok(axum::Json(verdict(&req.mapping, &req.label_prefix)).into_response())
}

fn error_json(e: &MappingError) -> Value {
    json!({"line": e.line, "field": e.field, "message": e.message})
}

/// The verdict on `mapping` with `label_prefix` applied, as a job submission would parse it
/// (the errors name the file `mapping`, as a job's do).
pub(crate) fn verdict(mapping: &str, label_prefix: &str) -> Value {
    let parsed = match Mapping::parse(mapping, "mapping") {
        Ok(m) => m,
        Err(e) => return json!({"valid": false, "errors": [error_json(&e)]}),
    };
    let m = match parsed.with_label_prefix(label_prefix) {
        Ok(m) => m,
        Err(e) => {
            return json!({"valid": false, "errors": [{
                "line": null,
                "field": "label_prefix",
                "message": e.to_string(),
            }]});
        }
    };
    let nodes: Vec<Value> = m
        .nodes
        .iter()
        .map(|n| {
            json!({
                "label": n.label.as_str(),
                "key": n.key_properties().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                "properties": n.properties.iter().map(|p| json!({
                    "name": p.name.as_str(),
                    "field": p.field,
                    "type": p.ty.to_string(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let relationships: Vec<Value> = m
        .relationships
        .iter()
        .map(|r| {
            json!({
                "type": r.rel_type.as_str(),
                "start": r.start.label.as_str(),
                "end": r.end.label.as_str(),
            })
        })
        .collect();
    let format = m.input.format.map(InputFormat::as_str);
    json!({"valid": true, "nodes": nodes, "relationships": relationships, "format": format})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_mapping_is_summarised_with_the_prefix_applied() {
        let m = "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\", field = \"person_id\", type = \"int\" },\n  { name = \"name\" },\n]\n\n[[relationships]]\ntype = \"KNOWS\"\nstart = { label = \"Person\", key = { id = \"a\" } }\nend = { label = \"Person\", key = { id = \"b\" } }\n";
        let v = verdict(m, "t_");
        assert_eq!(v["valid"], true, "{v}");
        assert_eq!(v["nodes"][0]["label"], "t_Person");
        assert_eq!(v["nodes"][0]["key"], json!(["id"]));
        assert_eq!(
            v["nodes"][0]["properties"][0],
            json!({"name": "id", "field": "person_id", "type": "int"})
        );
        assert_eq!(
            v["relationships"][0],
            json!({"type": "t_KNOWS", "start": "t_Person", "end": "t_Person"})
        );
        assert_eq!(v["format"], Value::Null);
    }

    #[test]
    fn errors_carry_line_and_field() {
        let m = "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\", type = \"integer\" },\n]\n";
        let v = verdict(m, "");
        assert_eq!(v["valid"], false, "{v}");
        let e = &v["errors"][0];
        assert_eq!(e["line"], 5, "{v}");
        assert_eq!(e["field"], "nodes[0].properties[0].type", "{v}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        let v = verdict("[[nodes]\nlabel = 1", "");
        assert_eq!(v["errors"][0]["field"], "(syntax)", "{v}");
        assert_eq!(v["errors"][0]["line"], 1, "{v}");
        let v = verdict(
            "[[nodes]]\nlabel = \"P\"\nkey = [\"id\"]\nproperties = [{ name = \"id\" }]\n",
            "bad prefix",
        );
        assert_eq!(v["errors"][0]["field"], "label_prefix", "{v}");
    }
}
