//! The Markdown report (`fanout.md`) and the churn chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use weir_benches::chart::{Series, draw_rss};
use weir_benches::stats::{median, mib};
use weir_benches::table::Table;
use weir_memwatch::procfs;

use crate::RunResult;
use crate::churn::ChurnResult;
use crate::fanout::{P99_TARGET, Step};

/// Where and when the run happened.
pub(crate) struct Context {
    date: String,
    command: String,
    machine: String,
    load_start: String,
    load_end: String,
    nofile: u64,
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` spells them.
fn loadavg() -> String {
    procfs::load_average()
        .map(|[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
        .unwrap_or_default()
}

impl Context {
    /// Captures date, command line, machine and load average now.
    pub(crate) fn capture(nofile: u64) -> Self {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let m = procfs::machine();
        let model = m.cpu_model.unwrap_or_default();
        let kernel = m.kernel_release.unwrap_or_default();
        Self {
            date,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: format!(
                "{cpus} vCPU ({model}), {:.1} GiB RAM, Linux {kernel}",
                m.mem_total_bytes.unwrap_or(0) as f64 / f64::from(1u32 << 30)
            ),
            load_start: loadavg(),
            load_end: String::new(),
            nofile,
        }
    }

    /// Records the load average at the end.
    pub(crate) fn finish(mut self) -> Self {
        self.load_end = loadavg();
        self
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

/// Draws every run's churn RSS series into one PNG.
pub(crate) fn draw_churn_chart(path: &Path, churns: &[&ChurnResult]) -> anyhow::Result<()> {
    let labels: Vec<String> = churns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "run {}: {} subscriptions opened and closed",
                i + 1,
                c.opened
            )
        })
        .collect();
    let series: Vec<Series<'_>> = churns
        .iter()
        .zip(&labels)
        .map(|(c, l)| Series {
            label: l,
            points: &c.points,
        })
        .collect();
    let c = churns[0];
    let title = format!(
        "weir-gatewayd RSS during subscription churn ({} clients at once, {} s, clean + abrupt leaves)",
        c.plan.concurrency,
        c.plan.duration.as_secs()
    );
    draw_rss(path, &title, &series)
}

fn step_row(run: usize, replicas: usize, clients: u64, s: &Step) -> Vec<String> {
    vec![
        run.to_string(),
        replicas.to_string(),
        clients.to_string(),
        rate(s.target as f64),
        format!("{:.2}", s.events_per_sec),
        rate(s.offered_per_sec),
        rate(s.achieved_per_sec),
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        format!("{}", s.expected.saturating_sub(s.received)),
        opt_u64(s.gateway_dropped),
        mib(s.rss_peak),
        format!("{:.0} %", s.gateway_cpu_pct),
        format!("{:.0} %", s.bench_cpu_pct),
        if s.held() { "yes" } else { "no" }.into(),
    ]
}

/// The whole report.
pub(crate) fn render(
    ctx: &Context,
    title: &str,
    plan: &str,
    runs: &[RunResult],
    chart: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## {title}\n");
    let _ = writeln!(md, "- Date: {}", ctx.date);
    let _ = writeln!(md, "- Command: `{}`", ctx.command);
    let _ = writeln!(md, "- Plan: {plan}");
    let _ = writeln!(
        md,
        "- Machine: {}. The load generator (this process, all clients) and the gateway process(es) share these cores, so gateway CPU and bench CPU add up to at most {} %.",
        ctx.machine,
        100 * std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let _ = writeln!(
        md,
        "- Load average (1/5/15 min) at start: {}; at end: {}. Open-file limit: {}.",
        ctx.load_start, ctx.load_end, ctx.nofile
    );
    let _ = writeln!(
        md,
        "- Gateway: release `weir-gatewayd`, NATS JetStream (file storage) stream private to the run, raised limits: `subscriptions.max_total` = subscriptions + 1000; the slow-subscriber limits at their defaults (`max_lag` 30 s, `max_lag_bytes` 64 MiB, `max_pending_batches` 1024), 64 frames per socket (`websocket.outbound_queue`). Latency = receive time − publish time (both this host's clock), per delivery; one delivery = one `next` message to one client."
    );
    let _ = writeln!(
        md,
        "- A step is **held** when p99 ≤ {} ms, every expected delivery arrived, the gateway dropped nothing and no client was disconnected.\n",
        P99_TARGET.as_millis()
    );

    // Idle subscriptions.
    let _ = writeln!(
        md,
        "### Gateway memory per idle subscription (target ≤ 4 KiB)\n"
    );
    let mut idle = Table::new([
        "run",
        "replicas",
        "clients subscribed",
        "gateway counted",
        "open time",
        "gateway RSS before",
        "gateway RSS idle",
        "per idle subscription",
    ]);
    for (i, r) in runs.iter().enumerate() {
        for f in &r.fanouts {
            idle.row([
                (i + 1).to_string(),
                f.replicas.to_string(),
                format!("{} / {}", f.subscribed, f.clients),
                f.gateway_subscriptions.to_string(),
                format!("{:.1} s", f.open_secs),
                mib(f.rss_before),
                mib(f.rss_idle),
                f.bytes_per_subscription().map_or("–".into(), |b| {
                    format!("{:.0} B ({:.2} KiB)", b, b / 1024.0)
                }),
            ]);
        }
    }
    md.push_str(&idle.to_markdown());
    md.push('\n');

    // Load steps, every run.
    let _ = writeln!(md, "### Fan-out under load, per run\n");
    let header = [
        "run",
        "replicas",
        "clients",
        "target deliveries/s",
        "events/s",
        "offered/s",
        "delivered/s",
        "p50",
        "p99",
        "max",
        "lost",
        "gateway dropped",
        "gateway RSS peak",
        "gateway CPU",
        "bench CPU",
        "held",
    ];
    let mut load = Table::new(header);
    for (i, r) in runs.iter().enumerate() {
        for f in &r.fanouts {
            for s in &f.steps {
                load.row(step_row(i + 1, f.replicas, f.subscribed, s));
            }
        }
    }
    md.push_str(&load.to_markdown());
    md.push('\n');

    // Medians over runs.
    if runs.len() > 1 {
        let _ = writeln!(md, "### Medians over {} runs\n", runs.len());
        let mut med = Table::new([
            "replicas",
            "target deliveries/s",
            "delivered/s",
            "p50",
            "p99",
            "max",
            "lost",
            "gateway RSS peak",
            "gateway CPU",
            "per idle subscription",
            "held in",
        ]);
        let mut keys: Vec<(usize, u64)> = runs
            .iter()
            .flat_map(|r| r.fanouts.iter())
            .flat_map(|f| f.steps.iter().map(move |s| (f.replicas, s.target)))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for (replicas, target) in keys {
            let fs: Vec<_> = runs
                .iter()
                .flat_map(|r| r.fanouts.iter())
                .filter(|f| f.replicas == replicas)
                .collect();
            let steps: Vec<&Step> = fs
                .iter()
                .flat_map(|f| f.steps.iter())
                .filter(|s| s.target == target)
                .collect();
            let m = |f: &dyn Fn(&Step) -> Option<f64>| {
                median(&steps.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
            };
            let dur = |v: Option<f64>| v.map(Duration::from_secs_f64);
            let per_sub = median(
                &fs.iter()
                    .filter_map(|f| f.bytes_per_subscription())
                    .collect::<Vec<_>>(),
            );
            med.row([
                replicas.to_string(),
                rate(target as f64),
                m(&|s| Some(s.achieved_per_sec)).map_or("–".into(), rate),
                ms(dur(m(&|s| s.p50.map(|d| d.as_secs_f64())))),
                ms(dur(m(&|s| s.p99.map(|d| d.as_secs_f64())))),
                ms(dur(m(&|s| s.max.map(|d| d.as_secs_f64())))),
                m(&|s| Some(s.expected.saturating_sub(s.received) as f64))
                    .map_or("–".into(), |v| format!("{v:.0}")),
                m(&|s| Some(s.rss_peak as f64)).map_or("–".into(), |v| mib(v as u64)),
                m(&|s| Some(s.gateway_cpu_pct)).map_or("–".into(), |v| format!("{v:.0} %")),
                per_sub.map_or("–".into(), |b| format!("{b:.0} B")),
                format!(
                    "{} of {}",
                    steps.iter().filter(|s| s.held()).count(),
                    steps.len()
                ),
            ]);
        }
        md.push_str(&med.to_markdown());
        md.push('\n');
    }

    // Highest rate held.
    let _ = writeln!(
        md,
        "### Highest delivery rate held (p99 ≤ 50 ms, nothing lost)\n"
    );
    let mut replica_counts: Vec<usize> = runs
        .iter()
        .flat_map(|r| r.fanouts.iter().map(|f| f.replicas))
        .collect();
    replica_counts.sort_unstable();
    replica_counts.dedup();
    for replicas in replica_counts {
        let per_run: Vec<String> = runs
            .iter()
            .filter_map(|r| r.fanouts.iter().find(|f| f.replicas == replicas))
            .map(|f| {
                f.steps
                    .iter()
                    .filter(|s| s.held())
                    .map(|s| s.target)
                    .max()
                    .map_or("none".into(), |t| rate(t as f64))
            })
            .collect();
        let _ = writeln!(
            md,
            "- {replicas} replica(s): {} (per run)",
            per_run.join(", ")
        );
    }
    md.push('\n');

    // Churn.
    let churns: Vec<&ChurnResult> = runs.iter().filter_map(|r| r.churn.as_ref()).collect();
    if !churns.is_empty() {
        let _ = writeln!(md, "### Memory during subscription churn (1 replica)\n");
        let c0 = churns[0];
        let _ = writeln!(
            md,
            "{} clients at once connect, subscribe, stay {}–{} ms, leave (alternately: `complete` + close frame, or TCP reset with no close frame) and start again, for {} s; {} events/s are published meanwhile. RSS sampled every 250 ms. Chart: `{}`.\n",
            c0.plan.concurrency,
            c0.plan.stay.0.as_millis(),
            c0.plan.stay.1.as_millis(),
            c0.plan.duration.as_secs(),
            c0.plan.events_per_sec,
            chart
        );
        let mut t = Table::new([
            "run",
            "subscriptions opened",
            "clean / abrupt leaves",
            "failed connects",
            "gateway created",
            "deliveries",
            "RSS before",
            "RSS after warm-up (¼)",
            "RSS peak",
            "RSS at end of churn",
            "RSS after all left",
            "subscriptions / sockets left",
            "active (metric)",
            "time to zero",
        ]);
        for (i, c) in churns.iter().enumerate() {
            t.row([
                (i + 1).to_string(),
                c.opened.to_string(),
                format!("{} / {}", c.clean, c.abrupt),
                c.failed.to_string(),
                opt_u64(c.gateway_created),
                c.deliveries.to_string(),
                mib(c.rss_before),
                mib(c.rss_warm),
                mib(c.rss_peak),
                mib(c.rss_end_churn),
                mib(c.rss_after),
                format!("{} / {}", c.left.0, c.left.1),
                opt_u64(c.active_metric),
                c.secs_to_zero
                    .map_or("not within 30 s".into(), |s| format!("{s:.1} s")),
            ]);
        }
        md.push_str(&t.to_markdown());
        md.push('\n');
    }

    // Notes.
    let notes: Vec<String> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.fanouts.iter().flat_map(move |f| {
                f.notes
                    .iter()
                    .map(move |n| format!("run {}, {} replica(s): {n}", i + 1, f.replicas))
            })
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "### Notes from the runs\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    md
}
