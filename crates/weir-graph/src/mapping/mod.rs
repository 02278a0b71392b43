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
//! With `[input] operation_field = "op"`, a record whose `op` is `delete` removes the most
//! specific thing its keys name instead of writing it: the relationships whose two end keys it
//! carries (the end nodes stay) if there are any, else every node whose key fields it carries
//! (`DETACH DELETE`: its relationships go too). A key that matches nothing deletes nothing.
//! `upsert`, a missing or an empty field mean the usual write; any other value is an error
//! naming the field.
//!
//! With `[input] version_field = "v"`, every record carries an integer version in `v` (a JSON
//! integer, or the text of one as CSV gives it); a missing, empty or non-integer value is an
//! error naming the field. The version is stored on every node and relationship the record
//! writes, in the property `[input] version_property` (default `_version`, which no mapped
//! property may also be), and a record older than the version stored there is skipped, for
//! upserts and deletes alike: equal versions apply, so a redelivered record is harmless, and
//! neither redelivery nor several workers can take the graph back to an older state. A
//! relationship's end nodes, merged by key, keep their own version. A delete leaves no
//! tombstone: an older upsert arriving after it creates the entity again.
//!
//! End-point key types come from the node mapping of that label in the same file, or are
//! given inline (`key = { id = { field = "person_id", type = "int" } }`), else string.
//! Every label, type and property name is validated by [`crate::ident`]. Errors name the
//! file, the line and the field.
//!
//! The module's parts: the raw TOML form (`raw`), parsing and validation with line-numbered
//! errors (`parse`), label prefixes (`prefix`), header checks (`header`), mapping records to
//! typed rows (`record`) and canonical keys (`key`).

mod header;
mod key;
mod parse;
mod prefix;
mod raw;
mod record;
#[cfg(test)]
mod tests;

use crate::ident::Ident;
use crate::value::{PropType, Value};

pub use header::HeaderError;
pub use key::canonical_key;
pub use parse::MappingError;
pub use record::{MappedRecord, NodeRow, Op, Record, RecordError, RelRow};
/// Input format named in a mapping file's `[input] format` (`csv`, or `jsonl` / `jsonlines` /
/// `ndjson`).
pub use weir_stream::InputFormat;

/// The mapping format version this crate reads.
pub const MAPPING_VERSION: u32 = 1;

/// The property that stores a record's version when `[input] version_property` is not given.
pub const DEFAULT_VERSION_PROPERTY: &str = "_version";

/// Input hints from the mapping's `[input]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputHints {
    /// The format, when given (otherwise taken from the file name).
    pub format: Option<InputFormat>,
    /// The CSV delimiter, when given (default `,`).
    pub delimiter: Option<u8>,
    /// The record field naming each record's operation (`[input] operation_field`): `upsert`
    /// (also when the field is missing or empty) or `delete`. `None`: every record is an
    /// upsert.
    pub operation_field: Option<String>,
    /// The record field holding each record's integer version (`[input] version_field`).
    /// `None`: records are not versioned and always apply.
    pub version_field: Option<String>,
    /// The property storing the version on nodes and relationships (`[input]
    /// version_property`, default [`DEFAULT_VERSION_PROPERTY`]); `Some` exactly when
    /// `version_field` is. Copied into every [`NodeMapping::version`] and
    /// [`RelMapping::version`].
    pub version_property: Option<Ident>,
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
    /// The property holding the version of the record last written to the node, when the
    /// mapping is versioned ([`InputHints::version_field`]); its statements are guarded by it.
    pub version: Option<Ident>,
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
    /// The property holding the version of the record last written to the relationship,
    /// when the mapping is versioned ([`InputHints::version_field`]).
    pub version: Option<Ident>,
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
