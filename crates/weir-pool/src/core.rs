//! The connection-agnostic pool core: bounded deadpool of sessions, expiry, reaper,
//! readiness and circuit breaker. Generic over a [`Connector`] so timing logic is tested with
//! tokio's paused clock and no server.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use weir_config::Backoff;

use crate::circuit::{Admission, Breaker, ProbeGuard};
use crate::stats::{CloseReason, Stats};
use crate::{PoolConfig, PoolError, PoolStatus, TimeoutStage};

/// Opens and checks one connection.
pub(crate) trait Connector: Send + Sync + 'static {
    type Conn: Send + Sync + 'static;
    /// Opens a connection and proves it works. The caller bounds it with `connect_timeout`.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, PoolError>> + Send;
    /// A cheap liveness check. The caller bounds it with `connect_timeout`.
    fn ping(&self, conn: &Self::Conn) -> impl Future<Output = Result<(), PoolError>> + Send;
}

/// One pooled session: the connection plus our own timestamps (tokio clock, so paused-clock
/// tests work). Its drop is counted under `close_reason`.
pub(crate) struct Slot<T> {
    pub(crate) conn: T,
    created: Instant,
    last_used: Instant,
    lifetime: Duration,
    close_reason: CloseReason,
    stats: Arc<Stats>,
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        self.stats.closed(self.close_reason);
    }
}

/// What to do with an idle session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fresh,
    Check,
    Expired(CloseReason),
}

pub(crate) fn verdict(
    created: Instant,
    last_used: Instant,
    lifetime: Duration,
    now: Instant,
    cfg: &PoolConfig,
) -> Verdict {
    if now.saturating_duration_since(created) >= lifetime {
        return Verdict::Expired(CloseReason::MaxLifetime);
    }
    let idle = now.saturating_duration_since(last_used);
    if idle >= cfg.idle_ttl {
        Verdict::Expired(CloseReason::IdleTtl)
    } else if idle >= cfg.health_check_after_idle {
        Verdict::Check
    } else {
        Verdict::Fresh
    }
}

impl<T> Slot<T> {
    fn verdict(&self, now: Instant, cfg: &PoolConfig) -> Verdict {
        verdict(self.created, self.last_used, self.lifetime, now, cfg)
    }
}

/// State shared by the pool handle, the manager, leases and the maintenance task.
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    pub(crate) stats: Arc<Stats>,
    pub(crate) breaker: Breaker,
    ready: watch::Sender<bool>,
}

pub(crate) struct Manager<C> {
    connector: C,
    shared: Arc<Shared>,
}

impl<C: Connector> managed::Manager for Manager<C> {
    type Type = Slot<C::Conn>;
    type Error = PoolError;

    async fn create(&self) -> Result<Self::Type, PoolError> {
        let cfg = &self.shared.config;
        let result =
            match tokio::time::timeout(cfg.connect_timeout, Box::pin(self.connector.connect()))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(PoolError::Timeout {
                    stage: TimeoutStage::Connect,
                    after: cfg.connect_timeout,
                }),
            };
        match result {
            Ok(conn) => {
                self.shared.stats.created();
                self.shared.breaker.success();
                self.shared
                    .ready
                    .send_if_modified(|r| !std::mem::replace(r, true));
                let jitter = if cfg.max_lifetime_jitter.is_zero() {
                    Duration::ZERO
                } else {
                    rand::rng().random_range(Duration::ZERO..=cfg.max_lifetime_jitter)
                };
                let now = Instant::now();
                Ok(Slot {
                    conn,
                    created: now,
                    last_used: now,
                    lifetime: cfg.max_lifetime - jitter,
                    close_reason: CloseReason::Shutdown,
                    stats: self.shared.stats.clone(),
                })
            }
            Err(e) => {
                self.shared.stats.connect_failure();
                // Before the first success, NotReady already fails calls fast.
                let ready = *self.shared.ready.borrow();
                if ready
                    && (e.is_connection_failure() || matches!(e, PoolError::Authentication { .. }))
                {
                    self.shared.breaker.failure();
                }
                Err(e)
            }
        }
    }

    async fn recycle(&self, slot: &mut Self::Type, _: &Metrics) -> RecycleResult<PoolError> {
        let cfg = &self.shared.config;
        match slot.verdict(Instant::now(), cfg) {
            Verdict::Fresh => Ok(()),
            Verdict::Expired(reason) => {
                slot.close_reason = reason;
                Err(RecycleError::message("expired"))
            }
            Verdict::Check => {
                // If this future is dropped mid-check, the slot is dropped as HealthCheck.
                slot.close_reason = CloseReason::HealthCheck;
                match tokio::time::timeout(
                    cfg.connect_timeout,
                    Box::pin(self.connector.ping(&slot.conn)),
                )
                .await
                {
                    Ok(Ok(())) => {
                        slot.close_reason = CloseReason::Shutdown;
                        slot.last_used = Instant::now();
                        Ok(())
                    }
                    Ok(Err(e)) => Err(RecycleError::Backend(e)),
                    Err(_) => Err(RecycleError::message("health check timed out")),
                }
            }
        }
    }
}

