//! `weir`: Weir's command-line tool.
//!
//! With the default `jemalloc` feature, jemalloc is the global allocator (its statistics are in
//! `/metrics` and `/api/memory/*`); with the default `heap-profiling` feature its heap profiler
//! is built in, set up inactive through the exported `malloc_conf`, and turned on by
//! `--heap-profiling` / `WEIR_HEAP_PROFILING=1` (see `weir_memwatch::profile`).

use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use weir_app::cli::ProcessFlags;

mod cmd;
mod logging;

// jemalloc (`jemalloc` feature) and its inactive heap profiler (`heap-profiling` feature).
weir_memwatch::binary_allocator!();

/// Weir: load large datasets and live streams into a Neo4j-compatible graph without running out
/// of memory, and watch the graph change through GraphQL subscriptions.
///
/// Settings come from defaults, a settings file (`--config`), `.weir/env` (written by
/// `scripts/dev.sh up`) and the environment (NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD,
/// NEO4J_DATABASE, NATS_URL, WEIR_*), then flags; the log filter is `WEIR_LOG`.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    process: ProcessFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the graph server and NATS; print versions and round-trip times.
    Ping(cmd::ping::PingArgs),
    /// Load CSV / JSON Lines files, directories or stdin into the graph with a mapping.
    Ingest(cmd::ingest::IngestArgs),
    /// Keep the graph in step with a NATS JetStream subject (a long-running worker; start
    /// several with the same --consumer to share the work).
    Consume(cmd::consume::ConsumeArgs),
    /// Publish a CSV / JSON Lines file's records to a NATS JetStream subject (for `consume`).
    Publish(cmd::publish::PublishArgs),
    /// Check a mapping file (and show the Cypher it produces).
    Validate(cmd::validate::ValidateArgs),
    /// Write a deterministic synthetic people/companies dataset (for demos and benchmarks).
    Generate(cmd::generate::GenerateArgs),
    /// Serve the GraphQL gateway and the ingest job API in one process (in-process bus).
    Serve(cmd::serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // The long-running process: the same `main` as weir-ingestd and weir-gatewayd.
        Command::Serve(args) => return cmd::serve::main(args, &cli.process),
        other => other,
    };
    let env = match weir_app::config::Env::load() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(cmd::EXIT_FATAL);
        }
    };
    let quiet = match &command {
        Command::Ingest(a) => a.quiet(),
        Command::Consume(a) => a.quiet(),
        Command::Publish(a) => a.quiet(),
        _ => false,
    };
    // The commands with `--config` read `[log]` from their settings file too.
    let log = match &command {
        Command::Ingest(a) => a.settings_args().log(&env),
        Command::Consume(a) => a.settings_args().log(&env),
        Command::Publish(a) => a.settings_args().log(&env),
        Command::Ping(a) => a.settings_args().log(&env),
        _ => None,
    };
    logging::init(&cli.process, &env, quiet, log);
    cli.process.start_heap_profiling(&env);
    // The memory log line: off unless asked for (`weir ingest` prints its own progress).
    let (memory_log_interval, memory_limit) = match &command {
        Command::Ingest(args) => (
            cli.process.memory_log_interval.unwrap_or(Duration::ZERO),
            args.memory_limit(),
        ),
        Command::Consume(args) => (
            cli.process.memory_log_interval.unwrap_or(Duration::ZERO),
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
        match command {
            Command::Ping(args) => cmd::ping::run(args).await,
            Command::Ingest(args) => cmd::ingest::run(args).await,
            // Boxed: a worker's state is large (clippy::large_futures).
            Command::Consume(args) => Box::pin(cmd::consume::run(args)).await,
            Command::Publish(args) => cmd::publish::run(args).await,
            Command::Validate(args) => cmd::validate::run(args),
            Command::Generate(args) => cmd::generate::run(args),
            Command::Serve(_) => unreachable!("served above"),
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
