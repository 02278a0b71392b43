//! Memory and CPU of a process (ours or a child): the readings are `weir_memwatch::procfs`'s
//! (re-exported here for the bench binaries); [`RssSampler`] records one process's RSS over time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use weir_memwatch::procfs::{cpu_time, rss_bytes};

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
    fn sampler_is_bounded_and_keeps_time_order() {
        let s = RssSampler::start(std::process::id(), Duration::from_millis(1), 16);
        std::thread::sleep(Duration::from_millis(150));
        let points = s.finish();
        assert!(!points.is_empty() && points.len() <= 16, "{}", points.len());
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
