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
mod cli;
mod graph;
mod report;
mod results;
mod runs;
mod sweep;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::cli::{Cli, Preset, Sub};
use crate::results::Invocation;
use crate::runs::{Bench, check_cypher, generate, run_all};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
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
    let md = results::render(
        Invocation {
            bench: &bench,
            preset,
            people,
            runs,
            started_at,
            elapsed,
            load_text,
            load_start,
            csv_bytes,
            used,
            root: &root,
            prefix: &prefix,
            dropped,
        },
        &res,
    )?;
    results::write(&md, &bench, preset, &root)
}
