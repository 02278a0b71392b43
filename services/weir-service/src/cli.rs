//! What both service binaries share on the command line: the `run` / `config show` / `health`
//! subcommands, the process flags (`--memory-log-interval`, `--heap-profiling`) and the `main`
//! that resolves settings, prints them, or runs the service until a signal.
//!
//! `health` is the container health check of images without curl or wget: it `GET`s the
//! service's `/ready` (or `--url`) and exits 0 on a 2xx answer, 1 otherwise.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
    /// Check a running service (a container health check): `GET` its `/ready`, print the
    /// answer, exit 0 on a 2xx status and 1 otherwise.
    Health(HealthArgs),
}

/// Arguments of `health`.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct HealthArgs {
    /// The `http://` URL to `GET`. Default: `/ready` of this service as its settings (file,
    /// environment, flags) say it listens, on loopback when it binds every address
    /// (`0.0.0.0:8080` -> `http://127.0.0.1:8080/ready`).
    #[arg(long)]
    pub url: Option<String>,
    /// Give up after this long (connecting, sending, reading the answer), e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
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

/// `http://<host>:<port>/ready` of a service listening on `bind`: loopback when it binds every
/// address (`0.0.0.0` -> `127.0.0.1`, `[::]` -> `[::1]`), else the address itself.
pub fn ready_url(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/ready", SocketAddr::new(ip, bind.port()))
}

/// The body of `health`: checks `args.url`, or [`ready_url`] of the address `bind` resolves
/// from the settings (the `.weir/env` + process environment, like `run`). Prints the status
/// line and the body of the answer (stdout when healthy, stderr when not); exit 0 on 2xx.
pub fn health_main(
    args: &HealthArgs,
    bind: impl FnOnce(&Env) -> Result<SocketAddr, ServiceError>,
) -> ExitCode {
    let url = match &args.url {
        Some(u) => u.clone(),
        None => match Env::load().and_then(|env| bind(&env)) {
            Ok(addr) => ready_url(addr),
            Err(e) => return fail(e),
        },
    };
    match check_health(&url, args.timeout) {
        Ok(answer) => {
            println!("{url}: {answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Largest answer `health` reads, bytes (the `/ready` body is a few hundred).
const HEALTH_MAX_ANSWER: usize = 16 << 10;

/// `GET url` (plain `http://` only) within `timeout`: the status line and body when the status
/// is 2xx, else what went wrong (no answer, or the status line and body).
pub fn check_health(url: &str, timeout: Duration) -> Result<String, String> {
    let (authority, path) = split_http_url(url)?;
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {}", humantime::format_duration(timeout)))
    };
    let addrs: Vec<SocketAddr> = with_default_port(authority)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    let mut last = format!("{authority} resolves to no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, remaining()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: weir-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < HEALTH_MAX_ANSWER {
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // An answer whose head has arrived is enough when the rest is slow.
            Err(_) if answer.windows(4).any(|w| w == b"\r\n\r\n") => break,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (status_line, body) = match text.split_once("\r\n\r\n") {
        Some((head, body)) => (head.lines().next().unwrap_or(""), body.trim()),
        None => (text.lines().next().unwrap_or(""), ""),
    };
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP answer: {:?}", status_line))?;
    let summary = if body.is_empty() {
        status_line.to_owned()
    } else {
        format!("{status_line} {body}")
    };
    if (200..300).contains(&code) {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// `http://authority/path` -> (`authority`, `/path`); only plain `http://` URLs.
fn split_http_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be checked"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url}: expected http://host:port/path"));
    }
    Ok((authority, path))
}

/// `authority` with port 80 added when it names none (`host`, `[::1]`).
fn with_default_port(authority: &str) -> String {
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    }
}

/// The body of a service's `main`: sets up logging, resolves the settings with `resolve`
/// (defaults, file, `.weir/env` + environment, flags), then either prints them (`config show`,
/// secrets masked) or, for `health`, checks `--url` (a binary whose `main` knows its bind
/// address calls [`health_main`] itself, so `--url` may be left out), or, with heap profiling turned on when `process` asks for it, runs `run` on
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
    if let Some(Command::Health(args)) = command {
        // A binary that does not say where it listens (see `health_main`) needs `--url`.
        return health_main(args, |_| {
            Err(ServiceError::Invalid {
                field: "health --url",
                reason: "this binary cannot tell its own address; pass --url".into(),
            })
        });
    }
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

    #[derive(Debug, clap::Parser)]
    struct WithCommand {
        #[command(subcommand)]
        command: Option<Command>,
    }

    #[test]
    fn health_takes_a_url_and_a_timeout() {
        use clap::Parser;
        let c = WithCommand::try_parse_from(["svc", "health"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Health(HealthArgs { url: None, timeout })) if timeout == Duration::from_secs(2)
        ));
        let c = WithCommand::try_parse_from([
            "svc",
            "health",
            "--url",
            "http://127.0.0.1:8080/ready",
            "--timeout",
            "500ms",
        ])
        .unwrap();
        let Some(Command::Health(h)) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(h.url.as_deref(), Some("http://127.0.0.1:8080/ready"));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert!(WithCommand::try_parse_from(["svc", "health", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn ready_url_uses_loopback_for_wildcard_binds() {
        let url = |b: &str| ready_url(b.parse().unwrap());
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/ready");
        assert_eq!(url("[::]:8081"), "http://[::1]:8081/ready");
        assert_eq!(url("127.0.0.1:9000"), "http://127.0.0.1:9000/ready");
        assert_eq!(url("10.0.0.5:8080"), "http://10.0.0.5:8080/ready");
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_http_url("http://127.0.0.1:8080/ready").unwrap(),
            ("127.0.0.1:8080", "/ready")
        );
        assert_eq!(split_http_url("http://h").unwrap(), ("h", "/"));
        assert!(split_http_url("https://h/ready").is_err());
        assert!(split_http_url("http:///ready").is_err());
        assert!(split_http_url("http://u:p@h/").is_err());
        assert_eq!(with_default_port("h"), "h:80");
        assert_eq!(with_default_port("h:1"), "h:1");
        assert_eq!(with_default_port("[::1]"), "[::1]:80");
        assert_eq!(with_default_port("[::1]:8080"), "[::1]:8080");
    }

    /// Answers one connection with `answer` (after reading the request head); returns the
    /// URL of `path` and the request it received.
    fn serve_once(answer: &'static str, path: &str) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let task = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (url, task)
    }

    #[test]
    fn check_health_is_ok_on_2xx_only() {
        let (url, task) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}",
            "/ready",
        );
        let ok = check_health(&url, Duration::from_secs(5)).unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK") && ok.contains("\"ok\""),
            "{ok}"
        );
        let req = task.join().unwrap();
        assert!(req.starts_with("GET /ready HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: 127.0.0.1:"), "{req}");

        let (url, task) = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"degraded\"}",
            "/ready",
        );
        let e = check_health(&url, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("503") && e.contains("degraded"), "{e}");
        task.join().unwrap();

        let (url, task) = serve_once("SSH-2.0-OpenSSH\r\n\r\n", "/");
        let e = check_health(&url, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not an HTTP answer"), "{e}");
        task.join().unwrap();
    }

    #[test]
    fn check_health_fails_without_a_listener_or_an_answer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = check_health(&format!("http://{addr}/ready"), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");

        // Accepts but never answers: bounded by the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ready", silent.local_addr().unwrap());
        let started = Instant::now();
        let e = check_health(&url, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{e}");
        assert!(e.contains("no answer"), "{e}");
        drop(silent);
    }
}
