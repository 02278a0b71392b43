//! Feeds the gateway's subscription manager from the bus.

use std::time::Duration;

use crate::BusSlot;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_bus::BusError;
use weir_config::Backoff;
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
        let policy = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5));
        // Failed subscriptions since the last batch received.
        let mut failures = 0u32;
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
                                failures = 0;
                                last = Some(batch.seq);
                                manager.publish(batch);
                            }
                            Some(Err(e @ BusError::StreamNotFound { .. })) => {
                                // The stream and what it held that this gateway had not read
                                // are gone: tell the subscribers, then read the stream from its
                                // start once it exists again.
                                let ended = manager.end_changes(weir_subscriptions::EndReason::Gap);
                                tracing::error!(error = %e, subscriptions_told = ended, "the bus stream was deleted: its subscribers are told (CHANGES_LOST); waiting for it to exist again");
                                last = Some(0);
                                break;
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
                    let ended = manager.end_changes(weir_subscriptions::EndReason::Gap);
                    tracing::error!(
                        since,
                        first_retained,
                        subscriptions_told = ended,
                        "changes lost to retention before this gateway read them; its subscribers are told (CHANGES_LOST); continuing live"
                    );
                    last = None;
                }
                Err(BusError::SinceAhead {
                    since,
                    last: newest,
                }) => {
                    // The stream was deleted and created again: its sequences start over.
                    // Read the new stream from its start rather than skip what it has.
                    let ended = manager.end_changes(weir_subscriptions::EndReason::Gap);
                    tracing::error!(
                        since,
                        newest,
                        subscriptions_told = ended,
                        "the bus stream starts over (deleted and created again): changes it held that this gateway had not read are lost, and its subscribers are told (CHANGES_LOST); reading the new stream from its start"
                    );
                    last = Some(0);
                }
                Err(e @ BusError::StreamNotFound { .. }) => {
                    tracing::debug!(error = %e, "gateway feed waits for the bus stream to exist");
                }
                Err(e) => tracing::warn!(error = %e, "gateway feed cannot subscribe"),
            }
            failures += 1;
            tokio::select! {
                () = tokio::time::sleep(policy.delay(failures, 0.0)) => {}
                () = shutdown.cancelled() => return,
            }
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
