//! The memory watcher: samples on an interval, keeps a bounded history, tracks the pressure
//! level and the leak verdict, and raises alerts (events and log lines) only when one of them
//! changes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::alloc::{AllocatorStats, allocator_stats, allocator_stats_enabled};
use crate::error::MemwatchError;
use crate::gauge::{MemoryGauge, MemoryUsage, ProcessGauge, UsageSource, cgroup_usage};
use crate::history::History;
use crate::leak::{LeakAnalysis, LeakConfig, LeakVerdict, analyze};
use crate::pressure::{PressureLevel, Thresholds};

/// Settings of a [`MemoryWatcher`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WatcherConfig {
    /// Time between samples. Default 5 s. (JSON: `interval_seconds`.)
    #[serde(rename = "interval_seconds", serialize_with = "as_seconds")]
    pub interval: Duration,
    /// Samples kept in the history ring. Default 1,000.
    pub history_capacity: usize,
    /// Pressure thresholds. Default warning 0.70, critical 0.90.
    pub thresholds: Thresholds,
    /// Leak detector settings.
    pub leak: LeakConfig,
    /// Analyses in a row that must agree before the reported verdict changes. Default 3.
    pub verdict_confirmations: usize,
    /// Alerts buffered per subscriber before a slow one loses the oldest. Default 64.
    pub alert_buffer: usize,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            history_capacity: 1000,
            thresholds: Thresholds::default(),
            leak: LeakConfig::default(),
            verdict_confirmations: 3,
            alert_buffer: 64,
        }
    }
}

impl WatcherConfig {
    /// Checks every setting; the error names the field.
    pub fn validate(&self) -> Result<(), MemwatchError> {
        let bad = |field: &'static str, reason: &str| {
            Err(MemwatchError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.interval.is_zero() {
            return bad("interval", "must be positive");
        }
        if self.history_capacity < 2 {
            return bad("history_capacity", "must be at least 2");
        }
        if self.verdict_confirmations == 0 {
            return bad("verdict_confirmations", "must be at least 1");
        }
        if self.alert_buffer == 0 {
            return bad("alert_buffer", "must be at least 1");
        }
        self.thresholds.validate()?;
        self.leak.validate()
    }
}

/// One reading of the process's memory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemorySample {
    /// Wall-clock time of the sample, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Seconds since the watcher started (monotonic; the leak fit's time axis).
    pub uptime_seconds: f64,
    /// Bytes in use as the gauge sees them (cgroup `memory.current` or RSS).
    pub used_bytes: u64,
    /// The effective limit in bytes, when there is one.
    pub limit_bytes: Option<u64>,
    /// `used / limit`, when there is a limit.
    pub ratio: Option<f64>,
    /// Where `used_bytes` and `limit_bytes` came from.
    pub source: UsageSource,
    /// The pressure level of this sample.
    pub level: PressureLevel,
    /// The process's resident set size.
    pub rss_bytes: Option<u64>,
    /// jemalloc's figures, when the `jemalloc` feature is on.
    pub allocator: Option<AllocatorStats>,
}

impl MemorySample {
    /// The figure the leak detector follows: RSS when `used_bytes` is a cgroup figure (which
    /// counts the page cache of files read, not a leak), else `used_bytes`.
    pub fn leak_series_bytes(&self) -> u64 {
        match (self.source, self.rss_bytes) {
            (UsageSource::Cgroup, Some(rss)) => rss,
            _ => self.used_bytes,
        }
    }
}

/// cgroup v2 figures, when the process is in a cgroup with memory accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    /// `memory.current` in bytes.
    pub usage_bytes: u64,
    /// `memory.max` in bytes (`None`: unlimited).
    pub limit_bytes: Option<u64>,
}

/// An alert: a level or verdict changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MemoryAlert {
    /// The pressure level changed.
    LevelChanged {
        /// The level before.
        from: PressureLevel,
        /// The level now.
        to: PressureLevel,
        /// The sample that changed it.
        sample: MemorySample,
    },
    /// The (debounced) leak verdict changed.
    VerdictChanged {
        /// The verdict before.
        from: LeakVerdict,
        /// The verdict now.
        to: LeakVerdict,
        /// The analysis that confirmed it.
        analysis: LeakAnalysis,
    },
}

