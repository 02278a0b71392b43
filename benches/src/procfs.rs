//! Memory and CPU of a process (ours or a child) from Linux `/proc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A `VmRSS`/`VmHWM`-style field of `/proc/<pid>/status`, in bytes.
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Current resident set size of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS")
}

/// Peak resident set size (high-water mark) of `pid`, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM")
}

/// User + system CPU time consumed so far by `pid` (all its threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the closing ')' are fixed.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 overall, i.e. 11 and 12 after the state (field 3).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY-free: sysconf is a plain query.
    let ticks = clock_ticks_per_second();
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

#[allow(unsafe_code)]
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf(_SC_CLK_TCK) has no preconditions and only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// One RSS reading: seconds since the sampler started, bytes.
pub type RssPoint = (f64, u64);

/// Samples the RSS of one process on a background thread at a fixed interval, keeping at most
/// `max_points` readings (older ones are thinned by half when full, so a long run keeps its
/// whole time span at a coarser resolution and memory stays bounded).
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<RssPoint>>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `interval`.
    pub fn start(pid: u32, interval: Duration, max_points: usize) -> Self {
        let max_points = max_points.max(16);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut points: Vec<RssPoint> = Vec::with_capacity(max_points);
            let mut every = 1usize; // keep one reading in `every`
            let mut tick = 0usize;
            while !flag.load(Ordering::Relaxed) {
                if tick.is_multiple_of(every) {
                    match rss_bytes(pid) {
                        Some(rss) => points.push((started.elapsed().as_secs_f64(), rss)),
                        None => break, // the process is gone
                    }
                    if points.len() >= max_points {
                        let mut i = 0;
                        points.retain(|_| {
                            i += 1;
                            i % 2 == 1
                        });
                        every *= 2;
                    }
                }
                tick += 1;
                std::thread::sleep(interval);
            }
            points
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling and returns the readings.
    pub fn finish(mut self) -> Vec<RssPoint> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_cpu() {
        let pid = std::process::id();
        let rss = rss_bytes(pid).unwrap();
        let peak = peak_rss_bytes(pid).unwrap();
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
        // Burn a little CPU so the reading is non-zero on a coarse clock.
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
    }

    #[test]
    fn sampler_is_bounded_and_keeps_time_order() {
        let s = RssSampler::start(std::process::id(), Duration::from_millis(1), 16);
        std::thread::sleep(Duration::from_millis(150));
        let points = s.finish();
        assert!(!points.is_empty() && points.len() <= 16, "{}", points.len());
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
