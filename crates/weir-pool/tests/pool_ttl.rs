//! With short `idle_ttl` and `max_lifetime`, sessions on the real server are closed and
//! replaced, and counted by reason.

mod common;

use std::time::Duration;

use weir_pool::PoolConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_reaped_after_idle_ttl() {
    let (proxy, settings) = common::proxy().await;
    let cfg = PoolConfig {
        idle_ttl: Duration::from_millis(600),
        health_check_after_idle: Duration::from_millis(300),
        reaper_interval: Duration::from_millis(100),
        ..common::fast_config()
    };
    let pool = common::ready_pool(settings, cfg).await;
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    drop((a, b));
    assert_eq!(pool.status().idle, 2);
    let mut reaped = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if pool.status().size == 0 {
            reaped = true;
            break;
        }
    }
    // A reaped session leaves `size` just before its close is counted.
    let s = common::settled_status(&pool).await;
    assert!(reaped, "idle sessions not reaped: {s:?}");
    assert_eq!(s.sessions_closed.idle_ttl, 2, "{s:?}");
    // The reaper really closed the connections.
    for _ in 0..50 {
        if proxy.live() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.live(),
        0,
        "closed sessions must close their TCP connection"
    );
    // And the pool serves again with fresh sessions.
    assert_eq!(common::return_one(&pool).await.unwrap(), 1);
    assert_eq!(pool.status().sessions_created, 3);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_sessions_are_replaced_after_max_lifetime() {
    let (proxy, settings) = common::proxy().await;
    let cfg = PoolConfig {
        max_size: 2,
        max_lifetime: Duration::from_millis(800),
        max_lifetime_jitter: Duration::from_millis(200),
        reaper_interval: Duration::from_millis(100),
        ..common::fast_config()
    };
    let pool = common::ready_pool(settings, cfg).await;
    // Keep the sessions busy (never idle-expired) for 3 s.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(common::return_one(&pool).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = common::settled_status(&pool).await;
    assert!(s.sessions_closed.max_lifetime >= 2, "{s:?}");
    assert_eq!(s.sessions_closed.idle_ttl, 0);
    assert_eq!(s.sessions_closed.broken, 0);
    assert!(s.size <= 2);
    assert_eq!(
        s.sessions_created - s.sessions_closed.total(),
        s.size as u64,
        "{s:?}"
    );
    assert!(proxy.accepted() >= 3, "replacements opened new connections");
    pool.close().await;
    assert_eq!(
        pool.status().sessions_created,
        pool.status().sessions_closed.total()
    );
}