/// The leak detector's state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeakStatus {
    /// The reported verdict: the last one that held for `confirmations` analyses in a row.
    pub verdict: LeakVerdict,
    /// The most recent analysis (its own verdict may not be confirmed yet).
    pub latest: LeakAnalysis,
    /// Analyses in a row that must agree before the verdict changes.
    pub confirmations: usize,
    /// The detector's settings.
    pub config: LeakConfig,
}

/// The current state in one document (`/api/memory/stats`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryStats {
    /// The latest sample (`None` before the first).
    pub current: Option<MemorySample>,
    /// The current pressure level.
    pub level: PressureLevel,
    /// The thresholds in force.
    pub thresholds: Thresholds,
    /// Peak RSS of the process (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// cgroup v2 figures, when present.
    pub cgroup: Option<CgroupStats>,
    /// Whether allocator statistics are read in this build.
    pub allocator_stats_enabled: bool,
    /// The reported leak verdict.
    pub leak_verdict: LeakVerdict,
    /// Samples taken since start.
    pub samples_taken: u64,
    /// Samples in the history now.
    pub history_len: usize,
    /// The history's bound.
    pub history_capacity: usize,
    /// Alerts raised since start.
    pub alerts_raised: u64,
    /// Seconds between samples.
    pub interval_seconds: f64,
}

/// Everything at once (`/api/memory/report`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryReport {
    /// Current state.
    pub stats: MemoryStats,
    /// Leak detection.
    pub leak: LeakStatus,
    /// The history, oldest first.
    pub history: Vec<MemorySample>,
    /// The most recent alerts, oldest first (at most [`RECENT_ALERTS`]).
    pub recent_alerts: Vec<MemoryAlert>,
}

/// How many recent alerts the report keeps.
pub const RECENT_ALERTS: usize = 32;

struct State {
    history: History<MemorySample>,
    level: PressureLevel,
    verdict: LeakVerdict,
    candidate: Option<(LeakVerdict, usize)>,
    latest_analysis: LeakAnalysis,
    samples_taken: u64,
    alerts_raised: u64,
    recent_alerts: History<MemoryAlert>,
}

struct Inner {
    config: WatcherConfig,
    gauge: Arc<dyn MemoryGauge>,
    started: Instant,
    state: Mutex<State>,
    alerts: broadcast::Sender<MemoryAlert>,
}

