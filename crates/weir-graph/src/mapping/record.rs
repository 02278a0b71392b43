//! Mapping records to typed rows: [`Mapping::map_record`] and the [`MappedRecord`] it returns.

use super::{EndMapping, Mapping, PropertyMapping};
use crate::ident::Ident;
use crate::value::{self, FieldRef, Value};

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
    /// The operation field holds neither `upsert` nor `delete`.
    #[error("field `{field}` (the operation) is `{value}`; use `upsert` or `delete`")]
    Operation {
        /// The operation field.
        field: String,
        /// What it held (at most 64 characters of it).
        value: String,
    },
    /// The version field (`[input] version_field`) is missing or empty.
    #[error(
        "field `{field}` (the version) is missing or empty; every record needs an integer version"
    )]
    MissingVersion {
        /// The version field.
        field: String,
    },
    /// The version field holds no integer.
    #[error("field `{field}` (the version) is `{value}`; use an integer")]
    Version {
        /// The version field.
        field: String,
        /// What it held (at most 64 characters of it).
        value: String,
    },
    /// A delete record carries no complete key of any node or relationship of the mapping.
    #[error("delete record carries the key of no node or relationship of the mapping")]
    NothingToDelete,
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
    /// Index of its [`NodeMapping`](super::NodeMapping).
    pub mapping: usize,
    /// Key values in key order.
    pub key: Vec<Value>,
    /// Other properties (present values only).
    pub props: Vec<(usize, Value)>,
}

/// A relationship produced by a record.
#[derive(Clone, Debug, PartialEq)]
pub struct RelRow {
    /// Index of its [`RelMapping`](super::RelMapping).
    pub mapping: usize,
    /// Start key values (sorted by property name).
    pub start: Vec<Value>,
    /// End key values (sorted by property name).
    pub end: Vec<Value>,
    /// Properties (present values only).
    pub props: Vec<(usize, Value)>,
}

/// What a record asks for: its entities written, or removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Op {
    /// Merge the nodes and relationships by key and set their properties.
    #[default]
    Upsert,
    /// Remove the nodes (`DETACH DELETE`) and relationships the record's keys name; rows carry
    /// keys only.
    Delete,
}

/// What one record maps to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MappedRecord {
    /// Write or remove.
    pub op: Op,
    /// The record's version (`[input] version_field`), when the mapping is versioned: it is
    /// written or removed only where the stored version is missing or not newer.
    pub version: Option<i64>,
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
        16 + self
            .nodes
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

/// The record's operation, read from `field` (see [`Op`]).
fn operation<R: Record + ?Sized>(rec: &R, field: &str) -> Result<Op, RecordError> {
    let text = match rec.field(field) {
        None => return Ok(Op::Upsert),
        Some(FieldRef::Text(t)) => t.trim().to_owned(),
        Some(FieldRef::Json(serde_json::Value::Null)) => return Ok(Op::Upsert),
        Some(FieldRef::Json(serde_json::Value::String(t))) => t.trim().to_owned(),
        Some(FieldRef::Json(other)) => other.to_string(),
    };
    if text.is_empty() || text.eq_ignore_ascii_case("upsert") {
        Ok(Op::Upsert)
    } else if text.eq_ignore_ascii_case("delete") {
        Ok(Op::Delete)
    } else {
        Err(RecordError::Operation {
            field: field.to_owned(),
            value: text.chars().take(64).collect(),
        })
    }
}

/// The record's version, read from `field`: a JSON integer, or the text of one (trimmed).
fn version<R: Record + ?Sized>(rec: &R, field: &str) -> Result<i64, RecordError> {
    let missing = || RecordError::MissingVersion {
        field: field.to_owned(),
    };
    let bad = |value: String| RecordError::Version {
        field: field.to_owned(),
        value: value.chars().take(64).collect(),
    };
    let text = match rec.field(field) {
        None | Some(FieldRef::Json(serde_json::Value::Null)) => return Err(missing()),
        Some(FieldRef::Json(serde_json::Value::Number(n))) => {
            return n.as_i64().ok_or_else(|| bad(n.to_string()));
        }
        Some(FieldRef::Text(t)) => t.trim(),
        Some(FieldRef::Json(serde_json::Value::String(t))) => t.trim(),
        Some(FieldRef::Json(other)) => return Err(bad(other.to_string())),
    };
    if text.is_empty() {
        return Err(missing());
    }
    text.parse().map_err(|_| bad(text.to_owned()))
}

impl Mapping {
    /// The keys of what a delete record names: the relationships whose two end keys it
    /// carries when there are any (their end nodes stay), else the nodes whose key fields it
    /// carries. A key field present but of the wrong type is an error.
    fn map_delete<R: Record + ?Sized>(&self, rec: &R) -> Result<MappedRecord, RecordError> {
        let mut out = MappedRecord {
            op: Op::Delete,
            ..MappedRecord::default()
        };
        'nodes: for (mi, n) in self.nodes.iter().enumerate() {
            let mut key = Vec::with_capacity(n.key.len());
            for p in n.key_properties() {
                let Some(f) = rec.field(&p.field) else {
                    continue 'nodes;
                };
                match value::convert(&p.ty, f).map_err(|source| RecordError::Value {
                    field: p.field.clone(),
                    target: n.label.as_str().to_owned(),
                    source,
                })? {
                    Some(v) => key.push(v),
                    None => continue 'nodes,
                }
            }
            out.nodes.push(NodeRow {
                mapping: mi,
                key,
                props: Vec::new(),
            });
        }
        for (mi, r) in self.relationships.iter().enumerate() {
            // A missing or empty end key names nothing to delete; a wrong type is an error.
            let ends = end_values(rec, &r.start, &r.rel_type)
                .and_then(|s| Ok((s, end_values(rec, &r.end, &r.rel_type)?)));
            let (start, end) = match ends {
                Ok(ends) => ends,
                Err(RecordError::EmptyKey { .. }) => continue,
                Err(e) => return Err(e),
            };
            out.rels.push(RelRow {
                mapping: mi,
                start,
                end,
                props: Vec::new(),
            });
        }
        if !out.rels.is_empty() {
            // The most specific thing named: `{id, friend_id}` removes the relationship, not
            // the person `id` it starts at.
            out.nodes.clear();
        } else if out.nodes.is_empty() {
            return Err(RecordError::NothingToDelete);
        }
        Ok(out)
    }

    /// Maps one record to its nodes and relationships (their keys only, for a delete record:
    /// see [`Op`]), with its version when the mapping is versioned.
    pub fn map_record<R: Record + ?Sized>(&self, rec: &R) -> Result<MappedRecord, RecordError> {
        let op = match &self.input.operation_field {
            Some(field) => operation(rec, field)?,
            None => Op::Upsert,
        };
        let version = match &self.input.version_field {
            Some(field) => Some(version(rec, field)?),
            None => None,
        };
        let mut out = match op {
            Op::Delete => self.map_delete(rec)?,
            Op::Upsert => self.map_upsert(rec)?,
        };
        out.version = version;
        Ok(out)
    }

    /// The nodes and relationships of an upsert record.
    fn map_upsert<R: Record + ?Sized>(&self, rec: &R) -> Result<MappedRecord, RecordError> {
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
