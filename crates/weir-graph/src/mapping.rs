//! The mapping file: which record fields become which nodes and relationships.
//!
//! ```toml
//! version = 1
//!
//! [[nodes]]
//! label = "Person"
//! key = ["id"]                                   # one or more property names
//! properties = [
//!   { name = "id", field = "person_id", type = "int" },   # `field` renames; default = name
//!   { name = "name" },                                     # type defaults to string
//!   { name = "active", type = "bool", default = true },
//!   { name = "tags", type = "list", item = "string", separator = ";" },
//! ]
//!
//! [[relationships]]
//! type = "WORKS_AT"
//! start = { label = "Person", key = { id = "person_id" } }     # key property = record field
//! end = { label = "Company", key = { id = "company_id" } }
//! properties = [{ name = "since", type = "date" }]
//! ```
//!
//! End-point key types come from the node mapping of that label in the same file, or are
//! given inline (`key = { id = { field = "person_id", type = "int" } }`), else string.
//! Every label, type and property name is validated by [`crate::ident`]. Errors name the
//! file, the line and the field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::ident::Ident;
use crate::value::{self, FieldRef, PropType, ScalarType, Value};

/// The mapping format version this crate reads.
pub const MAPPING_VERSION: u32 = 1;

/// A problem in a mapping file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct MappingError {
    /// The file (or `<inline>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field path, e.g. `nodes[0].properties[2].type`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}: {}", self.file, self.field, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.field, self.message),
        }
    }
}

// ---- raw TOML form -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    version: Option<Spanned<u32>>,
    #[serde(default)]
    input: Option<RawInput>,
    #[serde(default)]
    nodes: Vec<Spanned<RawNode>>,
    #[serde(default)]
    relationships: Vec<Spanned<RawRel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    format: Option<Spanned<String>>,
    delimiter: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    label: Spanned<String>,
    key: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    properties: Vec<Spanned<RawProp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProp {
    name: Spanned<String>,
    field: Option<Spanned<String>>,
    #[serde(rename = "type")]
    ty: Option<Spanned<String>>,
    item: Option<Spanned<String>>,
    separator: Option<Spanned<String>>,
    default: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRel {
    #[serde(rename = "type")]
    rel_type: Spanned<String>,
    start: Spanned<RawEnd>,
    end: Spanned<RawEnd>,
    #[serde(default)]
    properties: Vec<Spanned<RawProp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnd {
    label: Spanned<String>,
    key: Spanned<BTreeMap<String, Spanned<RawEndKey>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEndKey {
    Field(String),
    Typed {
        field: String,
        #[serde(rename = "type")]
        ty: String,
    },
}

// ---- validated form ------------------------------------------------------------------------

/// Input format named in a mapping file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// Comma (or other delimiter) separated values with a header line.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

/// Input hints from the mapping's `[input]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputHints {
    /// The format, when given (otherwise taken from the file name).
    pub format: Option<InputFormat>,
    /// The CSV delimiter, when given (default `,`).
    pub delimiter: Option<u8>,
}

/// One mapped property.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyMapping {
    /// Property name in the graph.
    pub name: Ident,
    /// Record field it comes from.
    pub field: String,
    /// Its type.
    pub ty: PropType,
    /// Value used when the field is missing or empty.
    pub default: Option<Value>,
}

/// Which nodes a record produces.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeMapping {
    /// The label.
    pub label: Ident,
    /// The key properties, in key order (indexes into `properties`).
    pub key: Vec<usize>,
    /// Every property, keys included.
    pub properties: Vec<PropertyMapping>,
}

impl NodeMapping {
    /// The key properties, in key order.
    pub fn key_properties(&self) -> impl Iterator<Item = &PropertyMapping> {
        self.key.iter().map(|i| &self.properties[*i])
    }
}

/// One end of a relationship: a node found (or created) by its key.
#[derive(Clone, Debug, PartialEq)]
pub struct EndMapping {
    /// The node's label.
    pub label: Ident,
    /// Key properties, sorted by property name: (property, record field, type).
    pub key: Vec<(Ident, String, PropType)>,
}

/// Which relationships a record produces.
#[derive(Clone, Debug, PartialEq)]
pub struct RelMapping {
    /// The relationship type.
    pub rel_type: Ident,
    /// Start node.
    pub start: EndMapping,
    /// End node.
    pub end: EndMapping,
    /// Relationship properties.
    pub properties: Vec<PropertyMapping>,
}

