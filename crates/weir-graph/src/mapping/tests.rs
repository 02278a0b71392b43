use super::*;
use crate::value::ScalarType;

const GOOD: &str = r#"
version = 1
[input]
format = "csv"
delimiter = ";"

[[nodes]]
label = "Person"
key = ["id"]
properties = [
  { name = "id", field = "person_id", type = "int" },
  { name = "name" },
  { name = "active", type = "bool", default = true },
  { name = "tags", type = "list", item = "string", separator = "|" },
]

[[nodes]]
label = "Company"
key = ["id"]
properties = [{ name = "id", field = "company_id", type = "int" }]

[[relationships]]
type = "WORKS_AT"
start = { label = "Person", key = { id = "person_id" } }
end = { label = "Company", key = { id = "company_id" } }
properties = [{ name = "since", type = "date" }]
"#;

fn err(src: &str) -> MappingError {
    Mapping::parse(src, "m.toml").unwrap_err()
}

#[test]
fn parses_a_full_mapping() {
    let m = Mapping::parse(GOOD, "m.toml").unwrap();
    assert_eq!(m.input.format, Some(InputFormat::Csv));
    assert_eq!(m.input.delimiter, Some(b';'));
    assert_eq!(m.nodes.len(), 2);
    assert_eq!(m.nodes[0].properties[0].field, "person_id");
    assert_eq!(m.nodes[0].properties[2].default, Some(Value::Bool(true)));
    let r = &m.relationships[0];
    assert_eq!(r.start.key[0].2, PropType::Scalar(ScalarType::Int));
    assert_eq!(
        m.fields(),
        vec!["active", "company_id", "name", "person_id", "since", "tags"]
    );
}

#[test]
fn maps_a_record_with_defaults_and_types() {
    let m = Mapping::parse(GOOD, "m.toml").unwrap();
    let rec: Vec<(&str, &str)> = vec![
        ("person_id", "7"),
        ("name", "Ann"),
        ("active", ""),
        ("tags", "a|b"),
        ("company_id", "3"),
        ("since", "2020-01-02"),
    ];
    let out = m.map_record(rec.as_slice()).unwrap();
    assert_eq!(out.nodes[0].key, vec![Value::Int(7)]);
    assert!(out.nodes[0].props.contains(&(2, Value::Bool(true))));
    assert!(out.nodes[0].props.contains(&(
        3,
        Value::List(vec![Value::String("a".into()), Value::String("b".into())])
    )));
    assert_eq!(out.rels[0].end, vec![Value::Int(3)]);

    let bad: Vec<(&str, &str)> = vec![("person_id", ""), ("company_id", "3")];
    assert!(matches!(
        m.map_record(bad.as_slice()),
        Err(RecordError::EmptyKey { field, .. }) if field == "person_id"
    ));
    let bad: Vec<(&str, &str)> = vec![("person_id", "x1"), ("company_id", "3")];
    assert!(matches!(
        m.map_record(bad.as_slice()),
        Err(RecordError::Value { field, .. }) if field == "person_id"
    ));
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"person_id": 1, "company_id": 2, "tags": ["x"]}"#).unwrap();
    let out = m.map_record(&json).unwrap();
    assert_eq!(out.rels[0].start, vec![Value::Int(1)]);
}

