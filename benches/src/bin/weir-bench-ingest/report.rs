//! The machine and load the figures were measured under (the results file's sections:
//! `weir_benches::sections`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use weir_memwatch::procfs;

/// The 1-minute load average now.
pub(crate) fn loadavg() -> Option<f64> {
    procfs::load_average().map(|l| l[0])
}

/// CPU model, core count and memory, from /proc.
pub(crate) fn machine() -> String {
    let m = procfs::machine();
    format!(
        "{} vCPU ({}), {:.1} GiB RAM",
        m.processors,
        m.cpu_model.as_deref().unwrap_or("unknown CPU"),
        m.mem_total_bytes.unwrap_or(0) as f64 / f64::from(1u32 << 30)
    )
}

/// Load average over the run: sampled every 5 s on a thread; keeps only min, max, sum, count.
pub(crate) struct LoadSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(f64, f64, f64, u32)>>,
}

impl LoadSampler {
    /// Starts sampling.
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut min, mut max, mut sum, mut n) = (f64::MAX, 0f64, 0f64, 0u32);
            let mut tick = 0u32;
            while !flag.load(Ordering::Relaxed) {
                if tick.is_multiple_of(50)
                    && let Some(l) = loadavg()
                {
                    min = min.min(l);
                    max = max.max(l);
                    sum += l;
                    n += 1;
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (min, max, sum, n)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and describes the load seen: "min–max (mean m)".
    pub(crate) fn finish(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().and_then(|h| h.join().ok()) {
            Some((min, max, sum, n)) if n > 0 => {
                format!(
                    "{min:.2}–{max:.2} (mean {:.2}, {n} samples)",
                    sum / f64::from(n)
                )
            }
            _ => "unknown".into(),
        }
    }
}

impl Drop for LoadSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_and_load_are_read() {
        assert!(machine().contains("vCPU"));
        assert!(loadavg().is_some());
        let s = LoadSampler::start();
        std::thread::sleep(Duration::from_millis(50));
        assert!(s.finish().contains("samples"));
    }
}
