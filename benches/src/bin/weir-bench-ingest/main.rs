//! `weir-bench-ingest`: ingest throughput of `weir ingest` against a bare neo4rs
//! `UNWIND … MERGE` loop over pre-parsed rows, on the real graph server, same dataset, same batch
//! size; peak RSS of both (each a child process, `wait4` `ru_maxrss`); Weir again under a tight
//! `--memory-limit`; the bare loop again with Nagle's algorithm on (neo4rs's default); a
//! batch-size × concurrency sweep of `weir ingest`; RSS over time of the longest run as a PNG
//! chart.
//!
//! ```text
//! cargo build --release -p weir-cli -p weir-benches
//! target/release/weir-bench-ingest --preset quick    # 100 k people, 3 runs + sweep
//! target/release/weir-bench-ingest --preset full     # 1 M people, 3 runs
//! ```
//!
//! An unmeasured warm-up (10 k rows through each side) comes first. Every run then starts from
//! an empty graph under a label prefix of its own, with the key constraints in place (MERGE
//! always creates), and its data stays: deleting through Bolt is slower on ArcadeDB than
//! writing (restart the local server with `dev.sh down && dev.sh up` for a fresh data
//! directory). `--keep-data false` shares one prefix and deletes each run's data after it is
//! counted. Settings of the graph server come from `weir_config` (defaults < `.weir/env` <
//! environment), as for `weir` itself.

mod bare;
mod child;
mod graph;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use weir_benches::chart::{self, Series};
use weir_benches::stats::{median, mib};
use weir_benches::table::Table;

use crate::child::ChildRun;
use crate::graph::Counts;

