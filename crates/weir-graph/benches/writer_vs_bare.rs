//! `GraphWriter` (mapping + dedup + sort + one transaction per batch) against a bare neo4rs
//! `UNWIND $rows AS row MERGE ... SET ...` loop over pre-parsed rows: same server, same data,
//! same batch size, same concurrency. Needs the graph server (`./scripts/dev.sh up`).
//!
//! `cargo bench -p weir-graph --bench writer_vs_bare`
//! (WEIR_BENCH_ROWS, WEIR_BENCH_BATCH, WEIR_BENCH_CONCURRENCY override 20000 / 1000 / 4).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use neo4rs::{BoltList, BoltMap, BoltType, Query};
use weir_events::SourcePosition;
use weir_graph::{Batch, GraphWriter, Mapping, NoopPublisher, WriterConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench(c: &mut Criterion) {
    let rows = env("WEIR_BENCH_ROWS", 20_000);
    let batch = env("WEIR_BENCH_BATCH", 1000);
    let conc = env("WEIR_BENCH_CONCURRENCY", 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = weir_test_support::settings().graph;
    let _probe = rt
        .block_on(weir_test_support::try_connect_graph(&settings))
        .unwrap_or_else(|m| panic!("{m}"));
    let graph =
        neo4rs::Graph::connect(weir_test_support::graph_config(&settings, conc + 1)).unwrap();
    let ns = weir_test_support::unique_namespace();
    let mapping = Arc::new(
        Mapping::parse(
            r#"
[[nodes]]
label = "BenchPerson"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }, { name = "age", type = "int" }]
"#,
            "bench.toml",
        )
        .unwrap()
        .with_label_prefix(&format!("{ns}_"))
        .unwrap(),
    );
    let label = mapping.nodes[0].label.as_str().to_owned();
    let writer = Arc::new(GraphWriter::new(
        graph.clone(),
        mapping.clone(),
        Arc::new(NoopPublisher),
        WriterConfig::default(),
    ));
    rt.block_on(writer.ensure_schema()).unwrap();

    // Pre-parsed rows for both sides.
    let records: Vec<Vec<(String, String)>> = (0..rows)
        .map(|i| {
            vec![
                ("id".to_owned(), i.to_string()),
                ("name".to_owned(), format!("P{i}")),
                ("age".to_owned(), (i % 90).to_string()),
            ]
        })
        .collect();
    let batches: Vec<Arc<Batch>> = records
        .chunks(batch)
        .enumerate()
        .map(|(b, chunk)| {
            Arc::new(Batch {
                id: b as u64,
                records: chunk
                    .iter()
                    .map(|r| {
                        (
                            SourcePosition::default(),
                            mapping.map_record(r.as_slice()).unwrap(),
                        )
                    })
                    .collect(),
            })
        })
        .collect();
    let bare: Vec<Arc<BoltList>> = (0..rows)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            let mut l = BoltList::new();
            for i in chunk {
                let mut m = BoltMap::new();
                m.put("id".into(), BoltType::from(*i as i64));
                let mut p = BoltMap::new();
                p.put("name".into(), BoltType::from(format!("P{i}")));
                p.put("age".into(), BoltType::from((*i % 90) as i64));
                m.put("p".into(), BoltType::Map(p));
                l.push(BoltType::Map(m));
            }
            Arc::new(l)
        })
        .collect();
    let bare_cypher =
        format!("UNWIND $rows AS row MERGE (n:`{label}` {{id: row.id}}) SET n += row.p");

    let mut g = c.benchmark_group("merge_nodes");
    g.sample_size(10);
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function(format!("bare_neo4rs/{rows}rows/b{batch}/c{conc}"), |b| {
        b.to_async(&rt).iter(|| {
            let (graph, bare, q) = (graph.clone(), bare.clone(), bare_cypher.clone());
            async move {
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for _ in 0..conc {
                    let (graph, bare, q, next) =
                        (graph.clone(), bare.clone(), q.clone(), next.clone());
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(rows) = bare.get(i) else { break };
                            // Retry like any loader must: concurrent MERGEs can conflict.
                            let mut attempt = 0;
                            loop {
                                attempt += 1;
                                let r = async {
                                    let mut txn = graph.start_txn().await?;
                                    txn.run(
                                        Query::new(q.clone())
                                            .param("rows", BoltType::List((**rows).clone())),
                                    )
                                    .await?;
                                    txn.commit().await
                                }
                                .await;
                                match r {
                                    Ok(()) => break,
                                    Err(_) if attempt < 10 => {
                                        tokio::time::sleep(std::time::Duration::from_millis(50))
                                            .await;
                                    }
                                    Err(e) => panic!("bare loop: {e}"),
                                }
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
        })
    });
    g.bench_function(format!("graph_writer/{rows}rows/b{batch}/c{conc}"), |b| {
        b.to_async(&rt).iter(|| {
            let (writer, batches) = (writer.clone(), batches.clone());
            async move {
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for _ in 0..conc {
                    let (writer, batches, next) = (writer.clone(), batches.clone(), next.clone());
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(batch) = batches.get(i) else { break };
                            writer.write(batch).await.unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
        })
    });
    g.finish();
    // Clean up (MATCH ... DETACH DELETE in slices to keep transactions small).
    rt.block_on(async {
        loop {
            let q = format!(
                "MATCH (n:`{label}`) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*) AS c"
            );
            let mut r = graph.execute(neo4rs::query(&q)).await.unwrap();
            let c = r
                .next()
                .await
                .unwrap()
                .and_then(|row| row.get::<i64>("c").ok())
                .unwrap_or(0);
            if c == 0 {
                break;
            }
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
