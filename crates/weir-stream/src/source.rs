//! Sources: framing bytes into records with positions, from readers, files, directories and
//! stdin (gzip detected by its magic bytes and decompressed as a stream).

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
}

/// Framing settings taken from the pipeline config.
#[derive(Clone, Copy, Debug)]
struct FrameLimits {
    read_chunk: usize,
    chunk_records: usize,
    max_record: usize,
    dl_raw: usize,
}

impl From<&PipelineConfig> for FrameLimits {
    fn from(c: &PipelineConfig) -> Self {
        Self {
            read_chunk: c.read_chunk_bytes,
            chunk_records: c.chunk_records,
            max_record: c.max_record_bytes,
            dl_raw: c.dead_letter_raw_bytes,
        }
    }
}

#[derive(Debug)]
struct Skip {
    start: Position,
    prefix: Bytes,
    len: u64,
    lines: u64,
}

/// Cuts a byte stream into records: newline-terminated (`\r\n` too), quote-aware for CSV so a
/// quoted field may hold newlines, never buffering more than one read plus the maximum record
/// size. Blank lines are skipped (but counted).
#[derive(Debug)]
struct Framer {
    lim: FrameLimits,
    quoted: bool,
    buf: BytesMut,
    file: u32,
    offset: u64,
    line: u64,
    scan: usize,
    in_quote: bool,
    nl_in_rec: u64,
    header_pending: bool,
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

impl Framer {
    fn new(lim: FrameLimits, format: &Format, file: u32) -> Self {
        Self {
            lim,
            quoted: format.quoted_newlines(),
            buf: BytesMut::new(),
            file,
            offset: 0,
            line: 1,
            scan: 0,
            in_quote: false,
            nl_in_rec: 0,
            header_pending: format.has_header(),
            skip: None,
            skip_until: 0,
            eof: false,
        }
    }

    /// Continues at a known position (after a seek): no header expected.
    fn start_at(&mut self, pos: Position) {
        self.offset = pos.offset;
        self.line = pos.line;
        self.header_pending = false;
    }

    fn find_terminator(&mut self) -> Option<usize> {
        let len = self.buf.len();
        if !self.quoted {
            let found = memchr::memchr(b'\n', &self.buf[self.scan..]).map(|i| self.scan + i);
            self.scan = found.unwrap_or(len);
            return found;
        }
        loop {
            match memchr::memchr2(b'\n', b'"', &self.buf[self.scan..]) {
                None => {
                    self.scan = len;
                    return None;
                }
                Some(i) => {
                    let j = self.scan + i;
                    self.scan = j + 1;
                    if self.buf[j] == b'"' {
                        self.in_quote = !self.in_quote;
                    } else if self.in_quote {
                        self.nl_in_rec += 1;
                    } else {
                        return Some(j);
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
            if self.skip.is_some() {
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

    fn extract(&mut self, out: &mut Vec<RawRecord>) {
        let mut spans: Vec<Span> = Vec::new();
        let mut start = 0usize;
        let mut exhausted = false;
        while out.len() + spans.len() < self.lim.chunk_records {
            let Some(t) = self.find_terminator() else {
                exhausted = true;
                break;
            };
            let data_end = if t > start && self.buf[t - 1] == b'\r' {
                t - 1
            } else {
                t
            };
            let pos = self.pos(start);
            let next_line = self.line + self.nl_in_rec + 1;
            spans.push(Span {
                start,
                data_end,
                next: t + 1,
                pos,
                next_line,
            });
            self.line = next_line;
            start = t + 1;
            self.scan = start;
            self.in_quote = false;
            self.nl_in_rec = 0;
        }
        let partial = self.buf.len() - start;
        let oversized_partial = exhausted && partial > self.lim.max_record + 1;
        let frozen = self.buf.split_to(start).freeze();
        self.offset += start as u64;
        self.scan -= start;
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
            });
            self.offset += self.buf.len() as u64;
            self.buf.clear();
            self.scan = 0;
            self.in_quote = false;
            self.nl_in_rec = 0;
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
                self.offset += self.buf.len() as u64;
                self.buf.clear();
            }
            Some(t) => {
                skip.len += t as u64;
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

    /// At end of input: the last record may lack its terminator.
    fn finish(&mut self, out: &mut Vec<RawRecord>) {
        if self.skip.is_some() {
            self.line = self
                .skip
                .as_ref()
                .map_or(self.line, |s| s.start.line + s.lines + 1);
            self.finish_skip(out);
            return;
        }
        if self.buf.is_empty() {
            return;
        }
        let len = self.buf.len();
        let data = self.buf.split().freeze();
        let data_end = if data.ends_with(b"\r") { len - 1 } else { len };
        let pos = self.pos(0);
        self.offset += len as u64;
        self.line += self.nl_in_rec + 1;
        self.scan = 0;
        self.nl_in_rec = 0;
        let next = self.pos(0);
        self.emit(out, pos, next, data.slice(..data_end));
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
    /// must name the same input at the same index.
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
        let (tx, rx) = mpsc::channel(config.chunk_queue);
        let lim = FrameLimits::from(config);
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
        })
    }
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

/// Opens an input, gzip-aware. Returns the reader and whether it is seekable plain data.
fn open_input(path: &Path) -> io::Result<(Box<dyn Read + Send>, Option<File>)> {
    if path.as_os_str() == "-" {
        let stdin = io::stdin();
        let mut peek = io::BufReader::new(stdin);
        let gz = io::BufRead::fill_buf(&mut peek)?.starts_with(&[0x1f, 0x8b]);
        return Ok(if gz {
            (Box::new(flate2::read::MultiGzDecoder::new(peek)), None)
        } else {
            (Box::new(peek), None)
        });
    }
    let mut f = File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok((
            Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f))),
            None,
        ))
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
    let (mut reader, seekable) = open_input(path)?;
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
        }
    }

    fn frame_all(input: &[u8], format: &Format, max_record: usize) -> Vec<RawRecord> {
        let mut f = Framer::new(lim(max_record), format, 0);
        let mut r = io::Cursor::new(input.to_vec());
        let mut all = Vec::new();
        while let Some(c) = f.next_chunk(&mut r).unwrap() {
            assert!(c.len() <= 3);
            all.extend(c);
        }
        all
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
