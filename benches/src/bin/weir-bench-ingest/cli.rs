//! The command line: presets and options.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bare;

/// Preset sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Preset {
    /// 100 k people (102 k nodes, 200 k relationships), 3 runs, with the sweep.
    Quick,
    /// 1 M people (1.02 M nodes, 2 M relationships), 3 runs, no sweep.
    Full,
}

impl Preset {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }
    pub(crate) fn people(self) -> u64 {
        match self {
            Self::Quick => 100_000,
            Self::Full => 1_000_000,
        }
    }
    pub(crate) fn runs(self) -> usize {
        match self {
            Self::Quick | Self::Full => 3,
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Ingest throughput: `weir ingest` vs a bare neo4rs UNWIND/MERGE loop")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) sub: Option<Sub>,
    #[command(flatten)]
    pub(crate) opts: Opts,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Sub {
    /// One run of the bare baseline (used by the bench itself, as a child process).
    #[command(hide = true)]
    Bare(bare::BareArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Opts {
    /// Which size set to run.
    #[arg(long, value_enum)]
    pub(crate) preset: Option<Preset>,
    /// Directory of the results file `ingest.md` (the preset's section is replaced).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// The `weir` binary. Default: next to this executable.
    #[arg(long)]
    pub(crate) weir: Option<PathBuf>,
    /// Runs per figure (medians are reported). Default 3.
    #[arg(long)]
    pub(crate) runs: Option<usize>,
    /// People rows instead of the preset's (each gives 1 Person, 2 relationships; companies are
    /// one per 50 people).
    #[arg(long)]
    pub(crate) people: Option<u64>,
    /// Records per batch, both sides (Weir's default is 1000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch_size: usize,
    /// `weir ingest --concurrency` of the main comparison (Weir's default is 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) concurrency: usize,
    /// Concurrencies tried for the bare loop; the fastest is compared.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub(crate) bare_concurrency: Vec<usize>,
    /// Also run the bare loop with Nagle's algorithm on (neo4rs as shipped) in every run, to
    /// show what `TCP_NODELAY` is worth; the compared baseline always has it off, like Weir.
    /// Default: quick yes, full no (it takes as long as the three other runs together).
    #[arg(long)]
    pub(crate) bare_nagle: Option<bool>,
    /// `weir ingest --memory-limit` of the tight-memory run.
    #[arg(long, default_value = "32MiB")]
    pub(crate) memory_limit: String,
    /// Run the batch × concurrency sweep (default: quick yes, full no).
    #[arg(long)]
    pub(crate) sweep: Option<bool>,
    /// Batch sizes of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000")]
    pub(crate) sweep_batch: Vec<usize>,
    /// Fixed concurrencies of the sweep (`weir ingest --fixed-concurrency --concurrency N`).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub(crate) sweep_concurrency: Vec<usize>,
    /// The sweep also runs `weir ingest --concurrency N` (adaptive between 1 and N) with this N.
    #[arg(long, default_value_t = 4)]
    pub(crate) sweep_adaptive: usize,
    /// Runs per sweep cell.
    #[arg(long, default_value_t = 1)]
    pub(crate) sweep_runs: usize,
    /// The RSS chart. Default: `BENCHMARKS-rss-ingest.png` at the repository root for the full
    /// preset, `benches/results/rss-ingest-quick.png` for the quick one, or in `--out` when that
    /// is given.
    #[arg(long)]
    pub(crate) chart: Option<PathBuf>,
    /// Do not draw the chart.
    #[arg(long)]
    pub(crate) no_chart: bool,
    /// Where generated datasets are kept (reused across runs: generation is deterministic).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Give each run a label prefix of its own and keep its data instead of deleting it
    /// (default yes: ArcadeDB deletes about 2.5 k records/s through Bolt, so deleting
    /// after each run took longer than the runs; `false` deletes each run's data).
    #[arg(long)]
    pub(crate) keep_data: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
