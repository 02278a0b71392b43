//! Memory monitoring for every Weir process.
//!
//! - [`gauge`] reads how much memory the process uses against its effective limit (cgroup v2
//!   `memory.current` / `memory.max` when the process is in a limited cgroup, else RSS against
//!   a configured limit). The stream processor's backpressure reads a [`MemoryGauge`]; tests
//!   inject their own.
//! - [`MemoryWatcher`] samples a gauge on an interval, keeps a bounded [`History`] (default
//!   1,000 samples), tracks the [`PressureLevel`] (warning 70 %, critical 90 % by default) and
//!   a debounced [`LeakVerdict`] from [`leak::analyze`], and raises [`MemoryAlert`]s (events on
//!   a broadcast channel and log lines) only when the level or verdict changes.
//! - [`alloc`] reads jemalloc's statistics behind the `jemalloc` cargo feature; binaries set
//!   `tikv_jemallocator::Jemalloc` as their global allocator.
//! - [`spawn_process_memory_log`] writes the periodic `memory` log line.
//! - [`procfs`]: the one reader of Linux `/proc` (RSS, peak RSS, CPU time of this or another
//!   process; load and machine figures for bench reports).
//! - [`profile`]: heap profiles in pprof format from jemalloc's sampling profiler (cargo
//!   feature `heap-profiling`; off until activated, see its docs).

pub mod alloc;
pub mod error;
pub mod gauge;
pub mod history;
pub mod leak;
pub mod pressure;
pub mod procfs;
pub mod profile;
pub mod watcher;

pub use alloc::{AllocatorStats, allocator_stats, allocator_stats_enabled};
pub use error::MemwatchError;
pub use gauge::{MemoryGauge, MemoryUsage, ProcessGauge, UsageSource};
pub use history::History;
pub use leak::{LeakAnalysis, LeakConfig, LeakVerdict, analyze};
pub use pressure::{PressureLevel, Thresholds};
pub use profile::{
    HEAP_PROFILING_ENV, JEMALLOC_CONF, ProfilingStatus, activate_heap_profiling,
    env_requests_profiling, heap_profile, profiling_status,
};
pub use watcher::{
    CgroupStats, LeakStatus, MemoryAlert, MemoryReport, MemorySample, MemoryStats, MemoryWatcher,
    WatcherConfig, log_memory_line, spawn_process_memory_log,
};
