//! The command line every long-running Weir process shares, and the `main` behind
//! `weir-ingestd`, `weir-gatewayd` and `weir serve`: resolve the settings (defaults < file <
//! environment < flags: [`crate::settings`]), then print them (`config show`), print the
//! file's JSON Schema (`config schema`), or run the process ([`crate::app::run`]) until
//! SIGINT/SIGTERM, with logging, the heap profiler and the memory log line set up from the
//! same settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;
use weir_config::ByteSize;

use crate::ServiceError;
use crate::config::Env;
use crate::jobs::JobSpec;
use crate::settings::{LogFormat, Role, Settings, config_path};

/// Subcommands of a service binary.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Run,
    /// Configuration.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Check a running service (a container health check): `GET` its `/ready`, print the
    /// answer, exit 0 on a 2xx status and 1 otherwise.
    Health(crate::health_check::HealthArgs),
}

/// `config` subcommands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum ConfigAction {
    /// Print the resolved settings (file, environment, flags) as TOML, secrets masked.
    Show,
    /// Print the JSON Schema of the settings file.
    Schema,
}

/// The settings flags of a long-running Weir process (each overrides the file and the
/// environment), and its subcommands.
#[derive(Clone, Debug, Default, Args)]
pub struct ServiceArgs {
    /// Settings file (TOML; `config schema` prints its JSON Schema). Env `WEIR_CONFIG`.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to listen on (`bind`). Env `WEIR_BIND`.
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Serve `/metrics` and `/api/memory/*` on this address (`admin.bind`). Env
    /// `WEIR_ADMIN_BIND`.
    #[arg(long)]
    pub admin_bind: Option<SocketAddr>,
    /// Memory limit, e.g. `1GiB` (`memory.limit`). Env `WEIR_MEMORY_LIMIT`.
    #[arg(long)]
    pub memory_limit: Option<ByteSize>,
    /// What to do; default `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The process flags every Weir binary takes (`weir` has them before its subcommand).
#[derive(Clone, Debug, Default, Args)]
pub struct ProcessFlags {
    /// Log format, `text` or `json` (`log.format`). Env `WEIR_LOG_FORMAT`.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Write the `memory` log line (target `weir::memory`: used, limit, ratio, level, RSS,
    /// jemalloc allocated/resident, leak verdict) this often, e.g. `60s`; `0` turns it off
    /// (`memory.log_interval`; default 60 s for the long-running processes, off for `weir
    /// ingest`). Env `WEIR_MEMORY_LOG_INTERVAL`.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub memory_log_interval: Option<Duration>,
    /// Turn jemalloc's heap profiler on at start, so `POST /api/memory/snapshot` on the admin
    /// listener returns pprof heap profiles. Env `WEIR_HEAP_PROFILING=1`.
    #[arg(long, global = true)]
    pub heap_profiling: bool,
}

impl ProcessFlags {
    /// Applies the flags given.
    pub fn apply(&self, s: &mut Settings) {
        match self.log_format.as_deref() {
            Some("json") => s.log.format = LogFormat::Json,
            Some("text") => s.log.format = LogFormat::Text,
            _ => {}
        }
        if let Some(d) = self.memory_log_interval {
            s.memory.log_interval = d;
        }
    }

    /// Whether the heap profiler is asked for: the flag, or `WEIR_HEAP_PROFILING` set to
    /// `1`/`true`/`yes`/`on`.
    pub fn heap_profiling_requested(&self, env: &Env) -> bool {
        self.heap_profiling
            || env
                .get(weir_memwatch::HEAP_PROFILING_ENV)
                .is_some_and(weir_memwatch::env_requests_profiling)
    }

