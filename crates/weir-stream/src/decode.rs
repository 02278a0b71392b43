//! Decoders: CSV (header row, delimiter, RFC 4180 quoting, strict) and JSON Lines.
//!
//! Decoding reuses its buffers: a CSV row without quotes is sliced in place, a quoted one is
//! unescaped into a scratch buffer that lives across records. The mapper sees a borrowed
//! [`DecodedRecord`] and builds its item from it.

use std::sync::Arc;

use crate::Position;

/// The input format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma- (or other-) separated values.
    Csv {
        /// Field separator byte. Usually `b','`.
        delimiter: u8,
        /// Whether the first record of every input names the columns.
        has_header: bool,
    },
    /// One JSON value per line.
    JsonLines,
}

impl Format {
    /// CSV with a header row and `,` as separator.
    pub fn csv() -> Self {
        Self::Csv {
            delimiter: b',',
            has_header: true,
        }
    }

    /// Whether records may span lines inside `"` quotes (framing must track quotes).
    pub(crate) fn quoted_newlines(&self) -> bool {
        matches!(self, Self::Csv { .. })
    }

    /// Whether the first record of each input is a header.
    pub(crate) fn has_header(&self) -> bool {
        matches!(
            self,
            Self::Csv {
                has_header: true,
                ..
            }
        )
    }
}

/// Why a record could not be decoded. Becomes a dead letter naming the record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not UTF-8.
    #[error("invalid UTF-8 at byte {valid_up_to} of the record")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A `"` opens a field that never closes, or a closing `"` is followed by something other
    /// than a separator.
    #[error("bad quoting: {0}")]
    BadQuoting(String),
    /// The row has another number of fields than the header.
    #[error("expected {expected} fields, found {found}")]
    WrongFieldCount {
        /// Fields in the header.
        expected: usize,
        /// Fields in the row.
        found: usize,
    },
    /// Not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// One CSV row, borrowed from the decoder's buffers.
#[derive(Clone, Copy, Debug)]
pub struct CsvRow<'a> {
    headers: &'a [Arc<str>],
    text: &'a str,
    ends: &'a [usize],
    gap: usize,
}

impl<'a> CsvRow<'a> {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the row has no fields.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i` (0-based).
    pub fn field(&self, i: usize) -> Option<&'a str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 {
            0
        } else {
            self.ends[i - 1] + self.gap
        };
        self.text.get(start..end)
    }

    /// The field under column `name` (needs a header row).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        let i = self.headers.iter().position(|h| &**h == name)?;
        self.field(i)
    }

    /// The column names (empty without a header row).
    pub fn headers(&self) -> &'a [Arc<str>] {
        self.headers
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).filter_map(|i| self.field(i))
    }
}

/// A decoded value.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A CSV row.
    Csv(CsvRow<'a>),
    /// A JSON Lines value.
    Json(serde_json::Value),
}

/// A decoded record with its position and raw bytes, as the mapper sees it.
#[derive(Debug)]
pub struct DecodedRecord<'a> {
    /// Where it came from.
    pub position: Position,
    /// The raw bytes, terminator stripped.
    pub raw: &'a [u8],
    /// The decoded value.
    pub value: Decoded<'a>,
}

/// A reusable decoder for one format.
#[derive(Debug)]
pub struct Decoder {
    format: Format,
    headers: Vec<Arc<str>>,
    scratch: Vec<u8>,
    ends: Vec<usize>,
}

impl Decoder {
    /// A decoder for `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            headers: Vec::new(),
            scratch: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// The current column names.
    pub fn headers(&self) -> &[Arc<str>] {
        &self.headers
    }

    /// Reads a header row: it names the columns of the records that follow. A UTF-8
    /// byte-order mark before it is ignored, and names are trimmed.
    pub fn set_header(&mut self, raw: &[u8]) -> Result<(), DecodeError> {
        let Format::Csv { delimiter, .. } = self.format else {
            return Ok(());
        };
        let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        let (text, gap) = split_csv(raw, delimiter, &mut self.scratch, &mut self.ends)?;
        let row = CsvRow {
            headers: &[],
            text,
            ends: &self.ends,
            gap,
        };
        self.headers = row.iter().map(|h| Arc::from(h.trim())).collect();
        Ok(())
    }

    /// Decodes one record.
    pub fn decode<'a>(
        &'a mut self,
        position: Position,
        raw: &'a [u8],
    ) -> Result<DecodedRecord<'a>, DecodeError> {
        let value = match self.format {
            Format::Csv { delimiter, .. } => {
                let (text, gap) = split_csv(raw, delimiter, &mut self.scratch, &mut self.ends)?;
                if !self.headers.is_empty() && self.ends.len() != self.headers.len() {
                    return Err(DecodeError::WrongFieldCount {
                        expected: self.headers.len(),
                        found: self.ends.len(),
                    });
                }
                Decoded::Csv(CsvRow {
                    headers: &self.headers,
                    text,
                    ends: &self.ends,
                    gap,
                })
            }
            Format::JsonLines => Decoded::Json(
                serde_json::from_slice(raw).map_err(|e| DecodeError::Json(e.to_string()))?,
            ),
        };
        Ok(DecodedRecord {
            position,
            raw,
            value,
        })
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| DecodeError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

