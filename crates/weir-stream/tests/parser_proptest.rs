//! Randomised tests of the parsers (framer + decoder), thousands of cases each in the default
//! suite; `PROPTEST_CASES=N` sets the number of cases of every property here.
//!
//! An hour of it (and of the mapping loader's, in weir-graph), fresh random seeds each round,
//! stopping at the first failure (its case is saved in the `.proptest-regressions` file next
//! to the test and replayed first by every later run):
//!
//! ```sh
//! export CARGO_BUILD_JOBS=1
//! T="-p weir-stream --test parser_proptest -p weir-graph --test mapping_proptest"
//! cargo test --release --no-run $T
//! end=$((SECONDS + 3600))
//! while [ $SECONDS -lt $end ]; do PROPTEST_CASES=50000 cargo test --release -q $T || break; done
//! ```
//!
//! * CSV, differential against the `csv` crate: tables written by `csv::Writer` (quotes,
//!   delimiters, CR, LF, CRLF, embedded newlines, a byte-order mark, any read size) read back
//!   exactly, by Weir and by `csv`; and on hostile inputs (stray quotes, invalid UTF-8, ragged
//!   rows, blank lines), whenever Weir reads every record without a dead letter, `csv` reads
//!   the same records.
//! * The framing accounts for every byte: records come in order, and between two records (and
//!   around them) lie only line breaks, so no byte is lost or read twice.
//! * One stray quote in well-formed rows costs exactly its record.
//! * JSON Lines: every line of random JSON values decodes to its value, garbage lines are
//!   decode errors, positions and a byte-order mark are right.

use std::io::Cursor;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use weir_stream::{
    Decoded, Decoder, Format, PipelineConfig, RawRecord, ReaderSource, RecordKind, Source,
};

/// Cases per property: `PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Every record framed from `input` by a `ReaderSource` (it never waits: polled once).
fn frame(input: &[u8], format: &Format, read_chunk: usize, max_record: usize) -> Vec<RawRecord> {
    let cfg = PipelineConfig {
        format: format.clone(),
        read_chunk_bytes: read_chunk,
        chunk_records: 7,
        max_record_bytes: max_record,
        ..PipelineConfig::default()
    };
    let mut src = ReaderSource::new(Cursor::new(input.to_vec()), "p", &cfg);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        let next = pin!(src.next_chunk()).poll(&mut cx);
        match next {
            Poll::Ready(Ok(Some(chunk))) => out.extend(chunk),
            Poll::Ready(Ok(None)) => return out,
            Poll::Ready(Err(e)) => panic!("reading from memory failed: {e}"),
            Poll::Pending => panic!("a reader source waited"),
        }
    }
}

/// What Weir made of a CSV input.
#[derive(Debug, Default)]
struct WeirCsv {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
    /// Records (header included) that could not be framed or decoded.
    dead: usize,
}

fn weir_csv(input: &[u8], delimiter: u8, read_chunk: usize, max_record: usize) -> WeirCsv {
    let format = Format::Csv {
        delimiter,
        has_header: true,
    };
    let records = frame(input, &format, read_chunk, max_record);
    check_accounting(input, &records);
    let mut dec = Decoder::new(format);
    let mut out = WeirCsv::default();
    for r in &records {
        match r.kind {
            RecordKind::Header => match dec.set_header(&r.data) {
                Ok(()) => {
                    out.header = Some(dec.headers().iter().map(|h| h.to_string()).collect());
                }
                Err(_) => out.dead += 1,
            },
            RecordKind::Oversized { len } => {
                assert!(len as usize > max_record);
                out.dead += 1;
            }
            RecordKind::Data => match dec.decode(r.position, &r.data) {
                Ok(rec) => match rec.value {
                    Decoded::Csv(row) => out.rows.push(row.iter().map(str::to_owned).collect()),
                    Decoded::Json(_) => unreachable!(),
                },
                Err(_) => out.dead += 1,
            },
        }
    }
    out
}

