//! Parsing and validation: the raw TOML form compiled into a [`Mapping`], with errors that
//! name the file, the line and the field.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use toml::Spanned;

use super::raw::{RawEnd, RawEndKey, RawInput, RawMapping, RawNode, RawProp, RawRel};
use super::{
    DEFAULT_VERSION_PROPERTY, EndMapping, InputFormat, InputHints, MAPPING_VERSION, Mapping,
    NodeMapping, PropertyMapping, RelMapping,
};
use crate::ident::Ident;
use crate::value::{self, FieldRef, PropType, ScalarType, Value};

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
        let (input, version_span) = match raw.input {
            None => (InputHints::default(), None),
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
        if let (Some(vp), Some(span)) = (&input.version_property, version_span) {
            apply_version(&cx, vp, span, &mut nodes, &mut relationships)?;
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
}

/// Sets the version property on every node and relationship mapping, once it is known to be
/// no mapped property's name (the record's value would overwrite the version, or the reverse).
/// `span` is where the property is named (or `version_field`, for the default).
fn apply_version(
    cx: &Ctx<'_>,
    vp: &Ident,
    span: std::ops::Range<usize>,
    nodes: &mut [NodeMapping],
    relationships: &mut [RelMapping],
) -> Result<(), MappingError> {
    let node_props = nodes
        .iter()
        .flat_map(|n| n.properties.iter().map(move |p| (&p.name, &n.label)));
    let rel_props = relationships.iter().flat_map(|r| {
        r.properties
            .iter()
            .map(move |p| (&p.name, &r.rel_type))
            .chain(r.start.key.iter().map(move |k| (&k.0, &r.start.label)))
            .chain(r.end.key.iter().map(move |k| (&k.0, &r.end.label)))
    });
    if let Some((_, owner)) = node_props.chain(rel_props).find(|(name, _)| *name == vp) {
        return Err(cx.err(
            span,
            "input.version_property",
            format!(
                "`{}` is also a mapped property of `{}`; the version needs a property of its \
                 own (set `version_property` to another name)",
                vp.as_str(),
                owner.as_str()
            ),
        ));
    }
    for n in nodes {
        n.version = Some(vp.clone());
    }
    for r in relationships {
        r.version = Some(vp.clone());
    }
    Ok(())
}

/// The `[input]` table, and where the version property is named (for a later error).
fn compile_input(
    cx: &Ctx<'_>,
    i: RawInput,
) -> Result<(InputHints, Option<std::ops::Range<usize>>), MappingError> {
    let format = match i.format {
        None => None,
        Some(f) => Some(
            f.get_ref()
                .parse::<InputFormat>()
                .map_err(|e| cx.err(f.span(), "input.format", e.to_string()))?,
        ),
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
    let operation_field = match i.operation_field {
        None => None,
        Some(f) if f.get_ref().trim().is_empty() => {
            return Err(cx.err(
                f.span(),
                "input.operation_field",
                "must name a record field (or be left out)",
            ));
        }
        Some(f) => Some(f.into_inner()),
    };
    let version_field = match i.version_field {
        None => None,
        Some(f) if f.get_ref().trim().is_empty() => {
            return Err(cx.err(
                f.span(),
                "input.version_field",
                "must name a record field (or be left out)",
            ));
        }
        Some(f) if operation_field.as_ref() == Some(f.get_ref()) => {
            return Err(cx.err(
                f.span(),
                "input.version_field",
                "must be another field than `operation_field`",
            ));
        }
        Some(f) => Some(f),
    };
    let (version_property, version_span) = match (&version_field, i.version_property) {
        (None, None) => (None, None),
        (None, Some(p)) => {
            return Err(cx.err(
                p.span(),
                "input.version_property",
                "only with `version_field` (the record field holding the version)",
            ));
        }
        (Some(f), None) => (
            Some(Ident::new(DEFAULT_VERSION_PROPERTY).expect("a valid identifier")),
            Some(f.span()),
        ),
        (Some(_), Some(p)) => (
            Some(cx.ident(&p, "input.version_property", "version property")?),
            Some(p.span()),
        ),
    };
    Ok((
        InputHints {
            format,
            delimiter,
            operation_field,
            version_field: version_field.map(Spanned::into_inner),
            version_property,
        },
        version_span,
    ))
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
        version: None,
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
        version: None,
    })
}
