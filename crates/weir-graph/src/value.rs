//! Typed property values and their conversion from record fields.

use std::fmt::{self, Write as _};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use neo4rs::{BoltList, BoltType};

/// Longest text accepted for one field value before it is refused, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// A property type in a mapping file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float.
    Float,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, any case).
    Bool,
    /// Calendar date, `YYYY-MM-DD`.
    Date,
    /// Date and time with offset (RFC 3339); without an offset it is taken as UTC.
    DateTime,
}

impl ScalarType {
    /// Parses a type name as written in a mapping file.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Self::String,
            "int" => Self::Int,
            "float" => Self::Float,
            "bool" => Self::Bool,
            "date" => Self::Date,
            "datetime" => Self::DateTime,
            _ => return None,
        })
    }

    /// The name as written in a mapping file.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::Date => "date",
            Self::DateTime => "datetime",
        }
    }
}

/// The type of a mapped property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropType {
    /// A single value.
    Scalar(ScalarType),
    /// A list of values; in text fields the items are split on `separator`.
    List {
        /// Type of each item.
        item: ScalarType,
        /// Item separator in text fields.
        separator: String,
    },
}

impl fmt::Display for PropType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scalar(t) => f.write_str(t.name()),
            Self::List { item, .. } => write!(f, "list of {}", item.name()),
        }
    }
}

/// A typed value ready to be sent as a Bolt parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    String(String),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// Date.
    Date(NaiveDate),
    /// Date and time with offset.
    DateTime(DateTime<FixedOffset>),
    /// List.
    List(Vec<Value>),
}

impl Value {
    /// The value as a Bolt parameter.
    pub fn to_bolt(&self) -> BoltType {
        match self {
            Self::String(s) => BoltType::from(s.as_str()),
            Self::Int(i) => BoltType::from(*i),
            Self::Float(x) => BoltType::from(*x),
            Self::Bool(b) => BoltType::from(*b),
            Self::Date(d) => BoltType::from(*d),
            Self::DateTime(d) => BoltType::from(*d),
            Self::List(items) => {
                let mut l = BoltList::with_capacity(items.len());
                for v in items {
                    l.push(v.to_bolt());
                }
                BoltType::List(l)
            }
        }
    }

    /// The value as JSON (dates as ISO 8601 text), for change events.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::String(s) => serde_json::Value::String(s.clone()),
            Self::Int(i) => serde_json::Value::from(*i),
            Self::Float(x) => serde_json::Number::from_f64(*x)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Self::Bool(b) => serde_json::Value::Bool(*b),
            Self::Date(d) => serde_json::Value::String(d.to_string()),
            Self::DateTime(d) => serde_json::Value::String(d.to_rfc3339()),
            Self::List(items) => {
                serde_json::Value::Array(items.iter().map(Self::to_json).collect())
            }
        }
    }

    /// Appends the canonical text form used in change-event keys.
    pub fn write_canonical(&self, out: &mut String) {
        match self {
            Self::String(s) => out.push_str(s),
            Self::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Self::Float(x) => {
                let _ = write!(out, "{x}");
            }
            Self::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            Self::Date(d) => {
                let _ = write!(out, "{d}");
            }
            Self::DateTime(d) => out.push_str(&d.to_rfc3339()),
            Self::List(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(';');
                    }
                    v.write_canonical(out);
                }
                out.push(']');
            }
        }
    }
}

