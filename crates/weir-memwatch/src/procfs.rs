//! Figures about a process and the machine from Linux `/proc`: the one reader every Weir crate,
//! test and bench uses (the memory gauge, the watcher, the tests that measure a process, the
//! bench binaries and their reports).
//!
//! | function | reads |
//! |---|---|
//! | [`rss_bytes`] | `/proc/<pid>/statm` (resident pages × page size) |
//! | [`peak_rss_bytes`] | `VmHWM` of `/proc/<pid>/status` |
//! | [`cpu_time`] | `utime` + `stime` of `/proc/<pid>/stat` |
//! | [`is_running`] | the state of `/proc/<pid>/stat` (exists and is not a zombie) |
//! | [`open_fds`] | the entries of `/proc/<pid>/fd` |
//! | [`cgroup_v2_path`] | the `0::` line of `/proc/<pid>/cgroup` |
//! | [`load_average`] | `/proc/loadavg` |
//! | [`machine`] | `/proc/cpuinfo`, `/proc/meminfo`, `/proc/sys/kernel/osrelease` |
//!
//! Every reader answers `None` when the file cannot be read or parsed: not Linux, or the
//! process has exited. They read one small file each and allocate one string: cheap enough for
//! a sampler or a scrape, not for a hot loop.
//!
//! ```
//! use weir_memwatch::procfs::{self, Process};
//!
//! let rss = procfs::rss_bytes(Process::Current);
//! let child_peak = procfs::peak_rss_bytes(std::process::id()); // a pid works too
//! # let _ = (rss, child_peak);
//! ```

use std::time::Duration;

/// Which process to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Process {
    /// This process (`/proc/self`).
    Current,
    /// Another process (or this one) by id (`/proc/<pid>`).
    Pid(u32),
}

impl From<u32> for Process {
    fn from(pid: u32) -> Self {
        Self::Pid(pid)
    }
}

impl Process {
    fn read(self, file: &str) -> Option<String> {
        let path = match self {
            Self::Current => format!("/proc/self/{file}"),
            Self::Pid(pid) => format!("/proc/{pid}/{file}"),
        };
        std::fs::read_to_string(path).ok()
    }
}

/// The resident set size of `process` in bytes.
pub fn rss_bytes(process: impl Into<Process>) -> Option<u64> {
    let pages = statm_resident_pages(&process.into().read("statm")?)?;
    Some(pages * rustix::param::page_size() as u64)
}

/// The peak resident set size (high-water mark, `VmHWM`) of `process` in bytes.
pub fn peak_rss_bytes(process: impl Into<Process>) -> Option<u64> {
    status_kib(&process.into().read("status")?, "VmHWM").map(|kib| kib * 1024)
}

/// User + system CPU time `process` has used so far (all its threads).
pub fn cpu_time(process: impl Into<Process>) -> Option<Duration> {
    let ticks = stat_cpu_ticks(&process.into().read("stat")?)?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// Whether `process` exists and has not exited: an exited child stays a zombie (state `Z`)
/// until its parent reaps it, and counts as not running.
pub fn is_running(process: impl Into<Process>) -> bool {
    process
        .into()
        .read("stat")
        .and_then(|s| stat_state(&s))
        .is_some_and(|state| state != 'Z')
}

/// How many file descriptors `process` has open (sockets included).
pub fn open_fds(process: impl Into<Process>) -> Option<usize> {
    let dir = match process.into() {
        Process::Current => "/proc/self/fd".to_owned(),
        Process::Pid(pid) => format!("/proc/{pid}/fd"),
    };
    Some(std::fs::read_dir(dir).ok()?.count())
}

/// The cgroup v2 path of `process` (relative to the cgroup mount, starting with `/`), when it
/// is in the unified hierarchy.
pub fn cgroup_v2_path(process: impl Into<Process>) -> Option<String> {
    process
        .into()
        .read("cgroup")?
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// What a bench report says about the machine it ran on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Logical processors listed in `/proc/cpuinfo` (0 when unreadable).
    pub processors: usize,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub mem_total_bytes: Option<u64>,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel_release: Option<String>,
}

/// The machine's CPU, memory and kernel.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    });
    let processors = cpuinfo
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == "processor")
        })
        .count();
    let mem_total_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| status_kib(&m, "MemTotal"))
        .map(|kib| kib * 1024);
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned());
    Machine {
        cpu_model,
        processors,
        mem_total_bytes,
        kernel_release,
    }
}

/// The resident pages: the second field of `statm`.
fn statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// A `Field:   123 kB` line of `status` or `meminfo`, in KiB.
fn status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// `utime + stime` of a `stat` line, in clock ticks.
fn stat_state(stat: &str) -> Option<char> {
    // The state is the first field after the command name's closing ')'.
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and ')'; the fields
    // after the last ')' are fixed: state is field 3, utime 14 and stime 15.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn running_and_exited_children_and_their_descriptors() {
        assert!(is_running(Process::Current));
        assert!(open_fds(Process::Current).is_some_and(|n| n >= 3));
        assert_eq!(stat_state("42 (a) b) Z 1 2"), Some('Z'));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(is_running(pid));
        child.kill().unwrap();
        // Killed, not yet reaped: a zombie, not running.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(pid) {
            assert!(Instant::now() < deadline, "{pid} still running");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(!is_running(pid));
        assert_eq!(open_fds(pid), None);
    }

    #[test]
    fn parsers_read_the_documented_fields() {
        assert_eq!(
            statm_resident_pages("5000 1234 300 10 0 900 0\n"),
            Some(1234)
        );
        assert_eq!(statm_resident_pages("5000"), None);
        let status = "Name:\tweir\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(2048));
        assert_eq!(status_kib(status, "VmRSS"), Some(1024));
        assert_eq!(status_kib(status, "VmSwap"), None);
        // A command name with spaces and a ')' does not shift the fields.
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(stat_cpu_ticks(stat), Some(12));
        assert_eq!(stat_cpu_ticks("42 (x) S 1 2"), None);
    }

    #[test]
    fn rss_is_read_and_grows_with_touched_memory() {
        let before = rss_bytes(Process::Current).expect("linux /proc");
        let v = vec![1u8; 64 << 20];
        let after = rss_bytes(Process::Current).unwrap();
        assert!(
            after >= before + (32 << 20),
            "before {before} after {after}"
        );
        let peak = peak_rss_bytes(Process::Current).unwrap();
        assert!(peak >= after, "peak {peak} below rss {after}");
        drop(v);
    }

    #[test]
    fn own_pid_reads_like_self_and_a_missing_pid_is_none() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
        assert_eq!(rss_bytes(u32::MAX), None);
        assert_eq!(peak_rss_bytes(u32::MAX), None);
        assert_eq!(cpu_time(u32::MAX), None);
    }

    #[test]
    fn cpu_time_counts_work_done() {
        let before = cpu_time(Process::Current).expect("linux /proc");
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_time(Process::Current).unwrap() > before);
    }

    #[test]
    fn machine_and_load_are_read() {
        let m = machine();
        assert!(m.processors > 0, "{m:?}");
        assert!(m.mem_total_bytes.unwrap() > 1 << 20, "{m:?}");
        assert!(m.kernel_release.is_some(), "{m:?}");
        assert!(load_average().unwrap().iter().all(|l| *l >= 0.0));
        assert!(cgroup_v2_path(Process::Current).is_none_or(|p| p.starts_with('/')));
    }
}