#[test]
fn errors_name_file_line_and_field() {
    let e = err(
        "[[nodes]]\nlabel = \"Person`) DETACH DELETE n //\"\nkey = [\"id\"]\nproperties = [{ name = \"id\" }]\n",
    );
    assert_eq!(
        (e.file.as_str(), e.line, e.field.as_str()),
        ("m.toml", Some(2), "nodes[0].label")
    );
    assert!(
        e.to_string().starts_with("m.toml:2: nodes[0].label: label"),
        "{e}"
    );

    let e = err(
        "[[nodes]]\nlabel = \"P\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\" },\n  { name = \"x y\" },\n]\n",
    );
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(6), "nodes[0].properties[1].name")
    );

    let e = err(
        "[[nodes]]\nlabel = \"P\"\nkey = [\"id\"]\nproperties = [{ name = \"id\", type = \"integer\" }]\n",
    );
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(4), "nodes[0].properties[0].type")
    );

    let e = err("[[nodes]]\nlabel = \"P\"\nkey = [\"nope\"]\nproperties = [{ name = \"id\" }]\n");
    assert_eq!((e.line, e.field.as_str()), (Some(3), "nodes[0].key[0]"));

    let e = err(
        "[[nodes]]\nlabel = \"P\"\nkey = [\"id\"]\nproperties = [{ name = \"id\", type = \"int\", default = \"x\" }]\n",
    );
    assert_eq!(e.field, "nodes[0].properties[0].default");

    let e = err(
        "[[nodes]]\nlabel = \"P\"\nkey = [\"id\"]\nbogus = 1\nproperties = [{ name = \"id\" }]\n",
    );
    assert_eq!(e.field, "(syntax)");
    assert!(e.message.contains("bogus"), "{e}");
    assert!(e.line.is_some());

    let e = err(
        "[[relationships]]\ntype = \"KNOWS\"\nstart = { label = \"P\", key = { \"a b\" = \"x\" } }\nend = { label = \"P\", key = { id = \"y\" } }\n",
    );
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(3), "relationships[0].start.key.a b")
    );

    let e = err(
        "version = 2\n[[nodes]]\nlabel = \"P\"\nkey = [\"id\"]\nproperties = [{ name = \"id\" }]\n",
    );
    assert_eq!((e.line, e.field.as_str()), (Some(1), "version"));
    assert!(err("").message.contains("no nodes"));
}

#[test]
fn a_header_must_hold_every_required_column_once() {
    let m = Mapping::parse(GOOD, "m.toml").unwrap();
    // `active` has a default: a header may lack it.
    assert_eq!(
        m.required_fields(),
        ["company_id", "name", "person_id", "since", "tags"]
    );
    let full = ["person_id", "name", "tags", "company_id", "since", "extra"];
    m.check_header(&full).unwrap();
    m.check_header(&[&full[..], &["active", "", ""]].concat())
        .unwrap();

    // A byte-order mark left in the first name (what Excel files did): named and shown.
    let bom = ["\u{feff}person_id", "name", "tags", "company_id", "since"];
    let e = m.check_header(&bom).unwrap_err();
    assert_eq!(
        e,
        HeaderError::Missing {
            missing: vec!["person_id".into()],
            columns: bom.iter().map(|c| c.to_string()).collect(),
        }
    );
    assert_eq!(
        e.to_string(),
        "column `person_id` read by the mapping is missing from the header; the header's \
         columns are: \"\\u{feff}person_id\", \"name\", \"tags\", \"company_id\", \"since\""
    );
    let e = m.check_header(&["name", "since"]).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "columns `company_id`, `person_id`, `tags` read by the mapping are missing"
        ),
        "{e}"
    );

    let dup = ["person_id", "name", "tags", "company_id", "since", "name"];
    let e = m.check_header(&dup).unwrap_err();
    assert!(
        matches!(&e, HeaderError::Duplicate { name, .. } if name == "name"),
        "{e}"
    );
    assert!(
        e.to_string().contains("`name` appears more than once"),
        "{e}"
    );

    // Long headers are listed in part.
    let wide: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
    let e = m.check_header(&wide).unwrap_err().to_string();
    assert!(
        e.contains("\"c63\", ... (100 columns in all)") && !e.contains("c64"),
        "{e}"
    );
}

#[test]
fn toml_dates_are_defaults_of_date_properties() {
    let m = Mapping::parse(
        "[[nodes]]\nlabel = \"P\"\nkey = [\"id\"]\nproperties = [{ name = \"id\" }, \
         { name = \"born\", type = \"date\", default = 2020-01-02 }, \
         { name = \"days\", type = \"list\", item = \"date\", default = [2021-03-04] }]\n",
        "m.toml",
    )
    .unwrap();
    let date = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
    assert_eq!(
        m.nodes[0].properties[1].default,
        Some(Value::Date(date(2020, 1, 2)))
    );
    assert_eq!(
        m.nodes[0].properties[2].default,
        Some(Value::List(vec![Value::Date(date(2021, 3, 4))]))
    );
}

