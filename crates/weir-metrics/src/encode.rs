//! The exposition: samples from every source, checked against [`crate::names`], grouped into
//! families (one `# HELP` and `# TYPE` each, samples contiguous) in the order of
//! [`crate::names::ALL`], and written by prometheus-client's text encoder.
//!
//! Sources add samples in any order through an [`Encoder`]; [`Encoder::finish`] hands the
//! families to prometheus-client as one [`Collector`] and returns the text.
//!
//! # Format
//!
//! Weir serves the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), the format
//! `promtool check metrics`, the alert rules' tests and every Prometheus read. prometheus-client
//! writes OpenMetrics text, which differs from it in three ways that show here, handled so:
//!
//! - A counter's family: OpenMetrics names it without `_total` and writes the sample as
//!   `<family>_total`; in 0.0.4 the family is the sample's name. Counters keep their full name
//!   (`weir_..._total`) on `# HELP` / `# TYPE` and their sample is written as a plain value
//!   (prometheus-client's gauge value encoding: an integer, as for a counter).
//! - `# EOF`: not written (0.0.4 has none; [`prometheus_client::encoding::text::encode_registry`]).
//! - Label values: prometheus-client writes them as given (prometheus/client_rust#151), so the
//!   encoder escapes `\`, `"` and line feeds itself. Help texts are plain (a test in
//!   [`crate::names`] keeps them so).
//!
//! Gauges that hold a whole number (bytes, counts, 0/1 states) are written as integers, as
//! before (`1024`, not prometheus-client's `1024.0` for an `f64`).

use std::collections::HashMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::Histogram as ClientHistogram;

use crate::histogram::{Histogram, HistogramSnapshot};
use crate::names::{ALL, MetricDef, MetricKind};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Collects samples for one scrape.
#[derive(Debug, Default)]
pub struct Encoder {
    families: HashMap<&'static str, Vec<Sample>>,
    rejected: Vec<String>,
}

/// One sample (one label set) of a family.
#[derive(Debug)]
struct Sample {
    /// Label names as [`MetricDef::labels`] spells them, values escaped.
    labels: SampleLabels,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Gauge(f64),
    Counter(u64),
    Snapshot {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
    Live(ClientHistogram),
}

/// Label pairs with escaped values.
#[derive(Debug, PartialEq)]
struct SampleLabels(Vec<(&'static str, String)>);

impl prometheus_client::encoding::EncodeLabelSet for SampleLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        self.0.encode(encoder)
    }
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, def: &'static MetricDef, labels: Labels<'_>, value: f64) {
        self.push(def, MetricKind::Gauge, labels, Value::Gauge(value));
    }

    /// Adds a counter sample.
    pub fn counter(&mut self, def: &'static MetricDef, labels: Labels<'_>, value: u64) {
        self.push(def, MetricKind::Counter, labels, Value::Counter(value));
    }

    /// Adds a histogram kept elsewhere, from a snapshot of it (its `_bucket` lines, `_sum` and
    /// `_count`).
    pub fn histogram(
        &mut self,
        def: &'static MetricDef,
        labels: Labels<'_>,
        h: &HistogramSnapshot,
    ) {
        let value = Value::Snapshot {
            sum: h.sum,
            count: h.count,
            buckets: h.client_buckets(),
        };
        self.push(def, MetricKind::Histogram, labels, value);
    }

    /// Adds a [`Histogram`] fed as things happen; it is read when the text is written.
    pub fn live_histogram(&mut self, def: &'static MetricDef, labels: Labels<'_>, h: &Histogram) {
        let value = Value::Live(h.client().clone());
        self.push(def, MetricKind::Histogram, labels, value);
    }

    /// Samples refused because their type or labels did not match the definition, or because
    /// the family already had a sample with the same labels.
    pub fn rejected(&self) -> &[String] {
        &self.rejected
    }

