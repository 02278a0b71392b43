//! Sources: framing bytes into records with positions, from readers, files, directories and
//! stdin (gzip detected by its magic bytes and decompressed as a stream).
//!
//! # Framing rules
//!
//! * A record ends at `\n`; a `\r` right before it is dropped, so CRLF files frame like LF
//!   files (a lone `\r` is data). Blank lines are skipped but counted in line numbers.
//! * A UTF-8 byte-order mark (`EF BB BF`, which Excel writes before its CSV) at the very start
//!   of an input, CSV or JSON Lines, is dropped. Offsets still count its three bytes: a
//!   position is always the byte offset in the (decompressed) input.
//! * CSV quoting (RFC 4180): a `"` opens a quoted field only at the start of a field (the
//!   record's first byte, or right after a delimiter); inside a quoted field `""` stands for
//!   a quote and newlines are data; a closing quote must be followed by a delimiter or the
//!   line end.
//! * A `"` in the middle of an unquoted field, or a closing quote followed by something else,
//!   means the quoting went wrong (a stray quote, usually; the decoder rejects such records
//!   too):
//!   * on the record's first line, quotes are ignored to the end of that line, which ends the
//!     record (the decoder dead-letters it);
//!   * once the record spans lines (a newline inside quotes), the record is **broken**.
//!
//!   A record spanning lines is also broken when its quoted field is still open after
//!   `max_record_bytes` or at the end of the input, or when (with a header row) it ends with
//!   another number of fields than the header. Of a broken record only the **first line**
//!   becomes a record (its quote is unterminated, so the decoder dead-letters it as bad
//!   quoting), and framing starts again at the start of the next line, as if the input began
//!   there. A record that spans lines is therefore kept whole only when it is well-formed
//!   RFC 4180 with the header's field count.
//!
//!   So one stray quote costs the one line it is on, when the lines after it are
//!   well-formed. The exception is inherent: when the text from the stray quote to a later
//!   quote happens to be a well-formed record (the later quote must close a field right
//!   before a delimiter or line end, i.e. open a legitimate quoted field whose text starts
//!   with a delimiter or a line break, and the field count must come out right), that text
//!   *is* a valid record and is read as one. Likewise, when the stray quote sits in a record
//!   that legitimately spans lines (a quoted field holding a line break), that record's later
//!   lines are framed on their own once it breaks, and one of them may read as a record. A
//!   record that really is malformed across several lines costs one dead letter for its first
//!   line plus one for each later line that does not frame and decode on its own. Every byte is scanned at most twice, and the buffer
//!   never holds more than one read plus `max_record_bytes`.
//! * A record longer than `max_record_bytes` (on its first line) is cut: a prefix of
//!   `dead_letter_raw_bytes` is kept for its dead letter, the rest is read and dropped up to
//!   the next `\n` (quotes are not tracked there), and framing goes on after it.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::{
    Checkpoint, Format, PipelineConfig, Position, RawRecord, RecordKind, SourceNames, StreamError,
};

/// A source of framed records. Implement it for message streams (the position's `line` is
/// then the message sequence); files, directories, stdin and readers are provided.
pub trait Source: Send + 'static {
    /// The next chunk of records in input order; `None` at the end. Must be cancel-safe:
    /// dropping the future before it completes loses nothing.
    fn next_chunk(
        &mut self,
    ) -> impl Future<Output = Result<Option<Vec<RawRecord>>, StreamError>> + Send;

    /// Input names, indexed by [`Position::file`].
    fn names(&self) -> SourceNames;

    /// Total input bytes when known in advance (for the ETA).
    fn bytes_total(&self) -> Option<u64> {
        None
    }

    /// CSV header rows known before reading starts, as (input index, raw row): the pipeline
    /// checks each one against the mapper ([`crate::Mapper::check_header`]) before it maps or
    /// writes anything. A header row is checked again when it is read, so sources that cannot
    /// look ahead (stdin, message streams) keep the default: none.
    fn header_rows(&self) -> Vec<(u32, Bytes)> {
        Vec::new()
    }
}

/// Framing settings taken from the pipeline config.
#[derive(Clone, Copy, Debug)]
struct FrameLimits {
    read_chunk: usize,
    chunk_records: usize,
    max_record: usize,
    dl_raw: usize,
    /// Most bytes a compressed input may decompress to.
    max_decompressed: Option<u64>,
}

impl From<&PipelineConfig> for FrameLimits {
    fn from(c: &PipelineConfig) -> Self {
        Self {
            read_chunk: c.read_chunk_bytes,
            chunk_records: c.chunk_records,
            max_record: c.max_record_bytes,
            dl_raw: c.dead_letter_raw_bytes,
            max_decompressed: c.max_decompressed_bytes,
        }
    }
}

/// The UTF-8 byte-order mark some tools (Excel) write at the start of a text file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug)]
struct Skip {
    start: Position,
    prefix: Bytes,
    len: u64,
    lines: u64,
    /// The last byte skipped so far was `\r` (not part of the record if `\n` follows).
    last_cr: bool,
}

/// Where the CSV scanner is within the current record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quote {
    /// Outside a quoted field.
    Out,
    /// Inside a quoted field.
    In,
    /// A quoted field was closed by something other than a delimiter or the line end, on the
    /// record's first line: quotes are ignored up to the end of that line.
    Broken,
}

