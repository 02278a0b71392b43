//! Randomised tests of the mapping loader: `Mapping::parse` on mutated mapping files (bytes
//! deleted, tokens inserted, lines repeated or swapped) and on generated ones (hostile labels,
//! unknown types, dangling keys, defaults of the wrong type) never panics; every error names
//! the file, a field path and, but for the one about an empty mapping, a line of the text;
//! every mapping it accepts turns into Cypher and accepts a header of its own fields.
//! `PROPTEST_CASES=N` sets the number of cases.

use proptest::prelude::*;
use weir_graph::{Mapping, MappingError, cypher};

/// Cases per property: `PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PEOPLE: &str = include_str!("../../../examples/people/mapping.toml");
const PEOPLE_JSONL: &str = include_str!("../../../examples/people/mapping-jsonl.toml");
const COMPOSITE: &str = r#"
[[nodes]]
label = "City"
key = ["country", "name"]
properties = [{ name = "country" }, { name = "name", field = "city" }, { name = "pop", type = "int", default = 0 }]

[[relationships]]
type = "IN"
start = { label = "City", key = { country = "country", name = "city" } }
end = { label = "Land", key = { code = { field = "country", type = "string" } } }
properties = [{ name = "w", type = "list", item = "float", separator = "|" }]
"#;

/// Errors always say where: the file, a field path, and (except for a mapping with nothing
/// in it) a line that exists.
fn check_error(src: &str, e: &MappingError) -> Result<(), TestCaseError> {
    prop_assert_eq!(&e.file, "m.toml");
    prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{:?}", e);
    let known = ["(syntax)", "version", "input", "nodes", "relationships"];
    prop_assert!(
        known.iter().any(|k| e.field.starts_with(k)),
        "field path {:?}",
        e.field
    );
    match e.line {
        Some(line) => {
            let lines = src.lines().count().max(1) + 1;
            prop_assert!(
                (1..=lines).contains(&line),
                "line {} of {}: {}",
                line,
                lines,
                e
            );
            prop_assert!(
                e.to_string().starts_with(&format!("m.toml:{line}: ")),
                "{}",
                e
            );
        }
        None => prop_assert_eq!(&e.field, "nodes", "an error without a line: {}", e),
    }
    Ok(())
}

fn check_accepted(m: &Mapping) -> Result<(), TestCaseError> {
    for n in &m.nodes {
        let q = cypher::node_merge(n);
        prop_assert!(q.starts_with("UNWIND $rows AS row MERGE"), "{}", q);
    }
    for r in &m.relationships {
        let q = cypher::rel_merge(r);
        prop_assert!(q.starts_with("UNWIND $rows AS row"), "{}", q);
    }
    let fields = m.fields();
    let required = m.required_fields();
    prop_assert!(required.iter().all(|f| fields.contains(f)));
    prop_assert!(m.check_header(&fields).is_ok());
    Ok(())
}