    fn push(&mut self, def: &'static MetricDef, kind: MetricKind, labels: Labels<'_>, v: Value) {
        let Some(labels) = self.check(def, kind, labels) else {
            return;
        };
        let samples = self.families.entry(def.name).or_default();
        if samples.iter().any(|s| s.labels == labels) {
            self.rejected.push(format!(
                "{} with labels {:?} given twice; the first is kept",
                def.name, labels.0
            ));
            return;
        }
        samples.push(Sample { labels, value: v });
    }

    /// The labels in the definition's spelling with escaped values, if the sample fits `def`.
    fn check(
        &mut self,
        def: &'static MetricDef,
        kind: MetricKind,
        labels: Labels<'_>,
    ) -> Option<SampleLabels> {
        let named: Option<Vec<(&'static str, String)>> = labels
            .iter()
            .map(|(k, v)| {
                let k = def.labels.iter().find(|l| **l == *k)?;
                Some((*k, escape_label_value(v)))
            })
            .collect();
        match named {
            Some(named) if def.kind == kind && named.len() == def.labels.len() => {
                Some(SampleLabels(named))
            }
            _ => {
                self.rejected.push(format!(
                    "{} ({}) given as {} with labels {:?}",
                    def.name,
                    def.kind.as_str(),
                    kind.as_str(),
                    labels.iter().map(|(k, _)| *k).collect::<Vec<_>>()
                ));
                None
            }
        }
    }

    /// The exposition text: families in the order of [`ALL`], each with HELP and TYPE.
    pub fn finish(self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Families(self.families)));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &registry) {
            // Writing to a String does not fail and every value is encodable: not expected.
            tracing::error!(target: "weir::metrics", error = %e, "metrics text incomplete");
        }
        out
    }
}

/// The samples of one scrape, as prometheus-client's collector.
#[derive(Debug)]
struct Families(HashMap<&'static str, Vec<Sample>>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        for def in ALL {
            let Some(samples) = self.0.get(def.name) else {
                continue;
            };
            let mut family =
                encoder.encode_descriptor(def.name, def.help, None, metric_type(def.kind))?;
            if def.labels.is_empty() {
                // One sample at most (a second is rejected as a duplicate). An empty label
                // set would be written as `{}`, so the sample goes on the family itself.
                if let Some(s) = samples.first() {
                    encode_value(&s.value, family)?;
                }
            } else {
                for s in samples {
                    encode_value(&s.value, family.encode_family(&s.labels)?)?;
                }
            }
        }
        Ok(())
    }
}

fn metric_type(kind: MetricKind) -> MetricType {
    match kind {
        MetricKind::Gauge => MetricType::Gauge,
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Histogram => MetricType::Histogram,
    }
}

/// Largest magnitude below which every whole `f64` is exact as an `i64` (2^53).
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