    /// Turns the heap profiler on when asked for; logs why not when it cannot.
    pub fn start_heap_profiling(&self, env: &Env) {
        if self.heap_profiling_requested(env)
            && let Err(e) = weir_memwatch::activate_heap_profiling()
        {
            tracing::warn!(error = %e, "heap profiling was asked for but cannot be turned on");
        }
    }
}

impl ServiceArgs {
    /// `role`'s settings: defaults, the file, `env`, then these flags and `process`'s; not
    /// yet validated (the caller may adjust them first).
    pub fn resolve(
        &self,
        role: Role,
        process: &ProcessFlags,
        env: &Env,
    ) -> Result<Settings, ServiceError> {
        let mut s = Settings::load(role, config_path(self.config.clone(), env).as_deref(), env)?;
        self.apply(&mut s);
        process.apply(&mut s);
        Ok(s)
    }

    /// Applies the flags given.
    pub fn apply(&self, s: &mut Settings) {
        if let Some(b) = self.bind {
            s.bind = b;
        }
        if let Some(b) = self.admin_bind {
            s.admin.bind = Some(b);
        }
        if let Some(l) = self.memory_limit {
            s.memory.limit = Some(l);
        }
    }
}

/// Command line of `weir-ingestd` (its `main` is [`IngestdCli::main`]).
#[derive(Debug, clap::Parser)]
#[command(
    name = "weir-ingestd",
    version,
    about = "Weir's ingest service: an HTTP job API publishing graph changes to the bus."
)]
pub struct IngestdCli {
    /// Settings flags and subcommands.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Process flags.
    #[command(flatten)]
    pub process: ProcessFlags,
    /// Jobs running at once (`jobs.max_concurrent`). Env `WEIR_MAX_JOBS`.
    #[arg(long)]
    pub max_jobs: Option<usize>,
}

impl IngestdCli {
    /// The validated settings these flags give in `env`.
    pub fn settings(&self, env: &Env) -> Result<Settings, ServiceError> {
        let mut s = self.service.resolve(Role::Ingestd, &self.process, env)?;
        self.adjust(&mut s);
        s.validate(Role::Ingestd)?;
        Ok(s)
    }

    fn adjust(&self, s: &mut Settings) {
        if let Some(n) = self.max_jobs {
            s.jobs.max_concurrent = n;
        }
    }

    /// Runs `weir-ingestd`.
    pub fn main(self) -> ExitCode {
        main(
            Role::Ingestd,
            &self.service,
            &self.process,
            |s| self.adjust(s),
            None,
        )
    }
}

/// Command line of `weir-gatewayd` (its `main` is [`GatewaydCli::main`]).
#[derive(Debug, clap::Parser)]
#[command(
    name = "weir-gatewayd",
    version,
    about = "Weir's GraphQL gateway, fed from the NATS JetStream bus."
)]
pub struct GatewaydCli {
    /// Settings flags and subcommands.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Process flags.
    #[command(flatten)]
    pub process: ProcessFlags,
}

impl GatewaydCli {
    /// The validated settings these flags give in `env`.
    pub fn settings(&self, env: &Env) -> Result<Settings, ServiceError> {
        let s = self.service.resolve(Role::Gatewayd, &self.process, env)?;
        s.validate(Role::Gatewayd)?;
        Ok(s)
    }

    /// Runs `weir-gatewayd`.
    pub fn main(self) -> ExitCode {
        main(Role::Gatewayd, &self.service, &self.process, |_| {}, None)
    }
}

