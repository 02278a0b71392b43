//! Faults injected with a TCP proxy in front of the real server: queries before the server is
//! reachable, the server stopped mid-use, the server hanging. Calls fail fast, no task hangs
//! past its deadlines, and the pool recovers by itself when the server is back.

mod common;

use std::time::Duration;

use weir_pool::{CircuitState, PoolConfig, PoolError, TimeoutStage, query};

/// Longest any single call may take under `fast_config`-style deadlines.
fn call_deadline(cfg: &PoolConfig) -> Duration {
    cfg.acquire_timeout + cfg.query_timeout + Duration::from_secs(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_before_reachable_gets_not_ready_then_readiness_flips_by_itself() {
    let (proxy, settings) = common::proxy().await;
    proxy.cut();
    let pool = weir_pool::Pool::new(settings, common::fast_config()).unwrap();
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(1), pool.run(query("RETURN 1")))
            .await
            .expect("NotReady must be immediate, not a hang");
        assert!(matches!(r, Err(PoolError::NotReady)), "{r:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!pool.ready());
    assert!(!pool.wait_ready(Duration::from_millis(500)).await);
    let s = pool.status();
    assert_eq!((s.size, s.waiting, s.sessions_created), (0, 0, 0), "{s:?}");
    assert!(
        s.connect_failures >= 1,
        "the background task keeps trying: {s:?}"
    );
    assert_eq!(
        s.circuit,
        CircuitState::Closed,
        "NotReady, not circuit, before first connect"
    );

    proxy.restore().await.unwrap();
    assert!(
        pool.wait_ready(Duration::from_secs(10)).await,
        "readiness must flip without any call: {:?}",
        pool.status()
    );
    assert_eq!(common::return_one(&pool).await.unwrap(), 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_use_fails_fast_then_recovers_without_restart() {
    let (proxy, settings) = common::proxy().await;
    let cfg = common::fast_config();
    let deadline = call_deadline(&cfg);
    let pool = common::ready_pool(settings, cfg.clone()).await;
    // Warm: several sessions idle, one held mid-use.
    let warm: Vec<_> = futures::future::join_all((0..3).map(|_| pool.get())).await;
    drop(warm);
    let mut held = pool.get().await.unwrap();
    held.run(query("RETURN 1")).await.unwrap();

    proxy.cut();
    // The held session fails at the connection level and is discarded.
    let r = tokio::time::timeout(deadline, held.run(query("RETURN 1")))
        .await
        .expect("no hang past deadlines");
    assert!(matches!(r, Err(ref e) if e.is_transient()), "{r:?}");
    drop(held);

    // Concurrent callers: every call ends within its deadline; the circuit opens and then
    // calls fail fast with CircuitOpen.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut kinds = Vec::new();
            for _ in 0..10 {
                let r = tokio::time::timeout(deadline, pool.run(query("RETURN 1"))).await;
                let r = r.expect("a call hung past its deadlines");
                kinds.push(r.map_err(|e| matches!(e, PoolError::CircuitOpen { .. })));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            kinds
        }));
    }
    let mut open = 0;
    for t in tasks {
        for k in t.await.unwrap() {
            assert!(k.is_err(), "no call can succeed while the server is cut");
            open += usize::from(k == Err(true));
        }
    }
    assert!(open > 0, "the circuit must open and fail calls fast");
    let s = pool.status();
    assert!(s.circuit_opened_total >= 1, "{s:?}");
    assert_eq!(s.in_use, 0, "{s:?}");
    assert_eq!(s.idle, 0, "dead idle sessions are purged: {s:?}");

    proxy.restore().await.unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if common::return_one(&pool).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "pool must recover by itself: {:?}",
        pool.status()
    );
    let s = common::settled_status(&pool).await;
    assert_eq!(s.circuit, CircuitState::Closed, "{s:?}");
    assert_eq!(
        s.sessions_created - s.sessions_closed.total(),
        s.size as u64,
        "{s:?}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_server_hits_query_and_connect_deadlines() {
    let (proxy, settings) = common::proxy().await;
    let cfg = PoolConfig {
        max_size: 2,
        acquire_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(800),
        query_timeout: Duration::from_millis(800),
        circuit_failure_threshold: 3,
        ..common::fast_config()
    };
    let deadline = call_deadline(&cfg);
    let (max_size, threshold) = (cfg.max_size, cfg.circuit_failure_threshold as usize);
    let pool = common::ready_pool(settings, cfg).await;
    assert_eq!(common::return_one(&pool).await.unwrap(), 1);

    proxy.blackhole();
    let r = tokio::time::timeout(deadline, pool.run(query("RETURN 1")))
        .await
        .expect("query deadline must fire");
    assert!(
        matches!(
            r,
            Err(PoolError::Timeout {
                stage: TimeoutStage::Query,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        pool.status().sessions_closed.broken,
        1,
        "timed-out session discarded"
    );
    // Another session opened earlier may still sit idle in the pool: it fails its query the
    // same way and is discarded. After it, a checkout has to connect through the black hole
    // and hits the connect deadline. Every one of these failures counts for the breaker.
    let mut failures = 1;
    let r = loop {
        let r = tokio::time::timeout(deadline, pool.run(query("RETURN 1")))
            .await
            .expect("query or connect deadline must fire");
        failures += 1;
        let query_timeout = matches!(
            r,
            Err(PoolError::Timeout {
                stage: TimeoutStage::Query,
                ..
            })
        );
        if query_timeout && failures < max_size + 1 {
            continue;
        }
        break r;
    };
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
    // Connect deadlines until the breaker's threshold of consecutive failures is reached.
    while failures < threshold {
        let r = tokio::time::timeout(deadline, pool.run(query("RETURN 1")))
            .await
            .expect("connect deadline must fire");
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
        failures += 1;
    }
    assert_eq!(pool.status().circuit, CircuitState::Open);
    let r = pool.run(query("RETURN 1")).await;
    assert!(matches!(r, Err(PoolError::CircuitOpen { .. })), "{r:?}");

    proxy.restore().await.unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if common::return_one(&pool).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "{:?}", pool.status());
    assert!(pool.status().in_use == 0);
    pool.close().await;
}

/// One session through a proxy the test can cut; transactions retried up to 5 times with a
/// 400 ms–1 s backoff (long enough for the proxy to come back).
async fn retrying_pool() -> (weir_test_support::proxy::TcpProxy, weir_pool::Pool) {
    let (proxy, settings) = common::proxy().await;
    let cfg = PoolConfig {
        max_size: 1,
        txn_max_attempts: 5,
        txn_backoff_min: Duration::from_millis(400),
        txn_backoff_max: Duration::from_secs(1),
        ..common::fast_config()
    };
    (proxy, common::ready_pool(settings, cfg).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_txn_retries_a_connection_failure_with_backoff() {
    let (proxy, pool) = retrying_pool().await;
    assert_eq!(common::return_one(&pool).await.unwrap(), 1);
    proxy.cut();
    let restore = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.restore().await.unwrap();
    };
    let (attempts, ()) = tokio::join!(
        pool.write_txn(vec![query("RETURN 1"), query("RETURN 2")]),
        restore
    );
    let attempts = attempts.expect("retried after the connection failure");
    assert!(attempts >= 2, "first attempt must have failed: {attempts}");
    assert!(pool.status().sessions_closed.broken >= 1);

    // Data errors are not retried.
    let e = pool.write_txn(vec![query("NOT CYPHER")]).await.unwrap_err();
    assert!(e.is_data_error(), "{e:?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_txn_owned_sends_its_statements_once_and_rebuilds_them_for_a_retry() {
    let (proxy, pool) = retrying_pool().await;
    let rebuilds = std::sync::atomic::AtomicU32::new(0);
    let statements = || vec![query("RETURN 1"), query("RETURN 2")];
    let rebuild = || {
        rebuilds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        statements()
    };
    // No failure: the first statements are the only ones.
    assert_eq!(
        pool.write_txn_owned(statements(), rebuild).await.unwrap(),
        1
    );
    assert_eq!(rebuilds.load(std::sync::atomic::Ordering::SeqCst), 0);

    proxy.cut();
    let restore = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.restore().await.unwrap();
    };
    let (attempts, ()) = tokio::join!(pool.write_txn_owned(statements(), rebuild), restore);
    let attempts = attempts.expect("retried after the connection failure");
    assert!(attempts >= 2, "first attempt must have failed: {attempts}");
    // Every retry had statements built afresh (the first ones went to the driver).
    assert_eq!(
        rebuilds.load(std::sync::atomic::Ordering::SeqCst),
        attempts - 1
    );
    pool.close().await;
}
