//! Bus throughput: publish + consume of change batches, in-process and on NATS JetStream.
//!
//! `cargo bench -p weir-bus --bench bus` (the NATS group needs the local NATS from
//! `./scripts/dev.sh up`). Each iteration publishes 100 batches of 100 events and reads
//! them back through one subscription.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use weir_bus::{Bus, BusConfig, ChangeBatch, InProcessConfig, NatsBusConfig};
use weir_events::fixture::{self, EventFixture, event};
use weir_events::{EntityKind, Operation};

const BATCHES: u64 = 100;
const EVENTS: usize = 100;

fn batch(id: &str) -> ChangeBatch {
    let events = (0..EVENTS)
        .map(|i| {
            event(
                EntityKind::Node,
                "Person",
                &format!("{id}-{i}"),
                Operation::Merged,
            )
            .with_property("name", serde_json::json!("someone"))
        })
        .collect();
    fixture::batch("bench", id, events)
}

async fn round(bus: &Bus, round: u64) {
    let mut sub = bus.subscribe_changes(None).await.unwrap();
    for i in 0..BATCHES {
        bus.publish_changes(batch(&format!("r{round}-b{i}")))
            .await
            .unwrap();
    }
    for _ in 0..BATCHES {
        black_box(sub.next().await.unwrap().unwrap());
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("bus_publish_consume");
    group.throughput(Throughput::Elements(BATCHES * EVENTS as u64));
    group.sample_size(10);

    let in_process = rt
        .block_on(Bus::connect(&BusConfig::InProcess(
            InProcessConfig::default(),
        )))
        .unwrap();
    let mut n = 0;
    group.bench_function("in_process", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(round(&in_process, n));
        })
    });

    let nats = rt.block_on(weir_test_support::nats());
    let stream = nats.name("BENCH");
    let bus = rt
        .block_on(Bus::connect(&BusConfig::Nats(NatsBusConfig {
            url: nats.settings.url.clone(),
            subject_prefix: stream.clone(),
            stream,
            storage: weir_bus::StorageKind::File,
            max_bytes: 256 << 20,
            ..NatsBusConfig::default()
        })))
        .unwrap();
    group.bench_function("nats_jetstream", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(round(&bus, n));
        })
    });
    group.finish();
    drop(nats);
}

criterion_group!(bus, benches);
criterion_main!(bus);