fn encode_value(value: &Value, mut m: MetricEncoder<'_>) -> fmt::Result {
    match value {
        Value::Gauge(v) if v.fract() == 0.0 && v.abs() < EXACT_INT => m.encode_gauge(&(*v as i64)),
        Value::Gauge(v) => m.encode_gauge(v),
        // The 0.0.4 spelling: the sample carries the family's own name (see the module docs).
        // prometheus-client's integer gauge values are i64; a count beyond goes as a float.
        Value::Counter(n) => match i64::try_from(*n) {
            Ok(i) => m.encode_gauge(&i),
            Err(_) => m.encode_gauge(&(*n as f64)),
        },
        Value::Snapshot {
            sum,
            count,
            buckets,
        } => m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
        Value::Live(h) => h.encode(m),
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the text format requires.
fn escape_label_value(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::*;

    #[test]
    fn families_are_grouped_with_help_and_type() {
        let mut e = Encoder::new();
        e.counter(
            &POOL_SESSIONS_CLOSED_TOTAL,
            &[("pool", "write"), ("reason", "idle")],
            3,
        );
        e.gauge(&MEMORY_RSS_BYTES, &[], 1024.0);
        e.counter(
            &POOL_SESSIONS_CLOSED_TOTAL,
            &[("pool", "write"), ("reason", "error")],
            1,
        );
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP weir_memory_rss_bytes Resident set size of the process in bytes.\n\
             # TYPE weir_memory_rss_bytes gauge\n\
             weir_memory_rss_bytes 1024\n\
             # HELP weir_pool_sessions_closed_total Graph sessions (connections) closed, by reason.\n\
             # TYPE weir_pool_sessions_closed_total counter\n\
             weir_pool_sessions_closed_total{pool=\"write\",reason=\"idle\"} 3\n\
             weir_pool_sessions_closed_total{pool=\"write\",reason=\"error\"} 1\n"
        );
    }

    #[test]
    fn wrong_kind_labels_or_duplicates_are_rejected_not_written() {
        let mut e = Encoder::new();
        e.counter(&MEMORY_RSS_BYTES, &[], 1);
        e.gauge(&POOL_CIRCUIT_STATE, &[], 1.0);
        e.gauge(&POOL_CIRCUIT_STATE, &[("colour", "red")], 1.0);
        assert_eq!(e.rejected().len(), 3);
        e.gauge(&MEMORY_USED_BYTES, &[], 1.0);
        e.gauge(&MEMORY_USED_BYTES, &[], 2.0);
        e.gauge(
            &POOL_CIRCUIT_STATE,
            &[("pool", "read"), ("state", "open")],
            1.0,
        );
        e.gauge(
            &POOL_CIRCUIT_STATE,
            &[("pool", "read"), ("state", "open")],
            0.0,
        );
        assert_eq!(e.rejected().len(), 5, "{:?}", e.rejected());
        let text = e.finish();
        assert!(text.contains("weir_memory_used_bytes 1\n"), "{text}");
        assert!(!text.contains("weir_memory_used_bytes 2"), "{text}");
        assert!(text.contains("weir_pool_circuit_state{pool=\"read\",state=\"open\"} 1\n"));
        assert!(!text.contains("weir_memory_rss_bytes"), "{text}");
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let h = HistogramSnapshot {
            bounds: vec![0.1, 1.0],
            counts: vec![1, 2],
            sum: 4.25,
            count: 4,
        };
        let mut e = Encoder::new();
        e.histogram(&STREAM_BATCH_DURATION_SECONDS, &[], &h);
        let text = e.finish();
        for line in [
            "# TYPE weir_stream_batch_duration_seconds histogram\n",
            "weir_stream_batch_duration_seconds_bucket{le=\"0.1\"} 1\n",
            "weir_stream_batch_duration_seconds_bucket{le=\"1.0\"} 3\n",
            "weir_stream_batch_duration_seconds_bucket{le=\"+Inf\"} 4\n",
            "weir_stream_batch_duration_seconds_sum 4.25\n",
            "weir_stream_batch_duration_seconds_count 4\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_and_special_floats_are_written_safely() {
        let mut e = Encoder::new();
        e.counter(
            &SUBSCRIPTIONS_COMPLETED_TOTAL,
            &[("reason", "a\"b\\c\nd")],
            1,
        );
        e.gauge(&MEMORY_PRESSURE_RATIO, &[], f64::NAN);
        e.gauge(&MEMORY_LEAK_FIT_RATIO, &[], 0.25);
        e.counter(&MEMORY_SAMPLES_TOTAL, &[], u64::MAX);
        let text = e.finish();
        assert!(text.contains(r#"{reason="a\"b\\c\nd"} 1"#), "{text}");
        assert!(text.contains("weir_memory_pressure_ratio NaN\n"), "{text}");
        assert!(text.contains("weir_memory_leak_fit_ratio 0.25\n"), "{text}");
        assert!(
            text.contains("weir_memory_samples_total 18446744073709553000.0\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