#[test]
fn end_keys_must_match_the_node_key() {
    let src = GOOD.replace(
        "end = { label = \"Company\", key = { id = \"company_id\" } }",
        "end = { label = \"Company\", key = { name = \"company_id\" } }",
    );
    let e = err(&src);
    assert_eq!(e.field, "relationships[0].end.key");
}

#[test]
fn label_prefix_applies_everywhere() {
    let m = Mapping::parse(GOOD, "m.toml")
        .unwrap()
        .with_label_prefix("t1_")
        .unwrap();
    assert_eq!(m.nodes[1].label.as_str(), "t1_Company");
    assert_eq!(m.relationships[0].rel_type.as_str(), "t1_WORKS_AT");
    assert_eq!(m.relationships[0].end.label.as_str(), "t1_Company");
    assert!(
        Mapping::parse(GOOD, "m.toml")
            .unwrap()
            .with_label_prefix("a`")
            .is_err()
    );
}

#[test]
fn canonical_keys() {
    let a = Ident::new("a").unwrap();
    let b = Ident::new("b").unwrap();
    assert_eq!(canonical_key([&a].into_iter(), &[Value::Int(4)]), "4");
    assert_eq!(
        canonical_key(
            [&a, &b].into_iter(),
            &[Value::Int(4), Value::String("x".into())]
        ),
        "a=4,b=x"
    );
}

const VERSIONED: &str = r#"[input]
operation_field = "op"
version_field = "ts"

[[nodes]]
label = "Person"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }]

[[relationships]]
type = "KNOWS"
start = { label = "Person", key = { id = "id" } }
end = { label = "Person", key = { id = "friend" } }
properties = [{ name = "since", type = "int" }]
"#;

#[test]
fn version_field_and_property_parse() {
    let m = Mapping::parse(VERSIONED, "m.toml").unwrap();
    assert_eq!(m.input.version_field.as_deref(), Some("ts"));
    let v = Ident::new("_version").unwrap();
    assert_eq!(m.input.version_property.as_ref(), Some(&v));
    assert_eq!(m.nodes[0].version.as_ref(), Some(&v));
    assert_eq!(m.relationships[0].version.as_ref(), Some(&v));
    // The version column is required in a CSV header.
    assert!(m.required_fields().contains(&"ts"));
    assert!(m.fields().contains(&"ts"));

    let m = Mapping::parse(
        &VERSIONED.replace(
            "version_field = \"ts\"",
            "version_field = \"ts\"\nversion_property = \"seq\"",
        ),
        "m.toml",
    )
    .unwrap();
    assert_eq!(m.nodes[0].version.as_ref().unwrap().as_str(), "seq");
    // Label prefixes leave the version property alone.
    let m = m.with_label_prefix("t_").unwrap();
    assert_eq!(m.relationships[0].version.as_ref().unwrap().as_str(), "seq");

    // Unversioned mappings have none.
    let m = Mapping::parse(GOOD, "m.toml").unwrap();
    assert_eq!(m.input.version_field, None);
    assert_eq!(m.input.version_property, None);
    assert!(m.nodes.iter().all(|n| n.version.is_none()));
    assert!(m.relationships.iter().all(|r| r.version.is_none()));
}

