//! `weir consume --topic ...`: the same worker over a Kafka consumer group instead of a
//! JetStream consumer. Workers started with the same `--group` share the topics' partitions;
//! each partition's offset is committed once everything before it is committed to the graph
//! (or dead-lettered).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use weir_app::pipeline::{JobPipeline, JobTuning};
use weir_metrics::StreamMetrics;
use weir_sources::{KafkaMetrics, KafkaSource, KafkaSourceConfig, StartFrom};
use weir_stream::{CancellationToken, Format, RunOutcome, RunSummary, StreamError};

use super::super::EXIT_FATAL;
use super::super::ingest::{
    ProgressMode, connect_bus, dead_letter_sink, metrics_admin, spawn_metrics, spawn_progress,
    start_run, write_pool,
};
use super::{ConsumeArgs, spawn_busy_clock};

/// `--kafka-start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum KafkaStartArg {
    /// The oldest message of a partition the group has no offset for.
    Earliest,
    /// Only messages produced after the worker joined.
    Latest,
}

/// The Kafka arguments of `weir consume` (any `--topic` selects Kafka instead of JetStream).
#[derive(Debug, Args)]
#[command(next_help_heading = "Kafka source (selected by --topic)")]
pub(crate) struct KafkaArgs {
    /// Kafka topic to read, or a `^regex` of topic names; repeat or separate by commas for
    /// several. Selects Kafka as the source.
    #[arg(long = "topic", value_delimiter = ',', conflicts_with_all = ["nats_url", "stream", "subject", "consumer", "deliver", "ack_wait", "max_ack_pending"])]
    pub(crate) topics: Vec<String>,
    /// Bootstrap brokers (`host:port,...`). Default: `KAFKA_BROKERS`, else 127.0.0.1:9092.
    #[arg(long, requires = "topics")]
    pub(crate) kafka_brokers: Option<String>,
    /// Consumer group id: workers with the same group share the partitions.
    #[arg(long, default_value = "weir", requires = "topics")]
    pub(crate) group: String,
    /// Where a partition without a committed offset starts.
    #[arg(long, value_enum, default_value = "earliest", requires = "topics")]
    pub(crate) kafka_start: KafkaStartArg,
    /// A librdkafka property `KEY=VALUE`, passed through (repeatable): security
    /// (`security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=...`,
    /// `sasl.password=...`, `ssl.ca.location=...`) and tuning (`session.timeout.ms=...`).
    #[arg(long = "kafka-property", short = 'X', value_parser = parse_property, requires = "topics")]
    pub(crate) properties: Vec<(String, String)>,
    /// Most messages handed to the pipeline and not yet committed; fetching pauses at it.
    #[arg(long, default_value_t = 20_000, requires = "topics")]
    pub(crate) max_in_flight: usize,
    /// Longest a rebalance waits for the revoked partitions' records in flight to commit
    /// before they are left to the partition's next owner (read again there).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "topics")]
    pub(crate) revoke_wait: Duration,
}

impl KafkaArgs {
    /// Whether Kafka is the source.
    pub(crate) fn selected(&self) -> bool {
        !self.topics.is_empty()
    }
}

/// `KEY=VALUE`.
pub(crate) fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// The brokers from `--kafka-brokers`, else `KAFKA_BROKERS`, else 127.0.0.1:9092.
pub(crate) fn brokers(arg: Option<&str>) -> anyhow::Result<String> {
    let env = weir_app::config::Env::load().context("reading settings")?;
    Ok(arg
        .map(str::to_owned)
        .or_else(|| env.get("KAFKA_BROKERS").map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1:9092".into()))
}

/// Cancels `stop` once nothing was read for `idle`, everything read is finished and the
/// assigned partitions' lag (once read) is 0.
fn spawn_idle_exit(
    idle: Duration,
    mut progress: tokio::sync::watch::Receiver<weir_events::ProgressEvent>,
    consumer: Arc<KafkaMetrics>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut last = (u64::MAX, tokio::time::Instant::now());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let p = progress.borrow_and_update().clone();
            if p.state.is_terminal() {
                return;
            }
            let paused = p.pressure == weir_events::PressureState::High;
            if p.records_read != last.0 || paused {
                last = (p.records_read, tokio::time::Instant::now());
                continue;
            }
            let finished = p.records_committed + p.records_dead_lettered >= p.records_read;
            let drained = consumer.lag().is_none_or(|n| n == 0);
            if finished && drained && last.1.elapsed() >= idle {
                tracing::info!(?idle, "idle: stopping");
                stop.cancel();
                return;
            }
        }
    });
}

fn print_summary(s: &RunSummary, m: &KafkaMetrics, busy: Option<Duration>) {
    let secs = s.duration.as_secs_f64();
    // A worker waits for messages most of its life: the rate is over the time from the first
    // record read to the last commit, when known.
    let rate_secs = busy.map_or(secs, |d| d.as_secs_f64());
    println!(
        "consume {}",
        match s.outcome {
            RunOutcome::Completed | RunOutcome::Cancelled => "stopped",
            RunOutcome::Failed => "failed",
        }
    );
    println!("  messages received:     {}", m.received());
    println!("  messages committed:    {}", m.committed());
    println!("  partitions revoked:    {}", m.revoked());
    println!("  messages left to next: {}", m.abandoned());
    println!("  records read:          {}", s.records_read);
    println!("  records committed:     {}", s.records_committed);
    println!("  records dead-lettered: {}", s.records_dead_lettered);
    println!("  records uncommitted:   {}", s.records_uncommitted);
    println!("  duration:              {secs:.2}s");
    println!(
        "  rate:                  {:.0} records/s (first record read to last commit)",
        s.records_committed as f64 / rate_secs.max(1e-9)
    );
    println!("  retries:               {}", s.retries);
}

