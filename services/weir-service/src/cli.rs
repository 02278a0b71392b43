//! What both service binaries share on the command line: the `run` / `config show`
//! subcommands and the `main` that resolves settings, prints them, or runs the service until a
//! signal.

use std::future::Future;
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::ServiceError;
use crate::config::Env;

/// Subcommands of a service binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Run,
    /// Configuration.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        action: ConfigAction,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the resolved settings (file, environment, flags) as TOML, secrets masked.
    Show,
}

/// The body of a service's `main`: sets up logging, resolves the settings with `resolve`
/// (defaults, file, `.weir/env` + environment, flags), then either prints them (`config show`,
/// secrets masked) or runs `run` on a multi-threaded runtime until SIGINT/SIGTERM.
pub fn service_main<C, E, Fut>(
    log_format: &str,
    command: Option<&Command>,
    resolve: impl FnOnce(&Env) -> Result<C, ServiceError>,
    run: impl FnOnce(C, CancellationToken) -> Fut,
) -> ExitCode
where
    C: Serialize,
    E: std::fmt::Display,
    Fut: Future<Output = Result<(), E>>,
{
    crate::init_logging(log_format);
    let config = match Env::load().and_then(|env| resolve(&env)) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(Command::Config {
        action: ConfigAction::Show,
    }) = command
    {
        print!("{}", crate::config::show(&config));
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::cancel_on_signal(shutdown.clone());
        match run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