/// A validated mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// Input hints.
    pub input: InputHints,
    /// Node mappings, in file order.
    pub nodes: Vec<NodeMapping>,
    /// Relationship mappings, in file order.
    pub relationships: Vec<RelMapping>,
}

struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err(
        &self,
        span: std::ops::Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> MappingError {
        MappingError {
            file: self.file.to_owned(),
            line: Some(self.line(span)),
            field: field.into(),
            message: msg.into(),
        }
    }

    fn ident(&self, s: &Spanned<String>, field: &str, what: &str) -> Result<Ident, MappingError> {
        Ident::new(s.get_ref()).map_err(|e| self.err(s.span(), field, format!("{what} {e}")))
    }
}

impl Mapping {
    /// Reads and validates a mapping file.
    pub fn from_path(path: &Path) -> Result<Self, MappingError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| MappingError {
            file: file.clone(),
            line: None,
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&src, &file)
    }

    /// Parses and validates mapping text; `file` names it in errors.
    pub fn parse(src: &str, file: &str) -> Result<Self, MappingError> {
        let cx = Ctx { file, src };
        let raw: RawMapping = toml::from_str(src).map_err(|e| MappingError {
            file: file.to_owned(),
            line: e.span().map(|s| cx.line(s)),
            field: "(syntax)".into(),
            message: e.message().trim().to_owned(),
        })?;
        if let Some(v) = &raw.version
            && *v.get_ref() != MAPPING_VERSION
        {
            return Err(cx.err(
                v.span(),
                "version",
                format!(
                    "unsupported version {}; this weir reads {MAPPING_VERSION}",
                    v.get_ref()
                ),
            ));
        }
        let input = match raw.input {
            None => InputHints::default(),
            Some(i) => compile_input(&cx, i)?,
        };
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (ni, n) in raw.nodes.into_iter().enumerate() {
            nodes.push(compile_node(&cx, ni, n)?);
        }
        let mut relationships = Vec::with_capacity(raw.relationships.len());
        for (ri, r) in raw.relationships.into_iter().enumerate() {
            relationships.push(compile_rel(&cx, ri, r, &nodes)?);
        }
        if nodes.is_empty() && relationships.is_empty() {
            return Err(MappingError {
                file: file.to_owned(),
                line: None,
                field: "nodes".into(),
                message: "the mapping defines no nodes and no relationships".into(),
            });
        }
        Ok(Self {
            input,
            nodes,
            relationships,
        })
    }

    /// Prefixes every label and relationship type with `prefix` (validated), e.g. to keep
    /// test or tenant data apart.
    pub fn with_label_prefix(mut self, prefix: &str) -> Result<Self, crate::ident::IdentError> {
        if prefix.is_empty() {
            return Ok(self);
        }
        let p = |id: &Ident| Ident::new(&format!("{prefix}{}", id.as_str()));
        for n in &mut self.nodes {
            n.label = p(&n.label)?;
        }
        for r in &mut self.relationships {
            r.rel_type = p(&r.rel_type)?;
            r.start.label = p(&r.start.label)?;
            r.end.label = p(&r.end.label)?;
        }
        Ok(self)
    }

    /// The record fields a CSV header must have, sorted: every field the mapping reads,
    /// except those only read by properties with a `default` (which stand in for a missing
    /// column by design). Keys and relationship end keys are always required.
    pub fn required_fields(&self) -> Vec<&str> {
        let needed = |p: &'_ PropertyMapping| p.default.is_none();
        let mut out: Vec<&str> = self
            .nodes
            .iter()
            .flat_map(|n| {
                n.properties
                    .iter()
                    .filter(|p| needed(p))
                    .map(|p| p.field.as_str())
            })
            .chain(self.relationships.iter().flat_map(|r| {
                r.properties
                    .iter()
                    .filter(|p| needed(p))
                    .map(|p| p.field.as_str())
                    .chain(r.start.key.iter().map(|k| k.1.as_str()))
                    .chain(r.end.key.iter().map(|k| k.1.as_str()))
            }))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Checks a CSV header's (trimmed) column names: every [`Mapping::required_fields`] is
    /// there, and no name appears twice (blank names may repeat: spreadsheets export empty
    /// trailing columns, and no mapping can read them).
    pub fn check_header(&self, columns: &[&str]) -> Result<(), HeaderError> {
        let owned = || columns.iter().map(|c| (*c).to_owned()).collect();
        let mut seen = HashSet::with_capacity(columns.len());
        for c in columns {
            if !c.is_empty() && !seen.insert(*c) {
                return Err(HeaderError::Duplicate {
                    name: (*c).to_owned(),
                    columns: owned(),
                });
            }
        }
        let missing: Vec<String> = self
            .required_fields()
            .into_iter()
            .filter(|f| !seen.contains(f))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(HeaderError::Missing {
                missing,
                columns: owned(),
            })
        }
    }

    /// Every record field the mapping reads (for header checks), sorted.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.properties.iter().map(|p| p.field.as_str()))
            .chain(self.relationships.iter().flat_map(|r| {
                r.properties
                    .iter()
                    .map(|p| p.field.as_str())
                    .chain(r.start.key.iter().map(|k| k.1.as_str()))
                    .chain(r.end.key.iter().map(|k| k.1.as_str()))
            }))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Why a CSV header row does not fit a mapping ([`Mapping::check_header`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Columns the mapping needs are not in the header.
    #[error(
        "{} read by the mapping {} missing from the header; the header's columns are: {}",
        list_names("column", missing), if missing.len() == 1 { "is" } else { "are" },
        list_columns(columns)
    )]
    Missing {
        /// The missing columns, in mapping order (sorted).
        missing: Vec<String>,
        /// The header's columns.
        columns: Vec<String>,
    },
    /// A column name appears more than once, so a field by that name is ambiguous.
    #[error(
        "column `{name}` appears more than once in the header; the header's columns are: {}",
        list_columns(columns)
    )]
    Duplicate {
        /// The repeated name.
        name: String,
        /// The header's columns.
        columns: Vec<String>,
    },
}

