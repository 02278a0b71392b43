//! `weir consume`: a long-running worker that keeps the graph in step with a NATS JetStream
//! subject, through the same mapping, pipeline and pool as `weir ingest`. Workers started with
//! the same `--consumer` share the stream's messages; each message is acknowledged after its
//! records are committed (or dead-lettered). With `--topic`, the source is a Kafka consumer
//! group instead ([`kafka`]).

mod kafka;

pub(crate) use kafka::{brokers as kafka_brokers, parse_property};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use weir_app::pipeline::{GraphPipeline, JobPipeline, JobTuning};
use weir_app::settings::Settings;
use weir_metrics::StreamMetrics;
use weir_pool::Pool;
use weir_sources::{DeliverFrom, JetStreamSource, JetStreamSourceConfig, SourceFinisher};
use weir_stream::{
    CancellationToken, DeadLetterSink, Format, RunOutcome, RunSummary, Source, StreamError,
};

use super::EXIT_FATAL;
use super::ingest::{
    BusArg, EventsArg, ProgressMode, SettingsArgs, connect_bus, dead_letter_sink, metrics_admin,
    parse_size, spawn_metrics, spawn_progress, start_run, write_pool,
};

/// `--deliver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeliverArg {
    /// Every message the stream holds.
    All,
    /// Only messages published after the consumer is created.
    New,
    /// The last message, then new ones.
    Last,
}

/// Arguments of `weir consume`.
#[derive(Debug, Args)]
#[command(
    after_help = "Message bodies: one JSON object, or several as JSON Lines (one per line).\n\
    With `[input] operation_field` in the mapping, records can delete (see `weir validate`).\n\n\
    Exit codes:\n  \
    0  stopped by SIGTERM / Ctrl-C (or --exit-when-idle) after acknowledging what was committed\n  \
    1  fatal error (bad arguments or mapping, graph unreachable at the start or for longer than\n     \
       --retry-for, dead-letter file unwritable, ...); unacknowledged messages are redelivered"
)]
pub(crate) struct ConsumeArgs {
    /// The mapping file (TOML); check it with `weir validate`.
    #[arg(long, short, required_unless_present = "show_config")]
    mapping: Option<PathBuf>,
    /// Settings file, `--show-config`.
    #[command(flatten)]
    settings: SettingsArgs,
    /// NATS URL of the stream. Default: `NATS_URL`, else the settings file's `bus.url`, else
    /// nats://127.0.0.1:4222.
    #[arg(long)]
    nats_url: Option<String>,
    /// JetStream stream to read (created with --subject when missing).
    #[arg(long, default_value = "WEIR_INGEST")]
    stream: String,
    /// Subject filter of the consumer (`*` and `>` wildcards allowed).
    #[arg(long, default_value = "weir.ingest")]
    subject: String,
    /// Durable consumer name: workers with the same name share the messages.
    #[arg(long, default_value = "weir")]
    consumer: String,
    /// Where a new consumer starts (an existing one keeps its place).
    #[arg(long, value_enum, default_value = "all")]
    deliver: DeliverArg,
    /// How long the server waits for a message's ack before redelivering it to a worker.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,
    /// Most messages delivered and not yet acknowledged, across all workers.
    #[arg(long, default_value_t = 20_000)]
    max_ack_pending: usize,
    /// Most records per batch (one write transaction each).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Longest a started batch waits for more records before it is written.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    linger: Duration,
    /// Most batches written at once (adapts between 1 and this, like `weir ingest`).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Always keep `--concurrency` batches in flight instead of adapting.
    #[arg(long)]
    fixed_concurrency: bool,
    /// Memory limit (e.g. `256MiB`): pulling pauses above 80 % of it and resumes below 70 %.
    /// Default: the cgroup limit, if any.
    #[arg(long, value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Append records that cannot be decoded, mapped or written to this JSON Lines file
    /// (`line` is the message's stream sequence). Default: print them to stderr.
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    /// How long a batch keeps retrying while the graph server is unreachable before the worker
    /// fails (its messages are then redelivered); meanwhile pulling pauses. A worker started
    /// while the server is down waits this long for it too.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// Stop (exit 0) once nothing has arrived for this long and everything read is committed
    /// (batch runs over a stream, benchmarks). Default: run until SIGTERM / Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    exit_when_idle: Option<Duration>,
    /// Prefix every label and relationship type.
    #[arg(long, default_value = "")]
    label_prefix: String,
    /// Bolt URI of the graph server (overrides NEO4J_URI).
    #[arg(long)]
    uri: Option<String>,
    /// Job id used in progress and change events.
    #[arg(long, default_value = "consume")]
    job_id: String,
    /// Publish the committed changes to this bus (see `weir ingest --bus`).
    #[arg(long, value_enum)]
    bus: Option<BusArg>,
    /// With `--bus`: `required` (default), `best-effort` or `off` (see `weir ingest --events`).
    #[arg(long, value_enum, requires = "bus")]
    events: Option<EventsArg>,
    /// Serve `/metrics` (stream, consumer, pool, memory) on this address. Default: off.
    #[arg(long)]
    metrics_bind: Option<std::net::SocketAddr>,
    /// Progress lines every 5 s on stderr (`plain`, the default for a worker) or none.
    #[arg(long, value_enum, default_value = "plain")]
    progress: ProgressMode,
    /// Only errors.
    #[arg(long, short)]
    quiet: bool,
    /// Kafka as the source (`--topic` and the flags under its heading).
    #[command(flatten)]
    kafka: kafka::KafkaArgs,
}

