//! Records as they come off a source, and where they came from.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a record starts in its input. `Copy` and small: the input's name lives in the
/// source's name table ([`crate::Source::names`]), indexed by `file`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Index of the input in the source's name table (0 for a single input).
    pub file: u32,
    /// 1-based line number of the record's first line (for message sources: the sequence).
    pub line: u64,
    /// Byte offset of the record's first byte in the (decompressed) input.
    pub offset: u64,
}

/// What a framed piece of input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A data record.
    Data,
    /// The header row of a CSV input (not counted as a record).
    Header,
    /// A record longer than the maximum record size: `data` holds only a bounded prefix, and
    /// `len` is the number of bytes it really had (at least the maximum).
    Oversized {
        /// Bytes in the whole record (as far as they were read before giving up).
        len: u64,
    },
}

/// One framed record: its bytes (without the line terminator), where it starts and where the
/// next record starts.
#[derive(Clone, Debug)]
pub struct RawRecord {
    /// Where it starts.
    pub position: Position,
    /// Where the next record starts (offset after the terminator, line after its last line).
    pub next: Position,
    /// The record's bytes (a cheap slice of the read buffer), terminator stripped.
    pub data: Bytes,
    /// Data, header or oversized.
    pub kind: RecordKind,
}

impl RawRecord {
    /// Input bytes this record spans, terminator included.
    pub fn span_bytes(&self) -> u64 {
        self.next.offset.saturating_sub(self.position.offset)
    }
}

/// The names of a source's inputs (file paths, `-` for stdin), indexed by [`Position::file`].
pub type SourceNames = Arc<[Arc<str>]>;

/// A mapped record waiting to be written: the sink's item plus where it came from.
#[derive(Debug)]
pub struct Staged<I> {
    /// What the mapper produced.
    pub item: I,
    /// Where the record came from.
    pub position: Position,
    pub(crate) raw: Bytes,
    pub(crate) bytes: usize,
}

impl<I> Staged<I> {
    /// The record's raw bytes (for error reports).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The estimated memory this item holds, as counted against the batch byte limit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