/// Records are in input order, lines grow, and only line breaks lie outside them: every byte
/// of the input (past a byte-order mark) is in exactly one record or is a line break.
fn check_accounting(input: &[u8], records: &[RawRecord]) {
    let start = if input.starts_with(BOM) { 3 } else { 0 };
    let mut at = start as u64;
    let mut line = 1u64;
    for r in records {
        let (from, to) = (r.position.offset as usize, r.next.offset as usize);
        assert!(r.position.offset >= at, "records overlap or go back: {r:?}");
        assert!(
            input[at as usize..from]
                .iter()
                .all(|b| matches!(b, b'\r' | b'\n')),
            "bytes between records at {at}..{from} were dropped"
        );
        assert!(
            r.position.line >= line && r.next.line > r.position.line,
            "{r:?}"
        );
        assert!(to <= input.len() && from < to, "{r:?}");
        match r.kind {
            RecordKind::Oversized { len } => assert!(from + len as usize <= to),
            _ => {
                // The record's bytes, then at most its terminator.
                assert_eq!(&input[from..from + r.data.len()], &r.data[..]);
                let rest = &input[from + r.data.len()..to];
                assert!(matches!(rest, b"" | b"\n" | b"\r\n" | b"\r"), "{rest:?}");
            }
        }
        // Lines: one per newline in the input up to here.
        let newlines = input[..from].iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(r.position.line, newlines + 1, "{r:?}");
        at = r.next.offset;
        line = r.next.line;
    }
    assert!(
        input[at as usize..]
            .iter()
            .all(|b| matches!(b, b'\r' | b'\n')),
        "bytes after the last record were dropped"
    );
}

/// The `csv` crate's reading of the same input: every record, as UTF-8 (`None` if a field is
/// not UTF-8 or `csv` fails). Weir drops a leading byte-order mark by design, so it is taken
/// off here too (what `csv` does with one is not what is compared).
fn csv_crate(input: &[u8], delimiter: u8) -> Option<Vec<Vec<String>>> {
    let input = input.strip_prefix(BOM).unwrap_or(input);
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(input);
    let mut out = Vec::new();
    for rec in rd.byte_records() {
        let rec = rec.ok()?;
        let fields: Option<Vec<String>> = rec
            .iter()
            .map(|f| String::from_utf8(f.to_vec()).ok())
            .collect();
        out.push(fields?);
    }
    Some(out)
}

/// Field text: separators, quotes, CR, LF, spaces, multi-byte characters.
fn field() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        6 => prop::sample::select(vec!['a', 'b', 'Z', '0', '9', '-']),
        1 => Just(' '),
        1 => Just(','),
        1 => Just(';'),
        1 => Just('\t'),
        1 => Just('"'),
        1 => Just('\n'),
        1 => Just('\r'),
        1 => prop::sample::select(vec!['é', '€', '🦀', '\u{a0}']),
    ];
    prop::collection::vec(ch, 0..8).prop_map(|v| v.into_iter().collect())
}

fn table() -> impl Strategy<Value = Vec<Vec<String>>> {
    (1usize..5)
        .prop_flat_map(|cols| prop::collection::vec(prop::collection::vec(field(), cols), 1..20))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(5000), ..ProptestConfig::default() })]

    /// Tables written by `csv::Writer` read back exactly, by Weir and by `csv`.
    #[test]
    fn csv_written_by_the_csv_crate_reads_back_exactly(
        table in table(),
        delimiter in prop::sample::select(vec![b',', b';', b'\t', b'|']),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        final_newline in any::<bool>(),
        read_chunk in prop_oneof![1usize..8, 8usize..4096],
    ) {
        let mut w = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
            .from_writer(Vec::new());
        for row in &table {
            w.write_record(row).unwrap();
        }
        let mut bytes = w.into_inner().unwrap();
        if !final_newline {
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
        }
        if bom {
            bytes.splice(0..0, BOM.iter().copied());
        }
        // Weir trims header names; data fields are read as they are.
        let want_header: Vec<String> = table[0].iter().map(|h| h.trim().to_owned()).collect();
        let want_rows = &table[1..];

        let weir = weir_csv(&bytes, delimiter, read_chunk, 1 << 20);
        prop_assert_eq!(weir.dead, 0);
        prop_assert_eq!(weir.header.as_ref(), Some(&want_header));
        prop_assert_eq!(&weir.rows, want_rows);

        let theirs = csv_crate(&bytes, delimiter).expect("csv reads its own output");
        prop_assert_eq!(&theirs[1..], want_rows);
    }
}