/// Runs `weir consume` with Kafka as the source: the same pipeline as JetStream's
/// ([`JobPipeline`]), the commit frontier turned into committed offsets instead of acks.
pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<u8> {
    let k = &args.kafka;
    let Some((settings, mapping)) = start_run(
        &args.settings,
        args.uri.as_deref(),
        args.memory_limit,
        args.mapping.as_deref(),
        &args.label_prefix,
        args.batch_size,
        args.concurrency,
    )?
    else {
        return Ok(0);
    };
    let memory_limit = settings.memory_limit();
    let tuning = JobTuning {
        batch_size: args.batch_size,
        linger: args.linger,
        concurrency: args.concurrency,
        adaptive_concurrency: !args.fixed_concurrency,
        retry_for: args.retry_for,
        memory_limit,
        ..JobTuning::new(args.job_id.clone(), Format::JsonLines)
    };
    let mut job = JobPipeline::new(tuning, mapping);
    let source_cfg = job.kafka_source(KafkaSourceConfig {
        brokers: brokers(k.kafka_brokers.as_deref())?,
        group: k.group.clone(),
        topics: k.topics.clone(),
        properties: k.properties.clone(),
        start: match k.kafka_start {
            KafkaStartArg::Earliest => StartFrom::Earliest,
            KafkaStartArg::Latest => StartFrom::Latest,
        },
        max_in_flight_messages: k.max_in_flight,
        revoke_wait: k.revoke_wait,
        ..KafkaSourceConfig::default()
    });
    source_cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;

    let pool = write_pool(&settings, args.retry_for).await?;

    let stop = CancellationToken::new();
    weir_app::cancel_on_signal(stop.clone());
    if let Some(p) = connect_bus(
        &settings,
        args.bus,
        args.events,
        Duration::from_secs(600),
        stop.clone(),
    )
    .await?
    {
        job = job.publisher(Arc::new(p));
    }
    let dead = dead_letter_sink(args.dead_letter.as_deref())?;
    let stream = StreamMetrics::new();
    // The key constraints exist before the group is joined.
    let (pipeline, follower) = job.dead_letters(dead.clone()).build(&pool, &stream).await?;

    let (source, commits, committer, consumer_metrics) =
        KafkaSource::start(&source_cfg, stop.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !args.quiet {
        eprintln!(
            "consuming Kafka topics {} as group `{}` from {} (Ctrl-C or SIGTERM to stop)",
            k.topics.join(","),
            k.group,
            source_cfg.brokers
        );
    }
    let metrics_stop = CancellationToken::new();
    let status = pool.clone();
    let metrics_task = spawn_metrics(
        "weir consume",
        &metrics_admin(&settings, args.metrics_bind),
        memory_limit,
        args.quiet,
        vec![
            ("stream", Arc::new(stream.clone()) as _),
            ("consumer", consumer_metrics.clone() as _),
            (
                "pool",
                Arc::new(weir_metrics::pool_source("write", move || status.status())) as _,
            ),
        ],
        Some(&pool),
        &metrics_stop,
    )
    .await?;
    let pipeline = pipeline.with_commit_watch(commits);
    let progress = spawn_progress(
        if args.quiet {
            ProgressMode::None
        } else {
            args.progress
        },
        pipeline.subscribe(),
    );
    let busy = spawn_busy_clock(pipeline.subscribe());
    if let Some(idle) = args.exit_when_idle {
        spawn_idle_exit(
            idle,
            pipeline.subscribe(),
            consumer_metrics.clone(),
            stop.clone(),
        );
    }
    let result = pipeline.run(source, stop.clone()).await;
    // The pipeline is done (its commit sender dropped): stop polling, commit the final
    // frontier, leave the group.
    stop.cancel();
    committer.finish().await;
    let _ = progress.await;
    let _ = follower.await;
    metrics_stop.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = dead.flush();
    pool.close().await;
    let busy = busy.await.ok().flatten();
    match result {
        Ok(summary) => {
            if !args.quiet {
                print_summary(&summary, &consumer_metrics, busy);
            }
            Ok(0)
        }
        Err(StreamError::Failed { cause, summary }) => {
            if !args.quiet {
                print_summary(&summary, &consumer_metrics, busy);
            }
            eprintln!("error: {cause}");
            eprintln!("  uncommitted offsets are read again by the partition's next owner");
            Ok(EXIT_FATAL)
        }
        Err(e) => Err(e).context("consume"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_property;

    #[test]
    fn properties_are_key_value() {
        assert_eq!(
            parse_property("sasl.password=a=b").unwrap(),
            ("sasl.password".into(), "a=b".into())
        );
        assert!(parse_property("nokey").is_err());
        assert!(parse_property("=v").is_err());
    }
}
