//! Adapters that turn other subsystems' status into metrics at scrape time. The subsystems do
//! not depend on this crate: each adapter reads a status struct they already expose.
//!
//! | subsystem | adapter | reads |
//! |---|---|---|
//! | graph pool | [`pool_source`] | `weir_pool::PoolStatus` (`Pool::status`) |
//! | bus | [`bus_source`] | `weir_bus::BusMetrics` (`bus.metrics()`) |
//! | subscriptions | [`subscriptions_source`] | `weir_subscriptions::Stats` (`manager.stats()`) |
//! | stream | [`StreamMetrics`] | each job's `weir_events::ProgressEvent`s (`Pipeline::subscribe`) and batch reports (`weir_stream::PipelineObserver`): [`StreamMetrics::attach`] wires both |

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use weir_events::{JobState, PressureState, ProgressEvent};
use weir_pool::{CircuitState, PoolStatus};
use weir_stream::{
    BatchReport, Mapper, Pipeline, PipelineObserver, Prepared, Sink, SinkBatch, SinkError,
};

use crate::encode::Encoder;
use crate::histogram::{DURATION_BUCKETS, Histogram, HistogramSnapshot};
use crate::names::*;
use crate::registry::MetricSource;

/// A source reading the graph pool's status (e.g. `move || pool.status()`).
pub fn pool_source<F>(pool: &'static str, status: F) -> impl MetricSource
where
    F: Fn() -> PoolStatus + Send + Sync + 'static,
{
    move |e: &mut Encoder| encode_pool(e, pool, &status())
}

/// Writes a [`PoolStatus`] as the `weir_pool_*` metrics, labelled `pool="<pool>"` (`write`
/// for the ingest pool, `read` for the gateway's: a process with both exports both).
pub fn encode_pool(e: &mut Encoder, pool: &str, s: &PoolStatus) {
    let l = [("pool", pool)];
    e.gauge(&POOL_SIZE_CONNECTIONS, &l, s.size as f64);
    e.gauge(&POOL_MAX_CONNECTIONS, &l, s.max_size as f64);
    e.gauge(&POOL_IDLE_CONNECTIONS, &l, s.idle as f64);
    e.gauge(&POOL_IN_USE_CONNECTIONS, &l, s.in_use as f64);
    e.gauge(&POOL_WAITING_REQUESTS, &l, s.waiting as f64);
    e.counter(&POOL_SESSIONS_CREATED_TOTAL, &l, s.sessions_created);
    let c = &s.sessions_closed;
    for (reason, n) in [
        ("idle_ttl", c.idle_ttl),
        ("max_lifetime", c.max_lifetime),
        ("broken", c.broken),
        ("health_check", c.health_check),
        ("shutdown", c.shutdown),
    ] {
        e.counter(
            &POOL_SESSIONS_CLOSED_TOTAL,
            &[("pool", pool), ("reason", reason)],
            n,
        );
    }
    e.counter(&POOL_CONNECT_FAILURES_TOTAL, &l, s.connect_failures);
    e.counter(&POOL_ACQUIRE_TIMEOUTS_TOTAL, &l, s.acquire_timeouts);
    e.counter(&POOL_CIRCUIT_OPENED_TOTAL, &l, s.circuit_opened_total);
    for (name, state) in [
        ("closed", CircuitState::Closed),
        ("open", CircuitState::Open),
        ("half_open", CircuitState::HalfOpen),
    ] {
        let on = if s.circuit == state { 1.0 } else { 0.0 };
        e.gauge(&POOL_CIRCUIT_STATE, &[("pool", pool), ("state", name)], on);
    }
    let w = &s.acquire_wait;
    let n = w.bucket_bounds.len().min(w.bucket_counts.len());
    let snap = HistogramSnapshot {
        bounds: w.bucket_bounds[..n]
            .iter()
            .map(|d| d.as_secs_f64())
            .collect(),
        counts: w.bucket_counts[..n].to_vec(),
        sum: w.sum.as_secs_f64(),
        count: w.bucket_counts.iter().sum(),
    };
    e.histogram(&POOL_ACQUIRE_WAIT_SECONDS, &l, &snap);
}

/// A source reading the bus's counters.
pub fn bus_source(metrics: Arc<weir_bus::BusMetrics>) -> impl MetricSource {
    move |e: &mut Encoder| encode_bus(e, &metrics.snapshot())
}

/// Writes a bus snapshot as the `weir_bus_*` metrics.
pub fn encode_bus(e: &mut Encoder, s: &weir_bus::BusMetricsSnapshot) {
    e.counter(&BUS_PUBLISHED_BATCHES_TOTAL, &[], s.published);
    e.counter(&BUS_PUBLISH_DUPLICATES_TOTAL, &[], s.duplicates);
    e.counter(&BUS_PUBLISH_ERRORS_TOTAL, &[], s.publish_errors);
    e.counter(&BUS_CONSUMED_BATCHES_TOTAL, &[], s.consumed);
    e.counter(&BUS_REDELIVERED_BATCHES_TOTAL, &[], s.redelivered);
    e.gauge(&BUS_LAG_BATCHES, &[], s.lag as f64);
    e.counter(&BUS_PROGRESS_PUBLISHED_TOTAL, &[], s.progress_published);
    e.counter(&BUS_PROGRESS_DROPPED_TOTAL, &[], s.progress_dropped);
    e.counter(&BUS_PARTS_PUBLISHED_TOTAL, &[], s.parts_published);
    for (reason, n) in [
        ("decode", s.skipped_decode),
        ("version", s.skipped_version),
        ("incomplete", s.incomplete),
    ] {
        e.counter(&BUS_MESSAGES_SKIPPED_TOTAL, &[("reason", reason)], n);
    }
}

/// A source reading the subscription manager's counters (e.g. `move || manager.stats()`).
pub fn subscriptions_source<F>(stats: F) -> impl MetricSource
where
    F: Fn() -> weir_subscriptions::Stats + Send + Sync + 'static,
{
    move |e: &mut Encoder| encode_subscriptions(e, &stats())
}

/// Writes subscription counters as the `weir_subscriptions_*` metrics.
pub fn encode_subscriptions(e: &mut Encoder, s: &weir_subscriptions::Stats) {
    e.gauge(&SUBSCRIPTIONS_ACTIVE, &[], s.active as f64);
    e.counter(&SUBSCRIPTIONS_CREATED_TOTAL, &[], s.created);
    for (reason, n) in [
        ("client", s.completed_client),
        ("ttl", s.completed_ttl),
        ("disconnect", s.completed_disconnect),
        ("shutdown", s.completed_shutdown),
        ("lagged", s.completed_lagged),
    ] {
        e.counter(&SUBSCRIPTIONS_COMPLETED_TOTAL, &[("reason", reason)], n);
    }
    e.counter(&SUBSCRIPTIONS_REJECTED_TOTAL, &[], s.rejected_limit);
    e.counter(
        &SUBSCRIPTIONS_EVENTS_DELIVERED_TOTAL,
        &[],
        s.delivered_events,
    );
    e.counter(&SUBSCRIPTIONS_EVENTS_DROPPED_TOTAL, &[], s.dropped_events);
}

/// Most ingest jobs [`StreamMetrics`] tracks at once; beyond it the oldest finished ones are
/// forgotten first (their counts stay in the totals).
pub const MAX_TRACKED_JOBS: usize = 256;

#[derive(Clone, Copy, Debug, Default)]
struct JobSeen {
    read: u64,
    committed: u64,
    dead: u64,
    in_flight: u32,
    paused: bool,
    finished: bool,
    order: u64,
}

#[derive(Debug, Default)]
struct StreamState {
    jobs: HashMap<String, JobSeen>,
    read: u64,
    committed: u64,
    dead: u64,
    next_order: u64,
}

/// Stream-processor metrics for the whole process: counters summed over ingest jobs from
/// their [`ProgressEvent`]s (by deltas, so they never go back), batches in flight and
/// backpressure over running jobs, and the batch duration histogram. A [`MetricSource`];
/// cheap to clone (clones share everything).
///
/// Wiring, once per process and once per job:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use weir_metrics::{Registry, StreamMetrics};
/// # use weir_stream::{NullSink, Pipeline, PipelineConfig, DecodedRecord, MapError};
/// # async fn example(registry: Arc<Registry>) -> Result<(), Box<dyn std::error::Error>> {
/// # fn mapper(_: &DecodedRecord<'_>) -> Result<u64, MapError> { Ok(1) }
/// // Once: the registry collects it at every scrape.
/// let stream_metrics = StreamMetrics::new();
/// registry.register_source("stream", Arc::new(stream_metrics.clone()))?;
///
/// // Per job (inside the Tokio runtime): progress followed, batch durations observed.
/// let (pipeline, _follower) = stream_metrics.attach(Pipeline::new(
///     PipelineConfig::default(),
///     mapper,
///     NullSink::<u64>::new(),
/// ));
/// # let _ = pipeline;
/// # Ok(()) }
/// ```
///
/// A process that already forwards each job's progress elsewhere can instead call
/// [`StreamMetrics::observe_progress`] from its own loop and attach
/// [`StreamMetrics::observer`] with `Pipeline::with_observer`.
#[derive(Clone, Debug)]
pub struct StreamMetrics {
    state: Arc<Mutex<StreamState>>,
    batch_duration: Histogram,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamMetrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(StreamState::default())),
            batch_duration: Histogram::new(DURATION_BUCKETS),
        }
    }

    /// Takes one progress event into account.
    pub fn observe_progress(&self, ev: &ProgressEvent) {
        let mut st = self.state.lock();
        let order = st.next_order;
        st.next_order += 1;
        let prev = st.jobs.get(&ev.job_id).copied().unwrap_or_default();
        st.read += ev.records_read.saturating_sub(prev.read);
        st.committed += ev.records_committed.saturating_sub(prev.committed);
        st.dead += ev.records_dead_lettered.saturating_sub(prev.dead);
        let finished = matches!(ev.state, JobState::Completed | JobState::Failed);
        let seen = JobSeen {
            read: ev.records_read.max(prev.read),
            committed: ev.records_committed.max(prev.committed),
            dead: ev.records_dead_lettered.max(prev.dead),
            in_flight: if finished { 0 } else { ev.batches_in_flight },
            paused: !finished
                && (ev.pressure == PressureState::High || ev.state == JobState::Paused),
            finished,
            order,
        };
        st.jobs.insert(ev.job_id.clone(), seen);
        while st.jobs.len() > MAX_TRACKED_JOBS {
            // Forget the oldest finished job, else the oldest job.
            let victim = st
                .jobs
                .iter()
                .min_by_key(|(_, j)| (!j.finished, j.order))
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => st.jobs.remove(&k),
                None => break,
            };
        }
    }

    /// Follows a pipeline's progress until its sender is dropped (spawn it:
    /// `tokio::spawn(metrics.clone().follow(pipeline.subscribe()))`).
    pub async fn follow(self, mut rx: tokio::sync::watch::Receiver<ProgressEvent>) {
        loop {
            let ev = rx.borrow_and_update().clone();
            self.observe_progress(&ev);
            if rx.changed().await.is_err() {
                break;
            }
        }
    }

    /// Follows `pipeline`'s progress ([`StreamMetrics::follow`], on a task that ends with the
    /// run) and observes its batches ([`StreamMetrics::observer`]): everything the stream
    /// metrics show about the job comes through here. Returns the pipeline to run and the
    /// follower task, which has taken the run's last progress event once it has ended (await
    /// it after the run for exact final figures; dropping it leaves the task to end alone).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (it spawns the follower).
    pub fn attach<M, S>(&self, pipeline: Pipeline<M, S>) -> (Pipeline<M, S>, JoinHandle<()>)
    where
        M: Mapper,
        S: Sink<Item = M::Item>,
    {
        let follower = tokio::spawn(self.clone().follow(pipeline.subscribe()));
        (pipeline.with_observer(Arc::new(self.observer())), follower)
    }

    /// A pipeline observer (`Pipeline::with_observer`) that puts each finished batch's write
    /// time into the batch duration histogram. One serves any number of jobs. A pipeline
    /// observed so must not also write through a [`TimedSink`] on the same histogram (its
    /// batches would count twice).
    pub fn observer(&self) -> BatchObserver {
        BatchObserver {
            batch_duration: self.batch_duration.clone(),
        }
    }

    /// The batch duration histogram (what a [`BatchObserver`] or a [`TimedSink`] feeds).
    pub fn batch_duration(&self) -> &Histogram {
        &self.batch_duration
    }

    /// Jobs tracked now (at most [`MAX_TRACKED_JOBS`]).
    pub fn tracked_jobs(&self) -> usize {
        self.state.lock().jobs.len()
    }
}