/// Hostile CSV: rows of well-formed, quoted and broken fields, ragged row lengths, stray
/// quotes, invalid UTF-8, blank lines. How dirty (0 = well-formed, up to 3) and how ragged is
/// drawn per input, so that a good share of inputs is read cleanly and compared.
fn hostile_csv() -> impl Strategy<Value = Vec<u8>> {
    (2usize..4, 0u32..4, any::<bool>())
        .prop_flat_map(|(cols, dirt, ragged)| {
            let token = prop_oneof![
                8 => prop::sample::select(vec!["a", "b", "7", " ", "é"]),
                2 => Just(","),
                2 => Just("\""),
                1 => Just("\"\""),
                1 => Just("\n"),
                1 => Just("\r\n"),
                1 => Just("\u{ff}"), // replaced by an invalid UTF-8 byte below
            ];
            let dirty = prop::collection::vec(token, 0..6).prop_map(|t| t.concat());
            let quoted = field().prop_map(|f| {
                // Only `\r\n` line breaks: a lone CR ends a record for `csv` but is data for Weir.
                let f = f.replace('\r', "").replace('\n', "\r\n");
                format!("\"{}\"", f.replace('"', "\"\""))
            });
            let plain = "[a-z0-9 ]{0,5}".prop_map(String::from);
            let cell = prop_oneof![6 => plain, 3 => quoted, dirt => dirty];
            let width = if ragged { 1..cols + 2 } else { cols..cols + 1 };
            let row = prop::collection::vec(cell, width).prop_map(|c| c.join(","));
            let line_end = prop_oneof![
                4 => Just("\n"),
                4 => Just("\r\n"),
                1 => Just("\n\n"),
                1 => Just("\r\n\r\n"),
            ];
            let header = prop::collection::vec("[a-z]{1,3}", cols).prop_map(|h| h.join(","));
            (
                any::<bool>(),
                header,
                prop::collection::vec((row, line_end), 0..12),
                any::<bool>(),
            )
        })
        .prop_map(|(bom, header, rows, last_newline)| {
            let mut s = header;
            s.push('\n');
            for (r, end) in rows {
                s.push_str(&r);
                s.push_str(end);
            }
            if !last_newline {
                s.truncate(s.trim_end_matches(['\r', '\n']).len());
            }
            let mut bytes: Vec<u8> = Vec::new();
            if bom {
                bytes.extend_from_slice(BOM);
            }
            for c in s.chars() {
                if c == '\u{ff}' {
                    bytes.push(0xff);
                } else {
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(5000), ..ProptestConfig::default() })]

    /// Whenever Weir reads every record of a hostile input without a dead letter, `csv` reads
    /// the same records. (Where they differ by design, Weir dead-letters: it is strict about
    /// quotes and field counts where `csv` is lenient, and it cuts a broken record after its
    /// first line.) Every byte is accounted for either way.
    #[test]
    fn csv_as_weir_reads_it_cleanly_is_csv_as_the_csv_crate_reads_it(
        input in hostile_csv(),
        read_chunk in prop_oneof![1usize..8, 8usize..4096],
        max_record in prop_oneof![3 => Just(1usize << 20), 1 => 4usize..40],
    ) {
        let weir = weir_csv(&input, b',', read_chunk, max_record);
        if weir.dead == 0 {
            let theirs = csv_crate(&input, b',').expect("csv reads what Weir reads");
            let header: Vec<String> = theirs[0].iter().map(|h| h.trim().to_owned()).collect();
            prop_assert_eq!(weir.header.as_ref(), Some(&header));
            prop_assert_eq!(&weir.rows[..], &theirs[1..]);
        }
    }

    /// Arbitrary bytes: framing and decoding never panic, and every byte is accounted for.
    #[test]
    fn any_bytes_frame_and_decode_without_panicking(
        input in prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(b"\",\n\r; a\xff\xef\xbb\xbf".to_vec()),
                1 => any::<u8>(),
            ],
            0..300,
        ),
        read_chunk in 1usize..64,
        max_record in prop_oneof![Just(1usize << 20), 1usize..40],
    ) {
        let _ = weir_csv(&input, b',', read_chunk, max_record);
        let records = frame(&input, &Format::JsonLines, read_chunk, max_record);
        check_accounting(&input, &records);
        let mut dec = Decoder::new(Format::JsonLines);
        for r in records.iter().filter(|r| r.kind == RecordKind::Data) {
            let _ = dec.decode(r.position, &r.data);
        }
    }
}

