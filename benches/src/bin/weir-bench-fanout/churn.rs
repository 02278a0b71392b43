//! Subscription churn: clients connect, subscribe, stay briefly and leave (alternately clean
//! close and abrupt TCP reset), over and over, while a slow publisher keeps events flowing;
//! the gateway's RSS is sampled throughout.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_benches::procfs::{RssPoint, RssSampler, rss_bytes};
use weir_bus::Bus;

use crate::clients::{self, Shared};
use crate::gateway::Gateway;
use crate::publisher;

/// Settings of the churn scenario.
#[derive(Clone, Debug)]
pub(crate) struct ChurnPlan {
    /// How long clients churn.
    pub(crate) duration: Duration,
    /// Clients churning at once.
    pub(crate) concurrency: usize,
    /// How long a client stays subscribed: uniformly in this range.
    pub(crate) stay: (Duration, Duration),
    /// Events per second published meanwhile.
    pub(crate) events_per_sec: f64,
    /// Churning clients started per second during the ramp.
    pub(crate) open_rate: u32,
}

/// What the churn scenario measured.
#[derive(Clone, Debug)]
pub(crate) struct ChurnResult {
    /// The plan it ran.
    pub(crate) plan: ChurnPlan,
    /// Subscriptions opened (client side).
    pub(crate) opened: u64,
    /// Clean and abrupt leaves.
    pub(crate) clean: u64,
    /// Abrupt leaves (TCP reset).
    pub(crate) abrupt: u64,
    /// Connections that failed.
    pub(crate) failed: u64,
    /// Subscriptions the gateway created (`weir_subscriptions_created_total`).
    pub(crate) gateway_created: Option<u64>,
    /// Deliveries received during churn.
    pub(crate) deliveries: u64,
    /// RSS before the first client.
    pub(crate) rss_before: u64,
    /// RSS after the warm-up (a quarter of the churn time).
    pub(crate) rss_warm: u64,
    /// Peak RSS during churn.
    pub(crate) rss_peak: u64,
    /// RSS when churn stopped.
    pub(crate) rss_end_churn: u64,
    /// RSS once every client had gone and the gateway counted zero.
    pub(crate) rss_after: u64,
    /// `(subscriptions, sockets)` the gateway counted at the end.
    pub(crate) left: (u64, u64),
    /// `weir_subscriptions_active` at the end.
    pub(crate) active_metric: Option<u64>,
    /// Seconds from the stop until the gateway counted zero.
    pub(crate) secs_to_zero: Option<f64>,
    /// The RSS samples (for the chart).
    pub(crate) points: Vec<RssPoint>,
}

/// The reading nearest to `t` seconds.
fn rss_at(points: &[RssPoint], t: f64) -> u64 {
    points
        .iter()
        .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
        .map_or(0, |p| p.1)
}

/// Runs the churn against one started, ready gateway.
pub(crate) async fn run(
    plan: &ChurnPlan,
    gateway: &Gateway,
    bus: &Bus,
    run_id: &str,
    label: &str,
) -> anyhow::Result<ChurnResult> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = gateway.pid();
    let sampler = RssSampler::start(pid, Duration::from_millis(250), 2048);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_bytes(pid).unwrap_or(0);
    let started = Instant::now();
    let shared = Shared::new();
    let (stop_tx, stop_rx) = watch::channel(false);

    let publisher = {
        let (bus, run_id, label) = (bus.clone(), run_id.to_owned(), label.to_owned());
        let (eps, duration) = (plan.events_per_sec, plan.duration);
        tokio::spawn(async move {
            let mut next = 0;
            publisher::publish_for(&bus, &run_id, &label, eps, duration, &mut next).await
        })
    };
    let mut workers = JoinSet::new();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(plan.open_rate)));
    for i in 0..plan.concurrency {
        pace.tick().await;
        workers.spawn(clients::run_churn(
            gateway.addr,
            label.to_owned(),
            i as u64,
            plan.stay,
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    let remaining = plan.duration.saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;
    let rss_end_churn = rss_bytes(pid).unwrap_or(0);
    let _ = stop_tx.send(true);
    let stopped = Instant::now();
    if tokio::time::timeout(Duration::from_secs(30), async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        workers.abort_all();
    }
    let _ = publisher.await;
    let mut left = (u64::MAX, u64::MAX);
    let mut secs_to_zero = None;
    while stopped.elapsed() < Duration::from_secs(30) {
        left = gateway.health_counts().await?;
        if left == (0, 0) {
            secs_to_zero = Some(stopped.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_bytes(pid).unwrap_or(0);
    let points = sampler.finish();
    let churn_end_t = stopped.duration_since(started).as_secs_f64() + 2.0;
    let rss_peak = points
        .iter()
        .filter(|p| p.0 <= churn_end_t)
        .map(|p| p.1)
        .max()
        .unwrap_or(0);
    Ok(ChurnResult {
        plan: plan.clone(),
        opened: shared.subscribed.load(Ordering::Relaxed),
        clean: shared.clean_leaves.load(Ordering::Relaxed),
        abrupt: shared.abrupt_leaves.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        gateway_created: gateway
            .metric("weir_subscriptions_created_total")
            .await
            .ok()
            .flatten()
            .map(|v| v as u64),
        deliveries: shared.received.load(Ordering::Relaxed),
        rss_before,
        // The sampler started 2 s before the churn.
        rss_warm: rss_at(&points, 2.0 + plan.duration.as_secs_f64() / 4.0),
        rss_peak,
        rss_end_churn,
        rss_after,
        left,
        active_metric: gateway
            .metric("weir_subscriptions_active")
            .await
            .ok()
            .flatten()
            .map(|v| v as u64),
        secs_to_zero,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_nearest_reading() {
        let p = vec![(0.0, 1), (1.0, 2), (2.0, 3)];
        assert_eq!(rss_at(&p, 0.9), 2);
        assert_eq!(rss_at(&p, 5.0), 3);
        assert_eq!(rss_at(&[], 1.0), 0);
    }
}
