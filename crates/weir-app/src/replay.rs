//! The gateway's `graphChanges(since:)` catch-up, read from the bus.

use futures::StreamExt;
use futures::future::BoxFuture;
use weir_bus::BusError;
use weir_gateway::{ChangeReplay, Replay, ReplayError};

use crate::BusSlot;

/// [`ChangeReplay`] over the service's bus: each catch-up opens its own bus subscription from
/// `since` (on NATS an ordered consumer of its own, dropped with the replay).
#[derive(Clone, Debug)]
pub struct BusReplay(pub BusSlot);

fn replay_error(e: BusError) -> ReplayError {
    match e {
        BusError::SinceTooOld {
            since,
            first_retained,
        } => ReplayError::SinceTooOld {
            since,
            first_retained,
        },
        BusError::SinceAhead { since, last } => ReplayError::SinceAhead { since, last },
        other => ReplayError::Unavailable(other.to_string()),
    }
}

impl ChangeReplay for BusReplay {
    fn open(&self, since: u64) -> BoxFuture<'static, Result<Replay, ReplayError>> {
        let slot = self.0.clone();
        Box::pin(async move {
            let bus = slot
                .get()
                .ok_or_else(|| ReplayError::Unavailable("the bus is not connected yet".into()))?;
            let (stream, last_published) = bus
                .subscribe_changes_at(Some(since))
                .await
                .map_err(replay_error)?;
            Ok(Replay {
                batches: stream.map(|r| r.map_err(replay_error)).boxed(),
                last_published,
            })
        })
    }
}
