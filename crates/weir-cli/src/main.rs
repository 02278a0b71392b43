//! `weir`: Weir's command-line tool.

use clap::{Parser, Subcommand};

mod cmd;
mod logging;

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
