//! The pipeline's own overhead: decode CSV rows of about 100 bytes -> map -> batch -> null
//! sink, on a single-threaded runtime (one core). Reports records/s.
//!
//! Run: `cargo bench -p weir-stream --bench pipeline`

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_stream::{
    CancellationToken, Decoded, DecodedRecord, MapError, NullSink, Pipeline, PipelineConfig,
    ReaderSource,
};

const ROWS: u64 = 200_000;

/// What the benchmark's mapper builds: typical node properties.
#[derive(Debug)]
struct Person {
    id: u64,
    name: String,
    score: f64,
    active: bool,
}

fn map_person(rec: &DecodedRecord<'_>) -> Result<Person, MapError> {
    let Decoded::Csv(row) = &rec.value else {
        return Err(MapError::record("not CSV"));
    };
    let field = |i: usize, name: &str| row.field(i).ok_or_else(|| MapError::field(name, "missing"));
    Ok(Person {
        id: field(0, "id")?
            .parse()
            .map_err(|e: std::num::ParseIntError| MapError::field("id", e.to_string()))?,
        name: field(1, "name")?.to_owned(),
        score: field(2, "score")?
            .parse()
            .map_err(|e: std::num::ParseFloatError| MapError::field("score", e.to_string()))?,
        active: field(4, "active")? == "true",
    })
}

fn input() -> Bytes {
    let mut s = String::from("id,name,score,email,active,city,joined\n");
    for i in 0..ROWS {
        s.push_str(&format!(
            "{i},person-{i:08},{}.5,person{i}@mail.example.org,{},Springfield-North-District,2024-01-{:02}\n",
            i % 1000,
            i % 2 == 0,
            i % 28 + 1
        ));
    }
    Bytes::from(s)
}

fn bench(c: &mut Criterion) {
    let data = input();
    let avg = data.len() as f64 / ROWS as f64;
    eprintln!(
        "input: {ROWS} rows, {} bytes, {avg:.1} bytes/row",
        data.len()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(ROWS));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("csv_decode_map_batch_null_sink", |b| {
        b.iter(|| {
            rt.block_on(async {
                let cfg = PipelineConfig::default();
                let src = ReaderSource::new(Cursor::new(data.clone()), "bench.csv", &cfg);
                let s = Pipeline::new(cfg, map_person, NullSink::<Person>::new())
                    .run(src, CancellationToken::new())
                    .await
                    .unwrap();
                assert_eq!(s.records_committed, ROWS);
            })
        })
    });
    g.finish();
    // Keep the fields "used" for the compiler: the sink drops items unread.
    let p = Person {
        id: 0,
        name: String::new(),
        score: 0.0,
        active: false,
    };
    std::hint::black_box((p.id, p.name, p.score, p.active));
}

criterion_group!(benches, bench);
criterion_main!(benches);
