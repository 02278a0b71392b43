//! `weir-bench-fanout`: the subscription fan-out load generator and the subscription-churn
//! memory chart (issue 9).
//!
//! Starts release `weir-gatewayd` child processes on 127.0.0.1 fed from a NATS JetStream
//! stream private to the run, opens N graphql-transport-ws clients (tasks in this process),
//! measures gateway RSS per idle subscription, publishes change batches at fixed delivery
//! rates (latency p50/p99/max, deliveries/s, drops, RSS and CPU under load), repeats with two
//! replicas, then churns subscriptions while sampling RSS and draws the chart. Prints Markdown
//! and writes its preset's section of `<out>/fanout.md` (other sections are kept).
//!
//! ```text
//! cargo build --release -p weir-gatewayd -p weir-benches
//! target/release/weir-bench-fanout --preset quick --runs 3
//! target/release/weir-bench-fanout --preset full
//! ```

mod churn;
mod clients;
mod fanout;
mod gateway;
mod publisher;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use weir_bus::{Bus, BusConfig, NatsBusConfig};

use crate::churn::{ChurnPlan, ChurnResult};
use crate::fanout::{FanoutPlan, FanoutResult};
use crate::gateway::{Gateway, Limits};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// 1,000 clients, 5 s per rate, 20 s of churn.
    Quick,
    /// 10,000 clients, 15 s per rate, 90 s of churn.
    Full,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "weir-bench-fanout",
    about = "Subscription fan-out load generator and churn memory chart for weir-gatewayd (127.0.0.1 only)."
)]
struct Cli {
    /// Sizes and durations.
    #[arg(long, value_enum, default_value = "quick")]
    preset: Preset,
    /// WebSocket clients (one subscription each); overrides the preset.
    #[arg(long)]
    clients: Option<usize>,
    /// Target deliveries per second (events/s × clients), comma-separated; overrides the preset.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<u64>,
    /// Seconds of publishing per rate; overrides the preset.
    #[arg(long)]
    secs: Option<u64>,
    /// Gateway replicas, comma-separated (1 and/or 2); default both.
    #[arg(long, value_delimiter = ',')]
    replicas: Vec<usize>,
    /// Seconds of subscription churn (0 = skip); overrides the preset.
    #[arg(long)]
    churn_secs: Option<u64>,
    /// Clients churning at once; overrides the preset.
    #[arg(long)]
    churn_clients: Option<usize>,
    /// Connections opened per second.
    #[arg(long)]
    open_rate: Option<u32>,
    /// Subscriptions per client, each client one connection (1..=100, the gateway's
    /// `max_per_connection`): more subscriptions than the open-file limit allows connections.
    #[arg(long, default_value_t = 1)]
    subscriptions_per_client: usize,
    /// Repeat everything this many times (tables give per-run figures and medians).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Where `fanout.md` goes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The churn chart (PNG). Default: `BENCHMARKS-rss-subscriptions.png` at the repo root for
    /// the full preset, `benches/results/rss-subscriptions-quick.png` for the quick one, or in
    /// `--out` when that is given.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// The `weir-gatewayd` binary; default: next to this executable.
    #[arg(long)]
    gatewayd: Option<PathBuf>,
}

/// Everything a run is told, resolved from the preset and the flags.
#[derive(Clone, Debug)]
struct Plan {
    preset: Preset,
    fanout: FanoutPlan,
    replicas: Vec<usize>,
    churn: Option<ChurnPlan>,
    runs: usize,
}

