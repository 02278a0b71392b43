#![allow(missing_docs)]
//! Pool overhead against the same server (needs the graph server: `./scripts/dev.sh up`).
//!
//! - `checkout_return`: `Pool::get()` + drop against a bare deadpool pool holding the same
//!   kind of session (one `neo4rs::Graph` with one connection), both warmed with one session.
//! - `query_round_trip`: `RETURN 1` through the pool against neo4rs's own `Graph` with one
//!   connection.
//!
//! Run: `cargo bench -p weir-pool --bench pool -- --warm-up-time 1 --measurement-time 3`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use deadpool::managed::{self, Metrics, RecycleResult};
use weir_pool::{Pool, PoolConfig, query};

struct BareManager(neo4rs::Config);

impl managed::Manager for BareManager {
    type Type = neo4rs::Graph;
    type Error = neo4rs::Error;

    async fn create(&self) -> Result<neo4rs::Graph, neo4rs::Error> {
        // Boxed like the pool's own connect, so both `get()` futures stay small.
        Box::pin(async {
            let g = neo4rs::Graph::connect(self.0.clone())?;
            g.run(query("RETURN 1")).await?;
            Ok(g)
        })
        .await
    }

    async fn recycle(&self, _: &mut neo4rs::Graph, _: &Metrics) -> RecycleResult<neo4rs::Error> {
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let settings = weir_test_support::settings().graph;
    let neo_config = weir_test_support::graph_config(&settings, 1);
    let (pool, bare, graph) = rt.block_on(async {
        let pool = Pool::new(settings.clone(), PoolConfig::default()).expect("pool");
        assert!(
            pool.wait_ready(Duration::from_secs(15)).await,
            "graph server not reachable at {}\n  -> {}",
            settings.uri,
            weir_test_support::START_HINT
        );
        let bare: managed::Pool<BareManager> =
            managed::Pool::builder(BareManager(neo_config.clone()))
                .max_size(20)
                .build()
                .expect("bare pool");
        drop(bare.get().await.expect("bare session"));
        let graph = neo4rs::Graph::connect(neo_config).expect("graph");
        graph.run(query("RETURN 1")).await.expect("graph reachable");
        // Warm the server (its JIT) first, so the first benchmark is not measured cold.
        for _ in 0..5_000 {
            graph.run(query("RETURN 1 AS x")).await.expect("warm-up");
            pool.run(query("RETURN 1 AS x")).await.expect("warm-up");
        }
        (pool, bare, graph)
    });

    let mut g = c.benchmark_group("checkout_return");
    g.bench_function("weir_pool", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(pool.get().await.expect("session")) });
    });
    g.bench_function("bare_deadpool", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(bare.get().await.expect("session")) });
    });
    g.finish();

    let mut g = c.benchmark_group("query_round_trip");
    g.bench_function("weir_pool", |b| {
        b.to_async(&rt).iter(|| async {
            let rows = pool.execute(query("RETURN 1 AS x")).await.expect("query");
            assert_eq!(rows.len(), 1);
        });
    });
    g.bench_function("neo4rs_graph", |b| {
        b.to_async(&rt).iter(|| async {
            let mut rows = graph.execute(query("RETURN 1 AS x")).await.expect("query");
            let mut n = 0;
            while rows.next().await.expect("row").is_some() {
                n += 1;
            }
            assert_eq!(n, 1);
        });
    });
    g.finish();
    rt.block_on(pool.close());
}

criterion_group!(pool_benches, benches);
criterion_main!(pool_benches);