impl MetricSource for StreamMetrics {
    fn collect(&self, e: &mut Encoder) {
        let (read, committed, dead, in_flight, paused) = {
            let st = self.state.lock();
            let in_flight: u64 = st.jobs.values().map(|j| u64::from(j.in_flight)).sum();
            let paused = st.jobs.values().any(|j| j.paused);
            (st.read, st.committed, st.dead, in_flight, paused)
        };
        e.counter(&STREAM_RECORDS_READ_TOTAL, &[], read);
        e.counter(&STREAM_RECORDS_COMMITTED_TOTAL, &[], committed);
        e.counter(&STREAM_RECORDS_DEAD_LETTERED_TOTAL, &[], dead);
        e.gauge(&STREAM_BATCHES_IN_FLIGHT, &[], in_flight as f64);
        e.gauge(
            &STREAM_BACKPRESSURE_ACTIVE,
            &[],
            if paused { 1.0 } else { 0.0 },
        );
        e.live_histogram(&STREAM_BATCH_DURATION_SECONDS, &[], &self.batch_duration);
    }
}

/// The [`PipelineObserver`] of [`StreamMetrics::observer`]: records each finished batch's
/// write time (from its first write to the end of its last, retries included) in the batch
/// duration histogram. Backpressure reaches the metrics through the jobs' progress events,
/// which the pipeline sends as it pauses and resumes; the adaptive concurrency limit has no
/// metric (the hooks for both do nothing here).
#[derive(Clone, Debug)]
pub struct BatchObserver {
    batch_duration: Histogram,
}

