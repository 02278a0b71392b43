//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Mutex;

use weir_stream::{Decoded, DecodedRecord, MapError, Sink, SinkBatch, SinkError};

/// A row: the `id` column and the line it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: u64,
    pub line: u64,
}

/// Maps CSV rows with an `id` column (or JSON objects with an `id` field) to [`Row`]s.
pub fn map_row(rec: &DecodedRecord<'_>) -> Result<Row, MapError> {
    let id = match &rec.value {
        Decoded::Csv(row) => row
            .get("id")
            .ok_or_else(|| MapError::field("id", "missing"))?
            .parse::<u64>()
            .map_err(|e| MapError::field("id", e.to_string()))?,
        Decoded::Json(v) => v["id"]
            .as_u64()
            .ok_or_else(|| MapError::field("id", "not an unsigned integer"))?,
    };
    Ok(Row {
        id,
        line: rec.position.line,
    })
}

/// Keeps every committed row (tests only hold small inputs).
#[derive(Debug, Default)]
pub struct CollectSink {
    pub committed: Mutex<Vec<Row>>,
    pub batch_sizes: Mutex<Vec<usize>>,
}

impl Sink for CollectSink {
    type Item = Row;

    async fn write(&self, batch: &SinkBatch<'_, Row>) -> Result<(), SinkError> {
        self.batch_sizes.lock().unwrap().push(batch.items.len());
        self.committed
            .lock()
            .unwrap()
            .extend(batch.items.iter().map(|s| s.item.clone()));
        Ok(())
    }
}

/// CSV text with a header and ids `0..n`.
pub fn csv(n: u64) -> String {
    let mut s = String::from("id,name\n");
    for i in 0..n {
        s.push_str(&format!("{i},name-{i}\n"));
    }
    s
}

/// An endless CSV input (`id,name` header, then rows with increasing ids), generated as read.
#[derive(Debug, Default)]
pub struct GenReader {
    next: u64,
    pending: Vec<u8>,
    pos: usize,
    pub limit: Option<u64>,
}

impl GenReader {
    /// Rows `0..limit` (or endless with `None`).
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            pending: b"id,name\n".to_vec(),
            limit,
            ..Self::default()
        }
    }
}

impl std::io::Read for GenReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Write;
        while self.pos == self.pending.len() {
            if self.limit.is_some_and(|l| self.next >= l) {
                return Ok(0);
            }
            self.pending.clear();
            self.pos = 0;
            for _ in 0..256 {
                if self.limit.is_some_and(|l| self.next >= l) {
                    break;
                }
                let i = self.next;
                // About 100 bytes per row.
                writeln!(
                    self.pending,
                    "{i},person-{i:012}-abcdefghijklmnopqrstuvwxyz-abcdefghijklmnopqrstuvwxyz-0123456789"
                )?;
                self.next += 1;
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
