//! Reading the process's memory use against its effective limit.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::procfs::{self, Process};

/// Where a usage figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// cgroup v2 `memory.current` against `memory.max`.
    Cgroup,
    /// Process resident set size against a configured limit.
    Rss,
    /// A test or caller supplied the figure.
    Injected,
}

/// Memory in use against the effective limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// Bytes in use.
    pub used_bytes: u64,
    /// The effective limit in bytes, when there is one.
    pub limit_bytes: Option<u64>,
    /// Where the figures came from.
    pub source: UsageSource,
}

impl MemoryUsage {
    /// `used / limit`, when there is a limit.
    pub fn ratio(&self) -> Option<f64> {
        self.limit_bytes
            .filter(|&l| l > 0)
            .map(|l| self.used_bytes as f64 / l as f64)
    }
}

/// Something that tells how much memory is in use against the limit. Injectable for tests.
pub trait MemoryGauge: Send + Sync + 'static {
    /// The current usage.
    fn usage(&self) -> MemoryUsage;
}

impl<F> MemoryGauge for F
where
    F: Fn() -> MemoryUsage + Send + Sync + 'static,
{
    fn usage(&self) -> MemoryUsage {
        self()
    }
}

/// The real gauge: cgroup v2 when the process sits in a cgroup with a `memory.max`, else RSS
/// against the configured limit (the smaller of the two limits when both exist).
#[derive(Clone, Debug)]
pub struct ProcessGauge {
    configured_limit: Option<u64>,
    cgroup_dir: Option<PathBuf>,
}

impl ProcessGauge {
    /// A gauge with an optional configured limit (e.g. `--memory-limit`), in bytes.
    pub fn new(configured_limit: Option<u64>) -> Self {
        Self {
            configured_limit,
            cgroup_dir: cgroup_v2_dir(),
        }
    }

    /// The configured limit.
    pub fn configured_limit(&self) -> Option<u64> {
        self.configured_limit
    }
}

impl MemoryGauge for ProcessGauge {
    fn usage(&self) -> MemoryUsage {
        let cgroup = self
            .cgroup_dir
            .as_ref()
            .and_then(|dir| Some((read_u64(&dir.join("memory.current"))?, read_max(dir)?)));
        if let Some((current, max)) = cgroup {
            if let Some(c) = self.configured_limit.filter(|&c| c < max) {
                // The configured limit is tighter: judge by our own RSS against it.
                return MemoryUsage {
                    used_bytes: procfs::rss_bytes(Process::Current).unwrap_or(current),
                    limit_bytes: Some(c),
                    source: UsageSource::Rss,
                };
            }
            return MemoryUsage {
                used_bytes: current,
                limit_bytes: Some(max),
                source: UsageSource::Cgroup,
            };
        }
        MemoryUsage {
            used_bytes: procfs::rss_bytes(Process::Current).unwrap_or(0),
            limit_bytes: self.configured_limit,
            source: UsageSource::Rss,
        }
    }
}

/// cgroup v2 `memory.current` and `memory.max` (`None` for `max`) of this process's cgroup,
/// when it has memory accounting.
pub fn cgroup_usage() -> Option<(u64, Option<u64>)> {
    let dir = cgroup_v2_dir()?;
    Some((read_u64(&dir.join("memory.current"))?, read_max(&dir)))
}

/// The process's cgroup v2 directory, when the unified hierarchy is mounted and has memory files.
pub fn cgroup_v2_dir() -> Option<PathBuf> {
    let rel = procfs::cgroup_v2_path(Process::Current)?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    dir.join("memory.current").is_file().then_some(dir)
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `memory.max`, `None` when it says `max` (no limit).
fn read_max(dir: &Path) -> Option<u64> {
    read_u64(&dir.join("memory.max"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_limit_applies_without_cgroup_limit() {
        let g = ProcessGauge::new(Some(1 << 40));
        let u = g.usage();
        assert!(u.used_bytes > 0);
        assert!(u.limit_bytes.is_some());
        assert!(u.ratio().unwrap() < 1.0);
    }

    #[test]
    fn closures_are_gauges() {
        let g = || MemoryUsage {
            used_bytes: 80,
            limit_bytes: Some(100),
            source: UsageSource::Injected,
        };
        assert_eq!(MemoryGauge::usage(&g).ratio(), Some(0.8));
    }
}
