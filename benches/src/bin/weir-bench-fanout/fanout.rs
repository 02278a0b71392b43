//! The fan-out scenario: N idle subscriptions (RSS per subscription), then publishing at
//! fixed delivery rates (latency, throughput, drops, RSS and CPU under load).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use weir_benches::procfs::{RssSampler, cpu_time, rss_bytes};
use weir_benches::stats::median;
use weir_bus::Bus;

use crate::clients::{self, Shared, now_us};
use crate::gateway::Gateway;
use crate::publisher::{self, Published};

/// The p99 a step must keep to count as held.
pub(crate) const P99_TARGET: Duration = Duration::from_millis(50);

/// Settings of one fan-out scenario.
#[derive(Clone, Debug)]
pub(crate) struct FanoutPlan {
    /// Clients (one subscription each), split over the gateways.
    pub(crate) clients: usize,
    /// Target deliveries per second (events/s × clients), one step each.
    pub(crate) rates: Vec<u64>,
    /// Publishing time per step.
    pub(crate) step: Duration,
    /// Connections opened per second.
    pub(crate) open_rate: u32,
    /// Subscriptions per client (identical, on one connection); 1 unless told.
    pub(crate) subs_per_client: usize,
}

/// One load step's figures.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    /// Target deliveries/s.
    pub(crate) target: u64,
    /// Events/s published.
    pub(crate) events_per_sec: f64,
    /// What the publisher did.
    pub(crate) published: Published,
    /// Deliveries expected (events × subscribed clients).
    pub(crate) expected: u64,
    /// Deliveries received.
    pub(crate) received: u64,
    /// Offered deliveries/s (published events × clients / publish time).
    pub(crate) offered_per_sec: f64,
    /// Achieved deliveries/s (received / first publish to last receive).
    pub(crate) achieved_per_sec: f64,
    /// Latency quantiles.
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    pub(crate) max: Option<Duration>,
    /// The gateways' own dropped-events counter (delta over the step).
    pub(crate) gateway_dropped: Option<u64>,
    /// Sum over gateways of each one's peak RSS during the step.
    pub(crate) rss_peak: u64,
    /// Gateway CPU (all replicas) as % of one core over the step.
    pub(crate) gateway_cpu_pct: f64,
    /// This process's CPU as % of one core over the step.
    pub(crate) bench_cpu_pct: f64,
    /// Clients whose socket ended during the step.
    pub(crate) ended_early: u64,
}

impl Step {
    /// Whether the step held: p99 within target, nothing lost, nobody disconnected.
    pub(crate) fn held(&self) -> bool {
        self.p99.is_some_and(|p| p <= P99_TARGET)
            && self.received >= self.expected
            && self.gateway_dropped.unwrap_or(0) == 0
            && self.ended_early == 0
            && self.published.errors == 0
    }
}

/// A fan-out scenario's figures.
#[derive(Clone, Debug)]
pub(crate) struct FanoutResult {
    /// Gateway processes.
    pub(crate) replicas: usize,
    /// Clients asked for.
    pub(crate) clients: usize,
    /// Clients subscribed.
    pub(crate) subscribed: u64,
    /// Subscriptions opened (clients subscribed × subscriptions per client).
    pub(crate) subscriptions: u64,
    /// Subscriptions the gateways counted (`/health`).
    pub(crate) gateway_subscriptions: u64,
    /// Seconds to open and subscribe every client.
    pub(crate) open_secs: f64,
    /// Gateway RSS (sum) before any client.
    pub(crate) rss_before: u64,
    /// Gateway RSS (sum) with every client subscribed and idle.
    pub(crate) rss_idle: u64,
    /// The load steps.
    pub(crate) steps: Vec<Step>,
    /// Things worth saying in the report.
    pub(crate) notes: Vec<String>,
}

impl FanoutResult {
    /// Gateway bytes per idle subscription.
    pub(crate) fn bytes_per_subscription(&self) -> Option<f64> {
        (self.subscriptions > 0)
            .then(|| (self.rss_idle as f64 - self.rss_before as f64) / self.subscriptions as f64)
    }
}