/// Longest list of header columns an error message spells out.
const LISTED_COLUMNS: usize = 64;

fn list_names(what: &str, names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    let s = if names.len() == 1 { "" } else { "s" };
    format!("{what}{s} {}", quoted.join(", "))
}

/// The columns as quoted strings with escapes, so invisible characters (a byte-order mark,
/// non-breaking spaces) show.
fn list_columns(columns: &[String]) -> String {
    let mut out: Vec<String> = columns
        .iter()
        .take(LISTED_COLUMNS)
        .map(|c| format!("{c:?}"))
        .collect();
    if columns.len() > LISTED_COLUMNS {
        out.push(format!("... ({} columns in all)", columns.len()));
    }
    if out.is_empty() {
        return "(none)".into();
    }
    out.join(", ")
}

fn compile_input(cx: &Ctx<'_>, i: RawInput) -> Result<InputHints, MappingError> {
    let format = match i.format {
        None => None,
        Some(f) => Some(match f.get_ref().as_str() {
            "csv" => InputFormat::Csv,
            "jsonl" | "jsonlines" | "ndjson" => InputFormat::JsonLines,
            other => {
                return Err(cx.err(
                    f.span(),
                    "input.format",
                    format!("unknown format `{other}`; use `csv` or `jsonl`"),
                ));
            }
        }),
    };
    let delimiter = match i.delimiter {
        None => None,
        Some(d) => {
            let b = d.get_ref().as_bytes();
            if b.len() != 1 || b[0] == b'"' || b[0] == b'\n' || b[0] == b'\r' {
                return Err(cx.err(
                    d.span(),
                    "input.delimiter",
                    "must be one ASCII character other than a quote or a line break",
                ));
            }
            Some(b[0])
        }
    };
    Ok(InputHints { format, delimiter })
}

fn compile_type(cx: &Ctx<'_>, p: &RawProp, path: &str) -> Result<PropType, MappingError> {
    let ty_name =
        p.ty.as_ref()
            .map(|t| t.get_ref().as_str())
            .unwrap_or("string");
    let ty_span = p.ty.as_ref().map(|t| t.span()).unwrap_or(p.name.span());
    if ty_name == "list" {
        let item = match &p.item {
            None => ScalarType::String,
            Some(i) => ScalarType::from_name(i.get_ref()).ok_or_else(|| {
                cx.err(
                    i.span(),
                    format!("{path}.item"),
                    format!(
                        "unknown item type `{}`; use string, int, float, bool, date or datetime",
                        i.get_ref()
                    ),
                )
            })?,
        };
        let separator = p
            .separator
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_else(|| ";".into());
        if separator.is_empty() {
            let span = p.separator.as_ref().map(|s| s.span()).unwrap_or(ty_span);
            return Err(cx.err(span, format!("{path}.separator"), "must not be empty"));
        }
        return Ok(PropType::List { item, separator });
    }
    if let Some(i) = &p.item {
        return Err(cx.err(
            i.span(),
            format!("{path}.item"),
            "only allowed with type = \"list\"",
        ));
    }
    ScalarType::from_name(ty_name)
        .map(PropType::Scalar)
        .ok_or_else(|| {
            cx.err(
                ty_span,
                format!("{path}.type"),
                format!(
                    "unknown type `{ty_name}`; use string, int, float, bool, date, datetime or list"
                ),
            )
        })
}

