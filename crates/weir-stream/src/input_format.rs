//! The kind of input (CSV or JSON Lines), without the decoder's options: what a mapping's
//! `[input] format`, the job API's `format` and the CLI's `--format` name, and what a file name
//! says.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decode::Format;

/// File name endings (lower case, before an optional `.gz`) that mean JSON Lines; every other
/// name is CSV.
pub const JSON_LINES_EXTENSIONS: [&str; 3] = [".jsonl", ".ndjson", ".json"];

/// CSV or JSON Lines. [`Format`] adds the decoder's options ([`InputFormat::decoder`]).
///
/// Spelled `csv` and `jsonl` ([`Display`](fmt::Display), serde output, CLI values); serde and
/// [`FromStr`] also accept `jsonlines` and `ndjson` for JSON Lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum InputFormat {
    /// CSV with a header row.
    #[serde(rename = "csv")]
    #[cfg_attr(feature = "clap", value(name = "csv"))]
    Csv,
    /// JSON Lines (one JSON object per line).
    #[serde(rename = "jsonl", alias = "jsonlines", alias = "ndjson")]
    #[cfg_attr(feature = "clap", value(name = "jsonl"))]
    JsonLines,
}

/// A format name that is neither CSV nor JSON Lines.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown format `{0}`; use `csv` or `jsonl`")]
pub struct UnknownInputFormat(pub String);

impl InputFormat {
    /// The format a file name implies: JSON Lines when it ends (ignoring case, with or
    /// without a further `.gz`) in one of [`JSON_LINES_EXTENSIONS`], else CSV (also for `-`).
    pub fn from_file_name(path: &Path) -> Self {
        let name = path.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if JSON_LINES_EXTENSIONS.iter().any(|e| name.ends_with(e)) {
            Self::JsonLines
        } else {
            Self::Csv
        }
    }

    /// The decoder format: CSV with a header row and `delimiter` as separator, or JSON Lines
    /// (`delimiter` unused).
    pub fn decoder(self, delimiter: u8) -> Format {
        match self {
            Self::Csv => Format::Csv {
                delimiter,
                has_header: true,
            },
            Self::JsonLines => Format::JsonLines,
        }
    }

    /// The canonical name: `csv` or `jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::JsonLines => "jsonl",
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InputFormat {
    type Err = UnknownInputFormat;

    /// `csv`, or `jsonl` / `jsonlines` / `ndjson` (exact, lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(Self::Csv),
            "jsonl" | "jsonlines" | "ndjson" => Ok(Self::JsonLines),
            other => Err(UnknownInputFormat(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_file_name_reads_the_extension() {
        let of = |p: &str| InputFormat::from_file_name(Path::new(p));
        for p in [
            "a.jsonl",
            "a.ndjson",
            "a.json",
            "dir/a.jsonl.gz",
            "a.ndjson.gz",
            "/x/a.json.gz",
            "A.JSONL",
            "a.NdJson.GZ",
            "a.Json",
        ] {
            assert_eq!(of(p), InputFormat::JsonLines, "{p}");
        }
        for p in [
            "a.csv",
            "a.csv.gz",
            "a.tsv",
            "a",
            "-",
            "",
            "a.gz",
            "a.json.bak",
            "a.jsonl.zip",
            "a.gz.jsonl.csv",
        ] {
            assert_eq!(of(p), InputFormat::Csv, "{p}");
        }
    }

    #[test]
    fn decoder_formats() {
        assert_eq!(
            InputFormat::Csv.decoder(b';'),
            Format::Csv {
                delimiter: b';',
                has_header: true
            }
        );
        assert_eq!(InputFormat::Csv.decoder(b','), Format::csv());
        assert_eq!(InputFormat::JsonLines.decoder(b';'), Format::JsonLines);
    }

    #[test]
    fn spellings() {
        for (s, f) in [
            ("csv", InputFormat::Csv),
            ("jsonl", InputFormat::JsonLines),
            ("jsonlines", InputFormat::JsonLines),
            ("ndjson", InputFormat::JsonLines),
        ] {
            assert_eq!(s.parse::<InputFormat>(), Ok(f), "{s}");
            assert_eq!(
                serde_json::from_str::<InputFormat>(&format!("\"{s}\"")).unwrap(),
                f,
                "{s}"
            );
        }
        for s in [
            "CSV",
            "Jsonl",
            "json",
            "xml",
            "json_lines",
            "json-lines",
            "",
        ] {
            let e = s.parse::<InputFormat>().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("unknown format `{s}`; use `csv` or `jsonl`")
            );
            assert!(serde_json::from_str::<InputFormat>(&format!("\"{s}\"")).is_err());
        }
        for (f, s) in [(InputFormat::Csv, "csv"), (InputFormat::JsonLines, "jsonl")] {
            assert_eq!(f.to_string(), s);
            assert_eq!(f.as_str(), s);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{s}\""));
            assert_eq!(s.parse::<InputFormat>(), Ok(f));
        }
    }
}