/// A field as it comes from a record: text (CSV) or JSON (JSON Lines).
#[derive(Clone, Copy, Debug)]
pub enum FieldRef<'a> {
    /// A text field.
    Text(&'a str),
    /// A JSON value.
    Json(&'a serde_json::Value),
}

/// Why a field could not be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The text does not parse as the type.
    #[error("{value:?} is not a valid {ty}")]
    Parse {
        /// The expected type.
        ty: &'static str,
        /// The offending text (cut to 64 characters).
        value: String,
    },
    /// The value is longer than [`MAX_VALUE_BYTES`].
    #[error("value is {0} bytes long; at most {MAX_VALUE_BYTES} allowed")]
    TooLong(usize),
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_err(ty: ScalarType, s: &str) -> ValueError {
    ValueError::Parse {
        ty: ty.name(),
        value: shorten(s),
    }
}

/// Parses text as a scalar of type `ty`. Surrounding whitespace is ignored except for strings.
pub fn parse_scalar(ty: ScalarType, s: &str) -> Result<Value, ValueError> {
    if s.len() > MAX_VALUE_BYTES {
        return Err(ValueError::TooLong(s.len()));
    }
    let t = s.trim();
    Ok(match ty {
        ScalarType::String => Value::String(s.to_owned()),
        ScalarType::Int => Value::Int(t.parse().map_err(|_| parse_err(ty, s))?),
        ScalarType::Float => {
            let x: f64 = t.parse().map_err(|_| parse_err(ty, s))?;
            if !x.is_finite() {
                return Err(parse_err(ty, s));
            }
            Value::Float(x)
        }
        ScalarType::Bool => Value::Bool(match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" | "t" => true,
            "false" | "0" | "no" | "n" | "f" => false,
            _ => return Err(parse_err(ty, s)),
        }),
        ScalarType::Date => {
            Value::Date(NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| parse_err(ty, s))?)
        }
        ScalarType::DateTime => Value::DateTime(match DateTime::parse_from_rfc3339(t) {
            Ok(d) => d,
            Err(_) => {
                let naive = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
                    .map_err(|_| parse_err(ty, s))?;
                naive.and_utc().fixed_offset()
            }
        }),
    })
}

fn json_scalar(ty: ScalarType, v: &serde_json::Value) -> Result<Option<Value>, ValueError> {
    use serde_json::Value as J;
    Ok(match (ty, v) {
        (_, J::Null) => None,
        (ScalarType::String, J::String(s)) => Some(parse_scalar(ty, s)?),
        (ScalarType::String, J::Number(n)) => Some(Value::String(n.to_string())),
        (ScalarType::String, J::Bool(b)) => Some(Value::String(b.to_string())),
        (ScalarType::Int, J::Number(n)) => Some(Value::Int(
            n.as_i64().ok_or_else(|| parse_err(ty, &n.to_string()))?,
        )),
        (ScalarType::Float, J::Number(n)) => Some(Value::Float(
            n.as_f64().ok_or_else(|| parse_err(ty, &n.to_string()))?,
        )),
        (ScalarType::Bool, J::Bool(b)) => Some(Value::Bool(*b)),
        (_, J::String(s)) if s.trim().is_empty() => None,
        (_, J::String(s)) => Some(parse_scalar(ty, s)?),
        (_, other) => return Err(parse_err(ty, &other.to_string())),
    })
}