/// A TOML value as JSON; TOML dates and times become their text (serde would give them as
/// a private `{"$__toml_private_datetime": ..}` object).
fn toml_to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    Ok(match v {
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        other => serde_json::to_value(other).map_err(|e| e.to_string())?,
    })
}

fn toml_default(ty: &PropType, v: &toml::Value) -> Result<Value, String> {
    let json = toml_to_json(v)?;
    match value::convert(ty, FieldRef::Json(&json)) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err("default must not be empty".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn compile_props(
    cx: &Ctx<'_>,
    raw: Vec<Spanned<RawProp>>,
    base: &str,
) -> Result<Vec<PropertyMapping>, MappingError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (pi, p) in raw.into_iter().enumerate() {
        let path = format!("{base}.properties[{pi}]");
        let p = p.into_inner();
        let name = cx.ident(&p.name, &format!("{path}.name"), "property name")?;
        if !seen.insert(name.clone()) {
            return Err(cx.err(
                p.name.span(),
                format!("{path}.name"),
                format!("property `{}` mapped twice", name.as_str()),
            ));
        }
        let field = match &p.field {
            Some(f) if f.get_ref().is_empty() => {
                return Err(cx.err(f.span(), format!("{path}.field"), "must not be empty"));
            }
            Some(f) => f.get_ref().clone(),
            None => p.name.get_ref().clone(),
        };
        let ty = compile_type(cx, &p, &path)?;
        let default = match &p.default {
            None => None,
            Some(d) => Some(toml_default(&ty, d.get_ref()).map_err(|m| {
                cx.err(
                    d.span(),
                    format!("{path}.default"),
                    format!("{m} (type {ty})"),
                )
            })?),
        };
        out.push(PropertyMapping {
            name,
            field,
            ty,
            default,
        });
    }
    Ok(out)
}

fn compile_node(cx: &Ctx<'_>, ni: usize, n: Spanned<RawNode>) -> Result<NodeMapping, MappingError> {
    let base = format!("nodes[{ni}]");
    let n = n.into_inner();
    let label = cx.ident(&n.label, &format!("{base}.label"), "label")?;
    let properties = compile_props(cx, n.properties, &base)?;
    if n.key.get_ref().is_empty() {
        return Err(cx.err(
            n.key.span(),
            format!("{base}.key"),
            "needs at least one key property",
        ));
    }
    let mut key = Vec::new();
    for (ki, k) in n.key.get_ref().iter().enumerate() {
        let path = format!("{base}.key[{ki}]");
        let id = cx.ident(k, &path, "key property")?;
        let Some(idx) = properties.iter().position(|p| p.name == id) else {
            return Err(cx.err(
                k.span(),
                path,
                format!("key `{}` is not one of this node's properties", id.as_str()),
            ));
        };
        if key.contains(&idx) {
            return Err(cx.err(
                k.span(),
                path,
                format!("key `{}` listed twice", id.as_str()),
            ));
        }
        if matches!(properties[idx].ty, PropType::List { .. }) {
            return Err(cx.err(k.span(), path, "a key property cannot be a list"));
        }
        key.push(idx);
    }
    Ok(NodeMapping {
        label,
        key,
        properties,
    })
}

fn compile_end(
    cx: &Ctx<'_>,
    e: Spanned<RawEnd>,
    path: &str,
    nodes: &[NodeMapping],
) -> Result<EndMapping, MappingError> {
    let e = e.into_inner();
    let label = cx.ident(&e.label, &format!("{path}.label"), "label")?;
    let node = nodes.iter().find(|n| n.label == label);
    if e.key.get_ref().is_empty() {
        return Err(cx.err(
            e.key.span(),
            format!("{path}.key"),
            "needs at least one key property",
        ));
    }
    let mut key = Vec::new();
    for (prop, spec) in e.key.get_ref() {
        let kpath = format!("{path}.key.{prop}");
        let id = Ident::new(prop)
            .map_err(|err| cx.err(spec.span(), &kpath, format!("key property {err}")))?;
        let node_ty = node.and_then(|n| {
            n.key_properties()
                .find(|p| p.name == id)
                .map(|p| p.ty.clone())
        });
        let (field, ty) = match spec.get_ref() {
            RawEndKey::Field(f) => (
                f.clone(),
                node_ty
                    .clone()
                    .unwrap_or(PropType::Scalar(ScalarType::String)),
            ),
            RawEndKey::Typed { field, ty } => {
                let t = ScalarType::from_name(ty).ok_or_else(|| {
                    cx.err(spec.span(), &kpath, format!("unknown key type `{ty}`"))
                })?;
                (field.clone(), PropType::Scalar(t))
            }
        };
        if field.is_empty() {
            return Err(cx.err(spec.span(), &kpath, "field must not be empty"));
        }
        if let Some(nt) = &node_ty
            && *nt != ty
        {
            return Err(cx.err(
                spec.span(),
                &kpath,
                format!("type {ty} differs from the node's key type {nt}"),
            ));
        }
        key.push((id, field, ty));
    }
    if let Some(n) = node {
        let mut node_keys: Vec<&Ident> = n.key_properties().map(|p| &p.name).collect();
        node_keys.sort();
        let mine: Vec<&Ident> = key.iter().map(|k| &k.0).collect();
        if node_keys != mine {
            return Err(cx.err(
                e.key.span(),
                format!("{path}.key"),
                format!(
                    "must name exactly the key of node `{}`: {}",
                    n.label.as_str(),
                    node_keys
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(EndMapping { label, key })
}

fn compile_rel(
    cx: &Ctx<'_>,
    ri: usize,
    r: Spanned<RawRel>,
    nodes: &[NodeMapping],
) -> Result<RelMapping, MappingError> {
    let base = format!("relationships[{ri}]");
    let r = r.into_inner();
    let rel_type = cx.ident(&r.rel_type, &format!("{base}.type"), "relationship type")?;
    let start = compile_end(cx, r.start, &format!("{base}.start"), nodes)?;
    let end = compile_end(cx, r.end, &format!("{base}.end"), nodes)?;
    let properties = compile_props(cx, r.properties, &base)?;
    Ok(RelMapping {
        rel_type,
        start,
        end,
        properties,
    })
}

// ---- mapping records -----------------------------------------------------------------------

/// A record from the input, read field by field.
pub trait Record {
    /// The field named `name`, if the record has it.
    fn field(&self, name: &str) -> Option<FieldRef<'_>>;
}

impl Record for serde_json::Map<String, serde_json::Value> {
    fn field(&self, name: &str) -> Option<FieldRef<'_>> {
        self.get(name).map(FieldRef::Json)
    }
}

impl<S: AsRef<str>> Record for [(S, S)] {
    fn field(&self, name: &str) -> Option<FieldRef<'_>> {
        self.iter()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| FieldRef::Text(v.as_ref()))
    }
}

/// Why a record could not be mapped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A key field is missing or empty.
    #[error("key field `{field}` of {target} is missing or empty")]
    EmptyKey {
        /// The record field.
        field: String,
        /// The label or type it keys.
        target: String,
    },
    /// A field does not convert to its type.
    #[error("field `{field}` of {target}: {source}")]
    Value {
        /// The record field.
        field: String,
        /// The label or type.
        target: String,
        /// What went wrong.
        #[source]
        source: value::ValueError,
    },
}

/// A node produced by a record.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    /// Index of its [`NodeMapping`].
    pub mapping: usize,
    /// Key values in key order.
    pub key: Vec<Value>,
    /// Other properties (present values only).
    pub props: Vec<(usize, Value)>,
}

/// A relationship produced by a record.
#[derive(Clone, Debug, PartialEq)]
pub struct RelRow {
    /// Index of its [`RelMapping`].
    pub mapping: usize,
    /// Start key values (sorted by property name).
    pub start: Vec<Value>,
    /// End key values (sorted by property name).
    pub end: Vec<Value>,
    /// Properties (present values only).
    pub props: Vec<(usize, Value)>,
}

/// What one record maps to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MappedRecord {
    /// Its nodes.
    pub nodes: Vec<NodeRow>,
    /// Its relationships.
    pub rels: Vec<RelRow>,
}