impl ConsumeArgs {
    /// `--config` / `--show-config`.
    pub(crate) fn settings_args(&self) -> &SettingsArgs {
        &self.settings
    }

    /// `--quiet`.
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }

    /// `--memory-limit`.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }
}

/// What a worker reads of its source's consumer counters, whichever broker it is.
trait WorkerConsumer: weir_metrics::MetricSource {
    /// Messages the broker still holds for this consumer (group), once read.
    fn backlog(&self) -> Option<u64>;
    /// The summary's lines about messages.
    fn summary_lines(&self) -> [(&'static str, u64); 4];
}

impl WorkerConsumer for weir_sources::ConsumerMetrics {
    fn backlog(&self) -> Option<u64> {
        self.pending()
    }

    fn summary_lines(&self) -> [(&'static str, u64); 4] {
        [
            ("messages received", self.received()),
            ("messages acked", self.acked()),
            ("messages redelivered", self.redelivered()),
            ("messages handed back", self.naked()),
        ]
    }
}

/// Cancels `stop` once nothing was read for `idle`, everything read is finished, intake is not
/// paused on memory pressure (a paused worker reads nothing because it chose not to) and the
/// broker has nothing left for the consumer (when its backlog has been read).
fn spawn_idle_exit(
    idle: Duration,
    mut progress: tokio::sync::watch::Receiver<weir_events::ProgressEvent>,
    consumer: Arc<dyn WorkerConsumer>,
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
            let drained = consumer.backlog().is_none_or(|n| n == 0);
            if finished && drained && last.1.elapsed() >= idle {
                tracing::info!(?idle, "idle: stopping");
                stop.cancel();
                return;
            }
        }
    });
}

/// The time from the first record read to the last commit, measured from the progress feed;
/// the task ends with the pipeline.
fn spawn_busy_clock(
    mut progress: tokio::sync::watch::Receiver<weir_events::ProgressEvent>,
) -> tokio::task::JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        let mut first: Option<tokio::time::Instant> = None;
        let mut last_done = (0u64, None::<tokio::time::Instant>);
        loop {
            {
                let p = progress.borrow_and_update();
                let now = tokio::time::Instant::now();
                if p.records_read > 0 && first.is_none() {
                    first = Some(now);
                }
                let done = p.records_committed + p.records_dead_lettered;
                if done != last_done.0 {
                    last_done = (done, Some(now));
                }
            }
            if progress.changed().await.is_err() {
                break;
            }
        }
        Some(last_done.1?.saturating_duration_since(first?)).filter(|d| !d.is_zero())
    })
}

fn print_summary(s: &RunSummary, m: &dyn WorkerConsumer, busy: Option<Duration>) {
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
    for (what, n) in m.summary_lines() {
        println!("  {:<22} {n}", format!("{what}:"));
    }
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

/// The settings and job of a worker, before its source is configured (`None`: only
/// `--show-config`).
fn prepare(args: &ConsumeArgs) -> anyhow::Result<Option<(Settings, JobPipeline)>> {
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
        return Ok(None);
    };
    let tuning = JobTuning {
        batch_size: args.batch_size,
        linger: args.linger,
        concurrency: args.concurrency,
        adaptive_concurrency: !args.fixed_concurrency,
        retry_for: args.retry_for,
        memory_limit: settings.memory_limit(),
        ..JobTuning::new(args.job_id.clone(), Format::JsonLines)
    };
    Ok(Some((settings, JobPipeline::new(tuning, mapping))))
}

