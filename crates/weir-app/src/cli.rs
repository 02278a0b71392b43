//! What both service binaries share on the command line: the `run` / `config show`
//! subcommands, the process flags (`--memory-log-interval`, `--heap-profiling`) and the `main`
//! that resolves settings, prints them, or runs the service until a signal.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, FromArgMatches, Subcommand};
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

/// Flags every Weir process takes besides its own settings: the periodic memory log line and
/// the heap profiler.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct ProcessArgs {
    /// Log a `memory` line (target `weir::memory`: used, limit, ratio, level, RSS, jemalloc
    /// allocated/resident, leak verdict) this often, e.g. `60s`, `500ms`; `0` turns it off.
    #[arg(
        long,
        env = "WEIR_MEMORY_LOG_INTERVAL",
        default_value = "60s",
        value_parser = humantime::parse_duration
    )]
    pub memory_log_interval: Duration,
    /// Turn jemalloc's heap profiler on at start so `POST /api/memory/snapshot` on the admin
    /// listener returns pprof heap profiles (also `WEIR_HEAP_PROFILING=1`). Off by default: the
    /// profiler is built in but records nothing until turned on.
    #[arg(long)]
    pub heap_profiling: bool,
}

impl Default for ProcessArgs {
    fn default() -> Self {
        Self {
            memory_log_interval: Duration::from_secs(60),
            heap_profiling: false,
        }
    }
}

impl ProcessArgs {
    /// Whether heap profiling is asked for: the flag, or `WEIR_HEAP_PROFILING` set to
    /// `1`/`true`/`yes`/`on`.
    pub fn heap_profiling_requested(&self) -> bool {
        self.heap_profiling
            || std::env::var(weir_memwatch::HEAP_PROFILING_ENV)
                .is_ok_and(|v| weir_memwatch::env_requests_profiling(&v))
    }
}

/// Parses the command line of a service: `P`'s own flags and subcommands (its name, version
/// and help text unchanged) plus the [`ProcessArgs`]. Exits with clap's message on bad input.
pub fn parse_with_process_args<P: clap::Parser>() -> (P, ProcessArgs) {
    let command = ProcessArgs::augment_args(P::command());
    let matches = command.get_matches();
    let parsed = P::from_arg_matches(&matches)
        .and_then(|cli| ProcessArgs::from_arg_matches(&matches).map(|process| (cli, process)));
    match parsed {
        Ok(both) => both,
        Err(e) => e.exit(),
    }
}

/// Turns the heap profiler on when `process` asks for it; logs why not when it cannot. Call it
/// before the work to be profiled, outside async code.
pub fn start_heap_profiling(process: &ProcessArgs) {
    if !process.heap_profiling_requested() {
        return;
    }
    if let Err(e) = weir_memwatch::activate_heap_profiling() {
        tracing::warn!(error = %e, "heap profiling was asked for but cannot be turned on");
    }
}

/// Starts the periodic memory log of `process` (nothing when its interval is 0), on the current
/// runtime, until `cancel` fires.
pub fn start_memory_log(
    process: &ProcessArgs,
    memory_limit: Option<u64>,
    cancel: tokio_util::sync::CancellationToken,
) {
    match weir_memwatch::spawn_process_memory_log(process.memory_log_interval, memory_limit, cancel)
    {
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "memory log not started"),
    }
}

/// The body of a service's `main`: sets up logging, resolves the settings with `resolve`
/// (defaults, file, `.weir/env` + environment, flags), then either prints them (`config show`,
/// secrets masked) or, with heap profiling turned on when `process` asks for it, runs `run` on
/// a multi-threaded runtime until SIGINT/SIGTERM, writing the periodic memory log line at
/// `process.memory_log_interval`.
pub fn service_main<C, E, Fut>(
    log_format: &str,
    process: &ProcessArgs,
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
    start_heap_profiling(process);
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
        let memory_log = tokio_util::sync::CancellationToken::new();
        start_memory_log(process, None, memory_log.clone());
        let code = match run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
        memory_log.cancel();
        code
    })
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct T {
        #[command(flatten)]
        p: ProcessArgs,
    }

    fn parse(args: &[&str]) -> Result<ProcessArgs, clap::Error> {
        use clap::Parser;
        let mut v = vec!["svc"];
        v.extend_from_slice(args);
        T::try_parse_from(v).map(|t| t.p)
    }

    #[test]
    fn memory_log_interval_defaults_to_a_minute_and_zero_turns_it_off() {
        // (WEIR_MEMORY_LOG_INTERVAL is not set in the test environment.)
        assert_eq!(parse(&[]).unwrap(), ProcessArgs::default());
        let p = parse(&["--memory-log-interval", "250ms", "--heap-profiling"]).unwrap();
        assert_eq!(p.memory_log_interval, Duration::from_millis(250));
        assert!(p.heap_profiling && p.heap_profiling_requested());
        assert_eq!(
            parse(&["--memory-log-interval", "0"])
                .unwrap()
                .memory_log_interval,
            Duration::ZERO
        );
        assert!(parse(&["--memory-log-interval", "soon"]).is_err());
    }
}