/// Well-formed rows of plain and quoted fields (a quoted field never starts with a delimiter
/// or a line break: a stray quote could pair with such a one into a valid record, see the
/// framing rules).
fn simple_rows() -> impl Strategy<Value = Vec<Vec<String>>> {
    let plain = "[a-z0-9]{0,5}".prop_map(String::from);
    let quoted = ("[a-z]", field()).prop_map(|(first, rest)| {
        let f = format!("{first}{}", rest.replace('\r', ""));
        format!("\"{}\"", f.replace('"', "\"\""))
    });
    let cell = prop_oneof![3 => plain, 1 => quoted];
    prop::collection::vec(prop::collection::vec(cell, 3), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), ..ProptestConfig::default() })]

    /// One stray quote (at a field start or inside a field) in a one-line record among
    /// well-formed rows (some spanning lines) costs that record only: every other row reads
    /// back exactly.
    #[test]
    fn one_stray_quote_costs_one_record(
        rows in simple_rows(),
        which in any::<prop::sample::Index>(),
        field_at in 0usize..3,
        inside in any::<bool>(),
        crlf in any::<bool>(),
        read_chunk in prop_oneof![1usize..8, 8usize..4096],
    ) {
        let mut rows = rows;
        let bad = which.index(rows.len());
        // The bad record is on one line: in a record spanning lines, the lines after its first
        // are framed on their own once it breaks, and may read as records (see the framing
        // rules).
        for f in &mut rows[bad] {
            *f = f.replace('\n', " ");
        }
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut text = format!("a,b,c{nl}");
        for (i, row) in rows.iter().enumerate() {
            let mut row = row.clone();
            if i == bad {
                let f = &mut row[field_at];
                if inside {
                    f.insert_str(f.len().min(1), "x\"");
                } else {
                    f.insert(0, '"');
                }
            }
            text.push_str(&row.join(","));
            text.push_str(nl);
        }
        let weir = weir_csv(text.as_bytes(), b',', read_chunk, 1 << 20);
        prop_assert_eq!(weir.dead, 1);
        let want: Vec<Vec<String>> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != bad)
            .map(|(_, r)| r.iter().map(|f| unquote(f)).collect())
            .collect();
        prop_assert_eq!(weir.rows, want);
    }
}

fn unquote(f: &str) -> String {
    match f.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => f.to_owned(),
    }
}

/// JSON values, nested a little.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum JsonLine {
    Value(serde_json::Value),
    Garbage(String),
    Blank,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), ..ProptestConfig::default() })]

    /// Every line of a JSON Lines input decodes to its value at its line and offset; garbage
    /// lines are decode errors; blank lines and a byte-order mark are skipped.
    #[test]
    fn json_lines_decode_to_their_values_at_their_positions(
        lines in prop::collection::vec(
            prop_oneof![
                6 => json().prop_map(JsonLine::Value),
                1 => "[{\\[\"a-z:,]{1,8}".prop_map(JsonLine::Garbage),
                1 => Just(JsonLine::Blank),
            ],
            0..30,
        ),
        bom in any::<bool>(),
        crlf in any::<bool>(),
        read_chunk in prop_oneof![1usize..8, 8usize..4096],
    ) {
        let mut input: Vec<u8> = if bom { BOM.to_vec() } else { Vec::new() };
        let mut want = Vec::new(); // (line, offset, value or None for garbage)
        for (i, l) in lines.iter().enumerate() {
            let text = match l {
                JsonLine::Value(v) => serde_json::to_string(v).unwrap(),
                JsonLine::Garbage(g) => g.clone(),
                JsonLine::Blank => String::new(),
            };
            let valid = serde_json::from_str::<serde_json::Value>(&text).ok();
            if !text.is_empty() {
                want.push((i as u64 + 1, input.len() as u64, valid));
            }
            input.extend_from_slice(text.as_bytes());
            input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        let records = frame(&input, &Format::JsonLines, read_chunk, 1 << 20);
        check_accounting(&input, &records);
        let mut dec = Decoder::new(Format::JsonLines);
        let mut got = Vec::new();
        for r in &records {
            prop_assert_eq!(r.kind, RecordKind::Data);
            let value = match dec.decode(r.position, &r.data) {
                Ok(d) => match d.value {
                    Decoded::Json(v) => Some(v),
                    Decoded::Csv(_) => unreachable!(),
                },
                Err(_) => None,
            };
            got.push((r.position.line, r.position.offset, value));
        }
        prop_assert_eq!(got, want);
    }
}