/// Samples memory, keeps the history and raises alerts. Cheap to clone (shared state).
///
/// It is itself a [`MemoryGauge`] (reading live through its gauge), so the stream processor's
/// backpressure can take the same object the endpoints report on.
#[derive(Clone)]
pub struct MemoryWatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryWatcher")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl MemoryWatcher {
    /// A watcher reading `gauge`. Fails when `config` does not validate.
    pub fn new(config: WatcherConfig, gauge: Arc<dyn MemoryGauge>) -> Result<Self, MemwatchError> {
        config.validate()?;
        let (alerts, _) = broadcast::channel(config.alert_buffer);
        let state = State {
            history: History::new(config.history_capacity),
            level: PressureLevel::Unknown,
            verdict: LeakVerdict::InsufficientData,
            candidate: None,
            latest_analysis: analyze(&[], &config.leak),
            samples_taken: 0,
            alerts_raised: 0,
            recent_alerts: History::new(RECENT_ALERTS),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                gauge,
                started: Instant::now(),
                state: Mutex::new(state),
                alerts,
            }),
        })
    }

    /// A watcher of this process: a [`ProcessGauge`] with an optional configured limit.
    pub fn for_process(
        config: WatcherConfig,
        configured_limit: Option<u64>,
    ) -> Result<Self, MemwatchError> {
        Self::new(config, Arc::new(ProcessGauge::new(configured_limit)))
    }

    /// The settings.
    pub fn config(&self) -> &WatcherConfig {
        &self.inner.config
    }

    /// Receives every alert raised from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemoryAlert> {
        self.inner.alerts.subscribe()
    }

    /// Takes a sample now: records it, updates level and verdict, raises alerts on changes.
    pub fn sample_now(&self) -> MemorySample {
        let usage = self.inner.gauge.usage();
        let sample = self.make_sample(usage);
        let cfg = &self.inner.config;
        let mut alerts = Vec::new();
        {
            let mut st = self.inner.state.lock();
            st.samples_taken += 1;
            st.history.push(sample.clone());
            if sample.level != st.level {
                alerts.push(MemoryAlert::LevelChanged {
                    from: st.level,
                    to: sample.level,
                    sample: sample.clone(),
                });
                st.level = sample.level;
            }
            let from = sample.uptime_seconds - cfg.leak.window.as_secs_f64();
            let points: Vec<(f64, f64)> = st
                .history
                .iter()
                .filter(|s| s.uptime_seconds >= from)
                .map(|s| (s.uptime_seconds, s.leak_series_bytes() as f64))
                .collect();
            let analysis = analyze(&points, &cfg.leak);
            let seen = analysis.verdict;
            if seen == st.verdict {
                st.candidate = None;
            } else {
                let count = match st.candidate {
                    Some((v, n)) if v == seen => n + 1,
                    _ => 1,
                };
                if count >= cfg.verdict_confirmations {
                    alerts.push(MemoryAlert::VerdictChanged {
                        from: st.verdict,
                        to: seen,
                        analysis: analysis.clone(),
                    });
                    st.verdict = seen;
                    st.candidate = None;
                } else {
                    st.candidate = Some((seen, count));
                }
            }
            st.latest_analysis = analysis;
            st.alerts_raised += alerts.len() as u64;
            for a in &alerts {
                st.recent_alerts.push(a.clone());
            }
        }
        for alert in alerts {
            log_alert(&alert);
            // No receivers is fine: alerts are also logged.
            let _ = self.inner.alerts.send(alert);
        }
        sample
    }

    fn make_sample(&self, usage: MemoryUsage) -> MemorySample {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let ratio = usage.ratio();
        MemorySample {
            timestamp_ms,
            uptime_seconds: self.inner.started.elapsed().as_secs_f64(),
            used_bytes: usage.used_bytes,
            limit_bytes: usage.limit_bytes,
            ratio,
            source: usage.source,
            level: self.inner.config.thresholds.level(ratio),
            rss_bytes: crate::procfs::rss_bytes(crate::procfs::Process::Current),
            allocator: allocator_stats(),
        }
    }

    /// Samples every [`WatcherConfig::interval`] until `cancel` fires (first sample at once).
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.config.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    self.sample_now();
                }
            }
        }
        tracing::debug!("memory watcher stopped");
    }

    /// Spawns [`MemoryWatcher::run`] in a `memwatch` span.
    pub fn spawn(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let span = tracing::info_span!("memwatch", component = "memwatch");
        tokio::spawn(self.clone().run(cancel).instrument(span))
    }

    /// The latest sample.
    pub fn latest(&self) -> Option<MemorySample> {
        self.inner.state.lock().history.last().cloned()
    }

    /// The history, oldest first (at most [`WatcherConfig::history_capacity`] samples).
    pub fn history(&self) -> Vec<MemorySample> {
        self.inner.state.lock().history.iter().cloned().collect()
    }

    /// The current level.
    pub fn level(&self) -> PressureLevel {
        self.inner.state.lock().level
    }

    /// The leak detector's state.
    pub fn leak_status(&self) -> LeakStatus {
        let st = self.inner.state.lock();
        LeakStatus {
            verdict: st.verdict,
            latest: st.latest_analysis.clone(),
            confirmations: self.inner.config.verdict_confirmations,
            config: self.inner.config.leak.clone(),
        }
    }

    /// The current state.
    pub fn stats(&self) -> MemoryStats {
        let st = self.inner.state.lock();
        MemoryStats {
            current: st.history.last().cloned(),
            level: st.level,
            thresholds: self.inner.config.thresholds,
            peak_rss_bytes: crate::procfs::peak_rss_bytes(crate::procfs::Process::Current),
            cgroup: cgroup_usage().map(|(usage_bytes, limit_bytes)| CgroupStats {
                usage_bytes,
                limit_bytes,
            }),
            allocator_stats_enabled: allocator_stats_enabled(),
            leak_verdict: st.verdict,
            samples_taken: st.samples_taken,
            history_len: st.history.len(),
            history_capacity: st.history.capacity(),
            alerts_raised: st.alerts_raised,
            interval_seconds: self.inner.config.interval.as_secs_f64(),
        }
    }

    /// Everything in one document.
    pub fn report(&self) -> MemoryReport {
        let stats = self.stats();
        let leak = self.leak_status();
        let st = self.inner.state.lock();
        MemoryReport {
            stats,
            leak,
            history: st.history.iter().cloned().collect(),
            recent_alerts: st.recent_alerts.iter().cloned().collect(),
        }
    }
}