fn parse_and_check(src: &str) -> Result<(), TestCaseError> {
    match Mapping::parse(src, "m.toml") {
        Ok(m) => check_accepted(&m),
        Err(e) => check_error(src, &e),
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Delete `len` characters at a fraction of the text.
    Delete(prop::sample::Index, usize),
    /// Insert a token there.
    Insert(prop::sample::Index, &'static str),
    /// Repeat a line.
    RepeatLine(prop::sample::Index),
    /// Swap two lines.
    SwapLines(prop::sample::Index, prop::sample::Index),
    /// Replace a quoted string's contents.
    Retext(prop::sample::Index, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop::sample::select(vec![
        "\"",
        "'",
        "[",
        "]",
        "{",
        "}",
        "=",
        ",",
        "\n",
        "#",
        "[[nodes]]\n",
        "[[relationships]]\n",
        "key = []",
        "key = [\"nope\"]",
        "type = \"list\"",
        "type = \"decimal\"",
        "default = \"x\"",
        "default = 1.5",
        "label = \"\"",
        "label = \"a`b\"",
        "version = 9\n",
        "[input]\n",
        "format = \"xml\"",
        "delimiter = \"\\\"\"",
        "separator = \"\"",
        "item = \"int\"",
        "field = \"\"",
        "properties = []",
        "\u{feff}",
        "é",
        "\u{0}",
        "1e999",
        "-0",
        "true",
    ]);
    prop_oneof![
        (any::<prop::sample::Index>(), 1usize..20).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<prop::sample::Index>(), token).prop_map(|(i, t)| Mutation::Insert(i, t)),
        any::<prop::sample::Index>().prop_map(Mutation::RepeatLine),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<prop::sample::Index>(), ".{0,6}").prop_map(|(i, s)| Mutation::Retext(i, s)),
    ]
}

fn apply(src: &str, m: &Mutation) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut lines: Vec<&str> = src.lines().collect();
    match m {
        Mutation::Delete(i, n) if !chars.is_empty() => {
            let at = i.index(chars.len());
            let end = (at + n).min(chars.len());
            chars[..at].iter().chain(&chars[end..]).collect()
        }
        Mutation::Insert(i, t) => {
            let at = i.index(chars.len() + 1);
            let mut s: String = chars[..at].iter().collect();
            s.push_str(t);
            s.extend(&chars[at..]);
            s
        }
        Mutation::RepeatLine(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            lines.insert(at, lines[at]);
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let n = lines.len();
            lines.swap(a.index(n), b.index(n));
            lines.join("\n")
        }
        Mutation::Retext(i, text) => {
            // The n-th `"..."` on one line gets new contents.
            let quotes: Vec<usize> = src.match_indices('"').map(|(p, _)| p).collect();
            if quotes.len() < 2 {
                return src.to_owned();
            }
            let k = i.index(quotes.len() / 2) * 2;
            let (open, close) = (quotes[k], quotes[k + 1]);
            if src[open..close].contains('\n') {
                return src.to_owned();
            }
            let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{}{}{}", &src[..=open], escaped, &src[close..])
        }
        _ => src.to_owned(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), ..ProptestConfig::default() })]

    /// Mutated mapping files: no panic; errors name file, field and line; accepted mappings
    /// are usable.
    #[test]
    fn mutated_mappings_never_panic_and_errors_say_where(
        seed in prop::sample::select(vec![PEOPLE, PEOPLE_JSONL, COMPOSITE]),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let src = mutations.iter().fold(seed.to_owned(), |s, m| apply(&s, m));
        parse_and_check(&src)?;
    }
}

/// An identifier: usually a good one, sometimes hostile.
fn ident() -> impl Strategy<Value = String> {
    prop_oneof![
        60 => "[A-Za-z_][A-Za-z0-9_]{0,6}",
        1 => Just(String::new()),
        1 => ".{1,8}",
        1 => Just("a`) DETACH DELETE n //".to_owned()),
        1 => Just("0abc".to_owned()),
    ]
}

fn type_name() -> impl Strategy<Value = String> {
    prop_oneof![
        60 => prop::sample::select(vec![
            "string", "int", "float", "bool", "date", "datetime", "list",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z]{1,8}",
    ]
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn default_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        40 => Just(None),
        1 => any::<i64>().prop_map(|i| Some(i.to_string())),
        1 => any::<bool>().prop_map(|b| Some(b.to_string())),
        1 => ".{0,6}".prop_map(|s| Some(toml_str(&s))),
        1 => Just(Some("[1, \"a\"]".to_owned())),
        1 => Just(Some("2020-01-02".to_owned())),
    ]
}

/// One property, as (name, `{ name = .., field = .., type = .., ... }`).
fn property() -> impl Strategy<Value = (String, String)> {
    (
        ident(),
        prop::option::weighted(0.3, "[a-z_]{0,6}|.{0,4}"),
        prop::option::weighted(0.7, type_name()),
        prop::option::weighted(0.1, type_name()),
        prop::option::weighted(0.1, ".{0,2}"),
        default_value(),
    )
        .prop_map(|(name, field, ty, item, sep, default)| {
            let mut parts = vec![format!("name = {}", toml_str(&name))];
            if let Some(f) = field {
                parts.push(format!("field = {}", toml_str(&f)));
            }
            if let Some(t) = ty {
                parts.push(format!("type = {}", toml_str(&t)));
            }
            if let Some(i) = item {
                parts.push(format!("item = {}", toml_str(&i)));
            }
            if let Some(s) = sep {
                parts.push(format!("separator = {}", toml_str(&s)));
            }
            if let Some(d) = default {
                parts.push(format!("default = {d}"));
            }
            (name, format!("{{ {} }}", parts.join(", ")))
        })
}