impl Cli {
    fn plan(&self) -> anyhow::Result<Plan> {
        let (clients, rates, secs, churn_secs, churn_clients, open_rate) = match self.preset {
            Preset::Quick => (
                1_000,
                vec![1_000, 10_000, 25_000, 50_000, 100_000],
                5,
                20,
                200,
                500,
            ),
            Preset::Full => (
                10_000,
                vec![10_000, 25_000, 50_000, 100_000],
                15,
                90,
                1_000,
                1_000,
            ),
        };
        let clients = self.clients.unwrap_or(clients);
        anyhow::ensure!(
            (1..=60_000).contains(&clients),
            "--clients must be 1..=60000"
        );
        let rates = if self.rate.is_empty() {
            rates
        } else {
            self.rate.clone()
        };
        anyhow::ensure!(
            rates.iter().all(|r| *r > 0),
            "--rate values must be above 0"
        );
        let replicas = if self.replicas.is_empty() {
            vec![1, 2]
        } else {
            self.replicas.clone()
        };
        anyhow::ensure!(
            replicas.iter().all(|r| (1..=2).contains(r)),
            "--replicas takes 1 and/or 2"
        );
        let open_rate = self.open_rate.unwrap_or(open_rate).max(1);
        let churn_secs = self.churn_secs.unwrap_or(churn_secs);
        let secs = self.secs.unwrap_or(secs).clamp(1, 600);
        anyhow::ensure!(churn_secs <= 3_600, "--churn-secs at most 3600");
        anyhow::ensure!((1..=100).contains(&self.runs), "--runs must be 1..=100");
        anyhow::ensure!(
            (1..=100).contains(&self.subscriptions_per_client),
            "--subscriptions-per-client must be 1..=100"
        );
        Ok(Plan {
            preset: self.preset,
            fanout: FanoutPlan {
                clients,
                rates,
                step: Duration::from_secs(secs),
                open_rate,
                subs_per_client: self.subscriptions_per_client,
            },
            replicas,
            churn: (churn_secs > 0).then(|| ChurnPlan {
                duration: Duration::from_secs(churn_secs),
                concurrency: self.churn_clients.unwrap_or(churn_clients).clamp(1, 15_000),
                stay: (Duration::from_millis(200), Duration::from_millis(2_000)),
                events_per_sec: 20.0,
                open_rate,
            }),
            runs: self.runs,
        })
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
#[allow(unsafe_code)]
fn raise_nofile() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        anyhow::ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0,
            "getrlimit failed"
        );
        lim.rlim_cur = lim.rlim_max;
        anyhow::ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0,
            "setrlimit failed"
        );
    }
    Ok(lim.rlim_cur)
}

/// A NATS stream and subject private to this run, deleted when the handle drops.
struct Stream {
    _nats: weir_test_support::TestNats,
    config: NatsBusConfig,
}

async fn private_stream(base: &str) -> Stream {
    let nats = weir_test_support::nats().await;
    let name = nats.name(base);
    let config = NatsBusConfig {
        url: nats.settings.url.clone(),
        stream: name.clone(),
        subject_prefix: format!("weirbench.{name}"),
        max_age: Duration::from_secs(3_600),
        duplicate_window: Duration::from_secs(600),
        max_bytes: 1 << 30,
        ..NatsBusConfig::default()
    };
    Stream {
        _nats: nats,
        config,
    }
}

async fn start_gateways(
    bin: &std::path::Path,
    stream: &NatsBusConfig,
    limits: &Limits,
    n: usize,
    tag: &str,
) -> anyhow::Result<Vec<Gateway>> {
    let mut gateways = Vec::new();
    for i in 0..n {
        gateways.push(Gateway::spawn(bin, stream, limits, &format!("{tag}-{i}"))?);
    }
    for g in &mut gateways {
        g.wait_ready(Duration::from_secs(60)).await?;
    }
    Ok(gateways)
}

/// One run of every scenario.
struct RunResult {
    fanouts: Vec<FanoutResult>,
    churn: Option<ChurnResult>,
}

