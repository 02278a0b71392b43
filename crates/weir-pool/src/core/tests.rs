//! Timing logic of the core under tokio's paused clock, with a fake connector.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use super::*;
use crate::CircuitState;

#[derive(Default)]
struct FakeState {
    down: AtomicBool,
    hang: AtomicBool,
    connects: AtomicU64,
    pings: AtomicU64,
}

#[derive(Clone, Default)]
struct Fake(Arc<FakeState>);

impl Fake {
    fn down() -> Self {
        let f = Self::default();
        f.0.down.store(true, SeqCst);
        f
    }
    fn set_down(&self, down: bool) {
        self.0.down.store(down, SeqCst);
    }
}

fn refused() -> PoolError {
    PoolError::Connection {
        source: neo4rs::Error::ConnectionError,
    }
}

impl Connector for Fake {
    type Conn = u64;

    async fn connect(&self) -> Result<u64, PoolError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if self.0.hang.load(SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.0.down.load(SeqCst) {
            return Err(refused());
        }
        Ok(self.0.connects.fetch_add(1, SeqCst))
    }

    async fn ping(&self, _: &u64) -> Result<(), PoolError> {
        self.0.pings.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        if self.0.down.load(SeqCst) {
            return Err(refused());
        }
        Ok(())
    }
}

fn cfg() -> PoolConfig {
    PoolConfig {
        max_size: 3,
        idle_ttl: Duration::from_secs(20),
        max_lifetime: Duration::from_secs(600),
        max_lifetime_jitter: Duration::ZERO,
        acquire_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        query_timeout: Duration::from_secs(5),
        health_check_after_idle: Duration::from_secs(10),
        reaper_interval: Duration::from_secs(1),
        circuit_failure_threshold: 3,
        circuit_cool_down: Duration::from_secs(30),
        ..PoolConfig::default()
    }
}

async fn ready_core(fake: &Fake, cfg: PoolConfig) -> Arc<Core<Fake>> {
    let core = Core::new(fake.clone(), cfg).unwrap();
    assert!(core.wait_ready(Duration::from_secs(5)).await);
    core
}

/// Sessions alive according to the counters equal the pool's size.
fn assert_accounted(core: &Core<Fake>) {
    let s = core.status();
    assert_eq!(
        s.sessions_created - s.sessions_closed.total(),
        s.size as u64,
        "every session opened is either live or counted closed: {s:?}"
    );
}

#[test]
fn verdict_orders_lifetime_then_idle_then_check() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cfg();
        let t0 = Instant::now();
        let lt = Duration::from_secs(600);
        assert_eq!(verdict(t0, t0, lt, t0, &c), Verdict::Fresh);
        let t = t0 + Duration::from_secs(10);
        assert_eq!(verdict(t0, t0, lt, t, &c), Verdict::Check);
        let t = t0 + Duration::from_secs(20);
        assert_eq!(
            verdict(t0, t0, lt, t, &c),
            Verdict::Expired(CloseReason::IdleTtl)
        );
        let t = t0 + lt;
        assert_eq!(
            verdict(t0, t, lt, t, &c),
            Verdict::Expired(CloseReason::MaxLifetime)
        );
    });
}

