//! The bus, connected in the background.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weir_bus::{Bus, BusConfig};
use weir_config::Backoff;

/// Holds the bus once it is connected. A service starts with an empty slot (not ready), a
/// background task connects with back-off, and work that needs the bus waits for it (or
/// fails fast with "not ready"): nothing is queued while the bus is away.
#[derive(Clone, Debug)]
pub struct BusSlot {
    tx: Arc<watch::Sender<Option<Bus>>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl BusSlot {
    /// A slot holding an already connected bus.
    pub fn ready(bus: Bus) -> Self {
        let (tx, _) = watch::channel(Some(bus));
        Self {
            tx: Arc::new(tx),
            last_error: Arc::new(Mutex::new(None)),
        }
    }

    /// An empty slot and a task that connects `config`, retrying every `retry` (doubling up to
    /// 5 s) until it works or `shutdown` fires. An invalid config is logged and never retried.
    pub fn connect_in_background(config: BusConfig, shutdown: CancellationToken) -> Self {
        let (tx, _) = watch::channel(None);
        let slot = Self {
            tx: Arc::new(tx),
            last_error: Arc::new(Mutex::new(Some("connecting".into()))),
        };
        let s = slot.clone();
        tokio::spawn(async move {
            let policy = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5));
            let mut failures = 0u32;
            loop {
                failures += 1;
                let delay = policy.delay(failures, 0.0);
                match Bus::connect(&config).await {
                    Ok(bus) => {
                        tracing::info!("bus connected");
                        *s.last_error.lock() = None;
                        s.tx.send_replace(Some(bus));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "bus not reachable");
                        let transient = e.is_transient();
                        *s.last_error.lock() = Some(e.to_string());
                        if !transient {
                            return;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
        slot
    }

    /// The bus, if connected.
    pub fn get(&self) -> Option<Bus> {
        self.tx.borrow().clone()
    }

    /// Waits for the bus; `None` when `stop` fires first.
    pub async fn wait(&self, stop: &CancellationToken) -> Option<Bus> {
        let mut rx = self.tx.subscribe();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|b| b.clone()),
            () = stop.cancelled() => None,
        }
    }

    /// `Ok` when the bus is connected and answers now; else why not.
    pub async fn check_ready(&self) -> Result<(), String> {
        let Some(bus) = self.get() else {
            return Err(self
                .last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "not connected".into()));
        };
        bus.check_ready().await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use weir_bus::InProcessConfig;

    use super::*;

    #[tokio::test]
    async fn in_process_bus_is_ready_at_once() {
        let slot = BusSlot::connect_in_background(
            BusConfig::InProcess(InProcessConfig::default()),
            CancellationToken::new(),
        );
        let stop = CancellationToken::new();
        assert!(slot.wait(&stop).await.is_some());
        assert_eq!(slot.check_ready().await, Ok(()));
    }

    #[tokio::test]
    async fn unreachable_nats_stays_not_ready_and_wait_ends_on_stop() {
        let shutdown = CancellationToken::new();
        let slot = BusSlot::connect_in_background(
            BusConfig::Nats(weir_bus::NatsBusConfig {
                // A port nothing listens on (reserved, discard).
                url: "nats://127.0.0.1:9".into(),
                connect_timeout: Duration::from_millis(300),
                ..Default::default()
            }),
            shutdown.clone(),
        );
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(slot.wait(&stop).await.is_none());
        assert!(slot.check_ready().await.is_err());
        assert!(slot.get().is_none());
        shutdown.cancel();
    }
}
