//! `weir`: Weir's command-line tool.
//!
//! With the default `jemalloc` feature, jemalloc is the global allocator (its statistics are in
//! `/metrics` and `/api/memory/*`); with the default `heap-profiling` feature its heap profiler
//! is built in, set up inactive through the exported `malloc_conf`, and turned on by
//! `--heap-profiling` / `WEIR_HEAP_PROFILING=1` (see `weir_memwatch::profile`).

use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod cmd;
mod logging;

// jemalloc (`jemalloc` feature) and its inactive heap profiler (`heap-profiling` feature).
weir_memwatch::binary_allocator!();

/// The memory log interval of `weir serve` when `--memory-log-interval` is not given.
const SERVE_MEMORY_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Weir: load large datasets and live streams into a Neo4j-compatible graph without running out
/// of memory, and watch the graph change through GraphQL subscriptions.
///
/// Connection settings come from `.weir/env` (written by `scripts/dev.sh up`), then the
/// environment (NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD, NEO4J_DATABASE, NATS_URL), then flags.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about)]
struct Cli {
    /// Log format: `text` (default) or `json`.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log a `memory` line (target `weir::memory`: used, limit, ratio, level, RSS, jemalloc
    /// allocated/resident, leak verdict) this often, e.g. `60s`, `500ms`; `0` turns it off.
    /// Default: 60s for `serve`, off for `ingest` (which prints its own progress) and the rest.
    #[arg(long, global = true, env = "WEIR_MEMORY_LOG_INTERVAL", value_parser = humantime::parse_duration)]
    memory_log_interval: Option<Duration>,
    /// Turn jemalloc's heap profiler on at start so `POST /api/memory/snapshot` on the admin
    /// listener returns pprof heap profiles (also `WEIR_HEAP_PROFILING=1`). Off by default: the
    /// profiler is built in but records nothing until turned on.
    #[arg(long, global = true)]
    heap_profiling: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the graph server and NATS; print versions and round-trip times.
    Ping(cmd::ping::PingArgs),
    /// Load CSV / JSON Lines files, directories or stdin into the graph with a mapping.
    Ingest(cmd::ingest::IngestArgs),
    /// Check a mapping file (and show the Cypher it produces).
    Validate(cmd::validate::ValidateArgs),
    /// Write a deterministic synthetic people/companies dataset (for demos and benchmarks).
    Generate(cmd::generate::GenerateArgs),
    /// Serve the GraphQL gateway and the ingest job API in one process (in-process bus).
    Serve(cmd::serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log_format);
    let heap_profiling = cli.heap_profiling
        || std::env::var(weir_memwatch::HEAP_PROFILING_ENV)
            .is_ok_and(|v| weir_memwatch::env_requests_profiling(&v));
    if heap_profiling && let Err(e) = weir_memwatch::activate_heap_profiling() {
        tracing::warn!(error = %e, "heap profiling was asked for but cannot be turned on");
    }
    let (memory_log_interval, memory_limit) = match &cli.command {
        Command::Serve(_) => (
            cli.memory_log_interval.unwrap_or(SERVE_MEMORY_LOG_INTERVAL),
            None,
        ),
        Command::Ingest(args) => (
            cli.memory_log_interval.unwrap_or(Duration::ZERO),
            args.memory_limit(),
        ),
        _ => (Duration::ZERO, None),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(cmd::EXIT_FATAL);
        }
    };
    let code = rt.block_on(async {
        let memory_log = CancellationToken::new();
        if let Err(e) = weir_memwatch::spawn_process_memory_log(
            memory_log_interval,
            memory_limit,
            memory_log.clone(),
        ) {
            tracing::warn!(error = %e, "memory log not started");
        }
        let _stop_memory_log = memory_log.drop_guard();
        match cli.command {
            Command::Ping(args) => cmd::ping::run(args).await,
            Command::Ingest(args) => cmd::ingest::run(args).await,
            Command::Validate(args) => cmd::validate::run(args),
            Command::Generate(args) => cmd::generate::run(args),
            Command::Serve(args) => cmd::serve::run(args).await,
        }
    });
    match code {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(cmd::EXIT_FATAL)
        }
    }
}
