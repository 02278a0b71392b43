//! End to end through a reader source: rows committed, bad rows dead-lettered by line,
//! accounting balanced, checkpoint at the end.

mod common;

use std::io::Cursor;
use std::sync::Arc;

use common::{CollectSink, csv, map_row};
use weir_stream::{
    CancellationToken, CheckpointFile, Format, JsonlDeadLetters, MemoryDeadLetters, Pipeline,
    PipelineConfig, ReaderSource, RunOutcome, Stage,
};

#[tokio::test]
async fn csv_rows_are_committed_and_bad_rows_dead_lettered_by_line() {
    let mut input = csv(100);
    input.push_str("x,bad id\n"); // line 102: map error on `id`
    input.push_str("1,\"open\n"); // line 103: unterminated quote (swallows to the end)
    let cfg = PipelineConfig {
        batch_records: 7,
        min_batch_records: 1,
        ..Default::default()
    };
    let sink = Arc::new(CollectSink::default());
    let dl = Arc::new(MemoryDeadLetters::new(10));
    let source = ReaderSource::new(Cursor::new(input.into_bytes()), "mem.csv", &cfg);
    let summary = Pipeline::new(cfg, map_row, sink.clone())
        .with_dead_letters(dl.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(summary.outcome, RunOutcome::Completed);
    assert_eq!(summary.records_read, 102);
    assert_eq!(summary.records_committed, 100);
    assert_eq!(summary.records_dead_lettered, 2);
    assert!(summary.is_balanced());
    let mut ids: Vec<u64> = sink
        .committed
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
    assert!(sink.batch_sizes.lock().unwrap().iter().all(|&n| n <= 7));
    let letters = dl.letters();
    assert_eq!(letters.len(), 2);
    assert_eq!((letters[0].line, letters[0].stage), (102, Stage::Map));
    assert!(letters[0].error.contains("`id`"), "{}", letters[0].error);
    assert_eq!(letters[0].source, "mem.csv");
    assert_eq!((letters[1].line, letters[1].stage), (103, Stage::Decode));
    assert!(letters[1].error.contains("quot"), "{}", letters[1].error);
}

#[tokio::test]
async fn json_lines_with_file_dead_letters_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let input = "{\"id\":1}\n{\"id\":2}\n{oops\n\n{\"id\":3}\n";
    let cfg = PipelineConfig {
        format: Format::JsonLines,
        ..Default::default()
    };
    let sink = Arc::new(CollectSink::default());
    let dl = Arc::new(JsonlDeadLetters::open(dir.path().join("dl.jsonl")).unwrap());
    let cp = CheckpointFile::new(dir.path().join("cp.json"));
    let source = ReaderSource::new(Cursor::new(input.as_bytes().to_vec()), "in.jsonl", &cfg);
    let summary = Pipeline::new(cfg, map_row, sink.clone())
        .with_dead_letters(dl)
        .with_checkpoint(cp.clone())
        .unwrap()
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (summary.records_committed, summary.records_dead_lettered),
        (3, 1)
    );
    let text = std::fs::read_to_string(dir.path().join("dl.jsonl")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(letter["line"], 3);
    assert_eq!(letter["stage"], "decode");
    assert_eq!(letter["raw"], "{oops");
    let cp = cp.load().unwrap().unwrap();
    assert!(cp.complete);
    assert_eq!(cp.position.offset, input.len() as u64);
    assert_eq!(cp.position.line, 6);
}
