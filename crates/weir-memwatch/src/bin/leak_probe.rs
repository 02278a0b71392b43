//! Test helper for the leak detector: a process that, every tick, either keeps (`--leak-kb N`)
//! or allocates, touches and frees (`--churn-kb N`) N KiB, until its stdin closes or
//! `--ticks` ticks have passed. It prints `ready` once started so the parent can sample it.
//!
//! Usage: `weir-memwatch-leak-probe (--leak-kb N | --churn-kb N) --tick-ms MS --ticks T`

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (leak_kb, churn_kb) = (arg("--leak-kb"), arg("--churn-kb"));
    let tick = Duration::from_millis(arg("--tick-ms").max(1));
    let ticks = arg("--ticks").max(1);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    println!("ready");
    let _ = std::io::stdout().flush();
    for i in 0..ticks {
        if leak_kb > 0 {
            // Touched memory (non-zero fill) so it is resident, and kept: a leak.
            kept.push(vec![(i % 251) as u8 + 1; (leak_kb * 1024) as usize]);
        }
        if churn_kb > 0 {
            let v = vec![(i % 251) as u8 + 1; (churn_kb * 1024) as usize];
            std::hint::black_box(&v);
            drop(v);
        }
        std::thread::sleep(tick);
    }
    std::hint::black_box(&kept);
}
