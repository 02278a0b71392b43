//! Leak detection by trend: a least-squares line through a window of memory samples.
//!
//! The series is first passed through a running median (width [`LeakConfig::burst_filter`]) so
//! a short burst of a few samples cannot tilt the line; then the slope (bytes per second) and
//! its goodness of fit (R²) decide the verdict:
//!
//! - fewer than [`LeakConfig::min_samples`] samples, or a window shorter than
//!   [`LeakConfig::min_span`]: [`LeakVerdict::InsufficientData`];
//! - fitted growth over the window below [`LeakConfig::min_growth_bytes`], or a falling line:
//!   [`LeakVerdict::Stable`];
//! - growth of at least [`LeakConfig::leaking_pct_per_hour`] % of the mean level per hour with
//!   R² ≥ [`LeakConfig::leaking_min_r2`]: [`LeakVerdict::Leaking`];
//! - at least [`LeakConfig::growing_pct_per_hour`] % per hour with R² ≥
//!   [`LeakConfig::growing_min_r2`]: [`LeakVerdict::Growing`];
//! - else [`LeakVerdict::Stable`].
//!
//! [`analyze`] is a pure function of the series; the watcher adds hysteresis on top (a verdict
//! is reported only once it held for several analyses in a row).

use std::time::Duration;

use serde::Serialize;

use crate::error::MemwatchError;

/// What the trend says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakVerdict {
    /// Not enough samples (or too short a window) to judge.
    InsufficientData,
    /// Flat, falling, or growing too little or too irregularly to matter.
    Stable,
    /// Growing steadily, below the leak rate.
    Growing,
    /// Growing steadily at or above the leak rate.
    Leaking,
}

impl LeakVerdict {
    /// The verdict's name as used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientData => "insufficient_data",
            Self::Stable => "stable",
            Self::Growing => "growing",
            Self::Leaking => "leaking",
        }
    }

    /// Every verdict, in order of severity.
    pub const ALL: [LeakVerdict; 4] = [
        Self::InsufficientData,
        Self::Stable,
        Self::Growing,
        Self::Leaking,
    ];
}

/// Settings of the leak detector.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeakConfig {
    /// How far back the analysis looks. Default 30 minutes. (JSON: `window_seconds`.)
    #[serde(rename = "window_seconds", serialize_with = "as_seconds")]
    pub window: Duration,
    /// Fewest samples for a verdict. Default 10.
    pub min_samples: usize,
    /// Shortest window (last sample minus first) for a verdict. Default 5 minutes.
    /// (JSON: `min_span_seconds`.)
    #[serde(rename = "min_span_seconds", serialize_with = "as_seconds")]
    pub min_span: Duration,
    /// Width of the running median applied before the fit (odd, 1 = none). Default 5: bursts of
    /// up to 2 samples are ignored.
    pub burst_filter: usize,
    /// Fitted growth over the window below this is stable whatever the rate. Default 1 MiB.
    pub min_growth_bytes: u64,
    /// Growth rate, % of the mean level per hour, from which a steady trend is `growing`.
    /// Default 2.
    pub growing_pct_per_hour: f64,
    /// Smallest R² for `growing`. Default 0.5.
    pub growing_min_r2: f64,
    /// Growth rate, % of the mean level per hour, from which a steady trend is `leaking`.
    /// Default 10.
    pub leaking_pct_per_hour: f64,
    /// Smallest R² for `leaking`. Default 0.8.
    pub leaking_min_r2: f64,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for LeakConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30 * 60),
            min_samples: 10,
            min_span: Duration::from_secs(5 * 60),
            burst_filter: 5,
            min_growth_bytes: 1 << 20,
            growing_pct_per_hour: 2.0,
            growing_min_r2: 0.5,
            leaking_pct_per_hour: 10.0,
            leaking_min_r2: 0.8,
        }
    }
}

impl LeakConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), MemwatchError> {
        let bad = |field: &'static str, reason: &str| {
            Err(MemwatchError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.window.is_zero() {
            return bad("leak.window", "must be positive");
        }
        if self.min_samples < 3 {
            return bad("leak.min_samples", "must be at least 3");
        }
        if self.burst_filter == 0 || self.burst_filter.is_multiple_of(2) {
            return bad("leak.burst_filter", "must be odd (1 = no filter)");
        }
        for (field, v) in [
            ("leak.growing_pct_per_hour", self.growing_pct_per_hour),
            ("leak.leaking_pct_per_hour", self.leaking_pct_per_hour),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, "must be a positive number");
            }
        }
        if self.growing_pct_per_hour > self.leaking_pct_per_hour {
            return bad(
                "leak.growing_pct_per_hour",
                "must not exceed leak.leaking_pct_per_hour",
            );
        }
        for (field, v) in [
            ("leak.growing_min_r2", self.growing_min_r2),
            ("leak.leaking_min_r2", self.leaking_min_r2),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(field, "must be within 0..=1");
            }
        }
        Ok(())
    }
}

