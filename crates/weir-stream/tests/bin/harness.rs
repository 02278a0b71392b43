//! Test-only child process for weir-stream's integration tests (not installed, not
//! published). Modes:
//!
//! * `ingest <input|-> <commits> <checkpoint> <deadletters> <batch_records> <sink_delay_ms>`:
//!   ingests a CSV input (file, directory or stdin), resuming from the checkpoint file when it
//!   holds one, with a sink that appends one `id` line per committed record to `commits` (one
//!   `write` per batch, so a SIGKILL never leaves half a batch). Prints the summary as JSON.
//! * `rss <rows> <sink_delay_ms>`: runs `rows` generated CSV rows (~100 bytes each) through
//!   the default settings and a slow sink, samples RSS, prints
//!   `{"baseline":..,"peak":..,"bound":..}` in bytes.

#[path = "../common/mod.rs"]
mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{GenReader, Row, map_row};
use weir_memwatch::procfs::{self, Process};
use weir_stream::{
    CancellationToken, CheckpointFile, FileSource, JsonlDeadLetters, Pipeline, PipelineConfig,
    ReaderSource, Sink, SinkBatch, SinkError, StreamError,
};

struct FileSink {
    out: Mutex<File>,
    delay: Duration,
}

impl Sink for FileSink {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        tokio::time::sleep(self.delay).await;
        let mut buf = Vec::with_capacity(batch.items.len() * 8);
        for s in batch.items {
            writeln!(buf, "{}", s.item.id).map_err(|e| SinkError::Fatal(e.to_string()))?;
        }
        self.out
            .lock()
            .unwrap()
            .write_all(&buf)
            .map_err(|e| SinkError::Fatal(e.to_string()))
    }
}

struct SlowNull(Duration);

impl Sink for SlowNull {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        tokio::time::sleep(self.0).await;
        std::hint::black_box(batch.items.len());
        Ok(())
    }
}

fn summary_json(s: &weir_stream::RunSummary) -> String {
    format!(
        r#"{{"read":{},"committed":{},"dead":{},"uncommitted":{},"line":{}}}"#,
        s.records_read,
        s.records_committed,
        s.records_dead_lettered,
        s.records_uncommitted,
        s.checkpoint.line
    )
}

async fn ingest(args: &[String]) -> Result<(), StreamError> {
    let [input, commits, checkpoint, dead, batch, delay] = args else {
        panic!("usage: ingest <input> <commits> <checkpoint> <deadletters> <batch> <delay_ms>");
    };
    let cfg = PipelineConfig {
        batch_records: batch.parse().unwrap(),
        min_batch_records: 1,
        checkpoint_interval: Duration::ZERO,
        ..Default::default()
    };
    let cp = CheckpointFile::new(checkpoint);
    let resume = cp.load()?;
    let source = FileSource::open(&[PathBuf::from(input)], &cfg, resume.as_ref())?;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(commits)
        .unwrap();
    let sink = FileSink {
        out: Mutex::new(out),
        delay: Duration::from_millis(delay.parse().unwrap()),
    };
    let summary = Pipeline::new(cfg, map_row, sink)
        .with_dead_letters(Arc::new(JsonlDeadLetters::open(dead).unwrap()))
        .with_checkpoint(cp)?
        .run(source, CancellationToken::new())
        .await?;
    println!("{}", summary_json(&summary));
    Ok(())
}

async fn rss(args: &[String]) -> Result<(), StreamError> {
    let [rows, delay] = args else {
        panic!("usage: rss <rows> <delay_ms>");
    };
    let rows: u64 = rows.parse().unwrap();
    let cfg = PipelineConfig::default();
    let bound = cfg.memory_bound_bytes();
    let baseline = procfs::rss_bytes(Process::Current).unwrap();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let done = CancellationToken::new();
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.is_cancelled() {
                let now = procfs::rss_bytes(Process::Current).unwrap_or(0);
                peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let source = ReaderSource::new(GenReader::new(Some(rows)), "gen.csv", &cfg);
    let sink = SlowNull(Duration::from_millis(delay.parse().unwrap()));
    let summary = Pipeline::new(cfg, map_row, sink)
        .run(source, CancellationToken::new())
        .await?;
    done.cancel();
    sampler.await.unwrap();
    assert_eq!(summary.records_committed, rows);
    let hwm = procfs::peak_rss_bytes(Process::Current).unwrap_or(0);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(hwm);
    println!(
        r#"{{"baseline":{baseline},"peak":{peak},"bound":{bound},"bytes_read":{}}}"#,
        summary.bytes_read
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("ingest") => ingest(&args[1..]).await,
            Some("rss") => rss(&args[1..]).await,
            _ => panic!("usage: weir-stream-harness ingest|rss ..."),
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
