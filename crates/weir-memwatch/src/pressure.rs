//! Pressure levels: how close memory use is to the effective limit.

use serde::Serialize;

use crate::error::MemwatchError;

/// How close memory use is to the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PressureLevel {
    /// No limit is known, so no level can be given.
    Unknown,
    /// Below the warning threshold.
    Normal,
    /// At or above the warning threshold.
    Warning,
    /// At or above the critical threshold.
    Critical,
}

impl PressureLevel {
    /// The level's name as used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Normal => "normal",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// A number for dashboards: unknown -1, normal 0, warning 1, critical 2.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Unknown => -1,
            Self::Normal => 0,
            Self::Warning => 1,
            Self::Critical => 2,
        }
    }
}

/// Thresholds as fractions of the effective limit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// From this ratio on the level is `warning`. Default 0.70.
    pub warning: f64,
    /// From this ratio on the level is `critical`. Default 0.90.
    pub critical: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            warning: 0.70,
            critical: 0.90,
        }
    }
}

impl Thresholds {
    /// Checks `0 < warning < critical <= 1`; the error names the field.
    pub fn validate(&self) -> Result<(), MemwatchError> {
        if !(self.warning > 0.0 && self.warning < 1.0) {
            return Err(MemwatchError::InvalidConfig {
                field: "thresholds.warning",
                reason: format!("{} is not within (0, 1)", self.warning),
            });
        }
        if !(self.critical > self.warning && self.critical <= 1.0) {
            return Err(MemwatchError::InvalidConfig {
                field: "thresholds.critical",
                reason: format!(
                    "{} must be above the warning threshold {} and at most 1",
                    self.critical, self.warning
                ),
            });
        }
        Ok(())
    }

    /// The level for a usage ratio (`None`: no limit known).
    pub fn level(&self, ratio: Option<f64>) -> PressureLevel {
        match ratio {
            None => PressureLevel::Unknown,
            Some(r) if r >= self.critical => PressureLevel::Critical,
            Some(r) if r >= self.warning => PressureLevel::Warning,
            Some(_) => PressureLevel::Normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_thresholds_inclusively() {
        let t = Thresholds::default();
        assert_eq!(t.level(None), PressureLevel::Unknown);
        assert_eq!(t.level(Some(0.0)), PressureLevel::Normal);
        assert_eq!(t.level(Some(0.6999)), PressureLevel::Normal);
        assert_eq!(t.level(Some(0.70)), PressureLevel::Warning);
        assert_eq!(t.level(Some(0.8999)), PressureLevel::Warning);
        assert_eq!(t.level(Some(0.90)), PressureLevel::Critical);
        assert_eq!(t.level(Some(1.5)), PressureLevel::Critical);
    }

    #[test]
    fn validation_rejects_inverted_or_out_of_range_thresholds() {
        let e = Thresholds {
            warning: 0.9,
            critical: 0.8,
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            e,
            MemwatchError::InvalidConfig {
                field: "thresholds.critical",
                ..
            }
        ));
        let e = Thresholds {
            warning: 0.0,
            critical: 0.8,
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            e,
            MemwatchError::InvalidConfig {
                field: "thresholds.warning",
                ..
            }
        ));
        Thresholds::default().validate().unwrap();
    }
}