impl MappedRecord {
    /// Rough heap size in bytes, for memory accounting.
    pub fn approx_bytes(&self) -> usize {
        fn v(x: &Value) -> usize {
            match x {
                Value::String(s) => 32 + s.len(),
                Value::List(l) => 32 + l.iter().map(v).sum::<usize>(),
                _ => 32,
            }
        }
        self.nodes
            .iter()
            .map(|n| {
                64 + n.key.iter().map(v).sum::<usize>()
                    + n.props.iter().map(|p| 8 + v(&p.1)).sum::<usize>()
            })
            .sum::<usize>()
            + self
                .rels
                .iter()
                .map(|r| {
                    64 + r.start.iter().chain(&r.end).map(v).sum::<usize>()
                        + r.props.iter().map(|p| 8 + v(&p.1)).sum::<usize>()
                })
                .sum::<usize>()
    }
}

fn prop_value<R: Record + ?Sized>(
    rec: &R,
    p: &PropertyMapping,
    target: &Ident,
) -> Result<Option<Value>, RecordError> {
    let v = match rec.field(&p.field) {
        None => None,
        Some(f) => value::convert(&p.ty, f).map_err(|source| RecordError::Value {
            field: p.field.clone(),
            target: target.as_str().to_owned(),
            source,
        })?,
    };
    Ok(v.or_else(|| p.default.clone()))
}

