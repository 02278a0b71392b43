//! 1,000 checkouts (and queries) cancelled at random points against the real server: nothing
//! leaks, nothing half used returns to the pool, every remaining session is healthy.

mod common;

use std::time::Duration;

use rand::Rng;
use weir_pool::{PoolConfig, query};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_cancellations_leak_nothing() {
    let max_size = 4;
    let cfg = PoolConfig {
        max_size,
        health_check_after_idle: Duration::from_millis(50),
        ..common::fast_config()
    };
    let pool = common::ready_pool(common::settings(), cfg).await;
    let baseline = pool.status();
    assert_eq!(baseline.in_use, 0);

    let mut rng = rand::rng();
    let mut completed = 0;
    let mut batch = Vec::new();
    for i in 0..1000 {
        let pool = pool.clone();
        let cancel_after = Duration::from_micros(rng.random_range(0..3_000));
        let kind = i % 4;
        batch.push(tokio::spawn(async move {
            let work = async {
                match kind {
                    0 => drop(pool.get().await?),
                    1 => {
                        pool.run(query("UNWIND range(1, 200) AS i RETURN i"))
                            .await?
                    }
                    2 => drop(
                        pool.execute(query("UNWIND range(1, 300) AS i RETURN i"))
                            .await?,
                    ),
                    _ => pool
                        .write_txn(vec![query("RETURN 1"), query("RETURN 2")])
                        .await
                        .map(drop)?,
                }
                Ok::<_, weir_pool::PoolError>(())
            };
            tokio::time::timeout(cancel_after, work).await.is_ok()
        }));
        if batch.len() == 8 {
            for t in batch.drain(..) {
                completed += usize::from(t.await.unwrap());
            }
        }
    }
    for t in batch {
        completed += usize::from(t.await.unwrap());
    }
    let s = common::settled_status(&pool).await;
    assert_eq!(s.in_use, 0, "{s:?}");
    assert!(s.size <= max_size, "{s:?}");
    assert_eq!(
        s.sessions_created - s.sessions_closed.total(),
        s.size as u64,
        "{s:?}"
    );
    assert!(completed < 1000, "some work must have been cancelled");

    // Every remaining session is healthy: hold all of them at once and query each.
    let mut held = Vec::new();
    for _ in 0..max_size {
        held.push(pool.get().await.unwrap());
    }
    for s in &mut held {
        let rows = s.execute(query("RETURN 42 AS x")).await.unwrap();
        assert_eq!(rows[0].get::<i64>("x").unwrap(), 42);
    }
    drop(held);
    let s = pool.status();
    assert_eq!((s.in_use, s.size), (0, max_size), "{s:?}");
    assert_eq!(s.circuit, weir_pool::CircuitState::Closed);
    pool.close().await;
}