impl MemoryGauge for MemoryWatcher {
    fn usage(&self) -> MemoryUsage {
        self.inner.gauge.usage()
    }
}

fn log_alert(alert: &MemoryAlert) {
    match alert {
        MemoryAlert::LevelChanged { from, to, sample } => {
            let (from, to) = (from.as_str(), to.as_str());
            let (used, limit, ratio) = (sample.used_bytes, sample.limit_bytes, sample.ratio);
            if matches!(
                sample.level,
                PressureLevel::Warning | PressureLevel::Critical
            ) {
                tracing::warn!(target: "weir::memory", from, to, used_bytes = used, limit_bytes = limit, ratio, "memory pressure level changed");
            } else {
                tracing::info!(target: "weir::memory", from, to, used_bytes = used, limit_bytes = limit, ratio, "memory pressure level changed");
            }
        }
        MemoryAlert::VerdictChanged { from, to, analysis } => {
            let (from_s, to_s) = (from.as_str(), to.as_str());
            let (slope, r2) = (analysis.slope_bytes_per_hour, analysis.r_squared);
            if matches!(to, LeakVerdict::Growing | LeakVerdict::Leaking) {
                tracing::warn!(target: "weir::memory", from = from_s, to = to_s, slope_bytes_per_hour = slope, r_squared = r2, "memory trend verdict changed");
            } else {
                tracing::info!(target: "weir::memory", from = from_s, to = to_s, slope_bytes_per_hour = slope, r_squared = r2, "memory trend verdict changed");
            }
        }
    }
}

/// Fewest samples the memory log's own watcher keeps.
const MEMORY_LOG_MIN_HISTORY: usize = 16;

/// The periodic memory log of this process (`--memory-log-interval`): a watcher of its own
/// (a [`ProcessGauge`] against `configured_limit`; its history holds one leak-detection window
/// of samples, at least 16 and at most the default 1,000) takes a sample every `interval` and
/// logs it as one `memory` line (see [`log_memory_line`]), the first after one `interval`,
/// until `cancel` fires. `None` when `interval` is zero (off).
pub fn spawn_process_memory_log(
    interval: Duration,
    configured_limit: Option<u64>,
    cancel: CancellationToken,
) -> Result<Option<JoinHandle<()>>, MemwatchError> {
    if interval.is_zero() {
        return Ok(None);
    }
    let defaults = WatcherConfig::default();
    // Enough samples for one leak-detection window, within the default bound.
    let per_window = defaults.leak.window.as_nanos() / interval.as_nanos().max(1) + 1;
    let history_capacity = usize::try_from(per_window)
        .unwrap_or(usize::MAX)
        .clamp(MEMORY_LOG_MIN_HISTORY, defaults.history_capacity);
    let watcher = MemoryWatcher::for_process(
        WatcherConfig {
            interval,
            history_capacity,
            ..defaults
        },
        configured_limit,
    )?;
    let span = tracing::info_span!("memory_log", component = "memwatch");
    Ok(Some(tokio::spawn(
        async move {
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => {
                        let sample = watcher.sample_now();
                        log_sample(&watcher, &sample);
                    }
                }
            }
        }
        .instrument(span),
    )))
}

/// Logs one `memory` line for the watcher's latest sample (taking one when there is none).
///
/// Fields: `used_bytes`, `limit_bytes`, `ratio`, `level`, `rss_bytes`, `allocated_bytes` and
/// `resident_bytes` (jemalloc; absent without it), `leak_verdict`, `slope_bytes_per_hour`.
pub fn log_memory_line(watcher: &MemoryWatcher) {
    let s = watcher.latest().unwrap_or_else(|| watcher.sample_now());
    log_sample(watcher, &s);
}

fn log_sample(watcher: &MemoryWatcher, s: &MemorySample) {
    let leak = watcher.leak_status();
    tracing::info!(
        target: "weir::memory",
        used_bytes = s.used_bytes,
        limit_bytes = s.limit_bytes,
        ratio = s.ratio,
        level = s.level.as_str(),
        rss_bytes = s.rss_bytes,
        allocated_bytes = s.allocator.map(|a| a.allocated_bytes),
        resident_bytes = s.allocator.map(|a| a.resident_bytes),
        leak_verdict = leak.verdict.as_str(),
        slope_bytes_per_hour = leak.latest.slope_bytes_per_hour,
        "memory"
    );
}