impl PipelineObserver for BatchObserver {
    fn batch_finished(&self, report: &BatchReport) {
        if report.writes > 0 {
            self.batch_duration.observe_duration(report.duration);
        }
    }
}

/// A [`Sink`] wrapper that records each write attempt's duration (successful or not) in a
/// histogram, e.g. [`StreamMetrics::batch_duration`]: for a pipeline run without
/// [`StreamMetrics::attach`] / [`StreamMetrics::observer`] (not with them: batches would count
/// twice).
#[derive(Debug)]
pub struct TimedSink<S> {
    inner: S,
    histogram: Histogram,
}

impl<S> TimedSink<S> {
    /// Wraps `inner`, recording into `histogram` (a clone shares its counts).
    pub fn new(inner: S, histogram: Histogram) -> Self {
        Self { inner, histogram }
    }
}

impl<S: Sink> Sink for TimedSink<S> {
    type Item = S::Item;

    async fn write(&self, batch: &SinkBatch<'_, S::Item>) -> Result<(), SinkError> {
        let start = tokio::time::Instant::now();
        let r = self.inner.write(batch).await;
        self.histogram.observe_duration(start.elapsed());
        r
    }

    fn prepare(&self, batch: &SinkBatch<'_, S::Item>) -> Option<Prepared> {
        self.inner.prepare(batch)
    }

