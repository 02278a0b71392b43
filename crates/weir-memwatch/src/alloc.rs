//! Allocator statistics (jemalloc, behind the `jemalloc` cargo feature).

use serde::Serialize;

/// jemalloc's own view of the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AllocatorStats {
    /// Bytes allocated by the application (`stats.allocated`).
    pub allocated_bytes: u64,
    /// Bytes in active pages (`stats.active`).
    pub active_bytes: u64,
    /// Bytes in physically resident pages the allocator maps (`stats.resident`).
    pub resident_bytes: u64,
    /// Bytes in mapped chunks (`stats.mapped`).
    pub mapped_bytes: u64,
    /// Bytes retained (unmapped from use but kept as virtual memory, `stats.retained`).
    pub retained_bytes: u64,
}

/// Reads jemalloc's statistics, refreshing its epoch first. `None` when the crate was built
/// without the `jemalloc` feature or jemalloc does not answer. The figures describe jemalloc's
/// heap: meaningful when the binary uses `tikv-jemallocator` as its global allocator.
pub fn allocator_stats() -> Option<AllocatorStats> {
    imp::read()
}

/// Whether this build reads allocator statistics.
pub fn allocator_stats_enabled() -> bool {
    cfg!(feature = "jemalloc")
}

#[cfg(feature = "jemalloc")]
mod imp {
    use tikv_jemalloc_ctl::{epoch, stats};

    pub(super) fn read() -> Option<super::AllocatorStats> {
        epoch::advance().ok()?;
        Some(super::AllocatorStats {
            allocated_bytes: stats::allocated::read().ok()? as u64,
            active_bytes: stats::active::read().ok()? as u64,
            resident_bytes: stats::resident::read().ok()? as u64,
            mapped_bytes: stats::mapped::read().ok()? as u64,
            retained_bytes: stats::retained::read().ok()? as u64,
        })
    }
}

#[cfg(not(feature = "jemalloc"))]
mod imp {
    pub(super) fn read() -> Option<super::AllocatorStats> {
        None
    }
}