type DeadPool<C> = managed::Pool<Manager<C>>;

/// The pool core. Dropping the last handle cancels the maintenance task.
pub(crate) struct Core<C: Connector> {
    pool: DeadPool<C>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl<C: Connector> Drop for Core<C> {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.pool.close();
    }
}

impl<C: Connector> Core<C> {
    pub(crate) fn new(connector: C, config: PoolConfig) -> Result<Arc<Self>, PoolError> {
        config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| PoolError::NoRuntime)?;
        let shared = Arc::new(Shared {
            breaker: Breaker::new(config.circuit_failure_threshold, config.circuit_cool_down),
            stats: Arc::default(),
            ready: watch::Sender::new(false),
            config,
        });
        let pool = managed::Pool::builder(Manager {
            connector,
            shared: shared.clone(),
        })
        .max_size(shared.config.max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| PoolError::InvalidConfig {
            field: "max_size",
            reason: e.to_string(),
        })?;
        let core = Arc::new(Self {
            pool,
            shared,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let task = maintenance(Arc::downgrade(&core), core.cancel.clone());
        core.tracker.spawn_on(
            task.instrument(info_span!("weir_pool_maintenance")),
            &handle,
        );
        core.tracker.close();
        Ok(core)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn connector(&self) -> &C {
        &self.pool.manager().connector
    }

    pub(crate) fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    pub(crate) async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.ready.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }

    /// Checks out a session: readiness gate, circuit breaker, bounded wait.
    pub(crate) async fn checkout(&self) -> Result<Lease<C>, PoolError> {
        if self.pool.is_closed() {
            return Err(PoolError::Closed);
        }
        if !self.is_ready() {
            return Err(PoolError::NotReady);
        }
        let probe = match self.shared.breaker.admit() {
            Admission::Pass => None,
            Admission::Probe => Some(ProbeGuard::new(&self.shared.breaker)),
            Admission::Reject(retry_in) => {
                self.purge_idle(CloseReason::Broken);
                return Err(PoolError::CircuitOpen { retry_in });
            }
        };
        let mut lease = self.acquire().await?;
        if let Some(probe) = probe {
            lease.dirty = true;
            let cfg = &self.shared.config;
            let ping = Box::pin(self.connector().ping(&lease.slot().conn));
            match tokio::time::timeout(cfg.connect_timeout, ping).await {
                Ok(Ok(())) => {
                    lease.dirty = false;
                    probe.succeeded();
                }
                Ok(Err(e)) => {
                    probe.failed();
                    return Err(e);
                }
                Err(_) => {
                    probe.failed();
                    return Err(PoolError::Timeout {
                        stage: TimeoutStage::Connect,
                        after: cfg.connect_timeout,
                    });
                }
            }
        }
        Ok(lease)
    }

    /// Waits for a session within `acquire_timeout`, without the gates.
    async fn acquire(&self) -> Result<Lease<C>, PoolError> {
        let cfg = &self.shared.config;
        let start = Instant::now();
        let got = tokio::time::timeout(cfg.acquire_timeout, self.pool.get()).await;
        self.shared.stats.record_wait(start.elapsed());
        match got {
            Ok(Ok(obj)) => Ok(Lease {
                obj: Some(obj),
                dirty: false,
                shared: self.shared.clone(),
            }),
            Ok(Err(managed::PoolError::Backend(e))) => Err(e),
            Ok(Err(managed::PoolError::Closed)) => Err(PoolError::Closed),
            Ok(Err(managed::PoolError::Timeout(_))) | Err(_) => {
                self.shared.stats.acquire_timeout();
                Err(PoolError::Timeout {
                    stage: TimeoutStage::Acquire,
                    after: cfg.acquire_timeout,
                })
            }
            Ok(Err(e)) => Err(PoolError::Connection {
                source: neo4rs::Error::UnexpectedMessage(format!("pool: {e}")),
            }),
        }
    }

    /// Closes idle sessions for which `remove` says so, counting each under its reason.
    fn retain_idle(&self, mut remove: impl FnMut(&Slot<C::Conn>) -> Option<CloseReason>) -> usize {
        let removed = self.pool.retain(|slot, _| remove(slot).is_none());
        let n = removed.removed.len();
        for mut slot in removed.removed {
            slot.close_reason = remove(&slot).unwrap_or(CloseReason::Shutdown);
        }
        n
    }

    fn purge_idle(&self, reason: CloseReason) {
        if self.pool.status().available > 0 {
            self.retain_idle(|_| Some(reason));
        }
    }

    /// Closes idle sessions past their idle TTL or lifetime.
    pub(crate) fn reap(&self) -> usize {
        let now = Instant::now();
        let cfg = &self.shared.config;
        self.retain_idle(|slot| match slot.verdict(now, cfg) {
            Verdict::Expired(reason) => Some(reason),
            _ => None,
        })
    }

    /// Opens sessions until `min_idle` are idle (only when ready and the circuit is closed).
    async fn replenish(&self) {
        let cfg = &self.shared.config;
        let mut made = Vec::new();
        while self.pool.status().available + made.len() < cfg.min_idle
            && self.pool.status().size < cfg.max_size
            && self.shared.breaker.state().0 == crate::CircuitState::Closed
        {
            match self.acquire().await {
                Ok(lease) => made.push(lease),
                Err(e) => {
                    debug!(error = %e, "could not open a min_idle session");
                    break;
                }
            }
        }
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let s = self.pool.status();
        let (circuit, consecutive_failures) = self.shared.breaker.state();
        let (created, closed, wait, acquire_timeouts, connect_failures) =
            self.shared.stats.snapshot();
        PoolStatus {
            max_size: s.max_size,
            size: s.size,
            idle: s.available,
            in_use: s.size.saturating_sub(s.available),
            waiting: s.waiting,
            ready: self.is_ready(),
            closed: self.pool.is_closed(),
            circuit,
            consecutive_failures,
            circuit_opened_total: self.shared.breaker.opened_total(),
            sessions_created: created,
            sessions_closed: closed,
            connect_failures,
            acquire_timeouts,
            acquire_wait: wait,
        }
    }

    /// Stops the maintenance task, closes idle sessions (and each in-use one when returned)
    /// and makes every later call fail with `Closed`.
    pub(crate) async fn close(&self) {
        self.cancel.cancel();
        self.pool.close();
        self.tracker.wait().await;
    }

    /// Whether the maintenance task has stopped.
    pub(crate) fn maintenance_stopped(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// Background task: until ready, tries to connect (backing off up to `reaper_interval`);
/// then every `reaper_interval` closes expired idle sessions, purges idle sessions while the
/// circuit is open, and keeps `min_idle`. Holds only a weak reference between rounds.
async fn maintenance<C: Connector>(core: Weak<Core<C>>, cancel: CancellationToken) {
    // Connect attempts before the pool is ready: 100 ms doubling up to `reaper_interval`.
    let mut failed_connects = 0u32;
    loop {
        let wait = {
            let Some(core) = core.upgrade() else { return };
            let cfg = core.shared.config.clone();
            if !core.is_ready() {
                let attempt = async {
                    match core.acquire().await {
                        Ok(_lease) => debug!("graph server reachable: pool ready"),
                        Err(e) => debug!(error = %e, "graph server not reachable yet"),
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = attempt => {}
                }
                if core.is_ready() {
                    Duration::ZERO
                } else {
                    failed_connects = failed_connects.saturating_add(1);
                    Backoff::exponential(Duration::from_millis(100), cfg.reaper_interval)
                        .delay(failed_connects, 0.0)
                }
            } else {
                let reaped = core.reap();
                if reaped > 0 {
                    debug!(reaped, "closed expired idle graph sessions");
                }
                if core.shared.breaker.state().0 == crate::CircuitState::Open {
                    core.purge_idle(CloseReason::Broken);
                } else if cfg.min_idle > 0 {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = core.replenish() => {}
                    }
                }
                cfg.reaper_interval
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A checked-out session. Returned to the pool on drop unless it is dirty (an operation was
/// interrupted or failed at the connection level), in which case it is closed as broken.
pub(crate) struct Lease<C: Connector> {
    obj: Option<Object<Manager<C>>>,
    pub(crate) dirty: bool,
    pub(crate) shared: Arc<Shared>,
}

impl<C: Connector> Lease<C> {
    pub(crate) fn slot(&self) -> &Slot<C::Conn> {
        self.obj
            .as_ref()
            .expect("lease holds its object until drop")
    }

    /// Records the outcome of an operation on this session.
    pub(crate) fn finish<T>(&mut self, result: Result<T, PoolError>) -> Result<T, PoolError> {
        match &result {
            Ok(_) => {
                self.dirty = false;
                self.shared.breaker.success();
            }
            Err(e) => {
                if e.is_connection_failure() {
                    if self.shared.breaker.failure() {
                        warn!("graph circuit opened after repeated connection failures");
                    }
                } else if matches!(e, PoolError::Database { .. }) {
                    // The server answered: the connection works.
                    self.shared.breaker.success();
                }
                self.dirty = e.breaks_session();
            }
        }
        result
    }
}

impl<C: Connector> std::fmt::Debug for Lease<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl<C: Connector> Drop for Lease<C> {
    fn drop(&mut self) {
        let Some(obj) = self.obj.take() else { return };
        if self.dirty {
            let mut slot = Object::take(obj);
            slot.close_reason = CloseReason::Broken;
        } else {
            let mut obj = obj;
            obj.last_used = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests;
