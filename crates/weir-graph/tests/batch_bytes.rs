//! The pipeline's default byte cap per batch must not cut a default-sized batch of ordinary
//! records: `weir ingest --batch-size 1000` on the people example has to send 1000-row
//! transactions. (With a 1 MiB cap it sent about 490 rows per transaction, twice the
//! transactions, and ingest ran at about 0.6× a bare loop with 1000-row batches.)

use std::path::Path;
use std::sync::Arc;

use weir_graph::{GraphMapper, Mapping};
use weir_stream::{Decoder, Format, Mapper, PipelineConfig, Position};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/people")
        .join(name)
}

#[test]
fn a_default_batch_of_people_rows_fits_the_default_byte_cap() {
    let mapping = Arc::new(Mapping::from_path(&example("mapping.toml")).unwrap());
    let mapper = GraphMapper::new(mapping);
    let text = std::fs::read_to_string(example("people.csv")).unwrap();
    let mut lines = text.lines();
    let mut decoder = Decoder::new(Format::csv());
    decoder
        .set_header(lines.next().unwrap().as_bytes())
        .unwrap();
    let rows: Vec<&str> = lines.collect();
    let cfg = PipelineConfig::default();
    assert!(rows.len() >= cfg.batch_records, "{} rows", rows.len());
    let mut bytes = 0usize;
    for (i, row) in rows.iter().take(cfg.batch_records).enumerate() {
        let pos = Position {
            file: 0,
            line: i as u64 + 2,
            offset: 0,
        };
        let decoded = decoder.decode(pos, row.as_bytes()).unwrap();
        let item = mapper.map(&decoded).unwrap();
        bytes += mapper.item_bytes(&item, row.len());
    }
    // The intake closes a batch on the record that reaches `batch_bytes`, so a full batch
    // needs its estimate strictly below the cap — with room for somewhat wider records.
    assert!(
        bytes * 3 / 2 < cfg.batch_bytes,
        "{} people rows are estimated at {bytes} bytes; batch_bytes {} would cut the batch \
         or leave under 50 % headroom",
        cfg.batch_records,
        cfg.batch_bytes
    );
}
