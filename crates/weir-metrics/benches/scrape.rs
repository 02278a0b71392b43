//! Cost of a scrape and of one leak analysis.
//!
//! `cargo bench -p weir-metrics --bench scrape`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_memwatch::{LeakConfig, analyze};
use weir_metrics::names::{ALL, MetricKind};
use weir_metrics::{Encoder, Histogram, Registry};

fn every_metric_registry() -> Registry {
    let r = Registry::new();
    r.register_source(
        "all",
        Arc::new(|e: &mut Encoder| {
            for def in ALL {
                let labels: Vec<(&str, &str)> = def.labels.iter().map(|l| (*l, "v")).collect();
                match def.kind {
                    MetricKind::Gauge => e.gauge(def, &labels, 1.5),
                    MetricKind::Counter => e.counter(def, &labels, 42),
                    MetricKind::Histogram => {}
                }
            }
        }),
    )
    .unwrap();
    for def in ALL.iter().filter(|d| d.kind == MetricKind::Histogram) {
        let h = r
            .histogram(def, &[], weir_metrics::DURATION_BUCKETS)
            .unwrap();
        for i in 0..1000 {
            h.observe(f64::from(i) / 100.0);
        }
    }
    r
}

fn bench(c: &mut Criterion) {
    let r = every_metric_registry();
    c.bench_function("encode_every_metric", |b| b.iter(|| black_box(r.encode())));

    let h = Histogram::new(weir_metrics::DURATION_BUCKETS);
    c.bench_function("histogram_observe", |b| {
        b.iter(|| h.observe(black_box(0.042)))
    });

    let points: Vec<(f64, f64)> = (0..1000)
        .map(|i| (f64::from(i) * 5.0, 1e8 + f64::from(i % 17) * 1e5))
        .collect();
    let cfg = LeakConfig::default();
    c.bench_function("leak_analyze_1000_samples", |b| {
        b.iter(|| black_box(analyze(black_box(&points), &cfg)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