/// Preset sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// 100 k people (102 k nodes, 200 k relationships), 3 runs, with the sweep.
    Quick,
    /// 1 M people (1.02 M nodes, 2 M relationships), 3 runs, no sweep.
    Full,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }
    fn people(self) -> u64 {
        match self {
            Self::Quick => 100_000,
            Self::Full => 1_000_000,
        }
    }
    fn runs(self) -> usize {
        match self {
            Self::Quick | Self::Full => 3,
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Ingest throughput: `weir ingest` vs a bare neo4rs UNWIND/MERGE loop")]
struct Cli {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// One run of the bare baseline (used by the bench itself, as a child process).
    #[command(hide = true)]
    Bare(bare::BareArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct Opts {
    /// Which size set to run.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Directory of the results file `ingest.md` (the preset's section is replaced).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `weir` binary. Default: next to this executable.
    #[arg(long)]
    weir: Option<PathBuf>,
    /// Runs per figure (medians are reported). Default 3.
    #[arg(long)]
    runs: Option<usize>,
    /// People rows instead of the preset's (each gives 1 Person, 2 relationships; companies are
    /// one per 50 people).
    #[arg(long)]
    people: Option<u64>,
    /// Records per batch, both sides (Weir's default is 1000).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// `weir ingest --concurrency` of the main comparison (Weir's default is 1).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Concurrencies tried for the bare loop; the fastest is compared.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    bare_concurrency: Vec<usize>,
    /// Also run the bare loop with Nagle's algorithm on (neo4rs as shipped) in every run, to
    /// show what `TCP_NODELAY` is worth; the compared baseline always has it off, like Weir.
    /// Default: quick yes, full no (it takes as long as the three other runs together).
    #[arg(long)]
    bare_nagle: Option<bool>,
    /// `weir ingest --memory-limit` of the tight-memory run.
    #[arg(long, default_value = "32MiB")]
    memory_limit: String,
    /// Run the batch × concurrency sweep (default: quick yes, full no).
    #[arg(long)]
    sweep: Option<bool>,
    /// Batch sizes of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000")]
    sweep_batch: Vec<usize>,
    /// Fixed concurrencies of the sweep (`weir ingest --fixed-concurrency --concurrency N`).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sweep_concurrency: Vec<usize>,
    /// The sweep also runs `weir ingest --concurrency N` (adaptive between 1 and N) with this N.
    #[arg(long, default_value_t = 4)]
    sweep_adaptive: usize,
    /// Runs per sweep cell.
    #[arg(long, default_value_t = 1)]
    sweep_runs: usize,
    /// The RSS chart. Default: `BENCHMARKS-rss-ingest.png` at the repository root for the full
    /// preset, `benches/results/rss-ingest-quick.png` for the quick one, or in `--out` when that
    /// is given.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Do not draw the chart.
    #[arg(long)]
    no_chart: bool,
    /// Where generated datasets are kept (reused across runs: generation is deterministic).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Give each run a label prefix of its own and keep its data instead of deleting it
    /// (default yes: ArcadeDB deletes about 2.5 k records/s through Bolt, so deleting
    /// after each run took longer than the runs; `false` deletes each run's data).
    #[arg(long)]
    keep_data: Option<bool>,
}

/// Rows of the unmeasured warm-up dataset.
const WARM_UP_ROWS: u64 = 10_000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl WeirRun {
    /// The progress line of this run.
    fn line(&self, people: f64) -> String {
        let secs = self.child.wall.as_secs_f64();
        run_line(secs, people, self.child.peak_rss, self.retries)
    }
}

impl BareRun {
    /// The progress line of this run.
    fn line(&self, people: f64) -> String {
        let secs = self.report.secs;
        run_line(secs, people, self.child.peak_rss, self.report.retries)
    }
}

fn run_line(secs: f64, people: f64, peak_rss: u64, retries: u64) -> String {
    format!(
        "{secs:.1} s, {:.0} rows/s, peak {}, {retries} retries",
        people / secs,
        mib(peak_rss)
    )
}

/// One measured `weir ingest` run.
#[derive(Debug, Clone)]
struct WeirRun {
    child: ChildRun,
    counts: Counts,
    retries: u64,
    /// The pipeline's own duration from the summary (excludes start-up and schema).
    pipeline_secs: f64,
}

/// One measured bare run.
#[derive(Debug, Clone)]
struct BareRun {
    child: ChildRun,
    counts: Counts,
    report: bare::BareReport,
}

/// A value from `weir ingest`'s summary, e.g. `retries:` → `3`.
fn summary_field(stdout: &str, key: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(key)?.strip_prefix(':')?;
        Some(rest.trim().to_owned())
    })
}

fn parse_summary(stdout: &str) -> anyhow::Result<(u64, u64, f64)> {
    let committed = summary_field(stdout, "records committed")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no `records committed` in weir's summary:\n{stdout}"))?;
    let retries = summary_field(stdout, "retries")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no `retries` in weir's summary:\n{stdout}"))?;
    let secs = summary_field(stdout, "duration")
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .with_context(|| format!("no `duration` in weir's summary:\n{stdout}"))?;
    Ok((committed, retries, secs))
}

struct Bench {
    opts: Opts,
    root: PathBuf,
    weir: PathBuf,
    csv: PathBuf,
    mapping: PathBuf,
    prefix: String,
    rows: u64,
    settings: weir_config::GraphSettings,
    graph: neo4rs::Graph,
    keep_data: bool,
    /// Where generated datasets are kept.
    data_dir: PathBuf,
    /// Also measure the bare loop with Nagle on.
    bare_nagle: bool,
    /// Prefixes used so far (one per run with `keep_data`).
    used: std::sync::Mutex<Vec<String>>,
}

impl Bench {
    fn env(&self, cmd: &mut Command) {
        let s = &self.settings;
        cmd.current_dir(&self.root)
            .env("NEO4J_URI", &s.uri)
            .env("NEO4J_USER", &s.user)
            .env("NEO4J_PASSWORD", s.password.expose())
            .env("NEO4J_DATABASE", &s.database);
    }

    /// Warms the server up (JIT, caches) with both sides on a 10 k-row dataset, unmeasured:
    /// the first runs after a server start were up to 2.5× slower than later ones.
    async fn warm_up(&self) -> anyhow::Result<()> {
        let csv = generate(&self.weir, &self.data_dir, WARM_UP_ROWS)?;
        let weir = self.weir_cmd(&csv, &self.next_prefix(), 1000, Conc::Adaptive(1), None);
        let bare = self.bare_cmd(&csv, &self.next_prefix(), 1000, 1, false)?;
        for cmd in [weir, bare] {
            let run = tokio::task::spawn_blocking(move || child::run_measured(cmd)).await??;
            eprintln!("  warm-up: {:.1} s", run.wall.as_secs_f64());
        }
        Ok(())
    }

    /// The label prefix of the next run.
    fn next_prefix(&self) -> String {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let p = if self.keep_data {
            format!("{}r{}_", self.prefix, used.len() + 1)
        } else {
            self.prefix.clone()
        };
        if !used.contains(&p) {
            used.push(p.clone());
        }
        p
    }

    /// `weir ingest` of `csv` under `prefix`, with the graph settings in its environment.
    fn weir_cmd(
        &self,
        csv: &Path,
        prefix: &str,
        batch: usize,
        conc: Conc,
        limit: Option<&str>,
    ) -> Command {
        let mut cmd = Command::new(&self.weir);
        cmd.arg("ingest")
            .arg(csv)
            .arg("--mapping")
            .arg(&self.mapping)
            .args(["--label-prefix", prefix])
            .args(["--batch-size", &batch.to_string()])
            .args(["--concurrency", &conc.max().to_string()])
            .args(["--progress", "none"]);
        if let Conc::Fixed(_) = conc {
            cmd.arg("--fixed-concurrency");
        }
        if let Some(l) = limit {
            cmd.args(["--memory-limit", l]);
        }
        self.env(&mut cmd);
        cmd
    }

    /// This binary's `bare` loop over `csv` under `prefix`, with the graph settings in its
    /// environment.
    fn bare_cmd(
        &self,
        csv: &Path,
        prefix: &str,
        batch: usize,
        conc: usize,
        nagle: bool,
    ) -> anyhow::Result<Command> {
        let mut cmd = Command::new(std::env::current_exe().context("own executable")?);
        cmd.arg("bare")
            .arg("--csv")
            .arg(csv)
            .args(["--prefix", prefix])
            .args(["--batch-size", &batch.to_string()])
            .args(["--concurrency", &conc.to_string()]);
        if nagle {
            cmd.arg("--nagle");
        }
        self.env(&mut cmd);
        Ok(cmd)
    }

    async fn weir_run(
        &self,
        batch: usize,
        conc: Conc,
        limit: Option<&str>,
    ) -> anyhow::Result<WeirRun> {
        let prefix = self.next_prefix();
        let cmd = self.weir_cmd(&self.csv, &prefix, batch, conc, limit);
        let child = tokio::task::spawn_blocking(move || child::run_measured(cmd)).await??;
        let (committed, retries, pipeline_secs) = parse_summary(&child.stdout)?;
        let counts = self.count_and_clean(&prefix).await?;
        if committed != self.rows {
            bail!("weir committed {committed} of {} rows", self.rows);
        }
        Ok(WeirRun {
            child,
            counts,
            retries,
            pipeline_secs,
        })
    }

    async fn bare_run(&self, batch: usize, conc: usize, nagle: bool) -> anyhow::Result<BareRun> {
        let prefix = self.next_prefix();
        let cmd = self.bare_cmd(&self.csv, &prefix, batch, conc, nagle)?;
        let child = tokio::task::spawn_blocking(move || child::run_measured(cmd)).await??;
        let report: bare::BareReport = serde_json::from_str(
            child
                .stdout
                .lines()
                .last()
                .context("bare run printed nothing")?,
        )
        .with_context(|| format!("bare run output: {}", child.stdout))?;
        let counts = self.count_and_clean(&prefix).await?;
        if report.rows != self.rows {
            bail!("bare run sent {} of {} rows", report.rows, self.rows);
        }
        Ok(BareRun {
            child,
            counts,
            report,
        })
    }

    async fn count_and_clean(&self, prefix: &str) -> anyhow::Result<Counts> {
        let c = graph::count(&self.graph, prefix).await?;
        if !self.keep_data {
            graph::delete_all(&self.graph, prefix).await?;
        }
        Ok(c)
    }
}

/// `weir ingest`'s write concurrency in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conc {
    /// The default: adaptive between 1 and this.
    Adaptive(usize),
    /// `--fixed-concurrency`.
    Fixed(usize),
}

impl Conc {
    fn max(self) -> usize {
        match self {
            Self::Adaptive(n) | Self::Fixed(n) => n,
        }
    }
}

impl std::fmt::Display for Conc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Adaptive(1) => write!(f, "1"),
            Self::Adaptive(n) => write!(f, "adaptive ≤ {n}"),
            Self::Fixed(n) => write!(f, "fixed {n}"),
        }
    }
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn k(x: f64) -> String {
    if x >= 100_000.0 {
        format!("{:.0} k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.2} k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

fn med(v: impl IntoIterator<Item = f64>) -> f64 {
    median(&v.into_iter().collect::<Vec<_>>()).unwrap_or(f64::NAN)
}

/// Checks that the bare loop's Cypher is what `weir validate --cypher` says Weir runs.
fn check_cypher(weir: &Path, mapping: &Path, prefix: &str) -> anyhow::Result<()> {
    let out = Command::new(weir)
        .args([
            "validate",
            "--cypher",
            "--label-prefix",
            prefix,
            "--mapping",
        ])
        .arg(mapping)
        .output()
        .with_context(|| format!("running {} validate", weir.display()))?;
    if !out.status.success() {
        bail!(
            "weir validate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for s in bare::statements(prefix)
        .iter()
        .chain(bare::constraints(prefix).iter())
    {
        if !lines.contains(&s.as_str()) {
            bail!(
                "the bare loop's Cypher differs from Weir's:\n  bare: {s}\n  weir validate --cypher:\n{text}"
            );
        }
    }
    Ok(())
}

fn generate(weir: &Path, dir: &Path, people: u64) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let path = dir.join(format!("people-{people}.csv"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
        return Ok(path);
    }
    let tmp = dir.join(format!("people-{people}.csv.tmp"));
    let st = Command::new(weir)
        .args(["generate", "--people", &people.to_string(), "--out"])
        .arg(&tmp)
        .status()
        .context("weir generate")?;
    if !st.success() {
        bail!("weir generate failed: {st}");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = weir_config::ServiceSettings::from_env()
        .context("reading graph settings")?
        .graph;
    if let Some(Sub::Bare(args)) = cli.sub {
        let r = bare::run(&args, &settings).await?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let opts = cli.opts;
    let Some(preset) = opts.preset else {
        bail!("--preset quick|full is required");
    };
    let root = repo_root();
    let weir = match &opts.weir {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("weir"),
    };
    if !weir.is_file() {
        bail!(
            "no weir binary at {} (cargo build --release -p weir-cli, or --weir PATH)",
            weir.display()
        );
    }
    let mapping = root.join("examples/people/mapping.toml");
    let people = opts.people.unwrap_or(preset.people());
    let runs = opts.runs.unwrap_or(preset.runs()).max(1);
    let do_sweep = opts.sweep.unwrap_or(preset == Preset::Quick);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let prefix = format!("wbi{}_", stamp % 100_000_000);
    check_cypher(&weir, &mapping, &prefix)?;
    let data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| root.join("target/weir-bench-data"));
    let csv = generate(&weir, &data_dir, people)?;
    let csv_bytes = std::fs::metadata(&csv)?.len();
    let graph = weir_test_support::try_connect_graph(&settings)
        .await
        .map_err(anyhow::Error::msg)?;
    let bench = Bench {
        opts: opts.clone(),
        root: root.clone(),
        weir: weir.clone(),
        csv: csv.clone(),
        mapping,
        prefix: prefix.clone(),
        rows: people,
        settings,
        graph,
        keep_data: opts.keep_data.unwrap_or(true),
        bare_nagle: opts.bare_nagle.unwrap_or(preset == Preset::Quick),
        data_dir: data_dir.clone(),
        used: std::sync::Mutex::new(Vec::new()),
    };
    let started_at = chrono::Utc::now();
    let load = report::LoadSampler::start();
    let load_start = report::loadavg();
    let t0 = std::time::Instant::now();
    let result = run_all(&bench, runs, do_sweep).await;
    let elapsed = t0.elapsed();
    let load_text = load.finish();
    // Clean up whatever a failed run left (unless the data is kept), then the constraints.
    let used = bench.used.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let cleanup = if bench.keep_data {
        Ok(())
    } else {
        graph::delete_all(&bench.graph, &prefix).await
    };
    let mut dropped = Ok(());
    if !bench.keep_data {
        for p in &used {
            if let Err(e) = graph::drop_constraints(&bench.graph, &bare::constraint_names(p)).await
            {
                dropped = Err(e);
            }
        }
    }
    let res = result?;
    cleanup?;

    let b = bench.opts.batch_size;
    let mut md = String::new();
    md.push_str(&format!(
        "### Ingest, preset `{}`: {} people rows\n\n",
        preset.name(),
        people
    ));
    md.push_str(&format!(
        "Command: `target/release/weir-bench-ingest {}`  \n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    ));
    md.push_str(&format!(
        "Run: {} UTC, {:.0} s in all; machine: {}; graph server at {} (same machine); \
         load average (1 min) {} (at start {}).\n\n",
        started_at.format("%Y-%m-%d %H:%M"),
        elapsed.as_secs_f64(),
        report::machine(),
        bench.settings.uri,
        load_text,
        load_start.map(|l| format!("{l:.2}")).unwrap_or_default(),
    ));
    let c0 = res.weir[0].counts;
    md.push_str(&format!(
        "Dataset: `weir generate --people {people}` ({:.1} MiB CSV), mapped by \
         `examples/people/mapping.toml`: **{} nodes** ({} Person + {} Company) and **{} \
         relationships** (WORKS_AT + KNOWS), counted with Cypher after every run; every run \
         created the same counts: {}.\n\n",
        csv_bytes as f64 / 1_048_576.0,
        c0.nodes,
        people,
        c0.nodes.saturating_sub(people),
        c0.rels,
        if res.all_counts_equal(c0) {
            "yes"
        } else {
            "NO (see the per-run table)"
        },
    ));

    // Summary.
    let bare_secs: Vec<f64> = res.bare.iter().map(|r| r.report.secs).collect();
    let bare_rate = med(bare_secs.iter().map(|s| per_sec(people, *s)));
    let mut t = Table::new([
        "side",
        "batch / conc",
        "time (s)",
        "rows/s",
        "nodes/s",
        "rels/s",
        "peak RSS",
        "CPU (s)",
        "retries",
        "vs bare",
    ]);
    let weir_row = |t: &mut Table, name: &str, conc: Conc, rs: &[WeirRun]| {
        let rate = med(rs
            .iter()
            .map(|r| per_sec(people, r.child.wall.as_secs_f64())));
        let prate = med(rs.iter().map(|r| per_sec(people, r.pipeline_secs)));
        t.row([
            name.to_owned(),
            format!("{b} / {conc}"),
            format!(
                "{:.1} (pipeline {:.1})",
                med(rs.iter().map(|r| r.child.wall.as_secs_f64())),
                med(rs.iter().map(|r| r.pipeline_secs))
            ),
            k(rate),
            k(med(rs.iter().map(|r| {
                per_sec(r.counts.nodes, r.child.wall.as_secs_f64())
            }))),
            k(med(rs.iter().map(|r| {
                per_sec(r.counts.rels, r.child.wall.as_secs_f64())
            }))),
            mib(med(rs.iter().map(|r| r.child.peak_rss as f64)) as u64),
            format!("{:.1}", med(rs.iter().map(|r| r.child.cpu.as_secs_f64()))),
            format!("{:.0}", med(rs.iter().map(|r| r.retries as f64))),
            format!(
                "**{:.2}×** end to end ({:.2}× pipeline time)",
                rate / bare_rate,
                prate / bare_rate
            ),
        ]);
    };
    let main_conc = Conc::Adaptive(bench.opts.concurrency);
    weir_row(&mut t, "`weir ingest` (defaults)", main_conc, &res.weir);
    weir_row(
        &mut t,
        &format!("`weir ingest --memory-limit {}`", bench.opts.memory_limit),
        main_conc,
        &res.weir_limited,
    );
    let bare_row = |t: &mut Table, name: &str, rs: &[BareRun]| {
        let rate = med(rs.iter().map(|r| per_sec(people, r.report.secs)));
        t.row([
            name.to_owned(),
            format!("{b} / {}", res.bare_conc),
            format!(
                "{:.1} (+ {:.1} pre-parse, untimed)",
                med(rs.iter().map(|r| r.report.secs)),
                med(rs.iter().map(|r| r.report.parse_secs))
            ),
            k(rate),
            k(med(rs
                .iter()
                .map(|r| per_sec(r.counts.nodes, r.report.secs)))),
            k(med(rs
                .iter()
                .map(|r| per_sec(r.counts.rels, r.report.secs)))),
            mib(med(rs.iter().map(|r| r.child.peak_rss as f64)) as u64),
            format!("{:.1}", med(rs.iter().map(|r| r.child.cpu.as_secs_f64()))),
            format!("{:.0}", med(rs.iter().map(|r| r.report.retries as f64))),
            format!("{:.2}", rate / bare_rate),
        ]);
    };
    bare_row(&mut t, "bare neo4rs loop, `TCP_NODELAY`", &res.bare);
    if !res.bare_nagle.is_empty() {
        bare_row(
            &mut t,
            "bare neo4rs loop, Nagle on (neo4rs's default)",
            &res.bare_nagle,
        );
    }
    let nagle_text = if res.bare_nagle.is_empty() {
        "The bare loop with Nagle on (neo4rs's default, where every statement over 8 KiB waits \
         for the server's delayed ACK) was not run (`--bare-nagle true` adds it)."
    } else {
        "The last row is the bare loop as neo4rs ships, with Nagle on: every statement over \
         8 KiB waits for the server's delayed ACK."
    };
    md.push_str(&format!(
        "**Medians of {runs} runs** (runs interleaved: Weir, bare, Weir limited{}, …). Weir and \
         the compared bare loop both switch Nagle's algorithm off on their Bolt connections \
         (`TCP_NODELAY`). {nagle_text} Weir's time is end to end (process start to exit: \
         start-up, connect, constraints, read, parse, map, write); \"pipeline\" is the duration \
         Weir's own summary reports. The bare loop's time is its timed write loop only (rows \
         pre-parsed before). Peak RSS is `ru_maxrss` of the child process from `wait4` (the \
         kernel's high-water mark); CPU is the child's user + system time.\n\n",
        if res.bare_nagle.is_empty() {
            ""
        } else {
            ", bare with Nagle on"
        }
    ));
    md.push_str(&t.to_markdown());

    // Per run.
    let mut t = Table::new([
        "run",
        "side",
        "time (s)",
        "rows/s",
        "nodes / rels in graph",
        "peak RSS (sampled max)",
        "CPU (s)",
        "retries",
    ]);
    for i in 0..runs {
        for (name, r) in [
            ("weir", res.weir.get(i)),
            ("weir limited", res.weir_limited.get(i)),
        ] {
            if let Some(r) = r {
                t.row([
                    (i + 1).to_string(),
                    name.to_owned(),
                    format!(
                        "{:.1} (pipeline {:.1})",
                        r.child.wall.as_secs_f64(),
                        r.pipeline_secs
                    ),
                    k(per_sec(people, r.child.wall.as_secs_f64())),
                    format!("{} / {}", r.counts.nodes, r.counts.rels),
                    format!(
                        "{} ({})",
                        mib(r.child.peak_rss),
                        mib(r.child.sampled_max_rss)
                    ),
                    format!("{:.1}", r.child.cpu.as_secs_f64()),
                    r.retries.to_string(),
                ]);
            }
        }
        for (name, r) in [
            ("bare", res.bare.get(i)),
            ("bare Nagle on", res.bare_nagle.get(i)),
        ] {
            let Some(r) = r else { continue };
            t.row([
                (i + 1).to_string(),
                format!("{name} c{}", res.bare_conc),
                format!(
                    "{:.1} (process {:.1})",
                    r.report.secs,
                    r.child.wall.as_secs_f64()
                ),
                k(per_sec(people, r.report.secs)),
                format!("{} / {}", r.counts.nodes, r.counts.rels),
                format!(
                    "{} ({})",
                    mib(r.child.peak_rss),
                    mib(r.child.sampled_max_rss)
                ),
                format!("{:.1}", r.child.cpu.as_secs_f64()),
                r.report.retries.to_string(),
            ]);
        }
    }
    md.push_str("\nEach run:\n\n");
    md.push_str(&t.to_markdown());
    if bench.keep_data {
        md.push_str(&format!(
            "\nEach run wrote under a label prefix of its own ({}; the first two are the \
             unmeasured warm-up) and its data was kept, not deleted (ArcadeDB deletes about \
             2.5 k records/s through Bolt), so later runs wrote into a larger database than \
             earlier ones.\n",
            used.iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // Bare concurrency sweep.
    let mut t = Table::new([
        "bare loop concurrency",
        "time (s)",
        "rows/s",
        "peak RSS",
        "retries",
    ]);
    for (c, r) in &res.bare_sweep {
        t.row([
            format!("{c}{}", if *c == res.bare_conc { " (best)" } else { "" }),
            format!("{:.1}", r.report.secs),
            k(per_sec(people, r.report.secs)),
            mib(r.child.peak_rss),
            r.report.retries.to_string(),
        ]);
    }
    if res.bare_sweep.is_empty() {
        md.push_str(&format!(
            "\nThe bare loop ran at concurrency {} as given (`--bare-concurrency`; the quick \
             preset's sweep found it fastest).\n",
            res.bare_conc
        ));
    } else {
        md.push_str(&format!(
            "\nThe bare loop's concurrency, batch {b}, one run each (the fastest is compared \
             above):\n\n"
        ));
        md.push_str(&t.to_markdown());
    }

    // Weir sweep.
    if !res.sweep.is_empty() {
        let concs: Vec<Conc> = bench
            .opts
            .sweep_concurrency
            .iter()
            .map(|&c| Conc::Fixed(c))
            .chain([Conc::Adaptive(bench.opts.sweep_adaptive)])
            .collect();
        let mut header = vec!["batch \\ concurrency".to_owned()];
        header.extend(concs.iter().map(|c| c.to_string()));
        let mut t = Table::new(header);
        for bs in &bench.opts.sweep_batch {
            let mut row = vec![bs.to_string()];
            for c in &concs {
                let runs_here: Vec<&Result<WeirRun, String>> = res
                    .sweep
                    .iter()
                    .filter(|(sb, sc, _)| sb == bs && sc == c)
                    .map(|(_, _, r)| r)
                    .collect();
                let cell: Vec<&WeirRun> =
                    runs_here.iter().filter_map(|r| r.as_ref().ok()).collect();
                let failures: Vec<&String> =
                    runs_here.iter().filter_map(|r| r.as_ref().err()).collect();
                if cell.is_empty() {
                    row.push(match failures.first() {
                        Some(reason) => format!("**failed**: {reason}"),
                        None => "not run".to_owned(),
                    });
                    continue;
                }
                let rate = med(cell
                    .iter()
                    .map(|r| per_sec(people, r.child.wall.as_secs_f64())));
                let peak = med(cell.iter().map(|r| r.child.peak_rss as f64));
                let retries = med(cell.iter().map(|r| r.retries as f64));
                let default = *c == main_conc || (main_conc.max() == 1 && *c == Conc::Fixed(1));
                let mark = if *bs == 1000 && default { "**" } else { "" };
                let failed = if failures.is_empty() {
                    String::new()
                } else {
                    format!(" ({} of {} runs failed)", failures.len(), runs_here.len())
                };
                row.push(format!(
                    "{mark}{}{mark} rows/s, {}, {retries:.0} retries{failed}",
                    k(rate),
                    mib(peak as u64)
                ));
            }
            t.row(row);
        }
        md.push_str(&format!(
            "\n`weir ingest` batch size × concurrency, end-to-end rows/s, peak RSS and retries \
             ({} run(s) per cell; Weir's default, batch 1000 × concurrency {main_conc}, in bold; \
             \"adaptive ≤ N\" is `--concurrency N` without `--fixed-concurrency`):\n\n",
            bench.opts.sweep_runs
        ));
        md.push_str(&t.to_markdown());
    }

    // Chart.
    if !bench.opts.no_chart {
        let path = bench.opts.chart.clone().unwrap_or_else(|| {
            chart::default_path(&root, bench.opts.out.as_deref(), "ingest", preset.name())
        });
        let longest = |rs: &[WeirRun]| {
            rs.iter()
                .max_by(|a, b| a.child.wall.cmp(&b.child.wall))
                .map(|r| r.child.rss.clone())
                .unwrap_or_default()
        };
        let a = longest(&res.weir);
        let l = longest(&res.weir_limited);
        let bare_pts = res
            .bare
            .iter()
            .max_by(|a, b| a.child.wall.cmp(&b.child.wall))
            .map(|r| r.child.rss.clone())
            .unwrap_or_default();
        let la = format!("weir ingest (batch {b}, concurrency {main_conc})");
        let ll = format!("weir ingest --memory-limit {}", bench.opts.memory_limit);
        let lb = format!(
            "bare neo4rs loop (all rows pre-parsed), concurrency {}",
            res.bare_conc
        );
        chart::draw_rss(
            &path,
            &format!(
                "RSS during ingest of {people} rows ({} nodes, {} relationships)",
                c0.nodes, c0.rels
            ),
            &[
                Series {
                    label: &la,
                    points: &a,
                },
                Series {
                    label: &ll,
                    points: &l,
                },
                Series {
                    label: &lb,
                    points: &bare_pts,
                },
            ],
        )?;
        md.push_str(&format!(
            "\nRSS over time of the longest run of each (sampled every 100 ms): `{}`.\n",
            chart::shown(&root, &path)
        ));
    }
    if let Err(e) = dropped {
        md.push_str(&format!(
            "\nNote: the key constraints of prefix `{prefix}` were left in place ({e}).\n"
        ));
    }

    println!("{md}");
    let out_dir = bench
        .opts
        .out
        .clone()
        .unwrap_or_else(|| root.join("benches/results"));
    std::fs::create_dir_all(&out_dir)?;
    let file = out_dir.join("ingest.md");
    weir_benches::sections::write_section(&file, "weir-bench-ingest", preset.name(), &md)
        .with_context(|| format!("writing {}", file.display()))?;
    eprintln!("wrote {}", file.display());
    Ok(())
}

/// Every measured run of one invocation.
struct Results {
    bare_sweep: Vec<(usize, BareRun)>,
    bare_conc: usize,
    weir: Vec<WeirRun>,
    weir_limited: Vec<WeirRun>,
    bare: Vec<BareRun>,
    /// The bare loop with Nagle's algorithm on (neo4rs's default).
    bare_nagle: Vec<BareRun>,
    /// Sweep cells; a failed run keeps the reason.
    sweep: Vec<(usize, Conc, Result<WeirRun, String>)>,
}

/// The line of a failed sweep run worth quoting: the server's error if there is one.
fn sweep_failure(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let line = text
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| text.lines().next().unwrap_or("failed"));
    let line = line.trim();
    // Cypher and label prefixes make the line long; the error code is the useful part.
    let short: String = line.chars().take(110).collect();
    if short.len() < line.len() {
        format!("{short}…")
    } else {
        short
    }
}

impl Results {
    fn all_counts_equal(&self, c: Counts) -> bool {
        self.weir
            .iter()
            .chain(&self.weir_limited)
            .map(|r| r.counts)
            .chain(self.bare.iter().chain(&self.bare_nagle).map(|r| r.counts))
            .chain(self.bare_sweep.iter().map(|r| r.1.counts))
            .chain(
                self.sweep
                    .iter()
                    .filter_map(|r| r.2.as_ref().ok())
                    .map(|r| r.counts),
            )
            .all(|x| x == c)
    }
}

async fn run_all(bench: &Bench, runs: usize, do_sweep: bool) -> anyhow::Result<Results> {
    let o = &bench.opts;
    let b = o.batch_size;
    let people = bench.rows as f64;
    eprintln!("warm-up ({WARM_UP_ROWS} rows through each side, not measured) ...");
    bench.warm_up().await?;
    let mut bare_sweep = Vec::new();
    // One concurrency given: nothing to search, no extra pass.
    let search = if o.bare_concurrency.len() > 1 {
        &o.bare_concurrency[..]
    } else {
        &[]
    };
    for &c in search {
        eprintln!("bare loop, batch {b}, concurrency {c} ...");
        let r = bench.bare_run(b, c, false).await?;
        eprintln!("  {}", r.line(people));
        bare_sweep.push((c, r));
    }
    let bare_conc = match o.bare_concurrency[..] {
        [c] => c,
        _ => bare_sweep
            .iter()
            .min_by(|a, b| a.1.report.secs.total_cmp(&b.1.report.secs))
            .map(|r| r.0)
            .context("--bare-concurrency is empty")?,
    };
    let (mut weir, mut weir_limited, mut bare, mut bare_nagle) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        eprintln!("run {i}/{runs}: weir ingest ...");
        let r = bench
            .weir_run(b, Conc::Adaptive(o.concurrency), None)
            .await?;
        eprintln!("  {}", r.line(people));
        weir.push(r);
        eprintln!("run {i}/{runs}: bare loop, concurrency {bare_conc} ...");
        let r = bench.bare_run(b, bare_conc, false).await?;
        eprintln!("  {}", r.line(people));
        bare.push(r);
        eprintln!(
            "run {i}/{runs}: weir ingest --memory-limit {} ...",
            o.memory_limit
        );
        let r = bench
            .weir_run(b, Conc::Adaptive(o.concurrency), Some(&o.memory_limit))
            .await?;
        eprintln!("  {}", r.line(people));
        weir_limited.push(r);
        if bench.bare_nagle {
            eprintln!("run {i}/{runs}: bare loop with Nagle on, concurrency {bare_conc} ...");
            let r = bench.bare_run(b, bare_conc, true).await?;
            eprintln!("  {}", r.line(people));
            bare_nagle.push(r);
        }
    }
    let mut sweep = Vec::new();
    if do_sweep {
        for _ in 0..o.sweep_runs.max(1) {
            for &sb in &o.sweep_batch {
                let concs = o
                    .sweep_concurrency
                    .iter()
                    .map(|&c| Conc::Fixed(c))
                    .chain([Conc::Adaptive(o.sweep_adaptive)]);
                for sc in concs {
                    eprintln!("sweep: weir ingest --batch-size {sb} --concurrency {sc} ...");
                    // A failed cell is a result (ArcadeDB has failed concurrent MERGEs with
                    // server errors), not the end of the sweep.
                    match bench.weir_run(sb, sc, None).await {
                        Ok(r) => {
                            eprintln!("  {}", r.line(people));
                            sweep.push((sb, sc, Ok(r)));
                        }
                        Err(e) => {
                            let reason = sweep_failure(&e);
                            eprintln!("  failed: {reason}");
                            sweep.push((sb, sc, Err(reason)));
                        }
                    }
                }
            }
        }
    }
    Ok(Results {
        bare_sweep,
        bare_conc,
        weir,
        weir_limited,
        bare,
        bare_nagle,
        sweep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "ingest completed
  records read:          10000
  records committed:     10000
  records dead-lettered: 0
  records uncommitted:   0
  bytes read:            1234
  duration:              12.34s
  rate:                  810 records/s
  peak memory:           38.0 MiB
  retries:               7
";

    #[test]
    fn weir_summary_is_parsed() {
        assert_eq!(parse_summary(SUMMARY).unwrap(), (10000, 7, 12.34));
        assert!(parse_summary("ingest failed\n").is_err());
    }

    #[test]
    fn args_parse_with_defaults_and_lists() {
        let c =
            Cli::try_parse_from(["x", "--preset", "quick", "--sweep-batch", "100,200"]).unwrap();
        assert_eq!(c.opts.preset, Some(Preset::Quick));
        assert_eq!(c.opts.sweep_batch, vec![100, 200]);
        assert_eq!(c.opts.bare_concurrency, vec![1, 2, 4, 8]);
        assert_eq!((c.opts.batch_size, c.opts.concurrency), (1000, 1));
        let c = Cli::try_parse_from([
            "x",
            "bare",
            "--csv",
            "a.csv",
            "--prefix",
            "p_",
            "--batch-size",
            "10",
            "--concurrency",
            "2",
        ])
        .unwrap();
        assert!(matches!(c.sub, Some(Sub::Bare(a)) if a.batch_size == 10 && a.concurrency == 2));
        assert_eq!(Preset::Full.people(), 1_000_000);
    }

    #[test]
    fn rates_and_numbers_format() {
        assert_eq!(per_sec(10, 0.0), 0.0);
        assert_eq!(per_sec(10, 2.0), 5.0);
        assert_eq!(k(812.4), "812");
        assert_eq!(k(1234.0), "1.23 k");
        assert_eq!(k(250_000.0), "250 k");
    }
}
