//! `weir ingest`: CSV / JSON Lines files, directories or stdin into the graph, through the
//! stream processor (`weir-stream`) and the graph writer (`weir-graph`) on the session pool
//! (`weir-pool`).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use weir_app::admin::Sources;
use weir_app::pipeline::{JobPipeline, JobTuning};
use weir_app::settings::AdminConfig;
use weir_app::settings::{Role, Settings, config_path};
use weir_app::{BusPublisher, BusSlot, EventsConfig, EventsPolicy};
use weir_config::START_HINT;
use weir_events::{PressureState, ProgressEvent};
use weir_graph::Mapping;
use weir_metrics::StreamMetrics;
use weir_pool::Pool;
use weir_stream::{
    CancellationToken, CheckpointFile, DeadLetter, DeadLetterSink, FileSource, Format, InputFormat,
    JsonlDeadLetters, Mapper, Pipeline, RunOutcome, RunSummary, Sink, StreamError,
};

use super::{EXIT_CANCELLED, EXIT_DEAD_LETTERS, EXIT_FATAL};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    /// A live bar when stderr is a terminal, plain periodic lines otherwise.
    Auto,
    /// Always the live bar.
    Bar,
    /// Always plain lines (every 5 s).
    Plain,
    /// None.
    None,
}

/// Arguments of `weir ingest`.
#[derive(Debug, Args)]
#[command(after_help = "Exit codes:\n  \
    0  every record read was committed\n  \
    1  fatal error (bad arguments or mapping, graph unreachable at the start or for longer than\n     \
       --retry-for, --max-errors exceeded, ...);\n     \
       what was committed stays committed; rerun with --resume to continue\n  \
    2  invalid command line\n  \
    3  completed, but some records were dead-lettered (see --dead-letter)\n  \
    4  interrupted (Ctrl-C); rerun with --resume to continue")]
pub(crate) struct IngestArgs {
    /// Input files or directories (their files, sorted); `-` reads stdin. Gzip is detected.
    #[arg(required_unless_present = "show_config")]
    inputs: Vec<PathBuf>,
    /// The mapping file (TOML); check it with `weir validate`.
    #[arg(long, short, required_unless_present = "show_config")]
    mapping: Option<PathBuf>,
    /// Settings file, `--show-config`.
    #[command(flatten)]
    settings: SettingsArgs,
    /// Input format; default: the mapping's `[input] format`, else from the file name
    /// (`.jsonl`, `.ndjson`, `.json` with or without `.gz` are JSON Lines, the rest CSV).
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// CSV delimiter; default: the mapping's `[input] delimiter`, else `,`.
    #[arg(long)]
    delimiter: Option<char>,
    /// Most records per batch (one write transaction each).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Most batches written at once. Above 1, the number in flight adapts between 1 and this:
    /// one more writer is kept only while it raises the measured throughput, and retried
    /// writes (deadlocks, refused concurrent transactions) lower it. Default 1: on ArcadeDB
    /// (the local server) more writers were slower and concurrent MERGEs of relationships have
    /// corrupted records on the server (BENCHMARKS.md); on Neo4j try 4.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Always keep `--concurrency` batches in flight instead of adapting.
    #[arg(long)]
    fixed_concurrency: bool,
    /// Memory limit (e.g. `64MiB`, `1GiB`): intake pauses above 80 % of it and resumes below
    /// 70 %; buffers are sized to fit. Default: the cgroup limit, if any.
    #[arg(long, value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Append records that cannot be read, decoded, mapped or written to this JSON Lines file
    /// (source, line, offset, stage, error, raw). Default: print them to stderr.
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    /// Continue after the checkpoint of an earlier run over the same inputs.
    #[arg(long)]
    resume: bool,
    /// Checkpoint file. Default: `<input>.weir-checkpoint.json` for a single file input; none
    /// for stdin or several inputs (then --resume needs this flag).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// How long a batch keeps retrying while the graph server is unreachable or refuses writes
    /// for a passing reason (restart, failover, deadlock) before the run fails: meanwhile
    /// intake pauses, nothing is lost, and the run goes on by itself when the server is back.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// Stop (exit 1) once more than this many records were dead-lettered.
    #[arg(long)]
    max_errors: Option<u64>,
    /// Read, decode and map every record, report errors, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// No progress and no summary; only errors.
    #[arg(long, short)]
    quiet: bool,
    /// Progress display.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Prefix every label and relationship type (keeps tenants or tests apart).
    #[arg(long, default_value = "")]
    label_prefix: String,
    /// Bolt URI of the graph server (overrides NEO4J_URI).
    #[arg(long)]
    uri: Option<String>,
    /// Job id used in checkpoints, progress and change events. Default `ingest`.
    #[arg(long, default_value = "ingest")]
    job_id: String,
    /// Publish the committed changes to this bus, so gateways' subscribers see them:
    /// `nats` = NATS JetStream at `NATS_URL`, stream `WEIR_BUS_STREAM`, subject prefix
    /// `WEIR_BUS_SUBJECT_PREFIX` (what `weir-gatewayd` reads). Default: none.
    #[arg(long, value_enum)]
    bus: Option<BusArg>,
    /// With `--bus`: what a batch whose changes cannot be published does. `required` (the
    /// default): the run pauses while the bus is unreachable (up to `--events-max-wait`) and
    /// fails (exit 1; `--resume` publishes what is missing) if they can never be published;
    /// `best-effort`: counted in the summary, the run goes on; `off`: nothing is published.
    #[arg(long, value_enum, requires = "bus")]
    events: Option<EventsArg>,
    /// With `--events required`: how long a publish may keep failing before the run fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    events_max_wait: Duration,
    /// Serve `/metrics` (the `weir_stream_*` families of this run, the pool's, memory) and
    /// `/api/memory/*` on this address while the run lasts, for Prometheus to scrape a long
    /// ingest. Loopback only unless `WEIR_ADMIN_TOKEN` is set (then it is required; read like
    /// every setting, from the environment or `.weir/env`). Default: off.
    #[arg(long)]
    metrics_bind: Option<std::net::SocketAddr>,
}

