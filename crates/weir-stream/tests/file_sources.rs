//! File inputs: a directory read in name order with per-file positions, gzip detected by magic
//! bytes, resume from a checkpoint into a plain file (seek) and into a gzip file (read and
//! skip), a checkpoint that names another input refused, and a 10 MB field dead-lettered as
//! an oversized record.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{Row, map_row};
use weir_stream::{
    CancellationToken, Checkpoint, CheckpointFile, FileSource, MemoryDeadLetters, Pipeline,
    PipelineConfig, RunOutcome, Sink, SinkBatch, SinkError, Source, Stage, StreamError,
};

/// Commits (file index, id) pairs; fails fatally once `fail_after` records are committed.
struct CountingSink {
    fail_after: u64,
    done: AtomicU64,
    committed: Mutex<Vec<(u32, u64)>>,
}

impl Sink for CountingSink {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        if self.done.load(Ordering::SeqCst) >= self.fail_after {
            return Err(SinkError::Fatal("crash".into()));
        }
        self.done
            .fetch_add(batch.items.len() as u64, Ordering::SeqCst);
        self.committed
            .lock()
            .unwrap()
            .extend(batch.items.iter().map(|s| (s.position.file, s.item.id)));
        Ok(())
    }
}

fn rows(from: u64, to: u64) -> String {
    let mut s = String::from("id,name\n");
    for i in from..to {
        s.push_str(&format!("{i},n{i}\r\n"));
    }
    s
}

/// `b_plain.csv` (ids 0..500), `a_gz.csv.gz` (ids 500..1000, gzip) — sorted: a first.
fn make_dir(dir: &Path) -> PathBuf {
    let d = dir.join("in");
    std::fs::create_dir(&d).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(d.join("a_gz.csv.gz")).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(rows(500, 1000).as_bytes()).unwrap();
    gz.finish().unwrap();
    std::fs::write(d.join("b_plain.csv"), rows(0, 500)).unwrap();
    d
}

fn cfg() -> PipelineConfig {
    PipelineConfig {
        batch_records: 50,
        min_batch_records: 1,
        concurrency: 1,
        checkpoint_interval: std::time::Duration::ZERO,
        ..Default::default()
    }
}

async fn ingest(
    input: &Path,
    cp: &CheckpointFile,
    fail_after: u64,
) -> (
    Result<weir_stream::RunSummary, StreamError>,
    Vec<(u32, u64)>,
) {
    let cfg = cfg();
    let resume = cp.load().unwrap();
    let source = FileSource::open(&[input.to_owned()], &cfg, resume.as_ref()).unwrap();
    let sink = Arc::new(CountingSink {
        fail_after,
        done: AtomicU64::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let r = Pipeline::new(cfg, map_row, sink.clone())
        .with_checkpoint(cp.clone())
        .unwrap()
        .run(source, CancellationToken::new())
        .await;
    let c = sink.committed.lock().unwrap().clone();
    (r, c)
}

#[tokio::test]
async fn directory_with_gzip_in_name_order_with_positions_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = make_dir(dir.path());
    let cfg = cfg();
    let source = FileSource::open(std::slice::from_ref(&d), &cfg, None).unwrap();
    let names = source.names();
    assert!(names[0].ends_with("a_gz.csv.gz") && names[1].ends_with("b_plain.csv"));
    assert_eq!(
        source.bytes_total(),
        None,
        "gzip: decompressed size unknown"
    );
    let (r, committed) = {
        let cp = CheckpointFile::new(dir.path().join("cp.json"));
        ingest(&d, &cp, u64::MAX).await
    };
    let s = r.unwrap();
    assert_eq!(s.outcome, RunOutcome::Completed);
    assert_eq!(s.records_committed, 1000);
    // File 0 is the gzip one (ids 500..), file 1 the plain one; order kept with concurrency 1.
    let ids: Vec<u64> = committed.iter().map(|c| c.1).collect();
    let want: Vec<u64> = (500..1000).chain(0..500).collect();
    assert_eq!(ids, want);
    assert!(committed[..500].iter().all(|c| c.0 == 0));
    assert!(committed[500..].iter().all(|c| c.0 == 1));
    let plain_only = FileSource::open(&[d.join("b_plain.csv")], &cfg, None).unwrap();
    assert_eq!(plain_only.bytes_total(), Some(rows(0, 500).len() as u64));
}

#[tokio::test]
async fn resume_from_checkpoint_into_gzip_and_plain_files() {
    // Crash inside the gzip file (file 0), then inside the plain file (file 1), then finish.
    let dir = tempfile::tempdir().unwrap();
    let d = make_dir(dir.path());
    let cp = CheckpointFile::new(dir.path().join("cp.json"));
    let mut all: BTreeMap<u64, u32> = BTreeMap::new();
    let mut checkpoints = Vec::new();
    for fail_after in [200, 450, u64::MAX] {
        let (r, committed) = ingest(&d, &cp, fail_after).await;
        if fail_after == u64::MAX {
            assert_eq!(r.unwrap().outcome, RunOutcome::Completed);
        } else {
            assert!(matches!(r.unwrap_err().cause(), StreamError::SinkFatal(_)));
        }
        for (_, id) in committed {
            *all.entry(id).or_default() += 1;
        }
        checkpoints.push(cp.load().unwrap().unwrap());
    }
    assert_eq!(checkpoints[0].position.file, 0);
    assert_eq!(checkpoints[0].position.line, 202);
    assert_eq!(checkpoints[1].position.file, 1, "{:?}", checkpoints[1]);
    assert_eq!(checkpoints[1].position.line, 152);
    assert!(checkpoints[2].complete);
    // Each resume started at the checkpoint, so nothing was committed twice here (batches
    // committed up to the crash were all checkpointed: concurrency 1, interval 0).
    assert_eq!(all.len(), 1000);
    assert!(all.values().all(|&n| n == 1), "{all:?}");
}

#[tokio::test]
async fn checkpoint_for_another_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = make_dir(dir.path());
    let cp = Checkpoint {
        version: weir_stream::CHECKPOINT_VERSION,
        job_id: "x".into(),
        source: "/elsewhere/other.csv".into(),
        position: weir_stream::Position {
            file: 0,
            line: 10,
            offset: 100,
        },
        complete: false,
        run_id: None,
    };
    let err = FileSource::open(&[d], &cfg(), Some(&cp)).unwrap_err();
    assert!(matches!(err, StreamError::CheckpointMismatch(_)), "{err}");
}