#[tokio::test(start_paused = true)]
async fn not_ready_fails_fast_then_flips_by_itself() {
    let fake = Fake::down();
    let core = Core::new(fake.clone(), cfg()).unwrap();
    let t0 = Instant::now();
    assert!(matches!(core.checkout().await, Err(PoolError::NotReady)));
    assert_eq!(t0.elapsed(), Duration::ZERO, "NotReady must not wait");
    assert!(!core.wait_ready(Duration::from_secs(3)).await);
    assert!(!core.status().ready);
    fake.set_down(false);
    // The background task retries at most every reaper_interval.
    assert!(core.wait_ready(Duration::from_secs(2)).await);
    assert!(core.checkout().await.is_ok());
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn bounded_and_acquire_times_out() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    let a = core.checkout().await.unwrap();
    let b = core.checkout().await.unwrap();
    let c = core.checkout().await.unwrap();
    let waiter = {
        let core = core.clone();
        tokio::spawn(async move { core.checkout().await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = core.status();
    assert_eq!((s.size, s.in_use, s.idle, s.waiting), (3, 3, 0, 1));
    let t0 = Instant::now();
    let r = waiter.await.unwrap();
    assert!(
        matches!(
            r,
            Err(PoolError::Timeout {
                stage: TimeoutStage::Acquire,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(t0.elapsed() <= Duration::from_secs(2));
    assert_eq!(core.status().acquire_timeouts, 1);
    assert_eq!(core.status().size, 3);
    drop((a, b));
    // A waiter is served as soon as a session returns.
    let d = core.checkout().await.unwrap();
    assert_eq!(fake.0.connects.load(SeqCst), 3, "reused, not reopened");
    drop((c, d));
    let s = core.status();
    assert_eq!((s.size, s.idle, s.in_use), (3, 3, 0));
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn reaper_closes_idle_expired_sessions() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    let (a, b) = (
        core.checkout().await.unwrap(),
        core.checkout().await.unwrap(),
    );
    drop((a, b));
    assert_eq!(
        core.status().idle,
        3 - 1,
        "the readiness probe's session plus one"
    );
    tokio::time::sleep(Duration::from_secs(22)).await;
    let s = core.status();
    assert_eq!(s.size, 0, "{s:?}");
    assert_eq!(s.sessions_closed.idle_ttl, 2);
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_closes_busy_sessions_on_checkout_and_reaper() {
    let fake = Fake::default();
    let c = PoolConfig {
        max_size: 1,
        max_lifetime: Duration::from_secs(30),
        max_lifetime_jitter: Duration::from_secs(5),
        ..cfg()
    };
    let core = ready_core(&fake, c).await;
    // Used every second: never idle-expired, but replaced within [25 s, 30 s] of its birth.
    let first = core.checkout().await.unwrap().slot().conn;
    let born = Instant::now();
    let mut replaced_after = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let id = core.checkout().await.unwrap().slot().conn;
        if id != first && replaced_after.is_none() {
            replaced_after = Some(born.elapsed());
        }
    }
    let after = replaced_after.expect("session replaced");
    assert!(
        after >= Duration::from_secs(25) && after <= Duration::from_secs(31),
        "{after:?}"
    );
    let s = core.status();
    assert!(s.sessions_closed.max_lifetime >= 1, "{s:?}");
    assert_eq!(s.sessions_closed.idle_ttl, 0);
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn health_check_after_idle_discards_dead_session() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    drop(core.checkout().await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(core.checkout().await.unwrap());
    assert_eq!(
        fake.0.pings.load(SeqCst),
        0,
        "fresh sessions are not pinged"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    drop(core.checkout().await.unwrap());
    assert_eq!(
        fake.0.pings.load(SeqCst),
        1,
        "idle past the threshold: pinged"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    fake.set_down(true);
    let r = core.checkout().await;
    assert!(matches!(r, Err(PoolError::Connection { .. })), "{r:?}");
    let s = core.status();
    assert_eq!(s.sessions_closed.health_check, 1, "{s:?}");
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_fails_fast_and_recovers_by_probe() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    let mut held = core.checkout().await.unwrap();
    fake.set_down(true);
    // A query on a held session fails at the connection level: discarded, counted.
    let _ = held.finish::<()>(Err(refused()));
    drop(held);
    assert_eq!(core.status().sessions_closed.broken, 1);
    for _ in 0..2 {
        assert!(matches!(
            core.checkout().await,
            Err(PoolError::Connection { .. })
        ));
    }
    assert_eq!(core.status().circuit, CircuitState::Open);
    let connects_before = fake.0.connects.load(SeqCst);
    let t0 = Instant::now();
    for _ in 0..100 {
        assert!(matches!(
            core.checkout().await,
            Err(PoolError::CircuitOpen { .. })
        ));
    }
    assert_eq!(t0.elapsed(), Duration::ZERO, "open circuit fails fast");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(core.status().circuit, CircuitState::HalfOpen);
    // Probe fails: open again.
    assert!(core.checkout().await.is_err());
    assert_eq!(core.status().circuit, CircuitState::Open);
    assert_eq!(core.status().circuit_opened_total, 2);
    fake.set_down(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(core.checkout().await.is_ok(), "probe succeeds");
    assert_eq!(core.status().circuit, CircuitState::Closed);
    assert_eq!(fake.0.connects.load(SeqCst), connects_before + 1);
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_counts_towards_the_circuit() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    core.purge_idle(CloseReason::Shutdown);
    fake.0.hang.store(true, SeqCst);
    for _ in 0..3 {
        let r = core.checkout().await;
        assert!(
            matches!(
                r,
                Err(PoolError::Timeout {
                    stage: TimeoutStage::Connect,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    assert_eq!(core.status().circuit, CircuitState::Open);
    assert_eq!(core.status().connect_failures, 3);
}

#[tokio::test(start_paused = true)]
async fn cancelled_checkouts_and_uses_leak_nothing() {
    let fake = Fake::default();
    let core = ready_core(
        &fake,
        PoolConfig {
            health_check_after_idle: Duration::from_millis(5),
            ..cfg()
        },
    )
    .await;
    let mut rng = rand::rng();
    for i in 0..1000u64 {
        let core2 = core.clone();
        let cancel_after = Duration::from_micros(rng.random_range(0..15_000));
        let job = async move {
            let mut lease = core2.checkout().await?;
            lease.dirty = true; // "mid-query"
            tokio::time::sleep(Duration::from_millis(2)).await;
            lease.finish(Ok(()))
        };
        let _ = tokio::time::timeout(cancel_after, job).await;
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
    }
    let s = core.status();
    assert_eq!(s.in_use, 0, "{s:?}");
    assert!(s.size <= 3);
    assert_accounted(&core);
    assert!(s.sessions_closed.broken > 0, "some were cancelled mid-use");
    // Every remaining session is healthy: each checkout passes a ping.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(core.checkout().await.unwrap());
    }
    assert_eq!(core.status().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn dirty_lease_is_discarded_not_recycled() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    let mut l = core.checkout().await.unwrap();
    let id = l.slot().conn;
    l.dirty = true;
    drop(l);
    assert_eq!(core.status().sessions_closed.broken, 1);
    assert_eq!(core.status().size, 0);
    let l = core.checkout().await.unwrap();
    assert_ne!(l.slot().conn, id);
    drop(l);
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn min_idle_is_kept_by_the_reaper() {
    let fake = Fake::default();
    let core = ready_core(
        &fake,
        PoolConfig {
            min_idle: 2,
            ..cfg()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(core.status().idle, 2);
    // Expired ones are replaced.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let s = core.status();
    assert_eq!(s.idle, 2, "{s:?}");
    assert!(s.sessions_closed.idle_ttl >= 2);
    assert_accounted(&core);
}

#[tokio::test(start_paused = true)]
async fn close_stops_the_reaper_and_rejects_calls() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    let held = core.checkout().await.unwrap();
    drop(core.checkout().await.unwrap());
    assert!(!core.maintenance_stopped());
    core.close().await;
    assert!(core.maintenance_stopped());
    assert!(matches!(core.checkout().await, Err(PoolError::Closed)));
    drop(held);
    let s = core.status();
    assert!(s.closed);
    assert_eq!(s.size, 0);
    assert_eq!(s.sessions_closed.shutdown, 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_task() {
    let fake = Fake::default();
    let core = ready_core(&fake, cfg()).await;
    let tracker = core.tracker.clone();
    drop(core);
    tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .expect("maintenance task ends when the pool is dropped");
}