/// A node: its label and text. The key names some of its properties, or (sometimes) others.
fn node() -> impl Strategy<Value = (String, String)> {
    (
        ident(),
        prop::collection::vec(property(), 1..5),
        prop::collection::vec(any::<prop::sample::Index>(), 1..3),
        prop::option::weighted(0.05, ident()),
    )
        .prop_map(|(label, props, picks, stray)| {
            let mut key: Vec<String> = Vec::new();
            for i in &picks {
                let k = toml_str(&props[i.index(props.len())].0);
                if !key.contains(&k) {
                    key.push(k);
                }
            }
            key.extend(stray.map(|k| toml_str(&k)));
            let props: Vec<&str> = props.iter().map(|p| p.1.as_str()).collect();
            let text = format!(
                "[[nodes]]\nlabel = {}\nkey = [{}]\nproperties = [\n  {},\n]\n",
                toml_str(&label),
                key.join(", "),
                props.join(",\n  ")
            );
            (label, text)
        })
}

/// A relationship end on one of `labels` (or another label), keyed by some fields.
fn end(labels: Vec<String>) -> impl Strategy<Value = String> {
    let label = if labels.is_empty() {
        ident().boxed()
    } else {
        prop_oneof![4 => prop::sample::select(labels), 1 => ident()].boxed()
    };
    let key = prop_oneof![
        3 => "[a-z_]{1,5}".prop_map(|f| toml_str(&f)),
        1 => (".{0,5}", type_name()).prop_map(|(f, t)| {
            format!("{{ field = {}, type = {} }}", toml_str(&f), toml_str(&t))
        }),
    ];
    (label, prop::collection::vec((ident(), key), 0..3)).prop_map(|(label, keys)| {
        let keys: Vec<String> = keys
            .iter()
            .map(|(k, v)| format!("{} = {v}", toml_str(k)))
            .collect();
        format!(
            "{{ label = {}, key = {{ {} }} }}",
            toml_str(&label),
            keys.join(", ")
        )
    })
}

fn relationship(labels: Vec<String>) -> impl Strategy<Value = String> {
    (
        ident(),
        end(labels.clone()),
        end(labels),
        prop::collection::vec(property(), 0..3),
    )
        .prop_map(|(ty, start, end, props)| {
            let props: Vec<&str> = props.iter().map(|p| p.1.as_str()).collect();
            format!(
                "[[relationships]]\ntype = {}\nstart = {start}\nend = {end}\nproperties = [{}]\n",
                toml_str(&ty),
                props.join(", ")
            )
        })
}

/// A whole mapping file.
fn mapping_text() -> impl Strategy<Value = String> {
    let version =
        prop_oneof![8 => Just(None), 8 => Just(Some(1u32)), 1 => (0u32..5).prop_map(Some)];
    let input = prop::option::weighted(
        0.3,
        (
            prop::sample::select(vec!["csv", "csv", "jsonl", "ndjson", "xml", ""]),
            prop::sample::select(vec![",", ";", "\t", ",", ";", "\"", "", "ab"]),
        ),
    );
    (version, input, prop::collection::vec(node(), 0..3)).prop_flat_map(
        |(version, input, nodes)| {
            let labels: Vec<String> = nodes.iter().map(|n| n.0.clone()).collect();
            let mut head = String::new();
            if let Some(v) = version {
                head.push_str(&format!("version = {v}\n"));
            }
            if let Some((format, delimiter)) = input {
                head.push_str(&format!(
                    "[input]\nformat = {}\ndelimiter = {}\n",
                    toml_str(format),
                    toml_str(delimiter)
                ));
            }
            for n in &nodes {
                head.push_str(&n.1);
            }
            prop::collection::vec(relationship(labels), 0..3).prop_map(move |rels| {
                let mut src = head.clone();
                for r in &rels {
                    src.push_str(r);
                }
                src
            })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), ..ProptestConfig::default() })]

    /// Generated mappings (well-formed TOML, any content): no panic; errors name file, field
    /// and line; accepted mappings are usable.
    #[test]
    fn generated_mappings_never_panic_and_errors_say_where(src in mapping_text()) {
        parse_and_check(&src)?;
    }
}