/// What the scanner found.
enum Scan {
    /// The record ends at this `\n` (an index into the buffer).
    Line(usize),
    /// The record spans lines and cannot be a well-formed record: cut it after its first line.
    Resync,
    /// More input is needed.
    More,
}

/// Cuts a byte stream into records: newline-terminated (`\r\n` too), quote-aware for CSV so a
/// quoted field may hold newlines, never buffering more than one read plus the maximum record
/// size. Blank lines are skipped (but counted). See the module documentation for the rules.
#[derive(Debug)]
struct Framer {
    lim: FrameLimits,
    quoted: bool,
    delim: u8,
    buf: BytesMut,
    file: u32,
    offset: u64,
    line: u64,
    /// Next byte of `buf` to scan.
    scan: usize,
    /// Where the record being scanned starts in `buf`.
    rec_start: usize,
    quote: Quote,
    /// Newlines inside quotes in the record being scanned.
    nl_in_rec: u64,
    /// The first of them (an index into `buf`): where its first line ends.
    first_nl: Option<usize>,
    header_pending: bool,
    /// Fields in the header row, once framed: a record spanning lines must have as many.
    header_fields: Option<usize>,
    /// At the start of the input: a byte-order mark there is dropped.
    bom_pending: bool,
    skip: Option<Skip>,
    skip_until: u64,
    eof: bool,
}

struct Span {
    start: usize,
    data_end: usize,
    next: usize,
    pos: Position,
    next_line: u64,
}

/// Fields in a CSV record, with the framing rules (a `"` opens a quoted field only at a field
/// start; `""` inside one is a quote).
fn count_fields(data: &[u8], delim: u8) -> usize {
    let mut fields = 1;
    let mut in_quote = false;
    let mut field_start = true;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if in_quote {
            if b == b'"' {
                if data.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    in_quote = false;
                }
            }
            field_start = false;
        } else if b == delim {
            fields += 1;
            field_start = true;
        } else {
            in_quote = b == b'"' && field_start;
            field_start = false;
        }
        i += 1;
    }
    fields
}

impl Framer {
    fn new(lim: FrameLimits, format: &Format, file: u32) -> Self {
        Self {
            lim,
            quoted: format.quoted_newlines(),
            delim: match format {
                Format::Csv { delimiter, .. } => *delimiter,
                Format::JsonLines => b',',
            },
            buf: BytesMut::new(),
            file,
            offset: 0,
            line: 1,
            scan: 0,
            rec_start: 0,
            quote: Quote::Out,
            nl_in_rec: 0,
            first_nl: None,
            header_pending: format.has_header(),
            header_fields: None,
            bom_pending: true,
            skip: None,
            skip_until: 0,
            eof: false,
        }
    }

    /// Continues at a known position (after a seek): no header expected, no byte-order mark.
    fn start_at(&mut self, pos: Position) {
        self.offset = pos.offset;
        self.line = pos.line;
        self.header_pending = false;
        self.bom_pending = pos.offset == 0;
    }

    /// Drops a byte-order mark at the start of the input. `false` while too few bytes were
    /// read to tell.
    fn strip_bom(&mut self) -> bool {
        let n = self.buf.len().min(BOM.len());
        if self.buf[..n] != BOM[..n] {
            self.bom_pending = false;
            return true;
        }
        if n < BOM.len() {
            if self.eof {
                self.bom_pending = false;
            }
            return self.eof;
        }
        let _ = self.buf.split_to(BOM.len());
        self.offset += BOM.len() as u64;
        self.bom_pending = false;
        true
    }

    fn find_terminator(&mut self) -> Scan {
        let len = self.buf.len();
        if !self.quoted {
            let found = memchr::memchr(b'\n', &self.buf[self.scan..]).map(|i| self.scan + i);
            self.scan = found.map_or(len, |t| t + 1);
            return found.map_or(Scan::More, Scan::Line);
        }
        loop {
            let rest = &self.buf[self.scan..];
            let hit = match self.quote {
                Quote::Broken => memchr::memchr(b'\n', rest),
                Quote::Out | Quote::In => memchr::memchr2(b'\n', b'"', rest),
            };
            let Some(i) = hit else {
                self.scan = len;
                return Scan::More;
            };
            let j = self.scan + i;
            self.scan = j + 1;
            match (self.quote, self.buf[j]) {
                (Quote::In, b'\n') => {
                    self.nl_in_rec += 1;
                    self.first_nl.get_or_insert(j);
                }
                (_, b'\n') => return Scan::Line(j),
                (Quote::Out, _) => {
                    // A quote opens a quoted field only at a field start; elsewhere the
                    // quoting went wrong (the decoder rejects such a record).
                    if j == self.rec_start || self.buf[j - 1] == self.delim {
                        self.quote = Quote::In;
                    } else if self.first_nl.is_some() {
                        return Scan::Resync;
                    } else {
                        self.quote = Quote::Broken;
                    }
                }
                (_, _) => {
                    // A quote inside a quoted field: escaped (`""`) or closing. What follows a
                    // closing quote must end the field.
                    let at = |k: usize| self.buf.get(k).copied();
                    let ok = match at(j + 1) {
                        Some(b'"') => {
                            self.scan = j + 2;
                            continue;
                        }
                        None if !self.eof => None,
                        None => Some(true),
                        Some(b) if b == self.delim || b == b'\n' => Some(true),
                        Some(b'\r') => match at(j + 2) {
                            None if !self.eof => None,
                            None | Some(b'\n') => Some(true),
                            Some(_) => Some(false),
                        },
                        Some(_) => Some(false),
                    };
                    match ok {
                        None => {
                            // Look at this quote again when more is read.
                            self.scan = j;
                            return Scan::More;
                        }
                        Some(true) => self.quote = Quote::Out,
                        Some(false) if self.first_nl.is_some() => return Scan::Resync,
                        Some(false) => self.quote = Quote::Broken,
                    }
                }
            }
        }
    }

