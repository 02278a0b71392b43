//! The CSV header is checked against the mapper before anything is written: a column the
//! mapper needs that is missing stops the run naming it, for the first input and, since
//! `FileSource` reads every header ahead, for a later input of a directory too; a header
//! behind a byte-order mark passes.

mod common;

use std::sync::Arc;

use common::{CollectSink, Row, map_row};
use weir_stream::{
    CancellationToken, DecodedRecord, FileSource, MapError, Mapper, MemoryDeadLetters, Pipeline,
    PipelineConfig, ReaderSource, RunOutcome, StreamError,
};

/// `map_row`, needing the columns `id` and `name`.
struct NeedsIdAndName;

impl Mapper for NeedsIdAndName {
    type Item = Row;

    fn map(&self, record: &DecodedRecord<'_>) -> Result<Row, MapError> {
        map_row(record)
    }

    fn check_header(&self, columns: &[&str]) -> Result<(), MapError> {
        for need in ["id", "name"] {
            if !columns.contains(&need) {
                return Err(MapError::field(
                    need,
                    format!("missing; columns: {}", columns.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

fn cfg() -> PipelineConfig {
    PipelineConfig {
        batch_records: 10,
        min_batch_records: 1,
        ..Default::default()
    }
}

async fn run(
    source: impl weir_stream::Source,
) -> (
    Result<weir_stream::RunSummary, StreamError>,
    Arc<CollectSink>,
) {
    let sink = Arc::new(CollectSink::default());
    let r = Pipeline::new(cfg(), NeedsIdAndName, sink.clone())
        .with_dead_letters(Arc::new(MemoryDeadLetters::new(100)))
        .run(source, CancellationToken::new())
        .await;
    (r, sink)
}

fn rows(n: u64, header: &str) -> String {
    let mut s = format!("{header}\n");
    for i in 0..n {
        s.push_str(&format!("{i},n{i}\n"));
    }
    s
}

fn header_failure(r: Result<weir_stream::RunSummary, StreamError>) -> (String, String) {
    match r {
        Err(StreamError::Failed { cause, summary }) => {
            assert_eq!(summary.outcome, RunOutcome::Failed);
            assert_eq!(summary.records_committed, 0);
            match *cause {
                StreamError::Header { path, reason } => (path.display().to_string(), reason),
                other => panic!("not a header error: {other}"),
            }
        }
        other => panic!("expected a failed run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_column_stops_the_run_before_anything_is_written() {
    let src = ReaderSource::new(
        std::io::Cursor::new(rows(50, "id,nme").into_bytes()),
        "typo.csv",
        &cfg(),
    );
    let (r, sink) = run(src).await;
    let (path, reason) = header_failure(r);
    assert_eq!(path, "typo.csv");
    assert!(
        reason.contains("field `name`") && reason.contains("columns: id, nme"),
        "{reason}"
    );
    assert!(sink.committed.lock().unwrap().is_empty());
    assert!(sink.batch_sizes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_later_file_with_a_bad_header_stops_the_run_before_the_first_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), rows(500, "id,name")).unwrap();
    std::fs::write(dir.path().join("b.csv"), rows(500, "id,name")).unwrap();
    std::fs::write(dir.path().join("c.csv"), rows(5, "id,label")).unwrap();
    let source = FileSource::open(&[dir.path().to_owned()], &cfg(), None).unwrap();
    let (r, sink) = run(source).await;
    let (path, reason) = header_failure(r);
    assert!(path.ends_with("c.csv"), "{path}");
    assert!(reason.contains("`name`"), "{reason}");
    assert!(
        sink.batch_sizes.lock().unwrap().is_empty(),
        "batches were written before the bad header was found"
    );
}

#[tokio::test]
async fn a_header_behind_a_byte_order_mark_and_with_crlf_passes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("excel.csv");
    let text = rows(20, "id,name").replace('\n', "\r\n");
    std::fs::write(&p, [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat()).unwrap();
    let source = FileSource::open(&[p], &cfg(), None).unwrap();
    let (r, sink) = run(source).await;
    let s = r.unwrap();
    assert_eq!((s.records_read, s.records_committed), (20, 20));
    let ids: Vec<u64> = sink
        .committed
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
}