fn end_values<R: Record + ?Sized>(
    rec: &R,
    e: &EndMapping,
    rel: &Ident,
) -> Result<Vec<Value>, RecordError> {
    let target = format!("{} end `{}`", rel.as_str(), e.label.as_str());
    e.key
        .iter()
        .map(|(_, field, ty)| {
            let f = rec.field(field).ok_or_else(|| RecordError::EmptyKey {
                field: field.clone(),
                target: target.clone(),
            })?;
            value::convert(ty, f)
                .map_err(|source| RecordError::Value {
                    field: field.clone(),
                    target: target.clone(),
                    source,
                })?
                .ok_or_else(|| RecordError::EmptyKey {
                    field: field.clone(),
                    target: target.clone(),
                })
        })
        .collect()
}

impl Mapping {
    /// Maps one record to its nodes and relationships.
    pub fn map_record<R: Record + ?Sized>(&self, rec: &R) -> Result<MappedRecord, RecordError> {
        let mut out = MappedRecord::default();
        for (mi, n) in self.nodes.iter().enumerate() {
            let mut key = Vec::with_capacity(n.key.len());
            for p in n.key_properties() {
                match prop_value(rec, p, &n.label)? {
                    Some(v) => key.push(v),
                    None => {
                        return Err(RecordError::EmptyKey {
                            field: p.field.clone(),
                            target: n.label.as_str().to_owned(),
                        });
                    }
                }
            }
            let mut props = Vec::new();
            for (pi, p) in n.properties.iter().enumerate() {
                if n.key.contains(&pi) {
                    continue;
                }
                if let Some(v) = prop_value(rec, p, &n.label)? {
                    props.push((pi, v));
                }
            }
            out.nodes.push(NodeRow {
                mapping: mi,
                key,
                props,
            });
        }
        for (mi, r) in self.relationships.iter().enumerate() {
            let start = end_values(rec, &r.start, &r.rel_type)?;
            let end = end_values(rec, &r.end, &r.rel_type)?;
            let mut props = Vec::new();
            for (pi, p) in r.properties.iter().enumerate() {
                if let Some(v) = prop_value(rec, p, &r.rel_type)? {
                    props.push((pi, v));
                }
            }
            out.rels.push(RelRow {
                mapping: mi,
                start,
                end,
                props,
            });
        }
        Ok(out)
    }
}

/// The canonical key text of key values (`"42"`, or `a=1,b=x` for composite keys).
pub fn canonical_key<'a>(names: impl Iterator<Item = &'a Ident>, values: &[Value]) -> String {
    let mut out = String::new();
    if values.len() == 1 {
        values[0].write_canonical(&mut out);
        return out;
    }
    for (i, (n, v)) in names.zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n.as_str());
        out.push('=');
        v.write_canonical(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let e =
            err("[[nodes]]\nlabel = \"P\"\nkey = [\"nope\"]\nproperties = [{ name = \"id\" }]\n");
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
}
