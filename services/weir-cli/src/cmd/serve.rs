//! `weir serve`: the gateway, the ingest job API and the in-process bus in one process. It is
//! the composition every Weir process uses (`weir_app::app`) with the `serve` role: one
//! listener serves GraphQL (`/graphql`, `/graphql/ws`), the job API (`/jobs`, `/jobs/upload`,
//! `/jobs/{id}`), the `since` replay (`GET /changes?since=`), the console (`/`, `/graphiql`)
//! and `/health` / `/ready`. With `--ingest FILE --mapping M` it also ingests that file once
//! the graph is reachable, so clients watch the changes arrive live.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use weir_app::cli::{ProcessFlags, ServiceArgs};
use weir_app::jobs::{JobInput, JobSpec};
use weir_app::settings::{Role, Settings};
use weir_config::Secret;
use weir_gateway::AuthConfig;

/// Arguments of `weir serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// An API key clients must present as `Authorization: Bearer <key>` (repeatable; also
    /// `WEIR_API_KEYS`, comma-separated).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Turn authentication off (local demos only, and only on a loopback `--bind`: anyone who
    /// can reach the port may query, subscribe and start jobs).
    #[arg(long)]
    no_auth: bool,
    /// Ingest this file once the graph is reachable (needs --mapping).
    #[arg(long, requires = "mapping")]
    ingest: Option<PathBuf>,
    /// The mapping file for --ingest.
    #[arg(long, short, requires = "ingest")]
    mapping: Option<PathBuf>,
    /// Prefix for every label and relationship type of the --ingest job.
    #[arg(long, default_value = "")]
    label_prefix: String,
    /// Print the resolved settings (secrets masked) and exit: `weir serve config show`.
    #[arg(long)]
    show_config: bool,
}

impl ServeArgs {
    /// Applies the flags of `weir serve` itself (after the common ones).
    fn adjust(&self, s: &mut Settings) -> anyhow::Result<()> {
        if !self.api_keys.is_empty() {
            s.auth = AuthConfig::ApiKeys {
                keys: self.api_keys.iter().map(Secret::new).collect(),
            };
        }
        if self.no_auth {
            s.auth = AuthConfig::Disabled;
        }
        if let Some(f) = &self.ingest {
            // The one file given on the command line may be read by the job; nothing else.
            let f = f
                .canonicalize()
                .with_context(|| format!("--ingest {}", f.display()))?;
            s.jobs.input_roots.push(f);
        }
        Ok(())
    }

    /// The start-up job of `--ingest FILE --mapping M`.
    fn startup(&self) -> anyhow::Result<Option<JobSpec>> {
        let (Some(file), Some(mapping)) = (&self.ingest, &self.mapping) else {
            return Ok(None);
        };
        Ok(Some(JobSpec {
            id: None,
            input: JobInput::Path(file.clone()),
            mapping: std::fs::read_to_string(mapping)
                .with_context(|| format!("reading mapping {}", mapping.display()))?,
            format: None,
            label_prefix: self.label_prefix.clone(),
        }))
    }
}

/// Runs `weir serve` until Ctrl-C / SIGTERM (or prints its settings).
pub(crate) fn main(mut args: ServeArgs, process: &ProcessFlags) -> ExitCode {
    if args.show_config {
        args.service.command = Some(weir_app::cli::Command::Config {
            action: weir_app::cli::ConfigAction::Show,
        });
    }
    let startup = match args.startup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(super::EXIT_FATAL);
        }
    };
    let mut adjust_error = None;
    let code = weir_app::cli::main(
        Role::Serve,
        &args.service,
        process,
        |s| {
            if let Err(e) = args.adjust(s) {
                adjust_error = Some(e);
            }
        },
        startup,
    );
    if let Some(e) = adjust_error {
        eprintln!("error: {e:#}");
        return ExitCode::from(super::EXIT_FATAL);
    }
    code
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use weir_app::config::Env;
    use weir_app::jobs::JobsConfig;

    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ServeArgs,
        }
        let mut v = vec!["weir-serve"];
        v.extend_from_slice(extra);
        T::try_parse_from(v).unwrap().a
    }

    fn resolve(a: &ServeArgs, env: &Env) -> anyhow::Result<Settings> {
        let mut s = a
            .service
            .resolve(Role::Serve, &ProcessFlags::default(), env)?;
        a.adjust(&mut s)?;
        s.validate(Role::Serve)?;
        Ok(s)
    }

    #[test]
    fn flags_beat_env_beat_defaults_and_show_masks_keys() {
        let env = Env::from_pairs([
            ("WEIR_BIND", "127.0.0.1:9001"),
            ("WEIR_API_KEYS", "env-key-123"),
        ]);
        let c = resolve(&args(&[]), &env).unwrap();
        assert_eq!(c.bind.port(), 9001);
        let shown = c.show(Role::Serve);
        assert!(!shown.contains("env-key-123"), "{shown}");
        let c = resolve(&args(&["--bind", "127.0.0.1:9002", "--no-auth"]), &env).unwrap();
        assert_eq!(c.bind.port(), 9002);
        assert_eq!(c.auth, AuthConfig::Disabled);
    }

    #[test]
    fn default_bind_is_loopback_and_no_auth_is_refused_elsewhere() {
        let c = resolve(&args(&[]), &Env::default()).unwrap();
        assert!(c.bind.ip().is_loopback());
        let e = resolve(
            &args(&["--bind", "0.0.0.0:8080", "--no-auth"]),
            &Env::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("loopback"), "{e}");
    }

    async fn http(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer serve-key-123\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `weir serve --ingest`: ready once the graph answers, runs the start-up job, and the
    /// changes it committed are on the in-process bus for `since` replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_ingests_at_start_and_replays_its_changes() {
        let graph = weir_test_support::graph().await;
        let label = graph.label("Person");
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("people.csv");
        let mut data = String::from("person_id,name,age\n");
        for i in 0..60 {
            data.push_str(&format!("{i},p{i},{}\n", 20 + i % 30));
        }
        std::fs::write(&csv, data).unwrap();
        let mapping = "[[nodes]]\nlabel = \"Person\"\nkey = [\"id\"]\nproperties = [\n  { name = \"id\", field = \"person_id\", type = \"int\" },\n  { name = \"name\" },\n]\n";
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = Settings::defaults(Role::Serve);
        config.graph = weir_test_support::settings().graph;
        config.auth = AuthConfig::ApiKeys {
            keys: vec![Secret::new("serve-key-123")],
        };
        config.jobs = JobsConfig {
            job_dir: dir.path().join("jobs"),
            spool_dir: dir.path().join("spool"),
            input_roots: vec![csv.canonicalize().unwrap()],
            ..JobsConfig::default()
        };
        config.admin.bind = Some(admin);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spec = JobSpec {
            id: Some("startup".into()),
            input: JobInput::Path(csv),
            mapping: mapping.into(),
            format: None,
            label_prefix: format!("{}_", graph.namespace),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(weir_app::app::run_on(
            Role::Serve,
            config,
            listener,
            Some(spec),
            shutdown.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        loop {
            let (status, body) = http(addr, "/jobs/startup").await;
            if status == 200 && body["state"] == "completed" {
                assert_eq!(body["records_committed"], 60, "{body}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "start-up job did not finish: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(http(addr, "/ready").await.0, 200);
        let (status, page) = http(addr, &format!("/changes?since=0&labels={label}")).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 60, "{page}");
        assert_eq!(page["complete"], true);
        assert_eq!(graph.count(&label).await, 60);
        let (status, _) = http(admin, "/metrics").await;
        assert_eq!(status, 200, "admin listener serves /metrics");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("serve stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
