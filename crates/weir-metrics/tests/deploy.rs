//! `/metrics` output and the deploy/ files checked with real tools: `promtool check metrics`
//! on the exposition, `promtool check rules` / `test rules` / `check config` on the Prometheus
//! files, and the Grafana dashboard's queries against the metric names.
//!
//! promtool comes from Debian's `prometheus` package; `scripts/lib/ensure-promtool.sh`
//! installs it when missing. If it cannot, these tests fail and say so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::Value;
use weir_memwatch::{MemoryWatcher, WatcherConfig};
use weir_metrics::names::{self, ALL, MetricKind};
use weir_metrics::{Encoder, HistogramSnapshot, MemorySource, Registry};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool() -> PathBuf {
    let script = root().join("scripts/lib/ensure-promtool.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "promtool is missing and {} could not install it:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A source that emits every defined metric once (label values chosen per label name), as a
/// process with every subsystem wired would.
fn every_metric(e: &mut Encoder) {
    for def in ALL {
        let labels: Vec<(&str, &str)> = def
            .labels
            .iter()
            .map(|l| {
                (
                    *l,
                    match *l {
                        "reason" => "idle_timeout",
                        "state" => "closed",
                        "verdict" => "stable",
                        _ => "x",
                    },
                )
            })
            .collect();
        match def.kind {
            MetricKind::Gauge => e.gauge(def, &labels, 1.0),
            MetricKind::Counter => e.counter(def, &labels, 7),
            MetricKind::Histogram => e.histogram(
                def,
                &labels,
                &HistogramSnapshot {
                    bounds: vec![0.01, 0.1, 1.0],
                    counts: vec![1, 2, 3],
                    sum: 2.5,
                    count: 7,
                },
            ),
        }
    }
}

#[test]
fn metrics_exposition_passes_promtool_check_metrics() {
    let promtool = promtool();
    let watcher = MemoryWatcher::for_process(WatcherConfig::default(), Some(8 << 30)).unwrap();
    for _ in 0..3 {
        watcher.sample_now();
    }
    let registry = Registry::new();
    registry
        .register_source("memory", Arc::new(MemorySource::new(watcher)))
        .unwrap();
    let real = registry.encode();
    assert!(real.contains("weir_memory_rss_bytes "), "{real}");
    let (ok, out) = run(
        Command::new(&promtool).args(["check", "metrics"]),
        Some(&real),
    );
    assert!(
        ok,
        "promtool check metrics failed on the memory exposition:\n{out}\n{real}"
    );

    // Every defined name, encoded as the registry would: parses and lints clean.
    let mut enc = Encoder::new();
    every_metric(&mut enc);
    assert!(enc.rejected().is_empty(), "{:?}", enc.rejected());
    let full = enc.finish();
    for def in ALL {
        assert!(
            full.contains(&format!("# TYPE {} {}\n", def.name, def.kind.as_str())),
            "{} missing",
            def.name
        );
    }
    let (ok, out) = run(
        Command::new(&promtool).args(["check", "metrics"]),
        Some(&full),
    );
    assert!(ok, "promtool check metrics failed:\n{out}\n{full}");
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    // Proves the check above can fail.
    let (ok, _) = run(
        Command::new(promtool()).args(["check", "metrics"]),
        Some("weir_memory_rss_bytes{ 1\n"),
    );
    assert!(!ok);
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = promtool();
    let rules = root().join("deploy/prometheus/rules");
    let (ok, out) = run(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(rules.join("weir-alerts.yml")),
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        Command::new(&promtool)
            .args(["test", "rules", "weir-alerts.test.yml"])
            .current_dir(&rules),
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        Command::new(&promtool)
            .args(["check", "config", "--syntax-only", "prometheus.yml"])
            .current_dir(root().join("deploy/prometheus")),
        None,
    );
    assert!(ok, "{out}");
}

/// Every `weir_…` token in `expr`, with histogram suffixes resolved.
fn metric_tokens(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("weir_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Problems with a dashboard: panels without queries, queries naming no Weir metric or an
/// undefined one.
fn dashboard_problems(dash: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let panels = dash["panels"].as_array().cloned().unwrap_or_default();
    if panels.is_empty() {
        problems.push("no panels".to_owned());
    }
    for p in panels {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no queries"));
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            let tokens = metric_tokens(expr);
            if tokens.is_empty() {
                problems.push(format!("panel {title:?}: {expr:?} names no weir metric"));
            }
            for tok in tokens {
                if names::family_of(&tok).is_none() {
                    problems.push(format!("panel {title:?}: {tok} is not defined"));
                }
            }
        }
    }
    problems
}

#[test]
fn dashboard_loads_and_every_query_names_a_defined_metric() {
    let path = root().join("deploy/grafana/dashboards/weir.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(dash["uid"], "weir-overview");
    let problems = dashboard_problems(&dash);
    assert!(problems.is_empty(), "{problems:#?}");
    // The templating query too.
    let templ = dash["templating"]["list"].to_string();
    for tok in metric_tokens(&templ) {
        assert!(names::family_of(&tok).is_some(), "{tok}");
    }
    // The checker can fail: a bogus metric and an empty panel are reported.
    let bad = serde_json::json!({"panels": [
        {"type": "timeseries", "title": "a", "targets": [{"expr": "rate(weir_nope_total[5m])"}]},
        {"type": "timeseries", "title": "b", "targets": []}
    ]});
    assert_eq!(dashboard_problems(&bad).len(), 2);
}

#[test]
fn alert_rule_expressions_name_defined_metrics() {
    let text =
        std::fs::read_to_string(root().join("deploy/prometheus/rules/weir-alerts.yml")).unwrap();
    let exprs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    for e in exprs {
        let toks = metric_tokens(e);
        assert!(!toks.is_empty(), "{e}");
        for t in toks {
            assert!(names::family_of(&t).is_some(), "{t} in {e}");
        }
    }
}