/// The median of a few RSS readings of each gateway, summed.
async fn settled_rss(gateways: &[Gateway]) -> u64 {
    let mut readings: Vec<Vec<f64>> = vec![Vec::new(); gateways.len()];
    for _ in 0..5 {
        for (i, g) in gateways.iter().enumerate() {
            if let Some(r) = rss_bytes(g.pid()) {
                readings[i].push(r as f64);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    readings
        .iter()
        .map(|r| median(r).unwrap_or(0.0) as u64)
        .sum()
}

async fn total_subscriptions(gateways: &[Gateway]) -> anyhow::Result<u64> {
    let mut n = 0;
    for g in gateways {
        n += g.health_counts().await?.0;
    }
    Ok(n)
}

async fn total_metric(gateways: &[Gateway], name: &str) -> Option<u64> {
    let mut total = 0.0;
    for g in gateways {
        total += g.metric(name).await.ok().flatten()?;
    }
    Some(total as u64)
}

/// Runs the scenario against `gateways` (started and ready), publishing with `bus`.
pub(crate) async fn run(
    plan: &FanoutPlan,
    gateways: &[Gateway],
    bus: &Bus,
    run_id: &str,
    label: &str,
) -> anyhow::Result<FanoutResult> {
    let mut notes = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = settled_rss(gateways).await;

    // Open the clients at a bounded rate, at most 256 handshakes in flight.
    let shared = Shared::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let handshakes = Arc::new(Semaphore::new(256));
    let mut tasks = JoinSet::new();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(plan.open_rate)));
    let open_started = Instant::now();
    let first_error: Arc<std::sync::OnceLock<String>> = Arc::default();
    for i in 0..plan.clients {
        pace.tick().await;
        let permit = handshakes.clone().acquire_owned().await?;
        let addr = gateways[i % gateways.len()].addr;
        // Past ~28 k clients per gateway one source address runs out of ephemeral ports.
        let source = clients::source_for(
            addr,
            i / gateways.len(),
            plan.clients.div_ceil(gateways.len()),
        );
        let subs = plan.subs_per_client;
        let (shared, stop, label, first_error) = (
            shared.clone(),
            stop_rx.clone(),
            label.to_owned(),
            first_error.clone(),
        );
        tasks.spawn(async move {
            match clients::open_from(addr, source, &label, subs).await {
                Ok(ws) => {
                    drop(permit);
                    shared.subscribed.fetch_add(1, Ordering::Relaxed);
                    clients::run_steady(ws, subs, shared, stop).await;
                }
                Err(e) => {
                    drop(permit);
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = first_error.set(format!("{e:#}"));
                }
            }
        });
    }
    if clients::source_for(gateways[0].addr, 1, plan.clients.div_ceil(gateways.len())).is_some() {
        notes.push(format!(
            "clients spread over {} loopback source addresses (127.0.0.1, .2, …), at most {} per address, for ephemeral ports",
            plan.clients.div_ceil(gateways.len()).div_ceil(clients::CLIENTS_PER_SOURCE),
            clients::CLIENTS_PER_SOURCE
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.subscribed.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < plan.clients as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subscribed = shared.subscribed.load(Ordering::Relaxed);
    let subscriptions = subscribed * plan.subs_per_client as u64;
    if plan.subs_per_client > 1 {
        notes.push(format!(
            "{} subscriptions per client (one connection each): {subscriptions} subscriptions over {subscribed} connections; per idle subscription = RSS growth / subscriptions",
            plan.subs_per_client
        ));
    }
    let failed = shared.failed.load(Ordering::Relaxed);
    if failed > 0 {
        notes.push(format!(
            "{failed} of {} clients failed to connect/subscribe (first error: {})",
            plan.clients,
            first_error.get().map_or("?", String::as_str)
        ));
    }
    // The subscribe message has no acknowledgement in graphql-transport-ws: wait for the
    // gateways to count every subscription.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut gateway_subscriptions = 0;
    while Instant::now() < deadline {
        gateway_subscriptions = total_subscriptions(gateways).await?;
        if gateway_subscriptions >= subscriptions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_secs = open_started.elapsed().as_secs_f64();
    if gateway_subscriptions < subscriptions {
        notes.push(format!(
            "the gateways counted {gateway_subscriptions} subscriptions for {subscriptions} opened"
        ));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = settled_rss(gateways).await;

    let mut steps = Vec::new();
    let mut next_batch = 0u64;
    let me = std::process::id();
    for &target in &plan.rates {
        let events_per_sec = target as f64 / subscriptions.max(1) as f64;
        shared.reset_deliveries();
        let ended_before = shared.ended_early.load(Ordering::Relaxed);
        let dropped_before =
            total_metric(gateways, "weir_subscriptions_events_dropped_total").await;
        let cpu_before: Vec<Duration> = gateways
            .iter()
            .map(|g| cpu_time(g.pid()).unwrap_or_default())
            .collect();
        let bench_cpu_before = cpu_time(me).unwrap_or_default();
        let samplers: Vec<RssSampler> = gateways
            .iter()
            .map(|g| RssSampler::start(g.pid(), Duration::from_millis(100), 4096))
            .collect();
        let started = Instant::now();
        let t0 = now_us();
        let published = publisher::publish_for(
            bus,
            run_id,
            label,
            events_per_sec,
            plan.step,
            &mut next_batch,
        )
        .await;
        let expected = published.events * subscriptions;
        // Drain: until everything arrived, or nothing arrived for 5 s (bounded at 30 s).
        let drain_deadline = Instant::now() + Duration::from_secs(30);
        let mut last_count = 0;
        let mut last_progress = Instant::now();
        loop {
            let got = shared.received.load(Ordering::Relaxed);
            if got >= expected || Instant::now() > drain_deadline {
                break;
            }
            if got != last_count {
                last_count = got;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let rss_peak: u64 = samplers
            .into_iter()
            .map(|s| s.finish().iter().map(|p| p.1).max().unwrap_or(0))
            .sum();
        let gateway_cpu: f64 = gateways
            .iter()
            .zip(&cpu_before)
            .map(|(g, before)| {
                cpu_time(g.pid())
                    .unwrap_or_default()
                    .saturating_sub(*before)
                    .as_secs_f64()
            })
            .sum();
        let bench_cpu = cpu_time(me)
            .unwrap_or_default()
            .saturating_sub(bench_cpu_before)
            .as_secs_f64();
        let dropped_after = total_metric(gateways, "weir_subscriptions_events_dropped_total").await;
        let received = shared.received.load(Ordering::Relaxed);
        let last = shared.last_receive_us.load(Ordering::Relaxed);
        let span = (last.saturating_sub(t0)) as f64 / 1e6;
        let step = Step {
            target,
            events_per_sec,
            published,
            expected,
            received,
            offered_per_sec: published.events as f64 * subscriptions as f64
                / published.elapsed.as_secs_f64().max(1e-9),
            achieved_per_sec: if span > 0.0 {
                received as f64 / span
            } else {
                0.0
            },
            p50: shared.hist.quantile(0.50),
            p99: shared.hist.quantile(0.99),
            max: (shared.hist.count() > 0).then(|| shared.hist.max()),
            gateway_dropped: dropped_before
                .zip(dropped_after)
                .map(|(b, a)| a.saturating_sub(b)),
            rss_peak,
            gateway_cpu_pct: 100.0 * gateway_cpu / wall,
            bench_cpu_pct: 100.0 * bench_cpu / wall,
            ended_early: shared.ended_early.load(Ordering::Relaxed) - ended_before,
        };
        eprintln!(
            "  {} replica(s), {subscribed} clients, {target} deliveries/s: p50 {:?} p99 {:?} max {:?}, received {}/{}, {:.0}/s",
            gateways.len(),
            step.p50,
            step.p99,
            step.max,
            step.received,
            step.expected,
            step.achieved_per_sec
        );
        let disconnected = step.ended_early > 0;
        if disconnected {
            notes.push(format!(
                "at {target} deliveries/s {} clients were disconnected ({}); later rates skipped",
                step.ended_early,
                shared.first_close.get().map_or("?", String::as_str)
            ));
        }
        steps.push(step);
        if disconnected {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Everyone leaves cleanly; the gateways must count back to zero.
    let _ = stop_tx.send(true);
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        notes.push("some clients did not finish closing within 60 s".into());
        tasks.abort_all();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = u64::MAX;
    while Instant::now() < deadline {
        left = total_subscriptions(gateways).await.context("/health")?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if left != 0 {
        notes.push(format!(
            "{left} subscriptions still open 30 s after every client left"
        ));
    }
    Ok(FanoutResult {
        replicas: gateways.len(),
        clients: plan.clients,
        subscribed,
        subscriptions,
        gateway_subscriptions,
        open_secs,
        rss_before,
        rss_idle,
        steps,
        notes,
    })
}
