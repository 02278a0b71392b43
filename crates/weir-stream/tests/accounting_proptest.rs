//! Property: with a sink that fails at random (transient errors, data errors with and without
//! the bad items' indexes) and inputs holding undecodable and unmappable rows,
//! every record read ends exactly one way (read = committed + dead-lettered), no record is
//! committed twice, the dead letters are exactly the bad records, and each names its record
//! (line and raw text).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Row, map_row};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use weir_stream::{
    Backoff, CancellationToken, MemoryDeadLetters, Pipeline, PipelineConfig, ReaderSource,
    RunOutcome, Sink, SinkBatch, SinkError, Stage,
};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Good,
    Poison,
    BadCsv,
    BadId,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        16 => Just(Kind::Good),
        2 => Just(Kind::Poison),
        1 => Just(Kind::BadCsv),
        1 => Just(Kind::BadId),
    ]
}

struct FlakySink {
    rng: Mutex<StdRng>,
    p_transient: f64,
    poison: BTreeSet<u64>,
    committed: Mutex<Vec<u64>>,
}

impl Sink for FlakySink {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        let (transient, with_indexes, delay) = {
            let mut rng = self.rng.lock().unwrap();
            (
                rng.random_bool(self.p_transient),
                rng.random_bool(0.5),
                rng.random_range(0..5u64),
            )
        };
        // Out-of-order completion across concurrent batches.
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if transient {
            return Err(SinkError::Transient("connection reset".into()));
        }
        let bad: Vec<usize> = (0..batch.items.len())
            .filter(|&i| self.poison.contains(&batch.items[i].item.id))
            .collect();
        if !bad.is_empty() {
            return Err(SinkError::Data {
                message: "constraint violated".into(),
                bad_items: with_indexes.then_some(bad),
            });
        }
        self.committed
            .lock()
            .unwrap()
            .extend(batch.items.iter().map(|s| s.item.id));
        Ok(())
    }
}

fn run_case(kinds: &[Kind], seed: u64, batch: usize, concurrency: usize, p: f64) {
    let mut input = String::from("id,name\n");
    let mut lines: BTreeMap<u64, (Kind, String)> = BTreeMap::new();
    let mut poison = BTreeSet::new();
    for (i, k) in kinds.iter().enumerate() {
        let id = i as u64;
        let line = match k {
            Kind::Good => format!("{id},n{id}"),
            Kind::Poison => {
                poison.insert(id);
                format!("{id},poison{id}")
            }
            Kind::BadCsv => format!("{id},a,b"),
            Kind::BadId => format!("x{id},n"),
        };
        input.push_str(&line);
        input.push('\n');
        lines.insert(id + 2, (*k, line));
    }
    let cfg = PipelineConfig {
        batch_records: batch,
        min_batch_records: 1,
        concurrency,
        retry: Backoff::default().with_max_attempts(30),
        ..Default::default()
    };
    let sink = Arc::new(FlakySink {
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        p_transient: p,
        poison,
        committed: Mutex::new(Vec::new()),
    });
    let dl = Arc::new(MemoryDeadLetters::new(10_000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let source = ReaderSource::new(Cursor::new(input.into_bytes()), "p.csv", &cfg);
    let summary = rt
        .block_on(
            Pipeline::new(cfg, map_row, sink.clone())
                .with_dead_letters(dl.clone())
                .run(source, CancellationToken::new()),
        )
        .unwrap();

    assert_eq!(summary.outcome, RunOutcome::Completed);
    assert_eq!(summary.records_read, kinds.len() as u64);
    assert_eq!(summary.records_uncommitted, 0);
    assert!(summary.is_balanced(), "{summary:?}");

    let committed = sink.committed.lock().unwrap().clone();
    let unique: BTreeSet<u64> = committed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        committed.len(),
        "a record was committed twice"
    );
    assert_eq!(summary.records_committed, committed.len() as u64);

    let letters = dl.letters();
    assert_eq!(summary.records_dead_lettered, letters.len() as u64);
    let mut dead_lines = BTreeSet::new();
    for l in &letters {
        let (k, raw) = lines.get(&l.line).expect("dead letter names an input line");
        assert_eq!(&l.raw, raw, "dead letter carries its record");
        let want = match k {
            Kind::Poison => Stage::Sink,
            Kind::BadCsv => Stage::Decode,
            Kind::BadId => Stage::Map,
            Kind::Good => panic!("good record dead-lettered: {l:?}"),
        };
        assert_eq!(l.stage, want);
        assert!(dead_lines.insert(l.line), "record dead-lettered twice");
    }
    for (line, (k, _)) in &lines {
        let id = line - 2;
        match k {
            Kind::Good => assert!(unique.contains(&id), "good record {id} lost"),
            _ => assert!(dead_lines.contains(line) && !unique.contains(&id)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_record_ends_exactly_one_way(
        kinds in prop::collection::vec(kind(), 0..300),
        seed in any::<u64>(),
        batch in 1usize..25,
        concurrency in 1usize..5,
        p in 0.0f64..0.4,
    ) {
        run_case(&kinds, seed, batch, concurrency, p);
    }
}