/// The bus `weir ingest --bus` publishes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BusArg {
    /// NATS JetStream.
    Nats,
}

/// `--events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EventsArg {
    /// Every change must be published.
    Required,
    /// Publish what can be; count the rest.
    BestEffort,
    /// Publish nothing.
    Off,
}

impl From<EventsArg> for EventsPolicy {
    fn from(e: EventsArg) -> Self {
        match e {
            EventsArg::Required => Self::Required,
            EventsArg::BestEffort => Self::BestEffort,
            EventsArg::Off => Self::Off,
        }
    }
}

pub(crate) use weir_config::parse_size;

fn detect_format(args: &IngestArgs, mapping: &Mapping) -> Format {
    let format = args.format.or(mapping.input.format).unwrap_or_else(|| {
        args.inputs
            .first()
            .map_or(InputFormat::Csv, |p| InputFormat::from_file_name(p))
    });
    let delimiter = args
        .delimiter
        .and_then(|c| u8::try_from(c).ok())
        .or(mapping.input.delimiter)
        .unwrap_or(b',');
    format.decoder(delimiter)
}

/// Dead letters printed to stderr (the first 20 in full, then a count at the end).
pub(crate) struct StderrDeadLetters {
    shown: std::sync::atomic::AtomicU64,
}

impl StderrDeadLetters {
    /// None shown yet.
    pub(crate) fn new() -> Self {
        Self {
            shown: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl DeadLetterSink for StderrDeadLetters {
    fn write(&self, l: &DeadLetter) -> std::io::Result<()> {
        let n = self
            .shown
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < 20 {
            eprintln!(
                "dead letter: {}:{} ({:?}): {}",
                l.source, l.line, l.stage, l.error
            );
        } else if n == 20 {
            eprintln!(
                "dead letter: more records dead-lettered; use --dead-letter FILE to keep them"
            );
        }
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `--dead-letter FILE` (appended), else stderr.
pub(crate) fn dead_letter_sink(path: Option<&Path>) -> anyhow::Result<Arc<dyn DeadLetterSink>> {
    Ok(match path {
        Some(p) => Arc::new(
            JsonlDeadLetters::open(p)
                .with_context(|| format!("opening dead-letter file {}", p.display()))?,
        ),
        None => Arc::new(StderrDeadLetters::new()),
    })
}

pub(crate) fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn pressure(p: &ProgressEvent) -> String {
    let state = match p.pressure {
        PressureState::Normal => "normal",
        PressureState::High => "HIGH (paused)",
    };
    match p.pressure_ratio {
        Some(r) if r.is_finite() => format!("{state} {:.0}%", r * 100.0),
        _ => state.to_owned(),
    }
}

pub(crate) fn spawn_progress(
    mode: ProgressMode,
    mut rx: tokio::sync::watch::Receiver<ProgressEvent>,
) -> tokio::task::JoinHandle<()> {
    let bar = match mode {
        ProgressMode::Bar => true,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
        _ => false,
    };
    tokio::spawn(async move {
        if bar {
            let pb = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr_with_hz(4),
            );
            let mut styled = false;
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if !styled {
                    let tpl = if p.bytes_total.is_some() {
                        "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ETA {eta} {msg}"
                    } else {
                        "{spinner} [{elapsed_precise}] {bytes} read {msg}"
                    };
                    if let Ok(style) = indicatif::ProgressStyle::with_template(tpl) {
                        pb.set_style(style.progress_chars("=> "));
                    }
                    if let Some(t) = p.bytes_total {
                        pb.set_length(t);
                    }
                    styled = true;
                }
                pb.set_position(p.bytes_read);
                pb.set_message(format!(
                    "| {} read, {} committed, {} dead | {:.0} rec/s | memory {}",
                    p.records_read,
                    p.records_committed,
                    p.records_dead_lettered,
                    p.records_per_sec,
                    pressure(&p)
                ));
                if p.state.is_terminal() {
                    break;
                }
            }
            pb.finish_and_clear();
        } else if mode != ProgressMode::None {
            let mut last = Instant::now();
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if p.state.is_terminal() {
                    break;
                }
                if last.elapsed() < Duration::from_secs(5) {
                    continue;
                }
                last = Instant::now();
                let of = p
                    .bytes_total
                    .map(|t| format!(" of {}", human_bytes(t)))
                    .unwrap_or_default();
                let eta = p
                    .eta_secs
                    .map(|s| format!(" eta {s:.0}s"))
                    .unwrap_or_default();
                eprintln!(
                    "progress: {:.0}s read {} ({}{of}) committed {} dead-lettered {} rate {:.0} rec/s memory {}{eta}",
                    p.elapsed_secs,
                    p.records_read,
                    human_bytes(p.bytes_read),
                    p.records_committed,
                    p.records_dead_lettered,
                    p.records_per_sec,
                    pressure(&p)
                );
            }
        }
    })
}

fn print_summary(s: &RunSummary, dry_run: bool, dead_letter: Option<&Path>) {
    let secs = s.duration.as_secs_f64();
    let rate = if secs > 0.0 {
        s.records_committed as f64 / secs
    } else {
        0.0
    };
    let outcome = match s.outcome {
        RunOutcome::Completed => "completed",
        RunOutcome::Cancelled => "interrupted",
        RunOutcome::Failed => "failed",
    };
    println!(
        "ingest {outcome}{}",
        if dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    println!("  records read:          {}", s.records_read);
    println!(
        "  records {}:     {}",
        if dry_run { "mapped   " } else { "committed" },
        s.records_committed
    );
    println!("  records dead-lettered: {}", s.records_dead_lettered);
    println!("  records uncommitted:   {}", s.records_uncommitted);
    println!("  bytes read:            {}", s.bytes_read);
    println!("  duration:              {secs:.2}s");
    println!("  rate:                  {rate:.0} records/s");
    println!(
        "  peak memory:           {}",
        s.peak_memory_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "unknown".into())
    );
    println!("  retries:               {}", s.retries);
    if s.records_dead_lettered > 0
        && let Some(p) = dead_letter
    {
        println!("  dead letters in:       {}", p.display());
    }
}

impl IngestArgs {
    /// `--config` / `--show-config`.
    pub(crate) fn settings_args(&self) -> &SettingsArgs {
        &self.settings
    }

    /// `--quiet`: only errors are printed (the log included).
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }

    /// The `--memory-limit` the periodic memory log measures against.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }
}

/// The publisher of `--bus`, connected (within the bus's connect timeout); `None` without
/// `--bus` or with `--events off`.
pub(crate) async fn connect_bus(
    settings: &Settings,
    bus: Option<BusArg>,
    events: Option<EventsArg>,
    max_wait: Duration,
    stop: CancellationToken,
) -> anyhow::Result<Option<BusPublisher>> {
    let Some(BusArg::Nats) = bus else {
        return Ok(None);
    };
    let policy = events.map_or(EventsPolicy::Required, Into::into);
    if policy == EventsPolicy::Off {
        return Ok(None);
    }
    let connected = weir_bus::Bus::connect(&settings.bus)
        .await
        .context("connecting to the bus (--bus nats; NATS_URL)")?;
    Ok(Some(BusPublisher::new(
        BusSlot::ready(connected),
        EventsConfig {
            policy,
            max_wait,
            ..EventsConfig::default()
        },
        stop,
    )))
}

/// `--metrics-bind`: the admin listener on `admin.bind` (the flag; `None`: no listener) with
/// this run's metric `sources` (and memory), until `stop` fires. Its token and `allow_open`
/// come from the settings' `admin` (`WEIR_ADMIN_TOKEN`, in the environment or `.weir/env`),
/// like the services'; its `/health` checks `pool` (the graph) when there is one.
pub(crate) async fn spawn_metrics(
    what: &'static str,
    admin: &AdminConfig,
    memory_limit: Option<u64>,
    quiet: bool,
    sources: Sources,
    pool: Option<&Pool>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if admin.bind.is_none() {
        return Ok(None);
    }
    let (addr, task) = weir_app::admin::spawn_admin(
        what,
        admin,
        &weir_gateway::ListenerConfig::default(),
        memory_limit,
        sources,
        // `/health` says whether the graph is reachable, like the services'.
        pool.map(|p| {
            let check: Arc<dyn weir_metrics::HealthCheck> =
                Arc::new(weir_app::health::PoolProbe(p.clone()));
            ("graph".to_owned(), check)
        })
        .into_iter()
        .collect(),
        stop.clone(),
    )
    .await
    .context("--metrics-bind")?;
    if !quiet {
        eprintln!("metrics: http://{addr}/metrics");
    }
    Ok(Some(task))
}

/// The admin settings of `--metrics-bind`: the flag's address (never `admin.bind` /
/// `WEIR_ADMIN_BIND`, which are the services' listener), the settings' token and `allow_open`.
pub(crate) fn metrics_admin(
    settings: &Settings,
    metrics_bind: Option<std::net::SocketAddr>,
) -> AdminConfig {
    AdminConfig {
        bind: metrics_bind,
        ..settings.admin.clone()
    }
}

/// `--config` and `--show-config` of `weir ingest`, `weir consume`, `weir publish` and
/// `weir ping`.
#[derive(Clone, Debug, Args)]
pub(crate) struct SettingsArgs {
    /// Settings file (TOML): the `graph`, `pool`, `bus`, `memory` and `log` sections of the
    /// services' settings file (`pool.max_size` is set from `--concurrency`;
    /// `weir-ingestd config schema` prints its JSON Schema; unknown keys are refused). Env
    /// `WEIR_CONFIG`. Flags override it, it overrides the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the resolved settings (defaults < file < environment < flags) as TOML, secrets
    /// masked, and exit.
    #[arg(long)]
    show_config: bool,
}

impl SettingsArgs {
    /// The settings of a run: defaults, the file, the environment, then the flags given.
    pub(crate) fn resolve(
        &self,
        uri: Option<&str>,
        memory_limit: Option<u64>,
        concurrency: usize,
    ) -> anyhow::Result<Settings> {
        let env = weir_app::config::Env::load().context("reading settings")?;
        let file = config_path(self.config.clone(), &env);
        let mut s = Settings::load(Role::Ingest, file.as_deref(), &env)?;
        if let Some(uri) = uri {
            s.graph.uri = uri.to_owned();
        }
        if let Some(l) = memory_limit {
            s.memory.limit = Some(weir_config::ByteSize(l));
        }
        // One writer per batch in flight, and one to spare for schema and checks.
        s.pool.max_size = concurrency.saturating_add(1);
        s.validate(Role::Ingest)?;
        Ok(s)
    }

