//! `weir ping`: is the graph server there, is NATS there, how fast do they answer.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use weir_config::{GraphSettings, NatsSettings, START_HINT, redact_url};

use super::ingest::SettingsArgs;
use super::publish::stream_nats_url;

/// Arguments of `weir ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// Bolt URI of the graph server (overrides NEO4J_URI and the settings file's `graph.uri`).
    #[arg(long)]
    uri: Option<String>,
    /// NATS URL (overrides NATS_URL and the settings file's `bus.url`).
    #[arg(long)]
    nats_url: Option<String>,
    #[command(flatten)]
    settings: SettingsArgs,
    /// How long to wait for each service.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    timeout: Duration,
    /// Round trips to time; the median is printed.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Only the graph server.
    #[arg(long, conflicts_with = "nats_only")]
    graph_only: bool,
    /// Only NATS.
    #[arg(long)]
    nats_only: bool,
}

impl PingArgs {
    /// `--config` / `--show-config`.
    pub(crate) fn settings_args(&self) -> &SettingsArgs {
        &self.settings
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 5s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}` is not a duration like 5s or 500ms")),
    }
}

/// Runs `weir ping`; exit 0 when every service asked for answered, 1 otherwise.
pub(crate) async fn run(args: PingArgs) -> anyhow::Result<u8> {
    let settings = args.settings.resolve(args.uri.as_deref(), None, 1)?;
    if args.settings.show(&settings) {
        return Ok(0);
    }
    let graph = &settings.graph;
    let nats = NatsSettings {
        url: stream_nats_url(args.nats_url.as_deref(), &settings),
    };
    // Credentials in an address are never printed.
    let (graph_shown, nats_shown) = (redact_url(&graph.uri), redact_url(&nats.url));
    let rounds = args.rounds.max(1);
    let mut ok = true;
    if !args.nats_only {
        match ping_graph(graph, args.timeout, rounds).await {
            Ok((version, connect, rtt)) => println!(
                "graph  {graph_shown}  ok  server: {version}  connect: {}  round trip (median of {rounds}): {}",
                fmt_dur(connect),
                fmt_dur(rtt)
            ),
            Err(e) => {
                ok = false;
                println!("graph  {graph_shown}  DOWN  {e:#}");
            }
        }
    }
    if !args.graph_only {
        match ping_nats(&nats, args.timeout, rounds).await {
            Ok((version, js, connect, rtt)) => println!(
                "nats   {nats_shown}  ok  server: nats-server {version}  jetstream: {js}  connect: {}  round trip (median of {rounds}): {}",
                fmt_dur(connect),
                fmt_dur(rtt)
            ),
            Err(e) => {
                ok = false;
                println!("nats   {nats_shown}  DOWN  {e:#}");
            }
        }
    }
    if ok {
        Ok(0)
    } else {
        eprintln!("hint: {START_HINT}");
        Ok(super::EXIT_FATAL)
    }
}

fn fmt_dur(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn ping_graph(
    s: &GraphSettings,
    timeout: Duration,
    rounds: u32,
) -> anyhow::Result<(String, Duration, Duration)> {
    let config = neo4rs::ConfigBuilder::default()
        .uri(&s.uri)
        .user(&s.user)
        .password(s.password.expose())
        .db(s.database.as_str())
        .max_connections(1)
        .build()
        .context("invalid graph settings")?;
    let graph = neo4rs::Graph::connect(config).context("invalid graph settings")?;
    let start = Instant::now();
    let first = tokio::time::timeout(timeout, return_one(&graph))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
    anyhow::ensure!(first == 1, "RETURN 1 answered {first}");
    let connect = start.elapsed();
    let mut times = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let t = Instant::now();
        tokio::time::timeout(timeout, return_one(&graph))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
        times.push(t.elapsed());
    }
    let version = tokio::time::timeout(timeout, server_version(&graph))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .unwrap_or_else(|| "unknown (dbms.components() not supported)".to_owned());
    Ok((version, connect, median(times)))
}

async fn return_one(graph: &neo4rs::Graph) -> anyhow::Result<i64> {
    let mut rows = graph.execute(neo4rs::query("RETURN 1 AS x")).await?;
    let row = rows.next().await?.context("RETURN 1 gave no row")?;
    Ok(row.get::<i64>("x")?)
}

async fn server_version(graph: &neo4rs::Graph) -> anyhow::Result<Option<String>> {
    let mut rows = graph
        .execute(neo4rs::query(
            "CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition",
        ))
        .await?;
    let Some(row) = rows.next().await? else {
        return Ok(None);
    };
    let name: String = row.get("name").unwrap_or_default();
    let versions: Vec<String> = row.get("versions").unwrap_or_default();
    let edition: String = row.get("edition").unwrap_or_default();
    Ok(Some(format!("{name} {} {edition}", versions.join(","))))
}

async fn ping_nats(
    s: &NatsSettings,
    timeout: Duration,
    rounds: u32,
) -> anyhow::Result<(String, bool, Duration, Duration)> {
    let start = Instant::now();
    let client = tokio::time::timeout(
        timeout,
        async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .connect(s.url.as_str()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no connection within {timeout:?}"))??;
    let connect = start.elapsed();
    let mut times = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let t = Instant::now();
        tokio::time::timeout(timeout, client.flush())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
        times.push(t.elapsed());
    }
    let info = client.server_info();
    // A raw account-info request: typed parsing differs across server versions.
    let js_ok = match tokio::time::timeout(timeout, client.request("$JS.API.INFO", "".into())).await
    {
        Ok(Ok(msg)) => !String::from_utf8_lossy(&msg.payload).contains("\"error\""),
        _ => false,
    };
    Ok((info.version, js_ok, connect, median(times)))
}
