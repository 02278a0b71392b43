//! The sweeps: the bare loop's concurrency search and `weir ingest`'s batch size ×
//! concurrency grid.

use anyhow::Context as _;

use crate::runs::{BareRun, Bench, Conc, WeirRun};

/// The line of a failed sweep run worth quoting: the server's error if there is one.
fn sweep_failure(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let line = text
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| text.lines().next().unwrap_or("failed"));
    let line = line.trim();
    // Cypher and label prefixes make the line long; the error code is the useful part.
    let short: String = line.chars().take(110).collect();
    if short.len() < line.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// The bare loop's concurrency search, batch `--batch-size`, one run each of
/// `--bare-concurrency` (none when only one is given), and the concurrency compared: the
/// fastest, or the one given.
pub(crate) async fn bare_concurrency(
    bench: &Bench,
) -> anyhow::Result<(Vec<(usize, BareRun)>, usize)> {
    let o = &bench.opts;
    let b = o.batch_size;
    let people = bench.rows as f64;
    let mut bare_sweep = Vec::new();
    // One concurrency given: nothing to search, no extra pass.
    let search = if o.bare_concurrency.len() > 1 {
        &o.bare_concurrency[..]
    } else {
        &[]
    };
    for &c in search {
        eprintln!("bare loop, batch {b}, concurrency {c} ...");
        let r = bench.bare_run(b, c, false).await?;
        eprintln!("  {}", r.line(people));
        bare_sweep.push((c, r));
    }
    let bare_conc = match o.bare_concurrency[..] {
        [c] => c,
        _ => bare_sweep
            .iter()
            .min_by(|a, b| a.1.report.secs.total_cmp(&b.1.report.secs))
            .map(|r| r.0)
            .context("--bare-concurrency is empty")?,
    };
    Ok((bare_sweep, bare_conc))
}

/// `weir ingest`'s batch size × concurrency grid, `--sweep-runs` times; a failed cell keeps
/// the reason.
pub(crate) async fn weir(bench: &Bench) -> Vec<(usize, Conc, Result<WeirRun, String>)> {
    let o = &bench.opts;
    let people = bench.rows as f64;
    let mut sweep = Vec::new();
    for _ in 0..o.sweep_runs.max(1) {
        for &sb in &o.sweep_batch {
            let concs = o
                .sweep_concurrency
                .iter()
                .map(|&c| Conc::Fixed(c))
                .chain([Conc::Adaptive(o.sweep_adaptive)]);
            for sc in concs {
                eprintln!("sweep: weir ingest --batch-size {sb} --concurrency {sc} ...");
                // A failed cell is a result (ArcadeDB has failed concurrent MERGEs with
                // server errors), not the end of the sweep.
                match bench.weir_run(sb, sc, None).await {
                    Ok(r) => {
                        eprintln!("  {}", r.line(people));
                        sweep.push((sb, sc, Ok(r)));
                    }
                    Err(e) => {
                        let reason = sweep_failure(&e);
                        eprintln!("  failed: {reason}");
                        sweep.push((sb, sc, Err(reason)));
                    }
                }
            }
        }
    }
    sweep
}
