//! `weir-ingestd`: parses flags and runs [`weir_ingestd::run`] through the shared service `main`.

use clap::Parser;
use weir_ingestd::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    weir_service::cli::service_main(
        &cli.log_format,
        cli.command.as_ref(),
        |env| cli.resolve(env),
        weir_ingestd::run,
    )
}
