//! Header checks: the fields a mapping reads, and whether a CSV header holds them.

use std::collections::HashSet;

use super::{Mapping, PropertyMapping};

impl Mapping {
    /// The record fields a CSV header must have, sorted: every field the mapping reads,
    /// except those only read by properties with a `default` (which stand in for a missing
    /// column by design). Keys, relationship end keys and the version field are always
    /// required.
    pub fn required_fields(&self) -> Vec<&str> {
        let needed = |p: &'_ PropertyMapping| p.default.is_none();
        let mut out: Vec<&str> = self
            .input
            .version_field
            .as_deref()
            .into_iter()
            .chain(self.nodes.iter().flat_map(|n| {
                n.properties
                    .iter()
                    .filter(|p| needed(p))
                    .map(|p| p.field.as_str())
            }))
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
            .input
            .version_field
            .as_deref()
            .into_iter()
            .chain(
                self.nodes
                    .iter()
                    .flat_map(|n| n.properties.iter().map(|p| p.field.as_str())),
            )
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
