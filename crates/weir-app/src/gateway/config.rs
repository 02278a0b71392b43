//! The `[replay]` settings: `GET /changes` page limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ServiceError;

/// Limits of one replay page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Most batches read for one page (a client pages on with the returned `last_seq`).
    /// Default 256.
    pub max_batches: usize,
    /// Most events returned in one page (the page ends at the batch that reaches it).
    /// Default 10 000.
    pub max_events: usize,
    /// The page ends when no further batch arrives within this. Default 300 ms.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle: Duration,
    /// Pages read at once (each holds a bus consumer while it reads); more are refused with
    /// 429 `TOO_MANY_REPLAYS`. Default 16.
    pub max_concurrent: usize,
}

impl ReplayConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ServiceError> {
        if self.max_batches == 0
            || self.max_events == 0
            || self.idle.is_zero()
            || self.max_concurrent == 0
        {
            return Err(ServiceError::Invalid {
                field: "replay",
                reason: "max_batches, max_events, idle and max_concurrent must be above zero"
                    .into(),
            });
        }
        Ok(())
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            max_batches: 256,
            max_events: 10_000,
            idle: Duration::from_millis(300),
            max_concurrent: 16,
        }
    }
}
