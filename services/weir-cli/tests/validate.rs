//! `weir validate`: good mappings pass, mappings that would inject Cypher are rejected with the
//! file, line and field named; every shipped example validates against the JSON Schema.

mod support;

use support::{repo, run, weir};

fn validate(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.toml");
    std::fs::write(&p, text).unwrap();
    run(weir().args(["validate", "--mapping"]).arg(&p))
}

#[test]
fn example_mappings_validate() {
    for m in [
        "examples/people/mapping.toml",
        "examples/people/mapping-jsonl.toml",
    ] {
        let out = run(weir()
            .args(["validate", "--cypher", "--mapping"])
            .arg(repo().join(m)));
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("UNWIND $rows AS row MERGE (n:`Person` {`id`: row.k0})"));
        assert!(stdout.contains("CREATE CONSTRAINT `weir_Person_id_key` IF NOT EXISTS"));
    }
}

#[test]
fn injection_in_labels_types_and_properties_is_rejected() {
    let cases = [
        (
            "[[nodes]]\nlabel = \"Person`) DETACH DELETE n //\"\nkey = [\"id\"]\nproperties = [{ name = \"id\" }]\n",
            ":2: nodes[0].label",
        ),
        (
            "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\" },\n  { name = \"x}) SET n.admin = true //\" },\n]\n",
            ":6: nodes[0].properties[1].name",
        ),
        (
            "[[relationships]]\ntype = \"KNOWS]->() DELETE r //\"\nstart = { label = \"P\", key = { id = \"a\" } }\nend = { label = \"P\", key = { id = \"b\" } }\n",
            ":2: relationships[0].type",
        ),
        (
            "[[relationships]]\ntype = \"KNOWS\"\nstart = { label = \"P\", key = { \"id`: 1}) //\" = \"a\" } }\nend = { label = \"P\", key = { id = \"b\" } }\n",
            ":3: relationships[0].start.key",
        ),
    ];
    for (text, want) in cases {
        let out = validate(text);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("m.toml") && stderr.contains(want),
            "want {want} in {stderr}"
        );
    }
    let out = run(weir()
        .args(["validate", "--label-prefix", "a`b", "--mapping"])
        .arg(repo().join("examples/people/mapping.toml")));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn examples_match_the_json_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/mapping.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for m in [
        "examples/people/mapping.toml",
        "examples/people/mapping-jsonl.toml",
    ] {
        let text = std::fs::read_to_string(repo().join(m)).unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        let json = serde_json::to_value(value).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{m}: {errors:?}");
    }
    // The schema is not vacuous: it rejects a bad type and an injected label.
    let bad = serde_json::json!({"nodes": [{"label": "P`x", "key": ["id"], "properties": [{"name": "id", "type": "integer"}]}]});
    assert!(validator.iter_errors(&bad).count() >= 2);
}