/// A worker's pipeline, built, with what it runs beside; its source is started next.
struct Worker {
    settings: Settings,
    pool: Pool,
    stop: CancellationToken,
    dead: Arc<dyn DeadLetterSink>,
    stream: StreamMetrics,
    pipeline: GraphPipeline,
    follower: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Waits for the graph server, connects the bus (`--bus`), opens the dead-letter file and
    /// builds the pipeline (the key constraints exist before the first message is read).
    /// SIGTERM and Ctrl-C fire `stop` from here on.
    async fn build(
        args: &ConsumeArgs,
        settings: Settings,
        mut job: JobPipeline,
    ) -> anyhow::Result<Self> {
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
        let (pipeline, follower) = job.dead_letters(dead.clone()).build(&pool, &stream).await?;
        Ok(Self {
            settings,
            pool,
            stop,
            dead,
            stream,
            pipeline,
            follower,
        })
    }

    /// Runs the pipeline over the started `source` until `stop` (or `--exit-when-idle`), then
    /// finishes the source (acks or offsets), flushes, closes and prints the summary.
    /// `on_failure` tells the user what becomes of what was not committed.
    async fn run(
        self,
        args: &ConsumeArgs,
        source: impl Source,
        commits: tokio::sync::watch::Sender<weir_stream::Position>,
        finisher: SourceFinisher,
        consumer: Arc<dyn WorkerConsumer>,
        on_failure: &str,
    ) -> anyhow::Result<u8> {
        let Self {
            settings,
            pool,
            stop,
            dead,
            stream,
            pipeline,
            follower,
        } = self;
        let metrics_stop = CancellationToken::new();
        let status = pool.clone();
        let consumer_source: Arc<dyn weir_metrics::MetricSource> = consumer.clone();
        let metrics_task = spawn_metrics(
            "weir consume",
            &metrics_admin(&settings, args.metrics_bind),
            settings.memory_limit(),
            args.quiet,
            vec![
                ("stream", Arc::new(stream.clone()) as _),
                ("consumer", consumer_source),
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
            spawn_idle_exit(idle, pipeline.subscribe(), consumer.clone(), stop.clone());
        }
        let result = pipeline.run(source, stop.clone()).await;
        // The pipeline is done (its commit sender dropped): stop reading, ack (commit) what
        // was committed, hand back the rest (leave the group).
        stop.cancel();
        finisher.finish().await;
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
                    print_summary(&summary, consumer.as_ref(), busy);
                }
                Ok(0)
            }
            Err(StreamError::Failed { cause, summary }) => {
                if !args.quiet {
                    print_summary(&summary, consumer.as_ref(), busy);
                }
                eprintln!("error: {cause}");
                eprintln!("  {on_failure}");
                Ok(EXIT_FATAL)
            }
            Err(e) => Err(e).context("consume"),
        }
    }
}

/// Runs `weir consume`.
pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<u8> {
    if args.kafka.selected() {
        // Boxed, so that this future does not hold the Kafka worker's inline (large_futures).
        return Box::pin(kafka::run(args)).await;
    }
    let Some((settings, job)) = prepare(&args)? else {
        return Ok(0);
    };
    // The stream's NATS: the flag, else the settings' (`bus.url`, `NATS_URL`).
    let nats_url = super::publish::stream_nats_url(args.nats_url.as_deref(), &settings);
    let source_cfg = job.stream_source(JetStreamSourceConfig {
        url: nats_url,
        stream: args.stream.clone(),
        subject: args.subject.clone(),
        consumer: args.consumer.clone(),
        deliver: match args.deliver {
            DeliverArg::All => DeliverFrom::All,
            DeliverArg::New => DeliverFrom::New,
            DeliverArg::Last => DeliverFrom::Last,
        },
        ack_wait: args.ack_wait,
        max_ack_pending: args.max_ack_pending,
        ..JetStreamSourceConfig::default()
    });
    source_cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let worker = Worker::build(&args, settings, job).await?;
    let (source, commits, acks, consumer) =
        JetStreamSource::start(&source_cfg, worker.stop.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !args.quiet {
        eprintln!(
            "consuming {}/{} as `{}` (Ctrl-C or SIGTERM to stop)",
            args.stream, args.subject, args.consumer
        );
    }
    worker
        .run(
            &args,
            source,
            commits,
            acks.into(),
            consumer,
            "unacknowledged messages are redelivered to the next worker",
        )
        .await
}
