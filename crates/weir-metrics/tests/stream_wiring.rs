//! Wiring the stream metrics for real pipelines: `StreamMetrics::attach` (progress followed,
//! batches observed) sums every job into the process's figures and times each batch once;
//! `TimedSink` times write attempts for a pipeline run without the observer.

use std::io::Cursor;
use std::sync::Arc;

use weir_metrics::{Registry, StreamMetrics, TimedSink};
use weir_stream::{
    CancellationToken, Decoded, DecodedRecord, MapError, MemoryDeadLetters, NullSink, Pipeline,
    PipelineConfig, ReaderSource, RunSummary,
};

fn map_row(rec: &DecodedRecord<'_>) -> Result<u64, MapError> {
    match &rec.value {
        Decoded::Csv(row) => row
            .get("id")
            .ok_or_else(|| MapError::field("id", "missing"))?
            .parse::<u64>()
            .map_err(|e| MapError::field("id", e.to_string())),
        Decoded::Json(_) => Err(MapError::record("expected CSV")),
    }
}

/// `rows` rows, every hundredth (from the 8th) not a number.
fn csv(rows: usize) -> Vec<u8> {
    let mut csv = String::from("id\n");
    for i in 0..rows {
        if i % 100 == 7 {
            csv.push_str("not-a-number\n");
        } else {
            csv.push_str(&format!("{i}\n"));
        }
    }
    csv.into_bytes()
}

fn config(job: &str) -> PipelineConfig {
    PipelineConfig {
        job_id: job.into(),
        batch_records: 100,
        ..PipelineConfig::default()
    }
}

async fn run_attached(metrics: &StreamMetrics, job: &str, rows: usize) -> RunSummary {
    let cfg = config(job);
    let source = ReaderSource::new(Cursor::new(csv(rows)), "m.csv", &cfg);
    let (pipeline, follower) = metrics.attach(
        Pipeline::new(cfg, map_row, NullSink::<u64>::new())
            .with_dead_letters(Arc::new(MemoryDeadLetters::new(100))),
    );
    let summary = pipeline
        .run(source, CancellationToken::new())
        .await
        .expect("ingest");
    follower.await.expect("follower");
    summary
}

fn line_value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_jobs_add_up_and_each_batch_is_timed_once() {
    let registry = Registry::new();
    let metrics = StreamMetrics::new();
    registry
        .register_source("stream", Arc::new(metrics.clone()))
        .unwrap();

    let a = run_attached(&metrics, "job-a", 1000).await;
    let b = run_attached(&metrics, "job-b", 500).await;
    assert_eq!(a.records_committed, 990);
    assert_eq!(b.records_committed, 495);
    assert!(a.batches_written > 1 && b.batches_written > 1);

    let text = registry.encode();
    assert_eq!(line_value(&text, "weir_stream_records_read_total"), 1500);
    assert_eq!(
        line_value(&text, "weir_stream_records_committed_total"),
        1485
    );
    assert_eq!(
        line_value(&text, "weir_stream_records_dead_lettered_total"),
        15
    );
    assert_eq!(line_value(&text, "weir_stream_batches_in_flight"), 0);
    assert_eq!(line_value(&text, "weir_stream_backpressure_active"), 0);
    assert_eq!(
        line_value(&text, "weir_stream_batch_duration_seconds_count"),
        a.batches_written + b.batches_written,
        "one observation per batch written\n{text}"
    );
    assert_eq!(metrics.tracked_jobs(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_sink_times_every_write_without_the_observer() {
    let registry = Registry::new();
    let metrics = StreamMetrics::new();
    registry
        .register_source("stream", Arc::new(metrics.clone()))
        .unwrap();
    let cfg = config("timed");
    let source = ReaderSource::new(Cursor::new(csv(300)), "t.csv", &cfg);
    let sink = TimedSink::new(NullSink::<u64>::new(), metrics.batch_duration().clone());
    let summary = Pipeline::new(cfg, map_row, sink)
        .with_dead_letters(Arc::new(MemoryDeadLetters::new(100)))
        .run(source, CancellationToken::new())
        .await
        .expect("ingest");
    let text = registry.encode();
    assert_eq!(
        line_value(&text, "weir_stream_batch_duration_seconds_count"),
        summary.batches_written + summary.retries,
        "{text}"
    );
    // Progress was not followed: no records counted.
    assert_eq!(line_value(&text, "weir_stream_records_read_total"), 0);
}