/// The result of one analysis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeakAnalysis {
    /// The verdict of this analysis alone (the watcher debounces it).
    pub verdict: LeakVerdict,
    /// Samples in the window.
    pub samples: usize,
    /// Seconds between the first and last sample of the window.
    pub span_seconds: f64,
    /// Fitted slope in bytes per hour (negative when falling).
    pub slope_bytes_per_hour: f64,
    /// Goodness of fit of the line, 0..=1 (0 for a perfectly flat series).
    pub r_squared: f64,
    /// Slope as % of the mean level per hour.
    pub growth_pct_per_hour: f64,
    /// Fitted growth over the window in bytes (`slope × span`).
    pub fitted_growth_bytes: f64,
    /// Mean level of the (filtered) series in bytes.
    pub mean_bytes: f64,
}

impl LeakAnalysis {
    fn insufficient(samples: usize, span_seconds: f64) -> Self {
        Self {
            verdict: LeakVerdict::InsufficientData,
            samples,
            span_seconds,
            slope_bytes_per_hour: 0.0,
            r_squared: 0.0,
            growth_pct_per_hour: 0.0,
            fitted_growth_bytes: 0.0,
            mean_bytes: 0.0,
        }
    }
}

/// Analyses `(seconds, bytes)` points (seconds from any origin, ascending) with `config`.
pub fn analyze(points: &[(f64, f64)], config: &LeakConfig) -> LeakAnalysis {
    let n = points.len();
    let span = match (points.first(), points.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    if n < config.min_samples.max(3) || span < config.min_span.as_secs_f64() || span <= 0.0 {
        return LeakAnalysis::insufficient(n, span.max(0.0));
    }
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let filtered = running_median(&ys, config.burst_filter);
    let (slope, r2, mean) = fit(points.iter().map(|p| p.0).zip(filtered.iter().copied()));
    let growth = slope * span;
    let pct = if mean > 0.0 {
        slope * 3600.0 / mean * 100.0
    } else {
        0.0
    };
    let verdict = if slope <= 0.0 || growth < config.min_growth_bytes as f64 {
        LeakVerdict::Stable
    } else if pct >= config.leaking_pct_per_hour && r2 >= config.leaking_min_r2 {
        LeakVerdict::Leaking
    } else if pct >= config.growing_pct_per_hour && r2 >= config.growing_min_r2 {
        LeakVerdict::Growing
    } else {
        LeakVerdict::Stable
    };
    LeakAnalysis {
        verdict,
        samples: n,
        span_seconds: span,
        slope_bytes_per_hour: slope * 3600.0,
        r_squared: r2,
        growth_pct_per_hour: pct,
        fitted_growth_bytes: growth,
        mean_bytes: mean,
    }
}

/// Least squares: `(slope, r², mean of y)`.
fn fit(points: impl Iterator<Item = (f64, f64)> + Clone) -> (f64, f64, f64) {
    let n = points.clone().count() as f64;
    let (sx, sy) = points
        .clone()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in points {
        let (dx, dy) = (x - mx, y - my);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx == 0.0 {
        return (0.0, 0.0, my);
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        0.0
    } else {
        ((sxy * sxy) / (sxx * syy)).clamp(0.0, 1.0)
    };
    (slope, r2, my)
}

/// Running median of odd `width`. Near the ends the window is shifted to stay inside the
/// series (not shrunk), so a burst in the last samples is filtered like one in the middle.
fn running_median(ys: &[f64], width: usize) -> Vec<f64> {
    let width = width.min(ys.len()).max(1);
    let half = width / 2;
    let mut buf = Vec::with_capacity(width);
    (0..ys.len())
        .map(|i| {
            let start = i.saturating_sub(half).min(ys.len() - width);
            buf.clear();
            buf.extend_from_slice(&ys[start..start + width]);
            buf.sort_by(f64::total_cmp);
            buf[buf.len() / 2]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// 60 samples one minute apart (a one-hour window), `f(i)` bytes each.
    fn series(f: impl Fn(usize) -> f64) -> Vec<(f64, f64)> {
        (0..60).map(|i| (i as f64 * 60.0, f(i))).collect()
    }

    /// Deterministic noise in [-1, 1] (an LCG, so tests are reproducible).
    fn noise(i: usize) -> f64 {
        let x = (i as u64)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((x >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    }

    fn config() -> LeakConfig {
        LeakConfig {
            window: Duration::from_secs(3600),
            ..LeakConfig::default()
        }
    }

    #[test]
    fn steady_growth_is_leaking_with_the_right_slope() {
        // 200 MiB base, +1 MiB per minute = 60 MiB/h = 30 %/h of the base, plus ±256 KiB noise.
        let s = series(|i| 200.0 * MIB + i as f64 * MIB + noise(i) * 0.25 * MIB);
        let a = analyze(&s, &config());
        assert_eq!(a.verdict, LeakVerdict::Leaking, "{a:?}");
        assert!(
            (a.slope_bytes_per_hour / MIB - 60.0).abs() < 2.0,
            "slope {} MiB/h",
            a.slope_bytes_per_hour / MIB
        );
        assert!(a.r_squared > 0.95, "{a:?}");
    }

    #[test]
    fn slow_steady_growth_is_growing_not_leaking() {
        // 500 MiB base, +10 MiB/h = 2 %/h ... 5 %/h band.
        let s = series(|i| 500.0 * MIB + i as f64 * (20.0 / 60.0) * MIB + noise(i) * 0.05 * MIB);
        let a = analyze(&s, &config());
        assert_eq!(a.verdict, LeakVerdict::Growing, "{a:?}");
    }

    #[test]
    fn flat_noisy_series_is_stable() {
        // ±8 MiB of noise around 300 MiB: large jitter, no trend.
        let s = series(|i| 300.0 * MIB + noise(i) * 8.0 * MIB);
        let a = analyze(&s, &config());
        assert_eq!(a.verdict, LeakVerdict::Stable, "{a:?}");
        assert!(a.r_squared < 0.5, "{a:?}");
    }

    #[test]
    fn a_single_burst_is_ignored_wherever_it_falls() {
        for at in [0, 10, 30, 57, 58, 59] {
            // Flat at 100 MiB with a 2-sample burst to 400 MiB.
            let s = series(|i| {
                if i == at || i == at + 1 {
                    400.0 * MIB
                } else {
                    100.0 * MIB
                }
            });
            let a = analyze(&s, &config());
            assert_eq!(a.verdict, LeakVerdict::Stable, "burst at {at}: {a:?}");
        }
    }

    #[test]
    fn without_the_burst_filter_a_late_burst_would_tilt_the_line() {
        // Proves the filter is what makes the previous test pass.
        let s = series(|i| if i >= 58 { 400.0 * MIB } else { 100.0 * MIB });
        let raw = LeakConfig {
            burst_filter: 1,
            growing_min_r2: 0.05,
            ..config()
        };
        assert_ne!(analyze(&s, &raw).verdict, LeakVerdict::Stable);
        let filtered = LeakConfig {
            growing_min_r2: 0.05,
            ..config()
        };
        assert_eq!(analyze(&s, &filtered).verdict, LeakVerdict::Stable);
    }

    #[test]
    fn falling_series_is_stable() {
        let s = series(|i| 400.0 * MIB - i as f64 * MIB);
        let a = analyze(&s, &config());
        assert_eq!(a.verdict, LeakVerdict::Stable);
        assert!(a.slope_bytes_per_hour < 0.0);
    }

    #[test]
    fn tiny_absolute_growth_is_stable_whatever_the_rate() {
        // 1 MiB process growing 512 KiB over the hour: 50 %/h but below min_growth_bytes.
        let s = series(|i| MIB + i as f64 * (512.0 * 1024.0 / 60.0));
        let a = analyze(&s, &config());
        assert!(a.growth_pct_per_hour > 10.0);
        assert_eq!(a.verdict, LeakVerdict::Stable, "{a:?}");
    }

    #[test]
    fn too_few_samples_or_too_short_a_span_is_insufficient() {
        let s = series(|i| i as f64 * MIB);
        assert_eq!(
            analyze(&s[..5], &config()).verdict,
            LeakVerdict::InsufficientData
        );
        // 10 samples but only 9 minutes of span against a 10-minute minimum.
        let cfg = LeakConfig {
            min_span: Duration::from_secs(600),
            ..config()
        };
        assert_eq!(
            analyze(&s[..10], &cfg).verdict,
            LeakVerdict::InsufficientData
        );
        assert_eq!(analyze(&[], &cfg).verdict, LeakVerdict::InsufficientData);
    }

    #[test]
    fn running_median_removes_short_spikes_and_keeps_steps() {
        let ys = [1.0, 1.0, 9.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0];
        let m = running_median(&ys, 5);
        assert_eq!(m[2], 1.0);
        assert_eq!(&m[6..], &[5.0, 5.0, 5.0]);
        assert_eq!(running_median(&ys, 1), ys.to_vec());
    }

    #[test]
    fn config_validation_names_the_field() {
        let e = LeakConfig {
            burst_filter: 4,
            ..LeakConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(
                e,
                MemwatchError::InvalidConfig {
                    field: "leak.burst_filter",
                    ..
                }
            ),
            "{e}"
        );
        let e = LeakConfig {
            growing_pct_per_hour: 20.0,
            ..LeakConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            e,
            MemwatchError::InvalidConfig {
                field: "leak.growing_pct_per_hour",
                ..
            }
        ));
        LeakConfig::default().validate().unwrap();
    }
}
