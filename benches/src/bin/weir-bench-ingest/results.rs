//! The results file: the Markdown section of one invocation (tables, the RSS chart) in
//! `ingest.md`.

use std::path::Path;

use anyhow::Context as _;
use weir_benches::chart::{self, Series};
use weir_benches::stats::{median, mib};
use weir_benches::table::Table;

use crate::cli::Preset;
use crate::report;
use crate::runs::{BareRun, Bench, Conc, Results, WeirRun};

pub(crate) fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

pub(crate) fn k(x: f64) -> String {
    if x >= 100_000.0 {
        format!("{:.0} k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.2} k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

pub(crate) fn med(v: impl IntoIterator<Item = f64>) -> f64 {
    median(&v.into_iter().collect::<Vec<_>>()).unwrap_or(f64::NAN)
}

/// What the results file says about one invocation besides its runs.
pub(crate) struct Invocation<'a> {
    /// The bench the runs used.
    pub(crate) bench: &'a Bench,
    /// The preset.
    pub(crate) preset: Preset,
    /// People rows of the dataset.
    pub(crate) people: u64,
    /// Runs per figure.
    pub(crate) runs: usize,
    /// When the invocation started.
    pub(crate) started_at: chrono::DateTime<chrono::Utc>,
    /// How long the runs took in all.
    pub(crate) elapsed: std::time::Duration,
    /// The load average over the runs.
    pub(crate) load_text: String,
    /// The load average at the start.
    pub(crate) load_start: Option<f64>,
    /// Size of the dataset's CSV file.
    pub(crate) csv_bytes: u64,
    /// Label prefixes used.
    pub(crate) used: Vec<String>,
    /// The repository root.
    pub(crate) root: &'a Path,
    /// The invocation's label prefix.
    pub(crate) prefix: &'a str,
    /// Whether the key constraints were dropped (the last error if not).
    pub(crate) dropped: Result<(), String>,
}

/// The Markdown section of the results file (draws the RSS chart unless `--no-chart`).
pub(crate) fn render(inv: Invocation<'_>, res: &Results) -> anyhow::Result<String> {
    let Invocation {
        bench,
        preset,
        people,
        runs,
        started_at,
        elapsed,
        load_text,
        load_start,
        csv_bytes,
        used,
        root,
        prefix,
        dropped,
    } = inv;
    let b = bench.opts.batch_size;
    let mut md = String::new();
    md.push_str(&format!(
        "### Ingest, preset `{}`: {} people rows\n\n",
        preset.name(),
        people
    ));
    md.push_str(&format!(
        "Command: `target/release/weir-bench-ingest {}`  \n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    ));
    md.push_str(&format!(
        "Run: {} UTC, {:.0} s in all; machine: {}; graph server at {} (same machine); \
         load average (1 min) {} (at start {}).\n\n",
        started_at.format("%Y-%m-%d %H:%M"),
        elapsed.as_secs_f64(),
        report::machine(),
        bench.settings.uri,
        load_text,
        load_start.map(|l| format!("{l:.2}")).unwrap_or_default(),
    ));
    let c0 = res.weir[0].counts;
    md.push_str(&format!(
        "Dataset: `weir generate --people {people}` ({:.1} MiB CSV), mapped by \
         `examples/people/mapping.toml`: **{} nodes** ({} Person + {} Company) and **{} \
         relationships** (WORKS_AT + KNOWS), counted with Cypher after every run; every run \
         created the same counts: {}.\n\n",
        csv_bytes as f64 / 1_048_576.0,
        c0.nodes,
        people,
        c0.nodes.saturating_sub(people),
        c0.rels,
        if res.all_counts_equal(c0) {
            "yes"
        } else {
            "NO (see the per-run table)"
        },
    ));

    // Summary.
    let bare_secs: Vec<f64> = res.bare.iter().map(|r| r.report.secs).collect();
    let bare_rate = med(bare_secs.iter().map(|s| per_sec(people, *s)));
    let mut t = Table::new([
        "side",
        "batch / conc",
        "time (s)",
        "rows/s",
        "nodes/s",
        "rels/s",
        "peak RSS",
        "CPU (s)",
        "retries",
        "vs bare",
    ]);
    let weir_row = |t: &mut Table, name: &str, conc: Conc, rs: &[WeirRun]| {
        let rate = med(rs
            .iter()
            .map(|r| per_sec(people, r.child.wall.as_secs_f64())));
        let prate = med(rs.iter().map(|r| per_sec(people, r.pipeline_secs)));
        t.row([
            name.to_owned(),
            format!("{b} / {conc}"),
            format!(
                "{:.1} (pipeline {:.1})",
                med(rs.iter().map(|r| r.child.wall.as_secs_f64())),
                med(rs.iter().map(|r| r.pipeline_secs))
            ),
            k(rate),
            k(med(rs.iter().map(|r| {
                per_sec(r.counts.nodes, r.child.wall.as_secs_f64())
            }))),
            k(med(rs.iter().map(|r| {
                per_sec(r.counts.rels, r.child.wall.as_secs_f64())
            }))),
            mib(med(rs.iter().map(|r| r.child.peak_rss as f64)) as u64),
            format!("{:.1}", med(rs.iter().map(|r| r.child.cpu.as_secs_f64()))),
            format!("{:.0}", med(rs.iter().map(|r| r.retries as f64))),
            format!(
                "**{:.2}×** end to end ({:.2}× pipeline time)",
                rate / bare_rate,
                prate / bare_rate
            ),
        ]);
    };
    let main_conc = Conc::Adaptive(bench.opts.concurrency);
    weir_row(&mut t, "`weir ingest` (defaults)", main_conc, &res.weir);
    weir_row(
        &mut t,
        &format!("`weir ingest --memory-limit {}`", bench.opts.memory_limit),
        main_conc,
        &res.weir_limited,
    );
    let bare_row = |t: &mut Table, name: &str, rs: &[BareRun]| {
        let rate = med(rs.iter().map(|r| per_sec(people, r.report.secs)));
        t.row([
            name.to_owned(),
            format!("{b} / {}", res.bare_conc),
            format!(
                "{:.1} (+ {:.1} pre-parse, untimed)",
                med(rs.iter().map(|r| r.report.secs)),
                med(rs.iter().map(|r| r.report.parse_secs))
            ),
            k(rate),
            k(med(rs
                .iter()
                .map(|r| per_sec(r.counts.nodes, r.report.secs)))),
            k(med(rs
                .iter()
                .map(|r| per_sec(r.counts.rels, r.report.secs)))),
            mib(med(rs.iter().map(|r| r.child.peak_rss as f64)) as u64),
            format!("{:.1}", med(rs.iter().map(|r| r.child.cpu.as_secs_f64()))),
            format!("{:.0}", med(rs.iter().map(|r| r.report.retries as f64))),
            format!("{:.2}", rate / bare_rate),
        ]);
    };
    bare_row(&mut t, "bare neo4rs loop, `TCP_NODELAY`", &res.bare);
    if !res.bare_nagle.is_empty() {
        bare_row(
            &mut t,
            "bare neo4rs loop, Nagle on (neo4rs's default)",
            &res.bare_nagle,
        );
    }
    let nagle_text = if res.bare_nagle.is_empty() {
        "The bare loop with Nagle on (neo4rs's default, where every statement over 8 KiB waits \
         for the server's delayed ACK) was not run (`--bare-nagle true` adds it)."
    } else {
        "The last row is the bare loop as neo4rs ships, with Nagle on: every statement over \
         8 KiB waits for the server's delayed ACK."
    };
    md.push_str(&format!(
        "**Medians of {runs} runs** (runs interleaved: Weir, bare, Weir limited{}, …). Weir and \
         the compared bare loop both switch Nagle's algorithm off on their Bolt connections \
         (`TCP_NODELAY`). {nagle_text} Weir's time is end to end (process start to exit: \
         start-up, connect, constraints, read, parse, map, write); \"pipeline\" is the duration \
         Weir's own summary reports. The bare loop's time is its timed write loop only (rows \
         pre-parsed before). Peak RSS is `ru_maxrss` of the child process from `wait4` (the \
         kernel's high-water mark); CPU is the child's user + system time.\n\n",
        if res.bare_nagle.is_empty() {
            ""
        } else {
            ", bare with Nagle on"
        }
    ));
    md.push_str(&t.to_markdown());

    // Per run.
    let mut t = Table::new([
        "run",
        "side",
        "time (s)",
        "rows/s",
        "nodes / rels in graph",
        "peak RSS (sampled max)",
        "CPU (s)",
        "retries",
    ]);
    for i in 0..runs {
        for (name, r) in [
            ("weir", res.weir.get(i)),
            ("weir limited", res.weir_limited.get(i)),
        ] {
            if let Some(r) = r {
                t.row([
                    (i + 1).to_string(),
                    name.to_owned(),
                    format!(
                        "{:.1} (pipeline {:.1})",
                        r.child.wall.as_secs_f64(),
                        r.pipeline_secs
                    ),
                    k(per_sec(people, r.child.wall.as_secs_f64())),
                    format!("{} / {}", r.counts.nodes, r.counts.rels),
                    format!(
                        "{} ({})",
                        mib(r.child.peak_rss),
                        mib(r.child.sampled_max_rss)
                    ),
                    format!("{:.1}", r.child.cpu.as_secs_f64()),
                    r.retries.to_string(),
                ]);
            }
        }
        for (name, r) in [
            ("bare", res.bare.get(i)),
            ("bare Nagle on", res.bare_nagle.get(i)),
        ] {
            let Some(r) = r else { continue };
            t.row([
                (i + 1).to_string(),
                format!("{name} c{}", res.bare_conc),
                format!(
                    "{:.1} (process {:.1})",
                    r.report.secs,
                    r.child.wall.as_secs_f64()
                ),
                k(per_sec(people, r.report.secs)),
                format!("{} / {}", r.counts.nodes, r.counts.rels),
                format!(
                    "{} ({})",
                    mib(r.child.peak_rss),
                    mib(r.child.sampled_max_rss)
                ),
                format!("{:.1}", r.child.cpu.as_secs_f64()),
                r.report.retries.to_string(),
            ]);
        }
    }
    md.push_str("\nEach run:\n\n");
    md.push_str(&t.to_markdown());
    if bench.keep_data {
        md.push_str(&format!(
            "\nEach run wrote under a label prefix of its own ({}; the first two are the \
             unmeasured warm-up) and its data was kept, not deleted (ArcadeDB deletes about \
             2.5 k records/s through Bolt), so later runs wrote into a larger database than \
             earlier ones.\n",
            used.iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // Bare concurrency sweep.
    let mut t = Table::new([
        "bare loop concurrency",
        "time (s)",
        "rows/s",
        "peak RSS",
        "retries",
    ]);
    for (c, r) in &res.bare_sweep {
        t.row([
            format!("{c}{}", if *c == res.bare_conc { " (best)" } else { "" }),
            format!("{:.1}", r.report.secs),
            k(per_sec(people, r.report.secs)),
            mib(r.child.peak_rss),
            r.report.retries.to_string(),
        ]);
    }
    if res.bare_sweep.is_empty() {
        md.push_str(&format!(
            "\nThe bare loop ran at concurrency {} as given (`--bare-concurrency`; the quick \
             preset's sweep found it fastest).\n",
            res.bare_conc
        ));
    } else {
        md.push_str(&format!(
            "\nThe bare loop's concurrency, batch {b}, one run each (the fastest is compared \
             above):\n\n"
        ));
        md.push_str(&t.to_markdown());
    }

    // Weir sweep.
    if !res.sweep.is_empty() {
        let concs: Vec<Conc> = bench
            .opts
            .sweep_concurrency
            .iter()
            .map(|&c| Conc::Fixed(c))
            .chain([Conc::Adaptive(bench.opts.sweep_adaptive)])
            .collect();
        let mut header = vec!["batch \\ concurrency".to_owned()];
        header.extend(concs.iter().map(|c| c.to_string()));
        let mut t = Table::new(header);
        for bs in &bench.opts.sweep_batch {
            let mut row = vec![bs.to_string()];
            for c in &concs {
                let runs_here: Vec<&Result<WeirRun, String>> = res
                    .sweep
                    .iter()
                    .filter(|(sb, sc, _)| sb == bs && sc == c)
                    .map(|(_, _, r)| r)
                    .collect();
                let cell: Vec<&WeirRun> =
                    runs_here.iter().filter_map(|r| r.as_ref().ok()).collect();
                let failures: Vec<&String> =
                    runs_here.iter().filter_map(|r| r.as_ref().err()).collect();
                if cell.is_empty() {
                    row.push(match failures.first() {
                        Some(reason) => format!("**failed**: {reason}"),
                        None => "not run".to_owned(),
                    });
                    continue;
                }
                let rate = med(cell
                    .iter()
                    .map(|r| per_sec(people, r.child.wall.as_secs_f64())));
                let peak = med(cell.iter().map(|r| r.child.peak_rss as f64));
                let retries = med(cell.iter().map(|r| r.retries as f64));
                let default = *c == main_conc || (main_conc.max() == 1 && *c == Conc::Fixed(1));
                let mark = if *bs == 1000 && default { "**" } else { "" };
                let failed = if failures.is_empty() {
                    String::new()
                } else {
                    format!(" ({} of {} runs failed)", failures.len(), runs_here.len())
                };
                row.push(format!(
                    "{mark}{}{mark} rows/s, {}, {retries:.0} retries{failed}",
                    k(rate),
                    mib(peak as u64)
                ));
            }
            t.row(row);
        }
        md.push_str(&format!(
            "\n`weir ingest` batch size × concurrency, end-to-end rows/s, peak RSS and retries \
             ({} run(s) per cell; Weir's default, batch 1000 × concurrency {main_conc}, in bold; \
             \"adaptive ≤ N\" is `--concurrency N` without `--fixed-concurrency`):\n\n",
            bench.opts.sweep_runs
        ));
        md.push_str(&t.to_markdown());
    }

    // Chart.
    if !bench.opts.no_chart {
        let path = bench.opts.chart.clone().unwrap_or_else(|| {
            chart::default_path(root, bench.opts.out.as_deref(), "ingest", preset.name())
        });
        let longest = |rs: &[WeirRun]| {
            rs.iter()
                .max_by(|a, b| a.child.wall.cmp(&b.child.wall))
                .map(|r| r.child.rss.clone())
                .unwrap_or_default()
        };
        let a = longest(&res.weir);
        let l = longest(&res.weir_limited);
        let bare_pts = res
            .bare
            .iter()
            .max_by(|a, b| a.child.wall.cmp(&b.child.wall))
            .map(|r| r.child.rss.clone())
            .unwrap_or_default();
        let la = format!("weir ingest (batch {b}, concurrency {main_conc})");
        let ll = format!("weir ingest --memory-limit {}", bench.opts.memory_limit);
        let lb = format!(
            "bare neo4rs loop (all rows pre-parsed), concurrency {}",
            res.bare_conc
        );
        chart::draw_rss(
            &path,
            &format!(
                "RSS during ingest of {people} rows ({} nodes, {} relationships)",
                c0.nodes, c0.rels
            ),
            &[
                Series {
                    label: &la,
                    points: &a,
                },
                Series {
                    label: &ll,
                    points: &l,
                },
                Series {
                    label: &lb,
                    points: &bare_pts,
                },
            ],
        )?;
        md.push_str(&format!(
            "\nRSS over time of the longest run of each (sampled every 100 ms): `{}`.\n",
            chart::shown(root, &path)
        ));
    }
    if let Err(e) = dropped {
        md.push_str(&format!(
            "\nNote: the key constraints of prefix `{prefix}` were left in place ({e}).\n"
        ));
    }
    Ok(md)
}

/// Prints `md` and puts it in the results file as the preset's section.
pub(crate) fn write(md: &str, bench: &Bench, preset: Preset, root: &Path) -> anyhow::Result<()> {
    println!("{md}");
    let out_dir = bench
        .opts
        .out
        .clone()
        .unwrap_or_else(|| root.join("benches/results"));
    std::fs::create_dir_all(&out_dir)?;
    let file = out_dir.join("ingest.md");
    weir_benches::sections::write_section(&file, "weir-bench-ingest", preset.name(), md)
        .with_context(|| format!("writing {}", file.display()))?;
    eprintln!("wrote {}", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_numbers_format() {
        assert_eq!(per_sec(10, 0.0), 0.0);
        assert_eq!(per_sec(10, 2.0), 5.0);
        assert_eq!(k(812.4), "812");
        assert_eq!(k(1234.0), "1.23 k");
        assert_eq!(k(250_000.0), "250 k");
    }
}
