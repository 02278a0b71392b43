//! The registry: sources collected at scrape time, plus histograms fed as things happen.
//!
//! Subsystems do not depend on this crate. Each exposes its own status or counters, and a small
//! adapter (a [`MetricSource`], often a closure) turns them into samples when `/metrics` is
//! scraped.
//!
//! The metrics themselves, their text and the histograms are prometheus-client's (see
//! [`crate::encode`]). This list of named sources stays Weir's: prometheus-client's registry
//! cannot replace or remove what was registered, and writes each registration as a family of
//! its own, where Weir's sources add to families in any order and come and go by name.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::encode::Encoder;
use crate::error::MetricsError;
use crate::histogram::Histogram;
use crate::names::{self, MetricDef, MetricKind};

/// Most sources a registry accepts.
pub const MAX_SOURCES: usize = 64;
/// Most histograms (distinct metric + label values) a registry accepts.
pub const MAX_HISTOGRAMS: usize = 256;

/// Something that writes samples at scrape time.
pub trait MetricSource: Send + Sync + 'static {
    /// Adds this source's samples to `enc`.
    fn collect(&self, enc: &mut Encoder);
}

impl<F> MetricSource for F
where
    F: Fn(&mut Encoder) + Send + Sync + 'static,
{
    fn collect(&self, enc: &mut Encoder) {
        self(enc)
    }
}

type HistogramEntry = (&'static MetricDef, Vec<(String, String)>, Histogram);

/// Sources and histograms of one process. Share it as `Arc<Registry>`.
pub struct Registry {
    sources: RwLock<Vec<(String, Arc<dyn MetricSource>)>>,
    histograms: RwLock<Vec<HistogramEntry>>,
    started: Instant,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "sources",
                &self
                    .sources
                    .read()
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>(),
            )
            .field("histograms", &self.histograms.read().len())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry; `weir_process_uptime_seconds` counts from now.
    pub fn new() -> Self {
        Self {
            sources: RwLock::new(Vec::new()),
            histograms: RwLock::new(Vec::new()),
            started: Instant::now(),
        }
    }

    /// Adds a source under `name` (a later source with the same name replaces it).
    pub fn register_source(
        &self,
        name: impl Into<String>,
        source: Arc<dyn MetricSource>,
    ) -> Result<(), MetricsError> {
        let name = name.into();
        let mut sources = self.sources.write();
        if let Some(slot) = sources.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = source;
            return Ok(());
        }
        if sources.len() >= MAX_SOURCES {
            return Err(MetricsError::RegistryFull {
                what: "sources",
                max: MAX_SOURCES,
            });
        }
        sources.push((name, source));
        Ok(())
    }

    /// Removes the source called `name`; whether there was one.
    pub fn unregister_source(&self, name: &str) -> bool {
        let mut sources = self.sources.write();
        let before = sources.len();
        sources.retain(|(n, _)| n != name);
        sources.len() != before
    }

    /// The histogram for `def` with these label values, made with `buckets` on first use
    /// (later calls return one sharing its counts and ignore `buckets`).
    pub fn histogram(
        &self,
        def: &'static MetricDef,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        let labels_ok =
            labels.len() == def.labels.len() && labels.iter().all(|(k, _)| def.labels.contains(k));
        if def.kind != MetricKind::Histogram || !labels_ok {
            return Err(MetricsError::NotAHistogram {
                name: def.name,
                labels: labels.iter().map(|(k, _)| (*k).to_owned()).collect(),
            });
        }
        let owned: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut hs = self.histograms.write();
        if let Some((_, _, h)) = hs
            .iter()
            .find(|(d, l, _)| d.name == def.name && *l == owned)
        {
            return Ok(h.clone());
        }
        if hs.len() >= MAX_HISTOGRAMS {
            return Err(MetricsError::RegistryFull {
                what: "histograms",
                max: MAX_HISTOGRAMS,
            });
        }
        let h = Histogram::new(buckets);
        hs.push((def, owned, h.clone()));
        Ok(h)
    }

    /// Collects every source and histogram into the text format.
    pub fn encode(&self) -> String {
        let mut enc = Encoder::new();
        enc.gauge(
            &names::PROCESS_UPTIME_SECONDS,
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        let sources: Vec<_> = self.sources.read().iter().map(|(_, s)| s.clone()).collect();
        for s in sources {
            s.collect(&mut enc);
        }
        for (def, labels, h) in self.histograms.read().iter() {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            enc.live_histogram(def, &l, h);
        }
        for r in enc.rejected() {
            tracing::warn!(target: "weir::metrics", sample = %r, "metric sample rejected");
        }
        enc.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::*;

    #[test]
    fn sources_are_collected_at_scrape_time() {
        let r = Registry::new();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let n2 = n.clone();
        r.register_source(
            "bus",
            Arc::new(move |e: &mut Encoder| {
                e.counter(
                    &BUS_PUBLISHED_BATCHES_TOTAL,
                    &[],
                    n2.load(std::sync::atomic::Ordering::Relaxed),
                )
            }),
        )
        .unwrap();
        assert!(r.encode().contains("weir_bus_published_batches_total 1\n"));
        n.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(r.encode().contains("weir_bus_published_batches_total 5\n"));
        assert!(r.unregister_source("bus"));
        assert!(!r.encode().contains("weir_bus_published_batches_total"));
    }

    #[test]
    fn the_number_of_sources_is_bounded() {
        let r = Registry::new();
        for i in 0..MAX_SOURCES {
            r.register_source(format!("s{i}"), Arc::new(|_: &mut Encoder| {}))
                .unwrap();
        }
        // Replacing an existing name still works at the bound; a new name does not.
        r.register_source("s0", Arc::new(|_: &mut Encoder| {}))
            .unwrap();
        let e = r
            .register_source("one-too-many", Arc::new(|_: &mut Encoder| {}))
            .unwrap_err();
        assert!(matches!(
            e,
            MetricsError::RegistryFull {
                what: "sources",
                ..
            }
        ));
    }

    #[test]
    fn histograms_are_shared_per_labels_bounded_and_typed() {
        let r = Registry::new();
        let a = r
            .histogram(&STREAM_BATCH_DURATION_SECONDS, &[], &[0.1, 1.0])
            .unwrap();
        let b = r
            .histogram(&STREAM_BATCH_DURATION_SECONDS, &[], &[5.0])
            .unwrap();
        a.observe(0.05);
        b.observe(0.5);
        let text = r.encode();
        assert!(
            text.contains("weir_stream_batch_duration_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_stream_batch_duration_seconds_count 2\n"),
            "one histogram, shared: {text}"
        );
        assert!(matches!(
            r.histogram(&MEMORY_RSS_BYTES, &[], &[1.0]),
            Err(MetricsError::NotAHistogram { .. })
        ));
        assert!(matches!(
            r.histogram(&POOL_ACQUIRE_WAIT_SECONDS, &[("x", "y")], &[1.0]),
            Err(MetricsError::NotAHistogram { .. })
        ));
    }
}
