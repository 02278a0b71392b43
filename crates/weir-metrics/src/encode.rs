//! Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Sources add samples in any order; [`Encoder::finish`] groups them into families (one
//! `# HELP` and `# TYPE` each, samples contiguous) in the order of [`crate::names::ALL`].

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::histogram::HistogramSnapshot;
use crate::names::{ALL, MetricDef, MetricKind};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Collects samples for one scrape.
#[derive(Debug, Default)]
pub struct Encoder {
    families: HashMap<&'static str, Vec<String>>,
    rejected: Vec<String>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, def: &'static MetricDef, labels: Labels<'_>, value: f64) {
        if self.check(def, MetricKind::Gauge, labels) {
            let line = sample_line(def.name, labels, None, value);
            self.push(def, line);
        }
    }

    /// Adds a counter sample.
    pub fn counter(&mut self, def: &'static MetricDef, labels: Labels<'_>, value: u64) {
        if self.check(def, MetricKind::Counter, labels) {
            let line = sample_line(def.name, labels, None, value as f64);
            self.push(def, line);
        }
    }

    /// Adds a histogram (its `_bucket` lines, `_sum` and `_count`).
    pub fn histogram(
        &mut self,
        def: &'static MetricDef,
        labels: Labels<'_>,
        h: &HistogramSnapshot,
    ) {
        if !self.check(def, MetricKind::Histogram, labels) {
            return;
        }
        let bucket = format!("{}_bucket", def.name);
        let mut cumulative = 0u64;
        let mut lines = Vec::with_capacity(h.bounds.len() + 3);
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count;
            let le = format_value(*bound);
            lines.push(sample_line(&bucket, labels, Some(&le), cumulative as f64));
        }
        lines.push(sample_line(&bucket, labels, Some("+Inf"), h.count as f64));
        lines.push(sample_line(
            &format!("{}_sum", def.name),
            labels,
            None,
            h.sum,
        ));
        lines.push(sample_line(
            &format!("{}_count", def.name),
            labels,
            None,
            h.count as f64,
        ));
        for l in lines {
            self.push(def, l);
        }
    }

    /// Samples refused because their type or labels did not match the definition.
    pub fn rejected(&self) -> &[String] {
        &self.rejected
    }

    fn check(&mut self, def: &'static MetricDef, kind: MetricKind, labels: Labels<'_>) -> bool {
        let labels_ok =
            labels.len() == def.labels.len() && labels.iter().all(|(k, _)| def.labels.contains(k));
        if def.kind != kind || !labels_ok {
            self.rejected.push(format!(
                "{} ({}) given as {} with labels {:?}",
                def.name,
                def.kind.as_str(),
                kind.as_str(),
                labels.iter().map(|(k, _)| *k).collect::<Vec<_>>()
            ));
            return false;
        }
        true
    }

    fn push(&mut self, def: &'static MetricDef, line: String) {
        self.families.entry(def.name).or_default().push(line);
    }

    /// The exposition text: families in the order of [`ALL`], each with HELP and TYPE.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for def in ALL {
            let Some(lines) = self.families.get(def.name) else {
                continue;
            };
            let _ = writeln!(out, "# HELP {} {}", def.name, escape_help(def.help));
            let _ = writeln!(out, "# TYPE {} {}", def.name, def.kind.as_str());
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

fn sample_line(name: &str, labels: Labels<'_>, le: Option<&str>, value: f64) -> String {
    let mut s = String::from(name);
    if !labels.is_empty() || le.is_some() {
        s.push('{');
        let mut first = true;
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (k, v) in all {
            if !first {
                s.push(',');
            }
            first = false;
            let _ = write!(s, "{k}=\"{}\"", escape_label(v));
        }
        s.push('}');
    }
    s.push(' ');
    s.push_str(&format_value(value));
    s
}

/// A float in the text format's spelling (`+Inf`, `-Inf`, `NaN`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Histogram;
    use crate::names::*;

    #[test]
    fn families_are_grouped_with_help_and_type() {
        let mut e = Encoder::new();
        e.counter(&POOL_SESSIONS_CLOSED_TOTAL, &[("reason", "idle")], 3);
        e.gauge(&MEMORY_RSS_BYTES, &[], 1024.0);
        e.counter(&POOL_SESSIONS_CLOSED_TOTAL, &[("reason", "error")], 1);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP weir_memory_rss_bytes Resident set size of the process in bytes.\n\
             # TYPE weir_memory_rss_bytes gauge\n\
             weir_memory_rss_bytes 1024\n\
             # HELP weir_pool_sessions_closed_total Graph sessions (connections) closed, by reason.\n\
             # TYPE weir_pool_sessions_closed_total counter\n\
             weir_pool_sessions_closed_total{reason=\"idle\"} 3\n\
             weir_pool_sessions_closed_total{reason=\"error\"} 1\n"
        );
    }

    #[test]
    fn wrong_kind_or_labels_are_rejected_not_written() {
        let mut e = Encoder::new();
        e.counter(&MEMORY_RSS_BYTES, &[], 1);
        e.gauge(&POOL_CIRCUIT_STATE, &[], 1.0);
        e.gauge(&POOL_CIRCUIT_STATE, &[("colour", "red")], 1.0);
        assert_eq!(e.rejected().len(), 3);
        assert_eq!(e.finish(), "");
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        let mut e = Encoder::new();
        e.histogram(&STREAM_BATCH_DURATION_SECONDS, &[], &h.snapshot());
        let text = e.finish();
        assert!(text.contains("weir_stream_batch_duration_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(text.contains("weir_stream_batch_duration_seconds_bucket{le=\"1\"} 3\n"));
        assert!(text.contains("weir_stream_batch_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("weir_stream_batch_duration_seconds_sum 4.25\n"));
        assert!(text.contains("weir_stream_batch_duration_seconds_count 4\n"));
    }

    #[test]
    fn label_values_and_special_floats_are_escaped() {
        let mut e = Encoder::new();
        e.counter(
            &SUBSCRIPTIONS_COMPLETED_TOTAL,
            &[("reason", "a\"b\\c\nd")],
            1,
        );
        e.gauge(&MEMORY_PRESSURE_RATIO, &[], f64::NAN);
        let text = e.finish();
        assert!(text.contains(r#"{reason="a\"b\\c\nd"} 1"#), "{text}");
        assert!(text.contains("weir_memory_pressure_ratio NaN\n"));
        assert_eq!(format_value(f64::INFINITY), "+Inf");
    }
}
