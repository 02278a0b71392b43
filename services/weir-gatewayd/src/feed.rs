//! Feeds the gateway's subscription manager from the bus.

use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_bus::BusError;
use weir_service::BusSlot;
use weir_subscriptions::SubscriptionManager;

/// Reads change batches from the bus (this replica's own consumer) and publishes each to
/// `manager`, in seq order, each once. When the subscription ends with an error it
/// resubscribes from the last seq it delivered (`since`), so nothing is skipped or repeated;
/// only when retention already dropped what it missed does it log the gap and go on live.
pub fn spawn_changes(
    bus: BusSlot,
    manager: SubscriptionManager,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<u64> = None;
        let mut delay = Duration::from_millis(200);
        loop {
            let Some(b) = bus.wait(&shutdown).await else {
                return;
            };
            match b.subscribe_changes_at(last).await {
                Ok((mut stream, newest)) => {
                    // Pin the starting point on the first subscription, so that a
                    // resubscription after an early error resumes from there, not from "now".
                    last.get_or_insert(newest);
                    tracing::info!(since = ?last, "gateway feed subscribed");
                    loop {
                        let item = tokio::select! {
                            i = stream.next() => i,
                            () = shutdown.cancelled() => return,
                        };
                        match item {
                            Some(Ok(batch)) => {
                                delay = Duration::from_millis(200);
                                last = Some(batch.seq);
                                manager.publish(batch);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "gateway feed ended; resubscribing");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(BusError::SinceTooOld {
                    since,
                    first_retained,
                }) => {
                    tracing::error!(
                        since,
                        first_retained,
                        "changes lost to retention; continuing live"
                    );
                    last = None;
                }
                Err(BusError::SinceAhead {
                    since,
                    last: newest,
                }) => {
                    // The stream was deleted and created again: its sequences start over.
                    // Read the new stream from its start rather than skip what it has.
                    tracing::error!(
                        since,
                        newest,
                        "the bus stream starts over (deleted and created again); reading it from its start"
                    );
                    last = Some(0);
                }
                Err(e) => tracing::warn!(error = %e, "gateway feed cannot subscribe"),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    })
}

/// Reads progress events from the bus and hands them to `manager` (live only, lossy).
pub fn spawn_progress(
    bus: BusSlot,
    manager: SubscriptionManager,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(b) = bus.wait(&shutdown).await else {
                return;
            };
            match b.subscribe_progress().await {
                Ok(mut stream) => loop {
                    let item = tokio::select! {
                        i = stream.next() => i,
                        () = shutdown.cancelled() => return,
                    };
                    match item {
                        Some(Ok(p)) => manager.publish_progress(p),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "progress feed ended; resubscribing");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "progress feed cannot subscribe"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    })
}