#[test]
fn bad_version_settings_name_the_line_and_field() {
    let with = |extra: &str| VERSIONED.replace("version_field = \"ts\"", extra);
    // Lines: 1 `[input]`, 2 `operation_field`, 3 the replaced text.
    let cases = [
        (
            "version_field = \"  \"",
            3,
            "input.version_field",
            "must name a record field",
        ),
        (
            "version_field = \"op\"",
            3,
            "input.version_field",
            "operation_field",
        ),
        (
            "version_property = \"seq\"",
            3,
            "input.version_property",
            "only with `version_field`",
        ),
        (
            "version_field = \"ts\"\nversion_property = \"a`b\"",
            4,
            "input.version_property",
            "version property",
        ),
        (
            "version_field = \"ts\"\nversion_property = \"name\"",
            4,
            "input.version_property",
            "`name` is also a mapped property of `Person`",
        ),
        (
            "version_field = \"ts\"\nversion_property = \"since\"",
            4,
            "input.version_property",
            "of `KNOWS`",
        ),
        (
            "version_field = \"ts\"\nversion_property = \"id\"",
            4,
            "input.version_property",
            "`id` is also",
        ),
    ];
    for (extra, line, field, msg) in cases {
        let e = err(&with(extra));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(line), field),
            "{extra}: {e}"
        );
        assert!(e.message.contains(msg), "{extra}: {e}");
    }
    // The default property clashing with a mapped one is named at `version_field`.
    let e = err(&VERSIONED.replace("{ name = \"name\" }", "{ name = \"_version\" }"));
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(3), "input.version_property")
    );
    assert!(e.message.contains("`_version` is also"), "{e}");
}

#[test]
fn every_record_of_a_versioned_mapping_carries_an_integer_version() {
    let m = Mapping::parse(VERSIONED, "m.toml").unwrap();
    let text = |fields: &[(&str, &str)]| m.map_record(fields);
    let out = text(&[("id", "1"), ("friend", "2"), ("ts", " 42 ")]).unwrap();
    assert_eq!((out.op, out.version), (Op::Upsert, Some(42)));
    let out = text(&[("op", "delete"), ("id", "1"), ("ts", "-3")]).unwrap();
    assert_eq!((out.op, out.version), (Op::Delete, Some(-3)));
    for fields in [
        &[("id", "1"), ("friend", "2")][..],
        &[("id", "1"), ("friend", "2"), ("ts", "")],
        &[("op", "delete"), ("id", "1"), ("ts", " ")],
    ] {
        assert_eq!(
            text(fields),
            Err(RecordError::MissingVersion { field: "ts".into() }),
            "{fields:?}"
        );
    }
    let e = text(&[("id", "1"), ("friend", "2"), ("ts", "1.5")]).unwrap_err();
    assert_eq!(
        e,
        RecordError::Version {
            field: "ts".into(),
            value: "1.5".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "field `ts` (the version) is `1.5`; use an integer"
    );
    assert!(
        text(&[("id", "1"), ("friend", "2")])
            .unwrap_err()
            .to_string()
            .contains("`ts` (the version) is missing or empty"),
    );

    let json = |s: &str| {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s).unwrap();
        m.map_record(&obj)
    };
    assert_eq!(
        json(r#"{"id": 1, "friend": 2, "ts": 1700000000000}"#)
            .unwrap()
            .version,
        Some(1_700_000_000_000)
    );
    assert_eq!(
        json(r#"{"id": 1, "friend": 2, "ts": "7"}"#)
            .unwrap()
            .version,
        Some(7)
    );
    assert!(matches!(
        json(r#"{"id": 1, "friend": 2, "ts": null}"#),
        Err(RecordError::MissingVersion { .. })
    ));
    for bad in ["2.0", "true", "[1]", "\"x\"", "18446744073709551615"] {
        assert!(
            matches!(
                json(&format!(r#"{{"id": 1, "friend": 2, "ts": {bad}}}"#)),
                Err(RecordError::Version { ref field, .. }) if field == "ts"
            ),
            "{bad}"
        );
    }
    // Unversioned mappings map no version.
    let m = Mapping::parse(GOOD, "m.toml").unwrap();
    let rec: Vec<(&str, &str)> = vec![("person_id", "7"), ("company_id", "3"), ("ts", "9")];
    assert_eq!(m.map_record(rec.as_slice()).unwrap().version, None);
}