/// Converts a field to a value of type `ty`. An empty text field, a JSON `null` or an empty
/// list gives `Ok(None)` (the caller applies the default or reports a missing key).
pub fn convert(ty: &PropType, field: FieldRef<'_>) -> Result<Option<Value>, ValueError> {
    match (ty, field) {
        (PropType::Scalar(_), FieldRef::Text("")) => Ok(None),
        (PropType::Scalar(t), FieldRef::Text(s)) => parse_scalar(*t, s).map(Some),
        (PropType::Scalar(t), FieldRef::Json(v)) => json_scalar(*t, v),
        (PropType::List { item, separator }, FieldRef::Text(s)) => {
            if s.len() > MAX_VALUE_BYTES {
                return Err(ValueError::TooLong(s.len()));
            }
            if s.trim().is_empty() {
                return Ok(None);
            }
            let items = s
                .split(separator.as_str())
                .map(|part| parse_scalar(*item, part))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(Value::List(items)))
        }
        (PropType::List { item, .. }, FieldRef::Json(serde_json::Value::Array(a))) => {
            if a.is_empty() {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(a.len());
            for v in a {
                match json_scalar(*item, v)? {
                    Some(x) => out.push(x),
                    None => return Err(parse_err(*item, "null")),
                }
            }
            Ok(Some(Value::List(out)))
        }
        (PropType::List { .. }, FieldRef::Json(serde_json::Value::Null)) => Ok(None),
        (PropType::List { .. }, FieldRef::Json(serde_json::Value::String(s))) => {
            convert(ty, FieldRef::Text(s))
        }
        (PropType::List { item, .. }, FieldRef::Json(other)) => {
            Err(parse_err(*item, &other.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ty: ScalarType, s: &str) -> Result<Option<Value>, ValueError> {
        convert(&PropType::Scalar(ty), FieldRef::Text(s))
    }

    #[test]
    fn parses_each_scalar_type_from_text() {
        assert_eq!(text(ScalarType::Int, " 42 ").unwrap(), Some(Value::Int(42)));
        assert_eq!(
            text(ScalarType::Float, "2.5").unwrap(),
            Some(Value::Float(2.5))
        );
        assert_eq!(
            text(ScalarType::Bool, "Yes").unwrap(),
            Some(Value::Bool(true))
        );
        assert_eq!(
            text(ScalarType::Date, "2020-02-29").unwrap(),
            Some(Value::Date(NaiveDate::from_ymd_opt(2020, 2, 29).unwrap()))
        );
        let dt = text(ScalarType::DateTime, "2024-01-02T03:04:05+02:00").unwrap();
        assert_eq!(
            dt.unwrap().to_json(),
            serde_json::json!("2024-01-02T03:04:05+02:00")
        );
        let naive = text(ScalarType::DateTime, "2024-01-02 03:04:05").unwrap();
        assert_eq!(
            naive.unwrap().to_json(),
            serde_json::json!("2024-01-02T03:04:05+00:00")
        );
        assert_eq!(text(ScalarType::String, "").unwrap(), None);
    }

    #[test]
    fn rejects_values_that_do_not_parse() {
        for (t, s) in [
            (ScalarType::Int, "4x"),
            (ScalarType::Int, "99999999999999999999"),
            (ScalarType::Float, "NaN"),
            (ScalarType::Bool, "maybe"),
            (ScalarType::Date, "2021-02-30"),
            (ScalarType::DateTime, "yesterday"),
        ] {
            assert!(
                matches!(text(t, s), Err(ValueError::Parse { .. })),
                "{s} as {t:?}"
            );
        }
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(
            text(ScalarType::String, &big),
            Err(ValueError::TooLong(MAX_VALUE_BYTES + 1))
        );
    }

    #[test]
    fn lists_from_text_and_json() {
        let ty = PropType::List {
            item: ScalarType::Int,
            separator: ";".into(),
        };
        assert_eq!(
            convert(&ty, FieldRef::Text("1;2;3")).unwrap(),
            Some(Value::List(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Int(3)
            ]))
        );
        let j = serde_json::json!([4, 5]);
        assert_eq!(
            convert(&ty, FieldRef::Json(&j)).unwrap(),
            Some(Value::List(vec![Value::Int(4), Value::Int(5)]))
        );
        assert!(convert(&ty, FieldRef::Text("1;x")).is_err());
        let bad = serde_json::json!({"a": 1});
        assert!(convert(&ty, FieldRef::Json(&bad)).is_err());
    }

    #[test]
    fn json_scalars() {
        let n = serde_json::json!(7);
        assert_eq!(
            convert(&PropType::Scalar(ScalarType::String), FieldRef::Json(&n)).unwrap(),
            Some(Value::String("7".into()))
        );
        let f = serde_json::json!(7.5);
        assert!(convert(&PropType::Scalar(ScalarType::Int), FieldRef::Json(&f)).is_err());
        let null = serde_json::Value::Null;
        assert_eq!(
            convert(&PropType::Scalar(ScalarType::Int), FieldRef::Json(&null)).unwrap(),
            None
        );
    }
}