    fn pos(&self, start: usize) -> Position {
        Position {
            file: self.file,
            line: self.line,
            offset: self.offset + start as u64,
        }
    }

    /// Next chunk of records, reading from `r` as needed; `None` at the end of the input.
    fn next_chunk(&mut self, r: &mut dyn Read) -> io::Result<Option<Vec<RawRecord>>> {
        let mut out = Vec::new();
        loop {
            if self.bom_pending && !self.strip_bom() {
                // Too few bytes to tell yet: read more.
            } else if self.skip.is_some() {
                self.continue_skip(&mut out);
            } else {
                self.extract(&mut out);
            }
            if !out.is_empty() && (out.len() >= self.lim.chunk_records || !self.eof) {
                return Ok(Some(out));
            }
            if self.eof {
                self.finish(&mut out);
                return Ok((!out.is_empty()).then_some(out));
            }
            let old = self.buf.len();
            self.buf.reserve(self.lim.read_chunk);
            self.buf.resize(old + self.lim.read_chunk, 0);
            let n = loop {
                match r.read(&mut self.buf[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
    }

    /// The end of a record's data at `t` (a `\n` or the end of the input): a `\r` before it is
    /// dropped.
    fn data_end(&self, start: usize, t: usize) -> usize {
        if t > start && self.buf[t - 1] == b'\r' {
            t - 1
        } else {
            t
        }
    }

    /// Frames the complete records in the buffer (and, at the end of the input, the last one).
    fn extract(&mut self, out: &mut Vec<RawRecord>) {
        let mut spans: Vec<Span> = Vec::new();
        let mut start = 0usize;
        self.rec_start = 0;
        let mut exhausted = false;
        while out.len() + spans.len() < self.lim.chunk_records {
            let len = self.buf.len();
            let end = match self.find_terminator() {
                Scan::Line(t) => Some((t, t + 1)),
                Scan::More if self.quote == Quote::In && self.first_nl.is_some() => {
                    // A quoted field left open across lines up to the size limit or the end.
                    if self.eof || len - start > self.lim.max_record {
                        None
                    } else {
                        exhausted = true;
                        break;
                    }
                }
                Scan::More if self.eof && len > start => Some((len, len)),
                Scan::More => {
                    exhausted = true;
                    break;
                }
                Scan::Resync => None,
            };
            // A record spanning lines must also have the header's number of fields.
            let end = end.filter(|&(t, _)| {
                self.nl_in_rec == 0
                    || self.header_fields.is_none_or(|n| {
                        count_fields(&self.buf[start..self.data_end(start, t)], self.delim) == n
                    })
            });
            let (t, next, next_line) = match end {
                Some((t, next)) => (t, next, self.line + self.nl_in_rec + 1),
                None => {
                    // Broken across lines: its first line is a record of its own (with an
                    // unterminated quote: a decode error), framing restarts on the next line.
                    let t = self.first_nl.expect("only records spanning lines are cut");
                    (t, t + 1, self.line + 1)
                }
            };
            let data_end = self.data_end(start, t);
            if self.header_pending && self.header_fields.is_none() {
                let data = &self.buf[start..data_end];
                if !data.iter().all(|&b| b == b'\r') {
                    self.header_fields = Some(count_fields(data, self.delim));
                }
            }
            spans.push(Span {
                start,
                data_end,
                next,
                pos: self.pos(start),
                next_line,
            });
            self.line = next_line;
            start = next;
            self.scan = start;
            self.rec_start = start;
            self.quote = Quote::Out;
            self.nl_in_rec = 0;
            self.first_nl = None;
        }
        let partial = self.buf.len() - start;
        let oversized_partial = exhausted && partial > self.lim.max_record + 1;
        let frozen = self.buf.split_to(start).freeze();
        self.offset += start as u64;
        self.scan -= start;
        self.rec_start = 0;
        self.first_nl = self.first_nl.map(|i| i - start);
        for s in spans {
            let next = Position {
                file: self.file,
                line: s.next_line,
                offset: s.pos.offset + (s.next - s.start) as u64,
            };
            self.emit(out, s.pos, next, frozen.slice(s.start..s.data_end));
        }
        if oversized_partial {
            let cut = self.buf.len().min(self.lim.dl_raw);
            let prefix = Bytes::copy_from_slice(&self.buf[..cut]);
            self.skip = Some(Skip {
                start: self.pos(0),
                prefix,
                len: self.buf.len() as u64,
                lines: self.nl_in_rec,
                last_cr: self.buf.last() == Some(&b'\r'),
            });
            self.offset += self.buf.len() as u64;
            self.buf.clear();
            self.scan = 0;
            self.quote = Quote::Out;
            self.nl_in_rec = 0;
            self.first_nl = None;
            self.continue_skip(out);
        }
    }

    /// Discards the rest of an oversized record up to its line end (quotes are not tracked
    /// there, so a quoted newline in the discarded part resynchronises early; the following
    /// fragments then fail to decode and are dead-lettered too).
    fn continue_skip(&mut self, out: &mut Vec<RawRecord>) {
        let Some(skip) = self.skip.as_mut() else {
            return;
        };
        match memchr::memchr(b'\n', &self.buf) {
            None => {
                skip.len += self.buf.len() as u64;
                if let Some(&b) = self.buf.last() {
                    skip.last_cr = b == b'\r';
                }
                self.offset += self.buf.len() as u64;
                self.buf.clear();
            }
            Some(t) => {
                skip.len += t as u64;
                // A `\r` before the `\n` ends the line; it is not part of the record.
                let cr = if t > 0 {
                    self.buf[t - 1] == b'\r'
                } else {
                    skip.last_cr
                };
                skip.len -= u64::from(cr);
                // The kept prefix may have taken that `\r` in.
                skip.prefix
                    .truncate(skip.len.try_into().unwrap_or(usize::MAX));
                let _ = self.buf.split_to(t + 1);
                self.offset += (t + 1) as u64;
                self.line = skip.start.line + skip.lines + 1;
                self.finish_skip(out);
                self.extract(out);
            }
        }
    }

    fn finish_skip(&mut self, out: &mut Vec<RawRecord>) {
        if let Some(skip) = self.skip.take() {
            out.push(RawRecord {
                position: skip.start,
                next: Position {
                    file: self.file,
                    line: self.line,
                    offset: self.offset,
                },
                data: skip.prefix,
                kind: RecordKind::Oversized { len: skip.len },
            });
            self.header_pending = false;
        }
    }

    /// At end of input: an oversized record still being skipped ends there (the last record
    /// without a terminator is framed by `extract`).
    fn finish(&mut self, out: &mut Vec<RawRecord>) {
        if self.skip.is_some() {
            self.line = self
                .skip
                .as_ref()
                .map_or(self.line, |s| s.start.line + s.lines + 1);
            self.finish_skip(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<RawRecord>, pos: Position, next: Position, data: Bytes) {
        if data.is_empty() || data.iter().all(|&b| b == b'\r') {
            return;
        }
        let kind = if self.header_pending {
            self.header_pending = false;
            RecordKind::Header
        } else if pos.offset < self.skip_until {
            return;
        } else if data.len() > self.lim.max_record {
            let len = data.len() as u64;
            let cut = data.len().min(self.lim.dl_raw);
            out.push(RawRecord {
                position: pos,
                next,
                data: data.slice(..cut),
                kind: RecordKind::Oversized { len },
            });
            return;
        } else {
            RecordKind::Data
        };
        out.push(RawRecord {
            position: pos,
            next,
            data,
            kind,
        });
    }
}

/// Records framed from any blocking reader, on the calling task. Fit for in-memory data and
/// generators; use [`FileSource`] for files and stdin (it reads on its own thread).
pub struct ReaderSource<R> {
    reader: R,
    framer: Framer,
    names: SourceNames,
}

impl<R: Read + Send + 'static> ReaderSource<R> {
    /// A source named `name` reading `reader`, with the format and framing limits of
    /// `config`.
    pub fn new(reader: R, name: &str, config: &PipelineConfig) -> Self {
        Self {
            reader,
            framer: Framer::new(config.into(), &config.format, 0),
            names: Arc::from(vec![Arc::<str>::from(name)]),
        }
    }

    /// Skips records that start before `position` (read and dropped; the header, if any, is
    /// still read). For resuming a reader that cannot seek.
    pub fn resume_from(mut self, position: Position) -> Self {
        self.framer.skip_until = position.offset;
        self
    }
}

impl<R: Read + Send + 'static> Source for ReaderSource<R> {
    async fn next_chunk(&mut self) -> Result<Option<Vec<RawRecord>>, StreamError> {
        self.framer
            .next_chunk(&mut self.reader)
            .map_err(|source| StreamError::Input {
                path: PathBuf::from(&*self.names[0]),
                source,
            })
    }

    fn names(&self) -> SourceNames {
        self.names.clone()
    }
}

/// Files (in the order given), every file of a directory (sorted by name), or stdin (`-`),
/// read on a dedicated thread and handed over through a bounded channel. Gzip inputs are
/// recognised by their magic bytes and decompressed as a stream; positions are offsets in the
/// decompressed data.
pub struct FileSource {
    rx: mpsc::Receiver<Result<Vec<RawRecord>, StreamError>>,
    names: SourceNames,
    bytes_total: Option<u64>,
    header_rows: Vec<(u32, Bytes)>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("names", &self.names)
            .finish()
    }
}

fn input_err(path: &Path, source: io::Error) -> StreamError {
    StreamError::Input {
        path: path.to_owned(),
        source,
    }
}

/// The regular files in `dir`, sorted by name.
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, StreamError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| input_err(dir, e))? {
        let entry = entry.map_err(|e| input_err(dir, e))?;
        let ft = entry.file_type().map_err(|e| input_err(&entry.path(), e))?;
        if ft.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

impl FileSource {
    /// Reads `paths` in order (`-` is stdin); a directory stands for its files, sorted.
    /// With `resume`, inputs before the checkpoint's are skipped and its input continues at the
    /// checkpoint's offset (seeking when it can, else reading and dropping); the checkpoint
    /// must name the same input at the same index. For CSV with a header row, the header of
    /// every input but stdin is read here, ahead ([`Source::header_rows`]; a copy of each
    /// distinct header is kept), so the pipeline can check them all before it writes.
    pub fn open(
        paths: &[PathBuf],
        config: &PipelineConfig,
        resume: Option<&Checkpoint>,
    ) -> Result<Self, StreamError> {
        let format = &config.format;
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                files.extend(list_dir(p)?);
            } else {
                files.push(p.clone());
            }
        }
        let names: SourceNames = files
            .iter()
            .map(|p| Arc::<str>::from(p.to_string_lossy().as_ref()))
            .collect();
        if let Some(cp) = resume {
            let idx = cp.position.file as usize;
            if names.get(idx).map(|n| &**n) != Some(cp.source.as_str()) {
                return Err(StreamError::CheckpointMismatch(format!(
                    "checkpoint names input {} `{}`, inputs are {:?}",
                    idx, cp.source, names
                )));
            }
        }
        let mut total = Some(0u64);
        for f in &files {
            if f.as_os_str() == "-" {
                total = None;
                continue;
            }
            let mut file = File::open(f).map_err(|e| input_err(f, e))?;
            let mut magic = [0u8; 2];
            let gz =
                file.read(&mut magic).map_err(|e| input_err(f, e))? == 2 && magic == [0x1f, 0x8b];
            let len = file.metadata().map_err(|e| input_err(f, e))?.len();
            total = total.filter(|_| !gz).map(|t| t + len);
        }
        let lim = FrameLimits::from(config);
        let header_rows = if format.has_header() {
            let first = resume.map_or(0, |cp| cp.position.file as usize);
            read_header_rows(&files, first, format, lim)?
        } else {
            Vec::new()
        };
        let (tx, rx) = mpsc::channel(config.chunk_queue);
        let format = format.clone();
        let start = resume.map(|cp| cp.position);
        let thread_files = files.clone();
        std::thread::Builder::new()
            .name("weir-stream-reader".into())
            .spawn(move || read_files(&thread_files, &format, lim, start, &tx))
            .map_err(|e| input_err(Path::new("<reader thread>"), e))?;
        Ok(Self {
            rx,
            names,
            bytes_total: total,
            header_rows,
        })
    }
}

/// The header rows of `files[first..]` (stdin excluded), each one only where it differs from
/// the one before: read ahead so that the pipeline can check them all before it writes.
fn read_header_rows(
    files: &[PathBuf],
    first: usize,
    format: &Format,
    lim: FrameLimits,
) -> Result<Vec<(u32, Bytes)>, StreamError> {
    let lim = FrameLimits {
        read_chunk: lim.read_chunk.min(16 << 10),
        chunk_records: 1,
        ..lim
    };
    let mut rows: Vec<(u32, Bytes)> = Vec::new();
    for (i, path) in files.iter().enumerate().skip(first) {
        if path.as_os_str() == "-" {
            continue;
        }
        let mut framer = Framer::new(lim, format, i as u32);
        let (mut reader, _) = open_input(path, None).map_err(|e| input_err(path, e))?;
        let chunk = framer
            .next_chunk(&mut reader)
            .map_err(|e| input_err(path, e))?;
        let header = chunk
            .into_iter()
            .flatten()
            .find(|r| r.kind == RecordKind::Header);
        if let Some(h) = header
            && rows.last().is_none_or(|(_, last)| *last != h.data)
        {
            // A copy: the slice would keep the whole read buffer alive.
            rows.push((i as u32, Bytes::copy_from_slice(&h.data)));
        }
    }
    Ok(rows)
}

type ChunkTx = mpsc::Sender<Result<Vec<RawRecord>, StreamError>>;

fn read_files(
    files: &[PathBuf],
    format: &Format,
    lim: FrameLimits,
    start: Option<Position>,
    tx: &ChunkTx,
) {
    for (i, path) in files.iter().enumerate() {
        let i = i as u32;
        let from = match start {
            Some(s) if s.file > i => continue,
            Some(s) if s.file == i => Some(s),
            _ => None,
        };
        match read_one(path, i, format, lim, from, tx) {
            Ok(true) => {}
            Ok(false) => return, // receiver gone
            Err(e) => {
                let _ = tx.blocking_send(Err(input_err(path, e)));
                return;
            }
        }
    }
}

/// A decompressed input that errors once it has given more than `max` bytes (a gzip bomb
/// stops the input instead of filling memory, the disk or the graph).
struct Bounded<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the input decompresses to more than {} bytes (max_decompressed_bytes): stopped",
                    self.max
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn gunzip<R: io::BufRead + Send + 'static>(r: R, max: Option<u64>) -> Box<dyn Read + Send> {
    let gz = flate2::read::MultiGzDecoder::new(r);
    match max {
        Some(max) => Box::new(Bounded {
            inner: gz,
            left: max,
            max,
        }),
        None => Box::new(gz),
    }
}

