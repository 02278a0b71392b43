//! `weir-ingestd`: Weir's ingest service — an HTTP job API over the stream pipeline, publishing
//! each committed batch's changes and the jobs' progress to NATS JetStream. Everything it runs
//! is put together by `weir_app::app` (the same composition as `weir serve` and
//! `weir-gatewayd`); settings: `weir-ingestd config show`, `weir-ingestd config schema`.
//!
//! With the default `jemalloc` feature, jemalloc is the global allocator (its statistics are in
//! `/metrics` and `/api/memory/*`); with the default `heap-profiling` feature its heap profiler
//! is built in, set up inactive through the exported `malloc_conf`, and turned on by
//! `--heap-profiling` / `WEIR_HEAP_PROFILING=1` (see `weir_memwatch::profile`).

use clap::Parser;
use weir_app::cli::{ProcessFlags, ServiceArgs};
use weir_app::settings::Role;

// jemalloc (`jemalloc` feature) and its inactive heap profiler (`heap-profiling` feature).
weir_memwatch::binary_allocator!();

/// Command line of `weir-ingestd`.
#[derive(Debug, Parser)]
#[command(
    name = "weir-ingestd",
    version,
    about = "Weir's ingest service: an HTTP job API publishing graph changes to the bus."
)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    process: ProcessFlags,
    /// Jobs running at once (`jobs.max_concurrent`). Env `WEIR_MAX_JOBS`.
    #[arg(long)]
    max_jobs: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let max_jobs = cli.max_jobs;
    weir_app::cli::main(
        Role::Ingestd,
        &cli.service,
        &cli.process,
        |s| {
            if let Some(n) = max_jobs {
                s.jobs.max_concurrent = n;
            }
        },
        None,
    )
}
