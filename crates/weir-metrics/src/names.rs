//! Every metric Weir exports, in one place. Names follow
//! `weir_<subsystem>_<name>_<unit>[_total]`.
//!
//! Code that emits a metric refers to the constant here, never to a string, and
//! [`ALL`] lists them so the exposition, the dashboard test and the docs agree. The
//! [`crate::Encoder`] checks every sample against its definition and writes the families in
//! this order.

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonically increasing count (name ends in `_total`).
    Counter,
    /// Observations in cumulative buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl MetricKind {
    /// The type's name in the text format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
            Self::Histogram => "histogram",
        }
    }
}

/// A metric's definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MetricDef {
    /// The full name.
    pub name: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The label names it carries (may be empty).
    pub labels: &'static [&'static str],
}

macro_rules! metrics {
    ($( $(#[$doc:meta])* $id:ident = ($name:literal, $kind:ident, $help:literal, [$($label:literal),*]); )*) => {
        $(
            $(#[$doc])*
            pub const $id: MetricDef = MetricDef {
                name: $name,
                kind: MetricKind::$kind,
                help: $help,
                labels: &[$($label),*],
            };
        )*
        /// Every metric, in declaration order.
        pub const ALL: &[MetricDef] = &[$($id),*];
    };
}

metrics! {
    // --- process and memory (weir-memwatch) ---
    /// Process resident set size.
    MEMORY_RSS_BYTES = ("weir_memory_rss_bytes", Gauge, "Resident set size of the process in bytes.", []);
    /// Peak resident set size.
    MEMORY_PEAK_RSS_BYTES = ("weir_memory_peak_rss_bytes", Gauge, "Peak resident set size of the process in bytes (VmHWM).", []);
    /// Memory in use as judged against the limit.
    MEMORY_USED_BYTES = ("weir_memory_used_bytes", Gauge, "Memory in use in bytes as judged against the effective limit (cgroup memory.current or RSS).", []);
    /// The effective memory limit.
    MEMORY_LIMIT_BYTES = ("weir_memory_limit_bytes", Gauge, "Effective memory limit in bytes (absent when no limit is known).", []);
    /// cgroup v2 memory.current.
    MEMORY_CGROUP_USAGE_BYTES = ("weir_memory_cgroup_usage_bytes", Gauge, "cgroup v2 memory.current of the process's cgroup in bytes.", []);
    /// cgroup v2 memory.max.
    MEMORY_CGROUP_LIMIT_BYTES = ("weir_memory_cgroup_limit_bytes", Gauge, "cgroup v2 memory.max of the process's cgroup in bytes (absent when unlimited).", []);
    /// jemalloc stats.allocated.
    MEMORY_ALLOCATOR_ALLOCATED_BYTES = ("weir_memory_allocator_allocated_bytes", Gauge, "Bytes allocated by the application according to jemalloc (stats.allocated).", []);
    /// jemalloc stats.resident.
    MEMORY_ALLOCATOR_RESIDENT_BYTES = ("weir_memory_allocator_resident_bytes", Gauge, "Bytes in resident pages mapped by jemalloc (stats.resident).", []);
    /// used / limit.
    MEMORY_PRESSURE_RATIO = ("weir_memory_pressure_ratio", Gauge, "Memory in use divided by the effective limit (absent when no limit is known).", []);
    /// The pressure level as a number.
    MEMORY_PRESSURE_LEVEL = ("weir_memory_pressure_level", Gauge, "Memory pressure level: -1 unknown, 0 normal, 1 warning, 2 critical.", []);
    /// Leak detector slope.
    MEMORY_LEAK_SLOPE_BYTES_PER_HOUR = ("weir_memory_leak_slope_bytes_per_hour", Gauge, "Least-squares slope of memory use over the leak window in bytes per hour.", []);
    /// Leak detector fit.
    MEMORY_LEAK_FIT_RATIO = ("weir_memory_leak_fit_ratio", Gauge, "Goodness of fit (R squared, 0..1) of the leak detector's line.", []);
    /// Leak detector growth rate.
    MEMORY_LEAK_GROWTH_RATIO_PER_HOUR = ("weir_memory_leak_growth_ratio_per_hour", Gauge, "Fitted memory growth per hour as a fraction of the mean level.", []);
    /// Leak verdict, one series per verdict.
    MEMORY_LEAK_VERDICT = ("weir_memory_leak_verdict", Gauge, "Leak detector verdict: 1 for the current verdict, 0 for the others.", ["verdict"]);
    /// Samples in the history ring.
    MEMORY_HISTORY_SAMPLES = ("weir_memory_history_samples", Gauge, "Memory samples held in the bounded history.", []);
    /// Samples taken.
    MEMORY_SAMPLES_TOTAL = ("weir_memory_samples_total", Counter, "Memory samples taken since start.", []);
    /// Alerts raised.
    MEMORY_ALERTS_TOTAL = ("weir_memory_alerts_total", Counter, "Memory alerts raised (level or verdict changes) since start.", []);
    /// Process uptime.
    PROCESS_UPTIME_SECONDS = ("weir_process_uptime_seconds", Gauge, "Seconds since the metrics registry was created.", []);

    // --- graph connection pools (weir-pool); label `pool`: `write` (ingest) or `read` (GraphQL) ---
    /// Connections open.
    POOL_SIZE_CONNECTIONS = ("weir_pool_size_connections", Gauge, "Connections open in the graph pool.", ["pool"]);
    /// Pool bound.
    POOL_MAX_CONNECTIONS = ("weir_pool_max_connections", Gauge, "Maximum connections of the graph pool.", ["pool"]);
    /// Idle connections.
    POOL_IDLE_CONNECTIONS = ("weir_pool_idle_connections", Gauge, "Idle connections in the graph pool.", ["pool"]);
    /// Connections in use.
    POOL_IN_USE_CONNECTIONS = ("weir_pool_in_use_connections", Gauge, "Connections of the graph pool in use.", ["pool"]);
    /// Callers waiting.
    POOL_WAITING_REQUESTS = ("weir_pool_waiting_requests", Gauge, "Callers waiting for a graph connection.", ["pool"]);
    /// Sessions created.
    POOL_SESSIONS_CREATED_TOTAL = ("weir_pool_sessions_created_total", Counter, "Graph sessions (connections) created.", ["pool"]);
    /// Sessions closed, by reason.
    POOL_SESSIONS_CLOSED_TOTAL = ("weir_pool_sessions_closed_total", Counter, "Graph sessions (connections) closed, by reason.", ["pool", "reason"]);
    /// Acquire wait.
    POOL_ACQUIRE_WAIT_SECONDS = ("weir_pool_acquire_wait_seconds", Histogram, "Time spent waiting to acquire a graph connection in seconds.", ["pool"]);
    /// Failed connection attempts.
    POOL_CONNECT_FAILURES_TOTAL = ("weir_pool_connect_failures_total", Counter, "Failed attempts to open a graph session.", ["pool"]);
    /// Acquire timeouts.
    POOL_ACQUIRE_TIMEOUTS_TOTAL = ("weir_pool_acquire_timeouts_total", Counter, "Checkouts that failed with an acquire timeout.", ["pool"]);
    /// Circuit openings.
    POOL_CIRCUIT_OPENED_TOTAL = ("weir_pool_circuit_opened_total", Counter, "Times the graph circuit breaker opened.", ["pool"]);
    /// Circuit breaker state.
    POOL_CIRCUIT_STATE = ("weir_pool_circuit_state", Gauge, "Circuit breaker state of the graph pool: 1 for the current state, 0 for the others.", ["pool", "state"]);

    // --- stream processor (weir-stream) ---
    /// Records read.
    STREAM_RECORDS_READ_TOTAL = ("weir_stream_records_read_total", Counter, "Records read from inputs.", []);
    /// Records committed.
    STREAM_RECORDS_COMMITTED_TOTAL = ("weir_stream_records_committed_total", Counter, "Records committed to the graph.", []);
    /// Records dead-lettered.
    STREAM_RECORDS_DEAD_LETTERED_TOTAL = ("weir_stream_records_dead_lettered_total", Counter, "Records sent to the dead-letter output.", []);
    /// Batch duration.
    STREAM_BATCH_DURATION_SECONDS = ("weir_stream_batch_duration_seconds", Histogram, "Time to write one batch to the graph in seconds.", []);
    /// Batches in flight.
    STREAM_BATCHES_IN_FLIGHT = ("weir_stream_batches_in_flight", Gauge, "Batches being written now.", []);
    /// Backpressure.
    STREAM_BACKPRESSURE_ACTIVE = ("weir_stream_backpressure_active", Gauge, "1 while intake is paused by memory pressure, else 0.", []);

    // --- streaming sources (weir-sources, `weir consume`); label `consumer`: the durable consumer (JetStream) or the group id (Kafka) ---
    /// Messages in the stream the durable consumer has not yet delivered (its lag).
    CONSUMER_PENDING_MESSAGES = ("weir_consumer_pending_messages", Gauge, "Messages of the stream not yet delivered to the durable consumer (lag), as last read from the server; Kafka source: the assigned partitions' summed lag (see weir_consumer_partition_lag_messages).", ["consumer"]);
    /// Messages delivered but not acknowledged, consumer-wide.
    CONSUMER_ACK_PENDING_MESSAGES = ("weir_consumer_ack_pending_messages", Gauge, "Messages delivered to any worker of the durable consumer and not yet acknowledged, as last read from the server.", ["consumer"]);
    /// Messages this worker received.
    CONSUMER_MESSAGES_RECEIVED_TOTAL = ("weir_consumer_messages_received_total", Counter, "Messages this worker pulled from the stream.", ["consumer"]);
    /// Messages this worker acknowledged after their records were committed or dead-lettered.
    CONSUMER_MESSAGES_ACKED_TOTAL = ("weir_consumer_messages_acked_total", Counter, "Messages this worker acknowledged (JetStream) or committed the offset of (Kafka) after every record in them, and before them in their partition, was committed or dead-lettered.", ["consumer"]);
    /// Messages this worker received that had been delivered before.
    CONSUMER_REDELIVERIES_TOTAL = ("weir_consumer_redeliveries_total", Counter, "Messages this worker received that had been delivered before (to it or another worker).", ["consumer"]);
    /// Messages handed back on shutdown for immediate redelivery.
    CONSUMER_MESSAGES_NAKED_TOTAL = ("weir_consumer_messages_naked_total", Counter, "Messages this worker handed back unprocessed on shutdown (negative acknowledgement) for immediate redelivery.", ["consumer"]);
    /// Failed pulls.
    CONSUMER_PULL_ERRORS_TOTAL = ("weir_consumer_pull_errors_total", Counter, "Pulls from the stream that failed (server unreachable, ...); the worker waits and pulls again. Kafka source: errors the consumer reported while polling.", ["consumer"]);
    /// A Kafka partition's lag: its high watermark minus the next offset to commit.
    CONSUMER_PARTITION_LAG_MESSAGES = ("weir_consumer_partition_lag_messages", Gauge, "Kafka source: messages of an assigned partition after the next offset to commit (high watermark minus it), as last read from the broker; label consumer is the group id.", ["consumer", "topic", "partition"]);
    /// The offset a Kafka partition's consumer group last committed from this worker.
    CONSUMER_PARTITION_COMMITTED_OFFSET = ("weir_consumer_partition_committed_offset", Gauge, "Kafka source: the next offset this worker last committed for an assigned partition (every record before it is committed or dead-lettered).", ["consumer", "topic", "partition"]);
    /// Kafka partitions taken from this worker by a rebalance.
    CONSUMER_PARTITIONS_REVOKED_TOTAL = ("weir_consumer_partitions_revoked_total", Counter, "Kafka source: partitions revoked from this worker by rebalances (their finished records committed first).", ["consumer"]);
    /// Kafka records of revoked partitions still in flight when the revoke wait ended.
    CONSUMER_MESSAGES_ABANDONED_TOTAL = ("weir_consumer_messages_abandoned_total", Counter, "Kafka source: messages of revoked partitions not committed by this worker (still in flight after the revoke wait, or read but not yet handed to the pipeline); the partition's next owner reads them again.", ["consumer"]);
    /// Whether intake from Kafka is paused now (back-pressure).
    CONSUMER_PAUSED = ("weir_consumer_paused", Gauge, "Kafka source: 1 while this worker has paused fetching its partitions (hand-over full, or in-flight messages or bytes at their bound), else 0.", ["consumer"]);
    // --- subscriptions (weir-subscriptions) ---
    /// Active subscriptions.
    SUBSCRIPTIONS_ACTIVE = ("weir_subscriptions_active", Gauge, "Subscriptions open now.", []);
    /// Subscriptions created.
    SUBSCRIPTIONS_CREATED_TOTAL = ("weir_subscriptions_created_total", Counter, "Subscriptions created.", []);
    /// Subscriptions completed, by reason.
    SUBSCRIPTIONS_COMPLETED_TOTAL = ("weir_subscriptions_completed_total", Counter, "Subscriptions ended, by reason.", ["reason"]);
    /// Subscriptions refused by a limit.
    SUBSCRIPTIONS_REJECTED_TOTAL = ("weir_subscriptions_rejected_total", Counter, "Subscriptions refused by the per-connection or global limit.", []);
    /// Events delivered.
    SUBSCRIPTIONS_EVENTS_DELIVERED_TOTAL = ("weir_subscriptions_events_delivered_total", Counter, "Change events delivered to subscribers.", []);
    /// Events not delivered to subscribers ended as too slow.
    SUBSCRIPTIONS_EVENTS_DROPPED_TOTAL = ("weir_subscriptions_events_dropped_total", Counter, "Change events queued to subscriptions that were then ended as too slow (their clients resume with since).", []);

    // --- bus (weir-bus); the bus carries one message per committed batch ---
    /// Batches published.
    BUS_PUBLISHED_BATCHES_TOTAL = ("weir_bus_published_batches_total", Counter, "Change batches published to the bus (duplicates excluded).", []);
    /// Duplicate publishes.
    BUS_PUBLISH_DUPLICATES_TOTAL = ("weir_bus_publish_duplicates_total", Counter, "Publishes recognised as duplicates of an earlier batch id.", []);
    /// Failed publishes.
    BUS_PUBLISH_ERRORS_TOTAL = ("weir_bus_publish_errors_total", Counter, "Publishes that failed (timeouts included).", []);
    /// Batches consumed.
    BUS_CONSUMED_BATCHES_TOTAL = ("weir_bus_consumed_batches_total", Counter, "Change batches handed to subscribers, summed over subscriptions.", []);
    /// Batches redelivered.
    BUS_REDELIVERED_BATCHES_TOTAL = ("weir_bus_redelivered_batches_total", Counter, "Change batches delivered again after a consumer was recreated (dropped as already seen).", []);
    /// Consumer lag.
    BUS_LAG_BATCHES = ("weir_bus_lag_batches", Gauge, "Change batches published but not yet read by the most recently served subscription.", []);
    /// Progress events published.
    BUS_PROGRESS_PUBLISHED_TOTAL = ("weir_bus_progress_published_total", Counter, "Progress events published to the bus.", []);
    /// Progress events dropped.
    BUS_PROGRESS_DROPPED_TOTAL = ("weir_bus_progress_dropped_total", Counter, "Progress events a slow subscriber skipped (progress is lossy by design).", []);
    /// Messages of change batches split into parts.
    BUS_PARTS_PUBLISHED_TOTAL = ("weir_bus_parts_published_total", Counter, "Messages published for change batches larger than one bus message (each such batch counts its parts).", []);
    /// Messages skipped by consumers.
    BUS_MESSAGES_SKIPPED_TOTAL = ("weir_bus_messages_skipped_total", Counter, "Bus messages a consumer skipped: reason decode (not a change batch), version (an event format this build does not read), incomplete (a batch whose parts could not all be read).", ["reason"]);
}

/// The definition with this name, if Weir defines it.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    ALL.iter().find(|d| d.name == name)
}

/// The metric a sample name belongs to: the name itself, or a histogram's name with its
/// `_bucket`, `_sum` or `_count` suffix removed.
pub fn family_of(sample_name: &str) -> Option<&'static MetricDef> {
    find(sample_name).or_else(|| {
        ["_bucket", "_sum", "_count"].iter().find_map(|sfx| {
            sample_name
                .strip_suffix(sfx)
                .and_then(find)
                .filter(|d| d.kind == MetricKind::Histogram)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_follow_the_scheme_and_are_unique() {
        let mut seen = HashSet::new();
        for d in ALL {
            assert!(seen.insert(d.name), "duplicate {}", d.name);
            assert!(d.name.starts_with("weir_"), "{}", d.name);
            assert!(
                d.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                d.name
            );
            assert_eq!(
                d.kind == MetricKind::Counter,
                d.name.ends_with("_total"),
                "only counters end in _total: {}",
                d.name
            );
            assert!(!d.help.is_empty());
            // Written as given (prometheus-client does not escape help texts).
            assert!(!d.help.contains(['\\', '\n']), "{}", d.name);
        }
    }

    #[test]
    fn histogram_samples_map_to_their_family() {
        assert_eq!(
            family_of("weir_pool_acquire_wait_seconds_bucket"),
            Some(&POOL_ACQUIRE_WAIT_SECONDS)
        );
        assert_eq!(family_of("weir_memory_rss_bytes_count"), None);
        assert_eq!(family_of("weir_memory_rss_bytes"), Some(&MEMORY_RSS_BYTES));
        assert_eq!(family_of("weir_nope"), None);
    }
}
