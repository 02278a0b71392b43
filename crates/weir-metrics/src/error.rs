//! The crate's error type.

/// What can go wrong when registering metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The registry already holds its maximum number of sources or histograms.
    #[error("metrics registry full: at most {max} {what}")]
    RegistryFull {
        /// `sources` or `histograms`.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// A histogram was asked for a metric that is not a histogram, or with the wrong labels.
    #[error("`{name}` cannot be fed as a histogram with labels {labels:?}")]
    NotAHistogram {
        /// The metric's name.
        name: &'static str,
        /// The label names given.
        labels: Vec<String>,
    },
}
