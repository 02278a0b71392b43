//! Dead letters: records that could not be read, decoded, mapped or written, with enough to
//! find and fix them.
//!
//! A dead letter names its record's exact byte range in the input: `offset` and `len`
//! (bytes `offset .. offset + len`, line terminator excluded; offsets of gzip inputs are in
//! the decompressed data). `raw` holds the record itself up to `dead_letter_raw_bytes`
//! (default 4 KiB) and says whether it was cut (`raw_truncated`): a longer record is found
//! whole in the input by its range, e.g. `tail -c +$((offset + 1)) FILE | head -c LEN`.
//! The copy stays small so dead letters cost little memory and disk however large records
//! are (records up to `max_record_bytes`, 1 MiB by default, are framed and can be dead-lettered).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The stage at which a record failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Framing (e.g. the record exceeds the maximum size).
    Read,
    /// Decoding (CSV/JSON syntax, UTF-8).
    Decode,
    /// Mapping to an item.
    Map,
    /// The sink rejected it as bad data.
    Sink,
}

/// One dead letter, as written to the JSON Lines file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Input name.
    pub source: String,
    /// 1-based line of the record's start.
    pub line: u64,
    /// Byte offset of the record's start.
    pub offset: u64,
    /// Bytes of the record in the input, its line terminator excluded: the record is exactly
    /// bytes `offset .. offset + len` (0 in dead letters written before this field existed).
    #[serde(default)]
    pub len: u64,
    /// Where it failed.
    pub stage: Stage,
    /// Why.
    pub error: String,
    /// The raw record, at most `dead_letter_raw_bytes` of it, lossily decoded as UTF-8.
    pub raw: String,
    /// Whether `raw` was cut short (it holds fewer than `len` bytes).
    pub raw_truncated: bool,
}

impl DeadLetter {
    /// `raw` is what is at hand of the record (all of it, or a prefix of an oversized one)
    /// and `len` its whole length in the input.
    pub(crate) fn new(
        source: &str,
        pos: crate::Position,
        stage: Stage,
        error: String,
        raw: &[u8],
        max_raw: usize,
        len: u64,
    ) -> Self {
        let cut = &raw[..raw.len().min(max_raw)];
        Self {
            source: source.to_owned(),
            line: pos.line,
            offset: pos.offset,
            len,
            stage,
            error,
            raw: String::from_utf8_lossy(cut).into_owned(),
            raw_truncated: (cut.len() as u64) < len,
        }
    }
}

/// Where dead letters go. A failed write is fatal to the run (the record would be lost).
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Records one dead letter.
    fn write(&self, letter: &DeadLetter) -> io::Result<()>;
    /// Makes what was written durable enough to move the checkpoint past it.
    fn flush(&self) -> io::Result<()>;
}

/// Dead letters appended to a JSON Lines file, one object per line.
#[derive(Debug)]
pub struct JsonlDeadLetters {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
    /// Bytes this sink may append; `u64::MAX` for no cap.
    max_bytes: u64,
    written: std::sync::atomic::AtomicU64,
}

impl JsonlDeadLetters {
    /// Opens (creating or appending to) the file.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_owned();
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            out: Mutex::new(BufWriter::with_capacity(8 * 1024, f)),
            max_bytes: u64::MAX,
            written: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Caps what this sink appends at `max` bytes: a letter that would go past it is not
    /// written and fails (which stops the run, its checkpoint before the record), so bad input
    /// cannot fill the disk.
    pub fn with_max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl DeadLetterSink for JsonlDeadLetters {
    fn write(&self, letter: &DeadLetter) -> io::Result<()> {
        let mut line = serde_json::to_vec(letter).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let written = self.written.load(std::sync::atomic::Ordering::Relaxed);
        if written.saturating_add(line.len() as u64) > self.max_bytes {
            return Err(io::Error::other(format!(
                "the dead-letter file {} reached its cap of {} bytes; the run stops so that bad input cannot fill the disk",
                self.path.display(),
                self.max_bytes
            )));
        }
        out.write_all(&line)?;
        self.written
            .fetch_add(line.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Flushes the buffer and syncs the file's data, so a checkpoint written after this
    /// never points past a dead letter that a power loss could drop.
    fn flush(&self) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.flush()?;
        out.get_ref().sync_data()
    }
}

/// Dead letters kept in memory, up to a capacity (tests, previews). Writing past the capacity
/// fails, which stops the run like an unwritable file would.
#[derive(Debug)]
pub struct MemoryDeadLetters {
    cap: usize,
    letters: Mutex<Vec<DeadLetter>>,
}

impl MemoryDeadLetters {
    /// Keeps at most `cap` letters.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            letters: Mutex::new(Vec::new()),
        }
    }

    /// The letters so far.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    fn write(&self, letter: &DeadLetter) -> io::Result<()> {
        let mut v = self.letters.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= self.cap {
            return Err(io::Error::other(format!(
                "in-memory dead-letter store full ({} letters)",
                self.cap
            )));
        }
        v.push(letter.clone());
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Position;

    #[test]
    fn jsonl_file_gets_one_object_per_line_with_bounded_raw() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dl.jsonl");
        let dl = JsonlDeadLetters::open(&p).unwrap();
        let pos = Position {
            file: 0,
            line: 7,
            offset: 99,
        };
        let raw = vec![b'x'; 100];
        dl.write(&DeadLetter::new(
            "in.csv",
            pos,
            Stage::Decode,
            "bad".into(),
            &raw,
            10,
            100,
        ))
        .unwrap();
        dl.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let back: DeadLetter = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(back.line, 7);
        assert_eq!(back.offset, 99);
        assert_eq!(back.raw.len(), 10);
        assert_eq!(back.len, 100);
        assert!(back.raw_truncated);
        assert_eq!(back.stage, Stage::Decode);
    }

    #[test]
    fn memory_store_is_bounded() {
        let m = MemoryDeadLetters::new(1);
        let l = DeadLetter::new("x", Position::default(), Stage::Map, "e".into(), b"r", 8, 1);
        m.write(&l).unwrap();
        assert!(m.write(&l).is_err());
        assert_eq!(m.letters().len(), 1);
    }
}