    /// The `[log]` settings (defaults < file < `WEIR_LOG` / `WEIR_LOG_FORMAT`), to set logging
    /// up before the run; `None` when the settings cannot be read (the run then says why).
    pub(crate) fn log(&self, env: &weir_app::config::Env) -> Option<weir_app::settings::LogConfig> {
        let file = config_path(self.config.clone(), env);
        Settings::load(Role::Ingest, file.as_deref(), env)
            .ok()
            .map(|s| s.log)
    }

    /// `--show-config`: prints `s` and says so.
    pub(crate) fn show(&self, s: &Settings) -> bool {
        if self.show_config {
            print!("{}", s.show(Role::Ingest));
        }
        self.show_config
    }
}

/// The write pool, once the graph server answers: within 15 s for a run (quick feedback on a
/// wrong address), within `wait` for a long-running worker (started with the server down, it
/// says so and waits instead of exiting).
pub(crate) async fn write_pool(settings: &Settings, wait: Duration) -> anyhow::Result<Pool> {
    let uri = settings.graph.uri.clone();
    let pool = Pool::new(settings.graph.clone(), settings.pool.clone())
        .context("creating the graph pool")?;
    let first = wait.min(Duration::from_secs(15));
    let mut ready = pool.wait_ready(first).await;
    if !ready && wait > first {
        tracing::warn!(
            uri = %uri,
            "graph server not reachable yet: waiting up to {}",
            humantime::format_duration(wait)
        );
        ready = pool.wait_ready(wait - first).await;
    }
    if !ready {
        pool.close().await;
        anyhow::bail!("graph server not reachable at {uri}\n  -> {START_HINT}");
    }
    Ok(pool)
}

/// The start of a `weir ingest` / `weir consume` run: the settings (printed instead, and `None`
/// returned, with `--show-config`), the mapping with its label prefix, and the batch flags
/// checked.
pub(crate) fn start_run(
    settings_args: &SettingsArgs,
    uri: Option<&str>,
    memory_limit: Option<u64>,
    mapping: Option<&Path>,
    label_prefix: &str,
    batch_size: usize,
    concurrency: usize,
) -> anyhow::Result<Option<(Settings, Arc<Mapping>)>> {
    let settings = settings_args.resolve(uri, memory_limit, concurrency)?;
    if settings_args.show(&settings) {
        return Ok(None);
    }
    let path = mapping.context("--mapping is required")?;
    let mapping = Mapping::from_path(path).map_err(|e| anyhow::anyhow!("invalid mapping: {e}"))?;
    let mapping = mapping
        .with_label_prefix(label_prefix)
        .map_err(|e| anyhow::anyhow!("invalid --label-prefix: {e}"))?;
    if batch_size == 0 || concurrency == 0 {
        anyhow::bail!("--batch-size and --concurrency must be at least 1");
    }
    Ok(Some((settings, Arc::new(mapping))))
}

/// Runs `pipeline` over `source` with the progress display, then waits until the display and
/// the metrics' `follower` have taken its last progress event.
async fn run_shown<M: Mapper, S: Sink<Item = M::Item>>(
    (pipeline, follower): (Pipeline<M, S>, tokio::task::JoinHandle<()>),
    source: FileSource,
    cancel: CancellationToken,
    mode: ProgressMode,
) -> Result<RunSummary, StreamError> {
    let progress = spawn_progress(mode, pipeline.subscribe());
    let result = pipeline.run(source, cancel).await;
    let _ = progress.await;
    let _ = follower.await;
    result
}

/// Runs `weir ingest`; see the exit codes in `--help`.
pub(crate) async fn run(args: IngestArgs) -> anyhow::Result<u8> {
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
        concurrency: args.concurrency,
        adaptive_concurrency: !args.fixed_concurrency,
        max_errors: args.max_errors,
        retry_for: args.retry_for,
        memory_limit,
        ..JobTuning::new(args.job_id.clone(), detect_format(&args, &mapping))
    };
    let job = JobPipeline::new(tuning, mapping);

