//! `max_size + k` concurrent checkouts against the real server: never more than `max_size`
//! sessions (checked on the pool and on the wire, through a proxy that counts live TCP
//! connections), the extra callers wait, and with a short `acquire_timeout` they time out.

mod common;

use std::time::Duration;

use weir_pool::{PoolConfig, PoolError, TimeoutStage, query};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_checkouts_wait_then_time_out_and_the_bound_holds_on_the_wire() {
    let (proxy, settings) = common::proxy().await;
    let max_size = 4;
    let k = 6;
    let cfg = PoolConfig {
        max_size,
        acquire_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(1500),
        ..common::fast_config()
    };
    let pool = common::ready_pool(settings, cfg).await;

    // max_size holders keep their session busy; k more callers wait behind them.
    let release = tokio::sync::Semaphore::new(0);
    let release = std::sync::Arc::new(release);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..max_size + k {
        let pool = pool.clone();
        let release = release.clone();
        tasks.spawn(async move {
            let mut s = pool.get().await?;
            s.run(query("RETURN $i").param("i", i as i64)).await?;
            let _permit = release.acquire().await.expect("semaphore open");
            Ok::<_, PoolError>(())
        });
    }
    // Let the holders connect and the others queue.
    let mut waited = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = pool.status();
        assert!(s.size <= max_size, "{s:?}");
        assert!(
            proxy.live() <= max_size as u64,
            "live TCP connections {}",
            proxy.live()
        );
        if s.in_use == max_size && s.waiting == k {
            waited = true;
            break;
        }
    }
    assert!(waited, "extra callers must wait: {:?}", pool.status());

    // The waiters time out while the holders keep their sessions: the first k to finish.
    let mut timeouts = 0;
    for _ in 0..k {
        let r = tokio::time::timeout(Duration::from_secs(10), tasks.join_next())
            .await
            .expect("waiters must time out, not hang")
            .expect("task")
            .unwrap();
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
        timeouts += 1;
    }
    assert_eq!(timeouts, k);
    assert_eq!(pool.status().acquire_timeouts, k as u64);
    assert!(proxy.live() <= max_size as u64);
    release.add_permits(max_size);
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let s = pool.status();
    assert_eq!((s.size, s.in_use, s.idle), (max_size, 0, max_size), "{s:?}");
    assert_eq!(s.sessions_created, max_size as u64);
    assert!(s.acquire_wait.count >= (max_size + k) as u64);
    pool.close().await;
}