async fn one_run(plan: &Plan, bin: &std::path::Path, run: usize) -> anyhow::Result<RunResult> {
    let limits = Limits {
        max_subscriptions: plan.fanout.clients * plan.fanout.subs_per_client + 1_000,
        outbound_queue: 64,
    };
    let mut fanouts = Vec::new();
    for &replicas in &plan.replicas {
        eprintln!(
            "run {run}: fan-out, {replicas} replica(s), {} clients",
            plan.fanout.clients
        );
        let stream = private_stream(&format!("FANOUT_R{replicas}")).await;
        let bus = Bus::connect(&BusConfig::Nats(stream.config.clone()))
            .await
            .context("connecting the publisher to NATS")?;
        let mut gateways = start_gateways(bin, &stream.config, &limits, replicas, "fanout").await?;
        let label = format!("BenchFanout_{}", stream.config.stream);
        let result =
            fanout::run(&plan.fanout, &gateways, &bus, &stream.config.stream, &label).await;
        for g in &mut gateways {
            g.stop();
        }
        let result = result?;
        eprintln!(
            "  idle: {} clients, {} subscriptions, {:.0} B per subscription",
            result.subscribed,
            result.subscriptions,
            result.bytes_per_subscription().unwrap_or(f64::NAN)
        );
        fanouts.push(result);
    }
    let churn = match &plan.churn {
        Some(c) => {
            eprintln!(
                "run {run}: churn, {} clients at once for {:?}",
                c.concurrency, c.duration
            );
            let stream = private_stream("CHURN").await;
            let bus = Bus::connect(&BusConfig::Nats(stream.config.clone())).await?;
            let churn_limits = Limits {
                max_subscriptions: c.concurrency * 2 + 1_000,
                ..limits.clone()
            };
            let mut gateways =
                start_gateways(bin, &stream.config, &churn_limits, 1, "churn").await?;
            let label = format!("BenchChurn_{}", stream.config.stream);
            let r = churn::run(c, &gateways[0], &bus, &stream.config.stream, &label).await;
            gateways[0].stop();
            let r = r?;
            eprintln!(
                "  churn: {} subscriptions opened, RSS {} -> {} (peak {}), left {:?}",
                r.opened,
                weir_benches::stats::mib(r.rss_before),
                weir_benches::stats::mib(r.rss_after),
                weir_benches::stats::mib(r.rss_peak),
                r.left
            );
            Some(r)
        }
        None => None,
    };
    Ok(RunResult { fanouts, churn })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let plan = cli.plan()?;
    let nofile = raise_nofile()?;
    let needed = plan.fanout.clients as u64 + 1_024;
    anyhow::ensure!(
        nofile >= needed,
        "open-file limit {nofile} is below the {needed} this run needs (raise the hard limit: ulimit -Hn)"
    );
    let bin = gateway::locate(cli.gatewayd.as_deref())?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir = cli.out.clone().unwrap_or_else(|| root.join("results"));
    let repo = root.parent().unwrap_or(&root).to_path_buf();
    let chart = cli.chart.clone().unwrap_or_else(|| {
        weir_benches::chart::default_path(
            &repo,
            cli.out.as_deref(),
            "subscriptions",
            cli.preset.name(),
        )
    });
    let context = report::Context::capture(nofile);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for run in 1..=plan.runs {
        runs.push(runtime.block_on(one_run(&plan, &bin, run))?);
    }
    drop(runtime);
    let churns: Vec<&ChurnResult> = runs.iter().filter_map(|r| r.churn.as_ref()).collect();
    if !churns.is_empty() {
        report::draw_churn_chart(&chart, &churns)?;
    }
    let title = format!(
        "{} preset, {} clients, {} run(s) (`weir-bench-fanout --preset {}`)",
        match plan.preset {
            Preset::Quick => "Quick",
            Preset::Full => "Full",
        },
        plan.fanout.clients,
        plan.runs,
        plan.preset.name()
    );
    let md = report::render(
        &context.finish(),
        &title,
        &plan_summary(&plan),
        &runs,
        &weir_benches::chart::shown(&repo, &chart),
    );
    println!("{md}");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("fanout.md");
    // Only this preset's section is replaced: the other preset's results and the text
    // around them stay.
    weir_benches::sections::write_section(&path, "weir-bench-fanout", plan.preset.name(), &md)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {} and {}", path.display(), chart.display());
    Ok(())
}

fn plan_summary(plan: &Plan) -> String {
    let f = &plan.fanout;
    let mut s = format!(
        "preset `{}`: {} clients × {} subscription(s) each (opened at {}/s), replicas {:?}, rates {:?} deliveries/s, {} s of publishing per rate, {} run(s)",
        plan.preset.name(),
        f.clients,
        f.subs_per_client,
        f.open_rate,
        plan.replicas,
        f.rates,
        f.step.as_secs(),
        plan.runs
    );
    if let Some(c) = &plan.churn {
        s.push_str(&format!(
            "; churn {} s with {} clients at once, each staying {}–{} ms, {} events/s published meanwhile",
            c.duration.as_secs(),
            c.concurrency,
            c.stay.0.as_millis(),
            c.stay.1.as_millis(),
            c.events_per_sec
        ));
    }
    s
}
