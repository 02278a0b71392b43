//! The runs: `weir ingest` and the bare loop as measured child processes, the warm-up, and
//! every run of one invocation in order.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use weir_benches::stats::mib;

use crate::child::{self, ChildRun};
use crate::cli::Opts;
use crate::graph::{self, Counts};
use crate::{bare, sweep};

/// Rows of the unmeasured warm-up dataset.
pub(crate) const WARM_UP_ROWS: u64 = 10_000;

impl WeirRun {
    /// The progress line of this run.
    pub(crate) fn line(&self, people: f64) -> String {
        let secs = self.child.wall.as_secs_f64();
        run_line(secs, people, self.child.peak_rss, self.retries)
    }
}

impl BareRun {
    /// The progress line of this run.
    pub(crate) fn line(&self, people: f64) -> String {
        let secs = self.report.secs;
        run_line(secs, people, self.child.peak_rss, self.report.retries)
    }
}

pub(crate) fn run_line(secs: f64, people: f64, peak_rss: u64, retries: u64) -> String {
    format!(
        "{secs:.1} s, {:.0} rows/s, peak {}, {retries} retries",
        people / secs,
        mib(peak_rss)
    )
}

/// One measured `weir ingest` run.
#[derive(Debug, Clone)]
pub(crate) struct WeirRun {
    pub(crate) child: ChildRun,
    pub(crate) counts: Counts,
    pub(crate) retries: u64,
    /// The pipeline's own duration from the summary (excludes start-up and schema).
    pub(crate) pipeline_secs: f64,
}

/// One measured bare run.
#[derive(Debug, Clone)]
pub(crate) struct BareRun {
    pub(crate) child: ChildRun,
    pub(crate) counts: Counts,
    pub(crate) report: bare::BareReport,
}

/// A value from `weir ingest`'s summary, e.g. `retries:` → `3`.
pub(crate) fn summary_field(stdout: &str, key: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(key)?.strip_prefix(':')?;
        Some(rest.trim().to_owned())
    })
}

pub(crate) fn parse_summary(stdout: &str) -> anyhow::Result<(u64, u64, f64)> {
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

pub(crate) struct Bench {
    pub(crate) opts: Opts,
    pub(crate) root: PathBuf,
    pub(crate) weir: PathBuf,
    pub(crate) csv: PathBuf,
    pub(crate) mapping: PathBuf,
    pub(crate) prefix: String,
    pub(crate) rows: u64,
    pub(crate) settings: weir_config::GraphSettings,
    pub(crate) graph: neo4rs::Graph,
    pub(crate) keep_data: bool,
    /// Where generated datasets are kept.
    pub(crate) data_dir: PathBuf,
    /// Also measure the bare loop with Nagle on.
    pub(crate) bare_nagle: bool,
    /// Prefixes used so far (one per run with `keep_data`).
    pub(crate) used: std::sync::Mutex<Vec<String>>,
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

    pub(crate) async fn weir_run(
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

    pub(crate) async fn bare_run(
        &self,
        batch: usize,
        conc: usize,
        nagle: bool,
    ) -> anyhow::Result<BareRun> {
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
pub(crate) enum Conc {
    /// The default: adaptive between 1 and this.
    Adaptive(usize),
    /// `--fixed-concurrency`.
    Fixed(usize),
}

impl Conc {
    pub(crate) fn max(self) -> usize {
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

/// Checks that the bare loop's Cypher is what `weir validate --cypher` says Weir runs.
pub(crate) fn check_cypher(weir: &Path, mapping: &Path, prefix: &str) -> anyhow::Result<()> {
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

pub(crate) fn generate(weir: &Path, dir: &Path, people: u64) -> anyhow::Result<PathBuf> {
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

/// Every measured run of one invocation.
pub(crate) struct Results {
    pub(crate) bare_sweep: Vec<(usize, BareRun)>,
    pub(crate) bare_conc: usize,
    pub(crate) weir: Vec<WeirRun>,
    pub(crate) weir_limited: Vec<WeirRun>,
    pub(crate) bare: Vec<BareRun>,
    /// The bare loop with Nagle's algorithm on (neo4rs's default).
    pub(crate) bare_nagle: Vec<BareRun>,
    /// Sweep cells; a failed run keeps the reason.
    pub(crate) sweep: Vec<(usize, Conc, Result<WeirRun, String>)>,
}

impl Results {
    pub(crate) fn all_counts_equal(&self, c: Counts) -> bool {
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

pub(crate) async fn run_all(bench: &Bench, runs: usize, do_sweep: bool) -> anyhow::Result<Results> {
    let o = &bench.opts;
    let b = o.batch_size;
    let people = bench.rows as f64;
    eprintln!("warm-up ({WARM_UP_ROWS} rows through each side, not measured) ...");
    bench.warm_up().await?;
    let (bare_sweep, bare_conc) = sweep::bare_concurrency(bench).await?;
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
    let sweep = if do_sweep {
        sweep::weir(bench).await
    } else {
        Vec::new()
    };
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
}