/// Sets up logging from `log`: to stderr, filtered by `log.filter`, text or JSON.
pub fn init_logging(log: &crate::settings::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|e| {
        eprintln!(
            "warning: log filter `{}` is not valid ({e}); using `info`",
            log.filter
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The whole `main` of a long-running process: resolve `role`'s settings from `args`,
/// `process` and the environment, then `config show` / `config schema`, or run until a signal.
/// `adjust` changes the settings after the flags (the role's own flags, e.g. `weir serve
/// --api-key`); `startup`: a job to submit once the graph answers (`weir serve --ingest`).
pub fn main(
    role: Role,
    args: &ServiceArgs,
    process: &ProcessFlags,
    adjust: impl FnOnce(&mut Settings),
    startup: Option<JobSpec>,
) -> ExitCode {
    let env = match Env::load() {
        Ok(env) => env,
        Err(e) => return fail(e),
    };
    let settings = args.resolve(role, process, &env).and_then(|mut s| {
        adjust(&mut s);
        s.validate(role)?;
        Ok(s)
    });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match &args.command {
        Some(Command::Config {
            action: ConfigAction::Show,
        }) => {
            print!("{}", settings.show(role));
            return ExitCode::SUCCESS;
        }
        Some(Command::Config {
            action: ConfigAction::Schema,
        }) => {
            print!("{}", Settings::json_schema());
            return ExitCode::SUCCESS;
        }
        Some(Command::Health(h)) => {
            let url = h
                .url
                .clone()
                .unwrap_or_else(|| crate::health_check::ready_url(settings.bind));
            return match crate::health_check::check_health(&url, h.timeout) {
                Ok(answer) => {
                    println!("{url}: {answer}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Run) | None => {}
    }
    init_logging(&settings.log);
    process.start_heap_profiling(&env);
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
        let memory_log = CancellationToken::new();
        if let Err(e) = weir_memwatch::spawn_process_memory_log(
            settings.memory.log_interval,
            settings.memory_limit(),
            memory_log.clone(),
        ) {
            tracing::warn!(error = %e, "memory log not started");
        }
        let code = match Box::pin(crate::app::run(role, settings, startup, shutdown)).await {
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
        a: ServiceArgs,
        #[command(flatten)]
        p: ProcessFlags,
    }

    fn parse(args: &[&str]) -> ServiceArgs {
        use clap::Parser;
        let mut v = vec!["svc"];
        v.extend_from_slice(args);
        T::try_parse_from(v).unwrap().a
    }

    fn resolve(args: &[&str], env: &Env) -> Settings {
        use clap::Parser;
        let mut v = vec!["svc"];
        v.extend_from_slice(args);
        let t = T::try_parse_from(v).unwrap();
        let s = t.a.resolve(Role::Gatewayd, &t.p, env).unwrap();
        s.validate(Role::Gatewayd).unwrap();
        s
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(
            &file,
            "bind = \"127.0.0.1:9001\"\n[memory]\nlimit = \"256MiB\"\n[log]\nfilter = \"warn\"\n",
        )
        .unwrap();
        let env = Env::from_pairs([
            ("WEIR_CONFIG", file.to_str().unwrap()),
            ("WEIR_BIND", "127.0.0.1:9002"),
            ("WEIR_LOG", "debug"),
        ]);
        let s = resolve(&[], &env);
        assert_eq!(s.bind.port(), 9002, "environment over file");
        assert_eq!(s.memory_limit(), Some(256 << 20), "file over defaults");
        assert_eq!(s.log.filter, "debug");
        let s = resolve(
            &[
                "--bind",
                "127.0.0.1:9003",
                "--memory-limit",
                "1GiB",
                "--log-format",
                "json",
            ],
            &env,
        );
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.bind.port(), 9003, "flag over environment");
        assert_eq!(s.memory_limit(), Some(1 << 30));
        use clap::Parser;
        assert!(T::try_parse_from(["svc", "--memory-limit", "lots"]).is_err());
    }

    #[test]
    fn health_takes_a_url_and_a_timeout() {
        use crate::health_check::HealthArgs;
        assert!(matches!(
            parse(&["health"]).command,
            Some(Command::Health(HealthArgs { url: None, timeout })) if timeout == Duration::from_secs(2)
        ));
        let Some(Command::Health(h)) = parse(&[
            "health",
            "--url",
            "http://127.0.0.1:8080/ready",
            "--timeout",
            "500ms",
        ])
        .command
        else {
            panic!("not health")
        };
        assert_eq!(h.url.as_deref(), Some("http://127.0.0.1:8080/ready"));
        assert_eq!(h.timeout, Duration::from_millis(500));
    }

    #[test]
    fn config_subcommands_parse() {
        assert!(matches!(
            parse(&["config", "show"]).command,
            Some(Command::Config {
                action: ConfigAction::Show
            })
        ));
        assert!(matches!(
            parse(&["config", "schema"]).command,
            Some(Command::Config {
                action: ConfigAction::Schema
            })
        ));
    }
}