/// Keeps the positions of committed records.
#[derive(Default)]
struct Positions(std::sync::Mutex<Vec<weir_stream::Position>>);

impl weir_stream::Sink for Positions {
    type Item = ();

    async fn write(
        &self,
        batch: &weir_stream::SinkBatch<'_, ()>,
    ) -> Result<(), weir_stream::SinkError> {
        self.0
            .lock()
            .unwrap()
            .extend(batch.items.iter().map(|s| s.position));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    /// Through the whole pipeline, every record of a hostile input is accounted for: read =
    /// committed + dead-lettered, each record ends exactly one way, and each dead letter's
    /// byte range is its record's bytes in the input.
    #[test]
    fn every_record_of_a_hostile_input_is_committed_or_dead_lettered(
        input in hostile_csv(),
        read_chunk in prop_oneof![1usize..8, 8usize..4096],
        max_record in prop_oneof![3 => Just(1usize << 20), 1 => 4usize..40],
    ) {
        use std::collections::BTreeSet;
        let records = frame(&input, &Format::csv(), read_chunk, max_record);
        let data: BTreeSet<u64> = records
            .iter()
            .filter(|r| r.kind != RecordKind::Header)
            .map(|r| r.position.offset)
            .collect();
        let header_ok = records
            .first()
            .is_none_or(|h| Decoder::new(Format::csv()).set_header(&h.data).is_ok());
        let cfg = PipelineConfig {
            read_chunk_bytes: read_chunk,
            max_record_bytes: max_record,
            batch_records: 3,
            min_batch_records: 1,
            ..PipelineConfig::default()
        };
        let src = ReaderSource::new(Cursor::new(input.clone()), "p.csv", &cfg);
        let sink = std::sync::Arc::new(Positions::default());
        let dl = std::sync::Arc::new(weir_stream::MemoryDeadLetters::new(10_000));
        // Rows whose first field is `b` fail to map: dead letters of the map stage too.
        let mapper = |r: &weir_stream::DecodedRecord<'_>| match &r.value {
            Decoded::Csv(row) if row.field(0) == Some("b") => {
                Err(weir_stream::MapError::field("0", "b is refused"))
            }
            _ => Ok(()),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let run = rt.block_on(
            weir_stream::Pipeline::new(cfg, mapper, sink.clone())
                .with_dead_letters(dl.clone())
                .run(src, weir_stream::CancellationToken::new()),
        );
        if !header_ok {
            // A header that does not decode stops the run before any record.
            let failed = matches!(run, Err(weir_stream::StreamError::Failed { .. }));
            prop_assert!(failed, "{:?}", run);
            return Ok(());
        }
        let s = run.unwrap();
        prop_assert!(s.is_balanced());
        prop_assert_eq!(s.records_uncommitted, 0);
        prop_assert_eq!(s.records_read, data.len() as u64);
        let committed: Vec<u64> = sink.0.lock().unwrap().iter().map(|p| p.offset).collect();
        let letters = dl.letters();
        prop_assert_eq!(s.records_committed, committed.len() as u64);
        prop_assert_eq!(s.records_dead_lettered, letters.len() as u64);
        let mut ended = BTreeSet::new();
        for &o in committed.iter().chain(letters.iter().map(|l| &l.offset)) {
            prop_assert!(ended.insert(o), "record at {} ended twice", o);
        }
        prop_assert_eq!(&ended, &data);
        for l in &letters {
            let range = l.offset as usize..(l.offset + l.len) as usize;
            prop_assert!(range.end <= input.len());
            let raw = String::from_utf8_lossy(&input[range]).into_owned();
            if l.raw_truncated {
                // A prefix, perhaps cut inside a character.
                let kept = l.raw.trim_end_matches('\u{fffd}');
                prop_assert!(raw.starts_with(kept), "{:?} does not start {:?}", l.raw, raw);
            } else {
                prop_assert_eq!(&l.raw, &raw);
            }
        }
    }
}
