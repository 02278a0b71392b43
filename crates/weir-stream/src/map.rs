//! Mapping decoded records to the sink's items.

use crate::{DecodeError, DecodedRecord, Decoder, StreamError};

/// Why a record could not be mapped. Becomes a dead letter naming the record and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_deref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct MapError {
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl MapError {
    /// An error about `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An error about the whole record.
    pub fn record(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }
}

/// Turns a decoded record into an item for the sink (e.g. a graph row). Runs on the decode
/// task for every record: keep it cheap.
pub trait Mapper: Send + Sync + 'static {
    /// What the sink writes.
    type Item: Send + Sync + 'static;

    /// Maps one record, or says which field is wrong.
    fn map(&self, record: &DecodedRecord<'_>) -> Result<Self::Item, MapError>;

    /// Checks the column names of a CSV header row (trimmed, in order) before any record
    /// under it is mapped. An error stops the run ([`crate::StreamError::Header`]); for inputs
    /// the source reads ahead ([`crate::Source::header_rows`]) that happens before anything
    /// is written. Default: every header is fine.
    fn check_header(&self, _columns: &[&str]) -> Result<(), MapError> {
        Ok(())
    }

    /// Estimated memory the item holds, counted against batch and queue byte limits. The
    /// default (the raw record's length plus the item's inline size) fits items that copy
    /// their fields out of the record; override it when items are much larger.
    fn item_bytes(&self, _item: &Self::Item, raw_len: usize) -> usize {
        raw_len + std::mem::size_of::<crate::Staged<Self::Item>>()
    }
}

impl<F, I> Mapper for F
where
    F: Fn(&DecodedRecord<'_>) -> Result<I, MapError> + Send + Sync + 'static,
    I: Send + Sync + 'static,
{
    type Item = I;

    fn map(&self, record: &DecodedRecord<'_>) -> Result<I, MapError> {
        self(record)
    }
}

/// Reads the header row `raw` of input `input` into `decoder` and has `mapper` check its
/// columns.
pub(crate) fn take_header<M: Mapper>(
    decoder: &mut Decoder,
    mapper: &M,
    input: &str,
    raw: &[u8],
) -> Result<(), StreamError> {
    let err = |reason: String| StreamError::Header {
        path: input.into(),
        reason,
    };
    decoder
        .set_header(raw)
        .map_err(|e: DecodeError| err(e.to_string()))?;
    let columns: Vec<&str> = decoder.headers().iter().map(|h| &**h).collect();
    mapper
        .check_header(&columns)
        .map_err(|e| err(e.to_string()))
}
