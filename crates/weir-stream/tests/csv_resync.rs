//! One bad quote costs one record: after a stray quote (at a field start, never closed, or
//! closed by a later row's quote; or in the middle of a field) the rows after it are read and
//! committed, and only the line holding it is dead-lettered (see the framing rules in
//! `source.rs`).

mod common;

use std::sync::Arc;

use common::{CollectSink, map_row};
use weir_stream::{
    CancellationToken, FileSource, MemoryDeadLetters, Pipeline, PipelineConfig, Stage,
};

/// The header, row 0, then the bad row (line 3), then rows 2..=101, every tenth of which
/// has a quoted field (one of them holding a newline) for a stray quote to pair with.
fn file(bad: &str, crlf: bool) -> Vec<u8> {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut s = format!("id,name,note{nl}0,zero,\"ok\"{nl}{bad}{nl}");
    for i in 2..=101 {
        let note = match i % 10 {
            0 => format!("\"note {i}, quoted\""),
            5 => format!("\"two{nl}lines\""),
            _ => format!("plain {i}"),
        };
        s.push_str(&format!("{i},name {i},{note}{nl}"));
    }
    s.into_bytes()
}

async fn ingest(
    bytes: Vec<u8>,
) -> (
    weir_stream::RunSummary,
    Vec<u64>,
    Vec<weir_stream::DeadLetter>,
) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.csv");
    std::fs::write(&p, bytes).unwrap();
    let cfg = PipelineConfig {
        batch_records: 16,
        min_batch_records: 1,
        ..Default::default()
    };
    let source = FileSource::open(&[p], &cfg, None).unwrap();
    let sink = Arc::new(CollectSink::default());
    let dl = Arc::new(MemoryDeadLetters::new(1000));
    let s = Pipeline::new(cfg, map_row, sink.clone())
        .with_dead_letters(dl.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    let mut ids: Vec<u64> = sink
        .committed
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    (s, ids, dl.letters())
}

#[tokio::test]
async fn a_stray_quote_costs_one_record_and_the_hundred_after_it_are_committed() {
    let want: Vec<u64> = std::iter::once(0).chain(2..=101).collect();
    for crlf in [false, true] {
        for bad in [
            "1,\"unclosed,x", // opens at a field start, closed by row 10's quote + text
            "1,x,\"unclosed", // opens in the last field
            "1,Bo\"b,x",      // in the middle of a field
            "1,\"Bo\"b,x",    // text after a closing quote
        ] {
            let (s, ids, letters) = ingest(file(bad, crlf)).await;
            assert!(s.is_balanced(), "{s:?}");
            assert_eq!(ids, want, "{bad:?} crlf={crlf}");
            assert_eq!(letters.len(), 1, "{bad:?} crlf={crlf}: {letters:?}");
            let l = &letters[0];
            assert_eq!((l.line, l.stage, l.raw.as_str()), (3, Stage::Decode, bad));
            assert!(l.error.contains("quot"), "{}", l.error);
            assert_eq!(s.records_read, 102);
        }
    }
}

#[tokio::test]
async fn a_quote_never_closed_to_the_end_of_the_file_costs_one_record() {
    // No quote after the stray one: the old framing read the rest of the file as one record.
    let mut s = String::from("id,name\n0,a\n1,\"open\n");
    for i in 2..=101 {
        s.push_str(&format!("{i},n{i}\n"));
    }
    let (summary, ids, letters) = ingest(s.into_bytes()).await;
    assert_eq!(ids.len(), 101);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].line, 3);
    assert_eq!(summary.records_read, 102);
}