    async fn write_prepared(
        &self,
        batch: &SinkBatch<'_, S::Item>,
        prepared: Prepared,
    ) -> Result<(), SinkError> {
        let start = tokio::time::Instant::now();
        let r = self.inner.write_prepared(batch, prepared).await;
        self.histogram.observe_duration(start.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use weir_events::EVENT_FORMAT_VERSION;

    fn ev(job: &str, state: JobState, read: u64, committed: u64, dead: u64) -> ProgressEvent {
        ProgressEvent {
            version: EVENT_FORMAT_VERSION,
            job_id: job.to_owned(),
            state,
            records_read: read,
            records_committed: committed,
            records_dead_lettered: dead,
            bytes_read: 0,
            bytes_total: None,
            records_per_sec: 0.0,
            batches_in_flight: 2,
            pressure: PressureState::Normal,
            pressure_ratio: None,
            eta_secs: None,
            elapsed_secs: 0.0,
            error: None,
        }
    }

    fn text(m: &StreamMetrics) -> String {
        let mut e = Encoder::new();
        m.collect(&mut e);
        e.finish()
    }

    #[test]
    fn stream_counters_sum_deltas_over_jobs_and_never_go_back() {
        let m = StreamMetrics::new();
        m.observe_progress(&ev("a", JobState::Running, 100, 80, 1));
        m.observe_progress(&ev("b", JobState::Running, 50, 50, 0));
        m.observe_progress(&ev("a", JobState::Running, 100, 80, 1)); // repeat: no change
        m.observe_progress(&ev("a", JobState::Completed, 120, 119, 1));
        let t = text(&m);
        assert!(t.contains("weir_stream_records_read_total 170\n"), "{t}");
        assert!(t.contains("weir_stream_records_committed_total 169\n"));
        assert!(t.contains("weir_stream_records_dead_lettered_total 1\n"));
        // a finished: only b's 2 batches in flight.
        assert!(t.contains("weir_stream_batches_in_flight 2\n"));
        assert!(t.contains("weir_stream_backpressure_active 0\n"));
        let mut paused = ev("b", JobState::Paused, 60, 50, 0);
        paused.pressure = PressureState::High;
        m.observe_progress(&paused);
        assert!(text(&m).contains("weir_stream_backpressure_active 1\n"));
    }

    #[test]
    fn tracked_jobs_are_bounded_and_totals_survive_eviction() {
        let m = StreamMetrics::new();
        for i in 0..(MAX_TRACKED_JOBS as u64 + 100) {
            m.observe_progress(&ev(&format!("j{i}"), JobState::Completed, 10, 10, 0));
            assert!(m.tracked_jobs() <= MAX_TRACKED_JOBS);
        }
        assert_eq!(m.tracked_jobs(), MAX_TRACKED_JOBS);
        let total = (MAX_TRACKED_JOBS as u64 + 100) * 10;
        assert!(text(&m).contains(&format!("weir_stream_records_read_total {total}\n")));
    }

    #[test]
    fn pool_status_becomes_pool_metrics() {
        let status = PoolStatus {
            max_size: 16,
            size: 10,
            idle: 4,
            in_use: 6,
            waiting: 2,
            ready: true,
            closed: false,
            circuit: CircuitState::HalfOpen,
            consecutive_failures: 0,
            circuit_opened_total: 1,
            sessions_created: 12,
            sessions_closed: weir_pool::ClosedCounts {
                idle_ttl: 1,
                broken: 1,
                ..Default::default()
            },
            connect_failures: 3,
            acquire_timeouts: 0,
            acquire_wait: weir_pool::AcquireWait {
                bucket_bounds: vec![Duration::from_millis(1), Duration::from_millis(10)],
                bucket_counts: vec![5, 2, 1],
                sum: Duration::from_millis(2500),
                count: 8,
            },
        };
        let mut e = Encoder::new();
        encode_pool(&mut e, "write", &status);
        assert!(e.rejected().is_empty(), "{:?}", e.rejected());
        let t = e.finish();
        for line in [
            "weir_pool_in_use_connections{pool=\"write\"} 6\n",
            "weir_pool_waiting_requests{pool=\"write\"} 2\n",
            "weir_pool_sessions_closed_total{pool=\"write\",reason=\"broken\"} 1\n",
            "weir_pool_circuit_state{pool=\"write\",state=\"half_open\"} 1\n",
            "weir_pool_circuit_state{pool=\"write\",state=\"open\"} 0\n",
            "weir_pool_acquire_wait_seconds_bucket{le=\"0.001\",pool=\"write\"} 5\n",
            "weir_pool_acquire_wait_seconds_bucket{le=\"0.01\",pool=\"write\"} 7\n",
            "weir_pool_acquire_wait_seconds_bucket{le=\"+Inf\",pool=\"write\"} 8\n",
            "weir_pool_acquire_wait_seconds_sum{pool=\"write\"} 2.5\n",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
    }

    #[test]
    fn subscription_and_bus_counters_become_metrics() {
        let mut e = Encoder::new();
        encode_subscriptions(
            &mut e,
            &weir_subscriptions::Stats {
                active: 3,
                created: 10,
                completed_ttl: 4,
                dropped_events: 9,
                ..Default::default()
            },
        );
        encode_bus(
            &mut e,
            &weir_bus::BusMetricsSnapshot {
                published: 5,
                lag: 2,
                parts_published: 4,
                skipped_version: 1,
                ..Default::default()
            },
        );
        assert!(e.rejected().is_empty(), "{:?}", e.rejected());
        let t = e.finish();
        for line in [
            "weir_subscriptions_active 3\n",
            "weir_subscriptions_completed_total{reason=\"ttl\"} 4\n",
            "weir_subscriptions_events_dropped_total 9\n",
            "weir_bus_published_batches_total 5\n",
            "weir_bus_lag_batches 2\n",
            "weir_bus_parts_published_total 4\n",
            "weir_bus_messages_skipped_total{reason=\"version\"} 1\n",
            "weir_bus_messages_skipped_total{reason=\"decode\"} 0\n",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
    }
}