/// Opens an input, gzip-aware (a compressed input gives at most `max_decompressed` bytes).
/// Returns the reader and whether it is seekable plain data.
fn open_input(
    path: &Path,
    max_decompressed: Option<u64>,
) -> io::Result<(Box<dyn Read + Send>, Option<File>)> {
    if path.as_os_str() == "-" {
        let stdin = io::stdin();
        let mut peek = io::BufReader::new(stdin);
        let gz = io::BufRead::fill_buf(&mut peek)?.starts_with(&[0x1f, 0x8b]);
        return Ok(if gz {
            (gunzip(peek, max_decompressed), None)
        } else {
            (Box::new(peek), None)
        });
    }
    let mut f = File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok((gunzip(io::BufReader::new(f), max_decompressed), None))
    } else {
        let again = f.try_clone()?;
        Ok((Box::new(f), Some(again)))
    }
}

/// Reads one input to the end; `Ok(false)` when the receiver went away.
fn read_one(
    path: &Path,
    file: u32,
    format: &Format,
    lim: FrameLimits,
    from: Option<Position>,
    tx: &ChunkTx,
) -> io::Result<bool> {
    let (mut reader, seekable) = open_input(path, lim.max_decompressed)?;
    let mut framer = Framer::new(lim, format, file);
    if let Some(pos) = from.filter(|p| p.offset > 0) {
        match seekable {
            Some(mut f) => {
                if format.has_header() {
                    // The header row names the columns: read it from the start first.
                    let mut hf = Framer::new(
                        FrameLimits {
                            chunk_records: 1,
                            ..lim
                        },
                        format,
                        file,
                    );
                    if let Some(h) = hf.next_chunk(&mut f)?
                        && tx.blocking_send(Ok(h)).is_err()
                    {
                        return Ok(false);
                    }
                    framer.header_fields = hf.header_fields;
                }
                let len = f.metadata()?.len();
                if pos.offset > len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "checkpoint offset {} past the end ({len} bytes)",
                            pos.offset
                        ),
                    ));
                }
                f.seek(SeekFrom::Start(pos.offset))?;
                framer.start_at(pos);
                reader = Box::new(f);
            }
            None => framer.skip_until = pos.offset,
        }
    }
    while let Some(chunk) = framer.next_chunk(&mut reader)? {
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Source for FileSource {
    async fn next_chunk(&mut self) -> Result<Option<Vec<RawRecord>>, StreamError> {
        self.rx.recv().await.transpose()
    }

    fn names(&self) -> SourceNames {
        self.names.clone()
    }

    fn bytes_total(&self) -> Option<u64> {
        self.bytes_total
    }

    /// The header row of every input but stdin, read when the source was opened.
    fn header_rows(&self) -> Vec<(u32, Bytes)> {
        self.header_rows.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(max_record: usize) -> FrameLimits {
        FrameLimits {
            read_chunk: 7,
            chunk_records: 3,
            max_record,
            dl_raw: 4,
            max_decompressed: None,
        }
    }

    fn frame_all(input: &[u8], format: &Format, max_record: usize) -> Vec<RawRecord> {
        frame_with(input, format, lim(max_record))
    }

    fn frame_with(input: &[u8], format: &Format, lim: FrameLimits) -> Vec<RawRecord> {
        let mut f = Framer::new(lim, format, 0);
        let mut r = io::Cursor::new(input.to_vec());
        let mut all = Vec::new();
        while let Some(c) = f.next_chunk(&mut r).unwrap() {
            assert!(c.len() <= lim.chunk_records);
            all.extend(c);
        }
        all
    }

    /// (line, offset, data) of each record; the header row too.
    fn lines(recs: &[RawRecord]) -> Vec<(u64, u64, String)> {
        recs.iter()
            .map(|r| {
                let text = String::from_utf8_lossy(&r.data).into_owned();
                (r.position.line, r.position.offset, text)
            })
            .collect()
    }

    fn csv3() -> Format {
        Format::csv()
    }

    #[test]
    fn a_byte_order_mark_is_dropped_but_counted_in_offsets() {
        for read_chunk in [1, 2, 7, 64] {
            let l = FrameLimits {
                read_chunk,
                ..lim(100)
            };
            let recs = frame_with(b"\xEF\xBB\xBFid,name\r\n1,a\r\n", &Format::csv(), l);
            assert_eq!(recs[0].kind, RecordKind::Header);
            assert_eq!(
                lines(&recs),
                [(1, 3, "id,name".into()), (2, 12, "1,a".into())],
                "read_chunk {read_chunk}"
            );
            assert_eq!(recs[1].next.offset, 17);
            let recs = frame_with(b"\xEF\xBB\xBF{\"id\":1}\n", &Format::JsonLines, l);
            assert_eq!(lines(&recs), [(1, 3, "{\"id\":1}".into())]);
        }
        // Only at the very start, and only the whole mark.
        let recs = frame_all(b"a\n\xEF\xBB\xBFb\n", &Format::JsonLines, 100);
        assert_eq!(&recs[1].data[..], b"\xEF\xBB\xBFb");
        let recs = frame_all(b"\xEF\xBBx\n", &Format::JsonLines, 100);
        assert_eq!(&recs[0].data[..], b"\xEF\xBBx");
        let recs = frame_all(b"\xEF\xBB", &Format::JsonLines, 100);
        assert_eq!(&recs[0].data[..], b"\xEF\xBB");
        // A resumed input (seeked past the start) has no mark to drop.
        let mut f = Framer::new(lim(100), &Format::JsonLines, 0);
        f.start_at(Position {
            file: 0,
            line: 5,
            offset: 40,
        });
        let mut r = io::Cursor::new(b"\xEF\xBB\xBFx\n".to_vec());
        let c = f.next_chunk(&mut r).unwrap().unwrap();
        assert_eq!(&c[0].data[..], b"\xEF\xBB\xBFx");
    }

    #[test]
    fn crlf_ends_records_after_closing_quotes_and_stays_inside_quoted_fields() {
        let recs = frame_all(
            b"h1,h2\r\n\"a\",\"b\"\r\n\"x\r\ny\",z\r\nlast,\"q\"\r",
            &Format::csv(),
            100,
        );
        assert_eq!(
            lines(&recs),
            [
                (1, 0, "h1,h2".into()),
                (2, 7, "\"a\",\"b\"".into()),
                (3, 16, "\"x\r\ny\",z".into()),
                (5, 26, "last,\"q\"".into()),
            ]
        );
        assert_eq!(recs[3].next.line, 6);
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_ends_the_record_at_its_line() {
        let recs = frame_all(b"id,n\n1,Al\"ice\n2,b\n3,c\"\n4,d\n", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["id,n", "1,Al\"ice", "2,b", "3,c\"", "4,d"]);
        // Quotes after it on that line are not tracked.
        let recs = frame_all(b"id,n\n1,a\"b,\"x\n2,y\"z\n3,c\n", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["id,n", "1,a\"b,\"x", "2,y\"z", "3,c"]);
        // In a record spanning lines, it breaks the record.
        let recs = frame_all(b"a,b,c\n1,\"x\ny\",a\"b\n2,z,w\n", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["a,b,c", "1,\"x", "y\",a\"b", "2,z,w"]);
    }

    #[test]
    fn text_after_a_closing_quote_on_the_first_line_ends_the_record_at_its_line() {
        let recs = frame_all(b"id,n\n1,\"Al\"ice,\"x\n2,b\n", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["id,n", "1,\"Al\"ice,\"x", "2,b"]);
    }

    #[test]
    fn a_stray_opening_quote_costs_its_line_only() {
        // Closed later by a quote that is followed by text: broken, cut after line 2.
        let input = b"id,n,x\n1,\"Alice,x\n2,b,c\n3,\"Carl\",z\n4,d,e\n";
        let recs = frame_all(input, &csv3(), 100);
        assert_eq!(
            lines(&recs),
            [
                (1, 0, "id,n,x".into()),
                (2, 7, "1,\"Alice,x".into()),
                (3, 18, "2,b,c".into()),
                (4, 24, "3,\"Carl\",z".into()),
                (5, 35, "4,d,e".into()),
            ]
        );
        assert_eq!(recs[1].next, recs[2].position);
        // Never closed: broken at the end of the input.
        let recs = frame_all(b"id,n\n1,\"open\n2,b\n3,c\n", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["id,n", "1,\"open", "2,b", "3,c"]);
        // The same without a final newline, and in CRLF.
        let recs = frame_all(b"id,n\r\n1,\"open\r\n2,b\r\n3,c", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["id,n", "1,\"open", "2,b", "3,c"]);
        assert_eq!(recs[3].position.line, 4);
    }

    #[test]
    fn a_record_spanning_lines_with_the_wrong_field_count_is_broken() {
        // `1,"x\n2,y"` frames as two fields where the header has three.
        let recs = frame_all(b"a,b,c\n1,\"x\n2,y\"\n3,q,r\n", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["a,b,c", "1,\"x", "2,y\"", "3,q,r"]);
        // With the right count it is one record.
        let recs = frame_all(b"a,b\n1,\"x\n2,y\"\n3,q\n", &csv3(), 100);
        let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
        assert_eq!(data, ["a,b", "1,\"x\n2,y\"", "3,q"]);
        // Without a header there is no count to check.
        let fmt = Format::Csv {
            delimiter: b',',
            has_header: false,
        };
        let recs = frame_all(b"1,\"x\n2,y\"\n3,q,r\n", &fmt, 100);
        assert_eq!(recs.len(), 2);
    }

    #[test]
    fn a_quoted_field_open_past_the_record_limit_is_broken_without_buffering_more() {
        let mut input = b"id,n\n1,\"open\n".to_vec();
        for i in 2..200 {
            input.extend(format!("{i},row\n").as_bytes());
        }
        let mut f = Framer::new(lim(40), &csv3(), 0);
        let mut r = io::Cursor::new(input);
        let mut all = Vec::new();
        while let Some(c) = f.next_chunk(&mut r).unwrap() {
            all.extend(c);
            assert!(f.buf.len() <= 40 + 7 + 1, "buffer holds {}", f.buf.len());
        }
        assert_eq!(all.len(), 200);
        assert_eq!(&all[1].data[..], b"1,\"open");
        for (i, r) in all.iter().enumerate().skip(2) {
            assert_eq!(r.data, format!("{i},row").into_bytes(), "record {i}");
            assert_eq!(r.position.line, i as u64 + 1);
        }
    }

    #[test]
    fn escaped_quotes_and_quotes_at_read_boundaries() {
        let input = b"a,b\n\"x\"\"y\",\"\"\n\"p\nq\"\"\",r\n";
        for read_chunk in [1, 2, 3, 64] {
            let l = FrameLimits {
                read_chunk,
                ..lim(100)
            };
            let recs = frame_with(input, &csv3(), l);
            let data: Vec<_> = lines(&recs).into_iter().map(|l| l.2).collect();
            assert_eq!(
                data,
                ["a,b", "\"x\"\"y\",\"\"", "\"p\nq\"\"\",r"],
                "read_chunk {read_chunk}"
            );
        }
    }

    #[test]
    fn oversized_record_length_leaves_out_its_crlf() {
        let mut input = b"ok1\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.extend(b"\r\nok2\n");
        let recs = frame_all(&input, &Format::JsonLines, 10);
        assert_eq!(recs[1].kind, RecordKind::Oversized { len: 1000 });
        // The `\r` may end a read and the `\n` start the next.
        for read_chunk in [1, 2, 3, 5] {
            let l = FrameLimits {
                read_chunk,
                ..lim(10)
            };
            let recs = frame_with(&input, &Format::JsonLines, l);
            assert_eq!(recs[1].kind, RecordKind::Oversized { len: 1000 });
            assert_eq!(&recs[2].data[..], b"ok2");
        }
        // Nor does its kept prefix, when the prefix holds all of it.
        let l = FrameLimits {
            dl_raw: 100,
            ..lim(10)
        };
        let recs = frame_with(b"ok1\n0123456789abcdef\r\nok2\n", &Format::JsonLines, l);
        assert_eq!(recs[1].kind, RecordKind::Oversized { len: 16 });
        assert_eq!(&recs[1].data[..], b"0123456789abcdef");
    }

    #[test]
    fn positions_lines_offsets_and_crlf() {
        let recs = frame_all(b"h1,h2\r\na,b\r\n\r\ncc,dd\nlast", &Format::csv(), 100);
        let got: Vec<_> = recs
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.position.line,
                    r.position.offset,
                    r.data.clone(),
                    r.next.offset,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (RecordKind::Header, 1, 0, Bytes::from_static(b"h1,h2"), 7),
                (RecordKind::Data, 2, 7, Bytes::from_static(b"a,b"), 12),
                (RecordKind::Data, 4, 14, Bytes::from_static(b"cc,dd"), 20),
                (RecordKind::Data, 5, 20, Bytes::from_static(b"last"), 24),
            ]
        );
        assert_eq!(recs[3].next.line, 6);
    }

    #[test]
    fn quoted_newlines_stay_in_one_record() {
        let fmt = Format::Csv {
            delimiter: b',',
            has_header: false,
        };
        let recs = frame_all(b"a,\"x\ny\"\nb,c\n", &fmt, 100);
        assert_eq!(recs.len(), 2);
        assert_eq!(&recs[0].data[..], b"a,\"x\ny\"");
        assert_eq!(recs[1].position.line, 3);
        // JSON Lines does not track quotes.
        let recs = frame_all(b"\"a\n\"b\n", &Format::JsonLines, 100);
        assert_eq!(recs.len(), 2);
    }

    #[test]
    fn oversized_record_is_cut_and_skipped_without_buffering() {
        let mut input = b"ok1\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.extend(b"\nok2\n");
        let mut f = Framer::new(lim(10), &Format::JsonLines, 0);
        let mut r = io::Cursor::new(input);
        let mut all = Vec::new();
        while let Some(c) = f.next_chunk(&mut r).unwrap() {
            all.extend(c);
            assert!(f.buf.capacity() < 64, "buffer grew to {}", f.buf.capacity());
        }
        let kinds: Vec<_> = all.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![
                RecordKind::Data,
                RecordKind::Oversized { len: 1000 },
                RecordKind::Data
            ]
        );
        assert_eq!(all[1].position.line, 2);
        assert_eq!(all[1].position.offset, 4);
        assert_eq!(all[1].data.len(), 4);
        assert_eq!(all[2].position.line, 3);
        assert_eq!(all[2].position.offset, 1005);
        assert_eq!(&all[2].data[..], b"ok2");
    }

    #[test]
    fn skip_until_drops_records_before_offset_but_keeps_header() {
        let mut f = Framer::new(lim(100), &Format::csv(), 0);
        f.skip_until = 8;
        let mut r = io::Cursor::new(b"h\na,1\nb,2\nc,3\n".to_vec());
        let mut all = Vec::new();
        while let Some(c) = f.next_chunk(&mut r).unwrap() {
            all.extend(c);
        }
        let data: Vec<_> = all.iter().map(|r| r.data.clone()).collect();
        assert_eq!(
            data,
            vec![Bytes::from_static(b"h"), Bytes::from_static(b"c,3")]
        );
        assert_eq!(all[1].position.line, 4);
    }
}
