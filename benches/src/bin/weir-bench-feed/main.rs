//! `weir-bench-feed`: the change feed during a real ingest. Commit-to-client latency, every
//! delivery counted, and peak RSS of each process, while `weir generate` people are ingested
//! at default settings (1,000-row batches) with subscribers attached.
//!
//! Two deployments, release binaries next to this one:
//! - `serve`: one `weir serve` (in-process bus); the file is uploaded to `POST /jobs/upload`;
//! - `services`: `weir-ingestd` + `weir-gatewayd` on a NATS JetStream stream private to the run.
//!
//! Subscribers (graphql-transport-ws, tasks in this process): `--wide` of them watch every
//! Person change; the others each watch 99 people of their own (`keys`), as dashboards and
//! per-entity views do. Latency is the receive time minus the change's `committedAtMs` (set
//! when its transaction committed), so it includes publishing, the bus, the gateway and the
//! socket. Each subscriber checks that it received exactly its changes, each once, in order.
//!
//! ```text
//! cargo build --release -p weir-cli -p weir-ingestd -p weir-gatewayd -p weir-benches
//! target/release/weir-bench-feed --deployment serve --people 1000000 --subscribers 1000
//! target/release/weir-bench-feed --deployment services --people 1000000 --subscribers 1000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use weir_benches::hist::Histogram;
use weir_benches::procfs::{RssSampler, cpu_time};
use weir_benches::stats::mib;
use weir_benches::table::Table;

const KEY: &str = "weir-bench-feed-key-0123456789";
/// People each narrow subscriber watches: the gateway allows at most 100 labels, types and
/// keys together, and the subscription names one label.
const KEYS_PER_SUBSCRIBER: u64 = 99;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Deployment {
    /// `weir serve`: gateway, job API and in-process bus in one process.
    Serve,
    /// `weir-ingestd` and `weir-gatewayd` on NATS JetStream.
    Services,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "weir-bench-feed",
    about = "Commit-to-client latency and peak RSS while a real ingest runs with subscribers attached (127.0.0.1 only)."
)]
struct Cli {
    /// Which processes run the feed.
    #[arg(long, value_enum, default_value = "serve")]
    deployment: Deployment,
    /// People to ingest (`weir generate`; the file is cached in the data directory).
    #[arg(long, default_value_t = 100_000)]
    people: u64,
    /// Subscribers in all.
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    /// Of them, how many watch every Person change (the rest watch 99 people each).
    #[arg(long, default_value_t = 10)]
    wide: u64,
    /// Directory of the release binaries (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the generated data goes.
    #[arg(long, default_value = "target/bench-data")]
    data_dir: PathBuf,
}

struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The graph and NATS settings of this machine (`.weir/env`, the environment).
fn service_env(cmd: &mut Command, stream: &str) {
    let s = weir_config::ServiceSettings::from_env().expect("settings");
    cmd.env("NEO4J_URI", &s.graph.uri)
        .env("NEO4J_USER", &s.graph.user)
        .env("NEO4J_PASSWORD", s.graph.password.expose())
        .env("NEO4J_DATABASE", &s.graph.database)
        .env("NATS_URL", &s.nats.url)
        .env("WEIR_BUS_STREAM", stream)
        .env("WEIR_BUS_SUBJECT_PREFIX", stream.to_lowercase())
        .env("WEIR_API_KEYS", KEY)
        .env("WEIR_LOG", "warn")
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = weir_test_support::process::http_request_with_body(
        addr,
        method,
        path,
        Some(KEY),
        "application/json",
        body,
    )?;
    Ok((
        r.status,
        serde_json::from_slice(&r.body).unwrap_or_default(),
    ))
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = weir_test_support::process::http_request(addr, "GET", "/ready", None)
            && r.status == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One subscriber's expected and received changes.
struct Sub {
    expected: u64,
    received: AtomicU64,
    out_of_order: AtomicU64,
    ended: AtomicU64,
}

async fn subscriber(
    gw: SocketAddr,
    args: String,
    sub: Arc<Sub>,
    hist: Arc<Histogram>,
    ready: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut req = format!("ws://{gw}/graphql/ws").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let send = |v: serde_json::Value| Message::Text(v.to_string().into());
    ws.send(send(serde_json::json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {KEY}")}})))
        .await?;
    let q = format!("subscription {{ graphChanges({args}) {{ seq index committedAtMs }} }}");
    let mut acked = false;
    let mut last = (0u64, 0u64);
    while let Some(m) = ws.next().await {
        let Ok(Message::Text(t)) = m else {
            if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        match v["type"].as_str() {
            Some("connection_ack") if !acked => {
                acked = true;
                ws.send(send(
                    serde_json::json!({"type": "subscribe", "id": "1", "payload": {"query": q}}),
                ))
                .await?;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            Some("ping") => ws.send(send(serde_json::json!({"type": "pong"}))).await?,
            Some("next") => {
                let c = &v["payload"]["data"]["graphChanges"];
                let at = (
                    c["seq"].as_u64().unwrap_or(0),
                    c["index"].as_u64().unwrap_or(0),
                );
                if at <= last {
                    sub.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last = at;
                let committed = c["committedAtMs"].as_u64().unwrap_or(0);
                hist.record(now_ms().saturating_sub(committed) * 1000);
                let n = sub.received.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= sub.expected {
                    // Every change arrived: stay connected (a leave is not what is measured).
                }
            }
            _ => {
                sub.ended.fetch_add(1, Ordering::Relaxed);
                eprintln!("subscriber ended: {v}");
                break;
            }
        }
    }
    Ok(())
}

fn people_file(cli: &Cli, weir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&cli.data_dir)?;
    let path = cli
        .data_dir
        .join(format!("people-{}.csv", cli.people))
        .canonicalize()
        .unwrap_or_else(|_| cli.data_dir.join(format!("people-{}.csv", cli.people)));
    if !path.is_file() {
        eprintln!("generating {} people into {}", cli.people, path.display());
        let st = Command::new(weir)
            .args(["generate", "--people", &cli.people.to_string(), "--out"])
            .arg(&path)
            .status()?;
        if !st.success() {
            bail!("weir generate failed");
        }
    }
    Ok(path.canonicalize()?)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("own directory")?
            .to_path_buf(),
    };
    let weir = bin_dir.join("weir");
    let csv = people_file(&cli, &weir)?;
    let repo_mapping =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/people/mapping.toml");
    let mapping = std::fs::read_to_string(&repo_mapping).context("the example mapping")?;
    let run = format!("feed{}", now_ms() % 1_000_000_000);
    let prefix = format!("{run}_");
    let person = format!("{prefix}Person");
    let stream = format!("BENCH_{}", run.to_uppercase());
    let work = tempdir(&run)?;

    // The processes.
    let mut procs: Vec<Proc> = Vec::new();
    let (gw, job_api) = match cli.deployment {
        Deployment::Serve => {
            let addr = free_addr()?;
            let config = work.join("serve.toml");
            std::fs::write(
                &config,
                format!(
                    "[jobs]\njob_dir = {:?}\nspool_dir = {:?}\n",
                    work.join("jobs"),
                    work.join("spool")
                ),
            )?;
            let mut cmd = Command::new(&weir);
            service_env(&mut cmd, &stream);
            cmd.args([
                "serve",
                "--api-key",
                KEY,
                "--bind",
                &addr.to_string(),
                "--config",
            ])
            .arg(&config);
            procs.push(Proc {
                name: "weir serve",
                child: cmd.spawn().context("starting weir serve")?,
            });
            (addr, addr)
        }
        Deployment::Services => {
            let ingestd = free_addr()?;
            let mut cmd = Command::new(bin_dir.join("weir-ingestd"));
            service_env(&mut cmd, &stream);
            cmd.env("WEIR_BIND", ingestd.to_string())
                .env("WEIR_INPUT_ROOTS", csv.parent().context("data dir")?)
                .env("WEIR_JOB_DIR", work.join("jobs"))
                .env("WEIR_SPOOL_DIR", work.join("spool"));
            procs.push(Proc {
                name: "weir-ingestd",
                child: cmd.spawn().context("starting weir-ingestd")?,
            });
            let gw = free_addr()?;
            let mut cmd = Command::new(bin_dir.join("weir-gatewayd"));
            service_env(&mut cmd, &stream);
            cmd.env("WEIR_BIND", gw.to_string());
            procs.push(Proc {
                name: "weir-gatewayd",
                child: cmd.spawn().context("starting weir-gatewayd")?,
            });
            wait_ready(ingestd).await?;
            (gw, ingestd)
        }
    };
    wait_ready(gw).await?;

    // The subscribers.
    let hist = Arc::new(Histogram::new());
    let ready = Arc::new(AtomicU64::new(0));
    let narrow = cli.subscribers.saturating_sub(cli.wide);
    anyhow::ensure!(
        narrow * KEYS_PER_SUBSCRIBER <= cli.people,
        "{narrow} narrow subscribers × {KEYS_PER_SUBSCRIBER} people need --people ≥ {}",
        narrow * KEYS_PER_SUBSCRIBER
    );
    let mut subs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..cli.subscribers {
        let (args, expected) = if i < cli.wide {
            (format!("labels: [\"{person}\"]"), cli.people)
        } else {
            let first = (i - cli.wide) * KEYS_PER_SUBSCRIBER + 1;
            let last = (first + KEYS_PER_SUBSCRIBER - 1).min(cli.people);
            let keys: Vec<String> = (first..=last).map(|k| format!("\"{k}\"")).collect();
            (
                format!("labels: [\"{person}\"], keys: [{}]", keys.join(",")),
                last.saturating_sub(first) + 1,
            )
        };
        let sub = Arc::new(Sub {
            expected,
            received: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        });
        subs.push(sub.clone());
        tasks.push(tokio::spawn(subscriber(
            gw,
            args,
            sub,
            hist.clone(),
            ready.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < cli.subscribers {
        if Instant::now() > deadline {
            bail!(
                "only {} subscribers connected",
                ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: u64 = subs.iter().map(|s| s.expected).sum();
    eprintln!(
        "{} subscribers ({} wide, {narrow} narrow) on {gw}; {expected} deliveries expected",
        cli.subscribers, cli.wide
    );

    // The ingest, with RSS sampled.
    let samplers: Vec<(&'static str, u32, RssSampler)> = procs
        .iter()
        .map(|p| {
            (
                p.name,
                p.child.id(),
                RssSampler::start(p.child.id(), Duration::from_millis(250), 4096),
            )
        })
        .collect();
    let cpu_before: Vec<Duration> = procs
        .iter()
        .map(|p| cpu_time(p.child.id()).unwrap_or_default())
        .collect();
    let started = Instant::now();
    match cli.deployment {
        Deployment::Serve => {
            let path = format!(
                "/jobs/upload?id=feed&label_prefix={}&mapping={}",
                weir_test_support::process::url_encode(&prefix),
                weir_test_support::process::url_encode(&mapping)
            );
            let r = weir_test_support::process::http_upload(job_api, &path, Some(KEY), &csv)?;
            if r.status != 202 {
                bail!("upload refused: {} {}", r.status, r.text());
            }
        }
        Deployment::Services => {
            let body = serde_json::json!({"path": csv, "mapping": mapping, "label_prefix": prefix, "id": "feed"});
            let (status, b) = http(job_api, "POST", "/jobs", body.to_string().as_bytes())?;
            if status != 202 {
                bail!("job refused: {status} {b}");
            }
        }
    }
    let job = loop {
        let (_, b) = http(job_api, "GET", "/jobs/feed", b"")?;
        if ["completed", "failed", "cancelled"].contains(&b["state"].as_str().unwrap_or("")) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ingest_secs = started.elapsed().as_secs_f64();
    // Deliveries still in flight when the job ended.
    let settle = Instant::now() + Duration::from_secs(120);
    let received = || {
        subs.iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut quiet_since = Instant::now();
    let mut last_seen = received();
    while received() < expected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = received();
        if r != last_seen {
            last_seen = r;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    let cpu: Vec<Duration> = procs
        .iter()
        .zip(&cpu_before)
        .map(|(p, b)| {
            cpu_time(p.child.id())
                .unwrap_or_default()
                .saturating_sub(*b)
        })
        .collect();
    let peaks: Vec<(&str, u64)> = samplers
        .into_iter()
        .map(|(name, _, s)| (name, s.finish().iter().map(|p| p.1).max().unwrap_or(0)))
        .collect();
    for t in tasks {
        t.abort();
    }

    let got = received();
    let complete = subs
        .iter()
        .filter(|s| s.received.load(Ordering::Relaxed) == s.expected)
        .count();
    let disorder: u64 = subs
        .iter()
        .map(|s| s.out_of_order.load(Ordering::Relaxed))
        .sum();
    let ended: u64 = subs.iter().map(|s| s.ended.load(Ordering::Relaxed)).sum();
    let q = |x| {
        hist.quantile(x)
            .map_or("-".into(), |d: Duration| format!("{} ms", d.as_millis()))
    };
    let mut t = Table::new(["figure", "value"]);
    t.row([
        "deployment",
        match cli.deployment {
            Deployment::Serve => "weir serve (in-process bus)",
            Deployment::Services => "weir-ingestd + weir-gatewayd (NATS)",
        },
    ]);
    t.row([
        "people ingested",
        &format!(
            "{} ({}, {})",
            job["records_committed"],
            job["state"],
            if job["records_dead_lettered"] == 0 {
                "no dead letters".to_owned()
            } else {
                format!("{} dead letters", job["records_dead_lettered"])
            }
        ),
    ]);
    t.row([
        "ingest time",
        &format!(
            "{ingest_secs:.1} s ({:.0} rows/s)",
            cli.people as f64 / ingest_secs
        ),
    ]);
    t.row([
        "subscribers",
        &format!(
            "{} ({} every Person change, {narrow} × {KEYS_PER_SUBSCRIBER} people)",
            cli.subscribers, cli.wide
        ),
    ]);
    t.row([
        "deliveries",
        &format!(
            "{got} of {expected} expected ({} lost); {complete} of {} subscribers complete",
            expected.saturating_sub(got),
            cli.subscribers
        ),
    ]);
    t.row([
        "out of order / ended by the server",
        &format!("{disorder} / {ended}"),
    ]);
    t.row([
        "commit-to-client latency p50 / p99 / max",
        &format!("{} / {} / {} ms", q(0.5), q(0.99), hist.max().as_millis()),
    ]);
    t.row([
        "last delivery after the start",
        &format!("{delivered_secs:.1} s"),
    ]);
    for ((name, peak), c) in peaks.iter().zip(&cpu) {
        t.row([
            &format!("{name}: peak RSS, CPU"),
            &format!("{}, {:.1} s", mib(*peak), c.as_secs_f64()),
        ]);
    }
    println!("{}", t.to_markdown());
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    if got != expected || disorder > 0 {
        bail!("not every change was delivered once, in order");
    }
    Ok(())
}

fn tempdir(run: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("weir-bench-{run}"));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
