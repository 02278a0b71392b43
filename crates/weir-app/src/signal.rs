//! Shutdown on SIGTERM / Ctrl-C.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGINT (Ctrl-C) or SIGTERM. Spawns a task; call inside a runtime.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                () = token.cancelled() => return,
            }
        }
        #[cfg(not(unix))]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
                () = token.cancelled() => return,
            }
        }
        token.cancel();
    });
}