#[tokio::test]
async fn ten_megabyte_field_is_dead_lettered_as_oversized() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.csv");
    let mut s = String::from("id,name\n1,a\n2,");
    s.push_str(&"x".repeat(10 << 20));
    s.push_str("\n3,c\n");
    std::fs::write(&p, s).unwrap();
    let cfg = cfg();
    let max = cfg.max_record_bytes;
    let source = FileSource::open(&[p], &cfg, None).unwrap();
    let dl = Arc::new(MemoryDeadLetters::new(10));
    let sink = Arc::new(CountingSink {
        fail_after: u64::MAX,
        done: AtomicU64::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let s = Pipeline::new(cfg, map_row, sink.clone())
        .with_dead_letters(dl.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (s.records_read, s.records_committed, s.records_dead_lettered),
        (3, 2, 1)
    );
    let l = &dl.letters()[0];
    assert_eq!((l.line, l.stage), (3, Stage::Read));
    assert_eq!(
        l.error,
        format!("record exceeds {max} bytes ({} bytes)", (10 << 20) + 2)
    );
    assert!(l.raw_truncated && l.raw.len() <= 4096);
    assert_eq!((l.offset, l.len), (12, (10 << 20) + 2));
    let ids: Vec<u64> = sink.committed.lock().unwrap().iter().map(|c| c.1).collect();
    assert_eq!(ids, [1, 3]);
}

#[tokio::test]
async fn a_dead_letter_names_the_exact_byte_range_of_its_record() {
    // A byte-order mark, CRLF, and a 10 KiB record (more than the raw copy keeps) that does
    // not decode: its range in the file is the whole record, terminator excluded.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("range.csv");
    let long = format!("2,{}", "y".repeat(10 << 10));
    let bad = format!("{long},extra");
    let text = format!("id,name\r\n1,a\r\n{bad}\r\nx3,\"two\r\nlines\"\r\n4,d\r\n");
    let bytes = [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat();
    std::fs::write(&p, &bytes).unwrap();
    let cfg = cfg();
    let source = FileSource::open(&[p], &cfg, None).unwrap();
    let dl = Arc::new(MemoryDeadLetters::new(10));
    let sink = Arc::new(CountingSink {
        fail_after: u64::MAX,
        done: AtomicU64::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let s = Pipeline::new(cfg, map_row, sink)
        .with_dead_letters(dl.clone())
        .run(source, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((s.records_committed, s.records_dead_lettered), (2, 2));
    let letters = dl.letters();
    let wanted = [bad.as_str(), "x3,\"two\r\nlines\""];
    for (l, want) in letters.iter().zip(wanted) {
        let range = l.offset as usize..(l.offset + l.len) as usize;
        assert_eq!(&bytes[range], want.as_bytes(), "line {}", l.line);
        assert_eq!(l.raw_truncated, want.len() > 4096);
        assert!(want.starts_with(&l.raw));
    }
    assert_eq!(letters[0].raw.len(), 4096);
}
