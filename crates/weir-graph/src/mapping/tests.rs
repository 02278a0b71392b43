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
