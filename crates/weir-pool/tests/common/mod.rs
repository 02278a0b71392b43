//! Helpers shared by the integration tests: a pool on the configured graph server, directly
//! or through a fault-injection proxy. They panic with a how-to-start message when the server
//! is not reachable: these tests never pass by skipping.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use weir_pool::{Pool, PoolConfig};
use weir_test_support::proxy::TcpProxy;
use weir_test_support::{GraphSettings, START_HINT};

/// Settings of the configured graph server.
pub fn settings() -> GraphSettings {
    weir_test_support::settings().graph
}

/// Short deadlines so fault tests finish quickly.
pub fn fast_config() -> PoolConfig {
    PoolConfig {
        max_size: 4,
        acquire_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(5),
        health_check_after_idle: Duration::from_secs(5),
        reaper_interval: Duration::from_millis(200),
        circuit_failure_threshold: 3,
        circuit_cool_down: Duration::from_secs(1),
        ..PoolConfig::default()
    }
}

/// A pool that has connected once; panics (with how to start the server) otherwise.
pub async fn ready_pool(settings: GraphSettings, config: PoolConfig) -> Pool {
    let uri = settings.uri.clone();
    let pool = Pool::new(settings, config).expect("valid pool config");
    assert!(
        pool.wait_ready(weir_test_support::CONNECT_TIMEOUT).await,
        "graph server not reachable at {uri} (status {:?})\n  -> {START_HINT}",
        pool.status()
    );
    pool
}

/// A proxy in front of the configured server, and settings that point at it.
pub async fn proxy() -> (TcpProxy, GraphSettings) {
    let mut s = settings();
    let proxy = TcpProxy::start(&weir_pool::nodelay::bolt_authority(&s.uri))
        .await
        .expect("start TCP proxy");
    s.uri = proxy.bolt_uri();
    (proxy, s)
}

/// Runs `RETURN 1` on the pool.
pub async fn return_one(pool: &Pool) -> Result<i64, weir_pool::PoolError> {
    let rows = pool.execute(weir_pool::query("RETURN 1 AS x")).await?;
    Ok(rows[0].get::<i64>("x").expect("x"))
}

/// The pool's status once every session that left it has been counted as closed.
///
/// `PoolStatus` is read field by field while the maintenance task works: a reaped session
/// leaves the pool's size before its close is counted (when it is dropped, on the reaper's
/// thread). This waits up to 2 s for `created - closed == size` and returns the last status;
/// callers still assert the invariant, so a pool that loses count fails.
pub async fn settled_status(pool: &Pool) -> weir_pool::PoolStatus {
    let mut s = pool.status();
    for _ in 0..100 {
        if s.sessions_created - s.sessions_closed.total() == s.size as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        s = pool.status();
    }
    s
}