/// Splits a CSV record into fields; returns the text the field `ends` index into (the raw
/// record itself when it has no quotes, else the unescaped copy in `scratch`) and the gap
/// between a field's end and the next one's start (1 in the raw text, 0 in the copy).
fn split_csv<'a>(
    raw: &'a [u8],
    delim: u8,
    scratch: &'a mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Result<(&'a str, usize), DecodeError> {
    ends.clear();
    if memchr::memchr(b'"', raw).is_none() {
        let text = utf8(raw)?;
        for i in memchr::memchr_iter(delim, raw) {
            ends.push(i);
        }
        // Fields are separated by one byte in the raw text: field i is [ends[i-1] + 1, ends[i]).
        ends.push(raw.len());
        return Ok((text, 1));
    }
    scratch.clear();
    let mut i = 0;
    let n = raw.len();
    loop {
        // Start of a field.
        if i < n && raw[i] == b'"' {
            i += 1;
            loop {
                let Some(q) = memchr::memchr(b'"', &raw[i..]) else {
                    return Err(DecodeError::BadQuoting(format!(
                        "unterminated quoted field {}",
                        ends.len() + 1
                    )));
                };
                scratch.extend_from_slice(&raw[i..i + q]);
                i += q + 1;
                if i < n && raw[i] == b'"' {
                    scratch.push(b'"');
                    i += 1;
                } else {
                    break;
                }
            }
            if i < n && raw[i] != delim {
                return Err(DecodeError::BadQuoting(format!(
                    "text after the closing quote of field {}",
                    ends.len() + 1
                )));
            }
        } else {
            let end = memchr::memchr(delim, &raw[i..]).map_or(n, |p| i + p);
            if memchr::memchr(b'"', &raw[i..end]).is_some() {
                return Err(DecodeError::BadQuoting(format!(
                    "quote inside unquoted field {}",
                    ends.len() + 1
                )));
            }
            scratch.extend_from_slice(&raw[i..end]);
            i = end;
        }
        ends.push(scratch.len());
        if i >= n {
            break;
        }
        i += 1; // the separator
    }
    Ok((utf8(scratch)?, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(dec: &mut Decoder, raw: &[u8]) -> Result<Vec<String>, DecodeError> {
        let rec = dec.decode(Position::default(), raw)?;
        match rec.value {
            Decoded::Csv(row) => Ok(row.iter().map(str::to_owned).collect()),
            Decoded::Json(_) => unreachable!(),
        }
    }

    #[test]
    fn csv_plain_and_quoted_fields() {
        let mut d = Decoder::new(Format::Csv {
            delimiter: b',',
            has_header: false,
        });
        assert_eq!(fields(&mut d, b"a,b,,c").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(
            fields(&mut d, b"\"x,y\",\"he said \"\"hi\"\"\",\"\"").unwrap(),
            ["x,y", "he said \"hi\"", ""]
        );
        assert_eq!(
            fields(&mut d, b"\"multi\nline\",z").unwrap(),
            ["multi\nline", "z"]
        );
        assert_eq!(fields(&mut d, b"").unwrap(), [""]);
    }

    #[test]
    fn csv_headers_and_lookup_by_name() {
        let mut d = Decoder::new(Format::csv());
        d.set_header(b"id, name ,age").unwrap();
        let rec = d.decode(Position::default(), b"7,ann,31").unwrap();
        let Decoded::Csv(row) = rec.value else {
            panic!()
        };
        assert_eq!(row.get("name"), Some("ann"));
        assert_eq!(row.get("age"), Some("31"));
        assert_eq!(row.get("nope"), None);
        assert_eq!(row.headers().len(), 3);
    }

    #[test]
    fn csv_errors_are_classified() {
        let mut d = Decoder::new(Format::csv());
        d.set_header(b"a,b").unwrap();
        assert_eq!(
            fields(&mut d, b"1,2,3").unwrap_err(),
            DecodeError::WrongFieldCount {
                expected: 2,
                found: 3
            }
        );
        assert!(matches!(
            fields(&mut d, b"\"open,2"),
            Err(DecodeError::BadQuoting(_))
        ));
        assert!(matches!(
            fields(&mut d, b"\"x\"y,2"),
            Err(DecodeError::BadQuoting(_))
        ));
        assert!(matches!(
            fields(&mut d, b"x\"y,2"),
            Err(DecodeError::BadQuoting(_))
        ));
        assert!(matches!(
            fields(&mut d, b"\xff\xfe,2"),
            Err(DecodeError::InvalidUtf8 { valid_up_to: 0 })
        ));
        assert!(matches!(
            fields(&mut d, b"\"\xff\",2"),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
    }

    #[test]
    fn csv_other_delimiter() {
        let mut d = Decoder::new(Format::Csv {
            delimiter: b';',
            has_header: false,
        });
        assert_eq!(
            fields(&mut d, b"a;b,c;\"d;e\"").unwrap(),
            ["a", "b,c", "d;e"]
        );
    }

    #[test]
    fn json_lines() {
        let mut d = Decoder::new(Format::JsonLines);
        let rec = d.decode(Position::default(), br#"{"id":1}"#).unwrap();
        let Decoded::Json(v) = rec.value else {
            panic!()
        };
        assert_eq!(v["id"], 1);
        assert!(matches!(
            d.decode(Position::default(), b"{oops"),
            Err(DecodeError::Json(_))
        ));
    }
}