    // Checkpoint: fresh runs start over; --resume continues after the stored position.
    let single_file =
        args.inputs.len() == 1 && args.inputs[0].as_os_str() != "-" && args.inputs[0].is_file();
    let ckpt_path = args.checkpoint.clone().or_else(|| {
        single_file.then(|| {
            let mut p = args.inputs[0].clone().into_os_string();
            p.push(".weir-checkpoint.json");
            PathBuf::from(p)
        })
    });
    if args.resume && ckpt_path.is_none() {
        anyhow::bail!("--resume needs --checkpoint FILE for stdin, directories or several inputs");
    }
    let mut resume_from = None;
    if let Some(p) = &ckpt_path {
        if args.resume {
            resume_from = CheckpointFile::new(p)
                .load()
                .context("reading the checkpoint")?;
            if resume_from.is_none() {
                eprintln!(
                    "note: no checkpoint at {}; starting from the beginning",
                    p.display()
                );
            }
        } else if !args.dry_run {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing old checkpoint {}", p.display()));
                }
            }
        }
    }
    let source = FileSource::open(&args.inputs, job.config(), resume_from.as_ref())
        .context("opening the input")?;
    let dead = dead_letter_sink(args.dead_letter.as_deref())?;
    let mut job = job.dead_letters(dead.clone());
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing in-flight batches (Ctrl-C again to abort)");
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(i32::from(EXIT_CANCELLED));
                }
            }
        });
    }
    let progress_mode = if args.quiet {
        ProgressMode::None
    } else {
        args.progress
    };

    // A dry run connects to nothing; a real one to the graph server and, with --bus, the bus.
    let (pool, bus) = if args.dry_run {
        (None, None)
    } else {
        let pool = write_pool(&settings, Duration::from_secs(15)).await?;
        let bus = connect_bus(
            &settings,
            args.bus,
            args.events,
            args.events_max_wait,
            cancel.clone(),
        )
        .await?;
        (Some(pool), bus)
    };
    let stream = StreamMetrics::new();
    let mut sources: Sources = vec![("stream", Arc::new(stream.clone()) as _)];
    if let Some(pool) = &pool {
        let status = pool.clone();
        sources.push((
            "pool",
            Arc::new(weir_metrics::pool_source("write", move || status.status())) as _,
        ));
    }
    let metrics_stop = CancellationToken::new();
    let metrics_task = spawn_metrics(
        "weir ingest",
        &metrics_admin(&settings, args.metrics_bind),
        memory_limit,
        args.quiet,
        sources,
        pool.as_ref(),
        &metrics_stop,
    )
    .await?;
    let result = match &pool {
        None => run_shown(job.dry_run(&stream)?, source, cancel, progress_mode).await,
        Some(pool) => {
            if let Some(p) = &bus {
                job = job.publisher(Arc::new(p.clone()));
            }
            if let Some(p) = &ckpt_path {
                job = job.checkpoint(CheckpointFile::new(p));
            }
            let pipeline = job.build(pool, &stream).await?;
            run_shown(pipeline, source, cancel, progress_mode).await
        }
    };
    metrics_stop.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = dead.flush();
    if let Some(pool) = pool {
        pool.close().await;
    }
    let unpublished = bus.map_or(0, |p| p.unpublished());
    match result {
        Ok(summary) => {
            if !args.quiet {
                print_summary(&summary, args.dry_run, args.dead_letter.as_deref());
                if unpublished > 0 {
                    println!(
                        "  batches unpublished:   {unpublished} (--events best-effort: subscribers missed their changes)"
                    );
                }
            }
            Ok(match summary.outcome {
                RunOutcome::Completed if summary.records_dead_lettered == 0 => 0,
                RunOutcome::Completed => EXIT_DEAD_LETTERS,
                RunOutcome::Cancelled => EXIT_CANCELLED,
                RunOutcome::Failed => EXIT_FATAL,
            })
        }
        Err(StreamError::Failed { cause, summary }) => {
            if !args.quiet {
                print_summary(&summary, args.dry_run, args.dead_letter.as_deref());
            }
            eprintln!("error: {cause}");
            if ckpt_path.is_some() && !args.dry_run {
                eprintln!("  committed work is kept; rerun with --resume to continue");
            }
            Ok(EXIT_FATAL)
        }
        Err(e) => Err(e).context("ingest"),
    }
}
