//! Change batches larger than one bus message: split into parts on publish, put back together
//! on consume.
//!
//! NATS refuses a message above the server's `max_payload` (1 MiB by default), and one
//! committed 1,000-row batch of the people example carries about 1.3 MB of change events. Such
//! a batch is published as `n` messages, each a valid [`ChangeBatch`] JSON document holding a
//! run of the events, with these headers:
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | `<batch_id>#<i>/<n>`: each part deduplicated on its own |
//! | `Weir-Batch` | the batch id |
//! | `Weir-Part` | `<i>/<n>`, `i` from 0 |
//! | `Weir-Part-Seqs` | stream sequences of parts `0..i`, comma-separated (empty for part 0) |
//!
//! A batch that fits is one message without these headers, as before. The consumer
//! ([`Assembler`]) holds the parts of a batch until the last one arrives and delivers the whole
//! batch then, with the last part's stream sequence as its `seq`: batches are delivered whole,
//! in the order they complete. A consumer that starts reading in the middle of a batch (a
//! gateway starting at the tip, a `since` replay) fetches the earlier parts by their sequences
//! from `Weir-Part-Seqs`.

use std::collections::VecDeque;

use weir_events::{ChangeBatch, ChangeEvent, EVENT_FORMAT_VERSION};

use crate::BusError;

/// Header naming the batch a part belongs to.
pub(crate) const BATCH_HEADER: &str = "Weir-Batch";
/// Header `<i>/<n>`.
pub(crate) const PART_HEADER: &str = "Weir-Part";
/// Header listing the stream sequences of the earlier parts.
pub(crate) const PART_SEQS_HEADER: &str = "Weir-Part-Seqs";

/// Bytes kept free for headers below the server's `max_payload` (NATS counts headers in it).
pub(crate) const HEADER_ROOM: usize = 1024;

/// The encoded messages of one batch: one when it fits in `limit` bytes, else parts.
pub(crate) fn encode(batch: &ChangeBatch, limit: usize) -> Result<Vec<Vec<u8>>, BusError> {
    let whole = serde_json::to_vec(batch).map_err(|e| BusError::Publish(Box::new(e)))?;
    if whole.len() <= limit {
        return Ok(vec![whole]);
    }
    // Room for the part-sequence header grows with the number of parts (a sequence is at most
    // 20 digits and a comma).
    let estimated_parts = whole.len() / limit.max(1) + 2;
    let limit = limit.saturating_sub(21 * estimated_parts);
    let head = envelope_head(batch)?;
    let tail: &[u8] = b"]}";
    let mut parts = Vec::new();
    let mut cur = head.clone();
    let mut in_cur = 0usize;
    for event in &batch.events {
        let e = serde_json::to_vec(event).map_err(|e| BusError::Publish(Box::new(e)))?;
        let alone = head.len() + e.len() + tail.len();
        if alone > limit {
            return Err(BusError::TooLarge {
                bytes: alone,
                max: limit,
            });
        }
        if in_cur > 0 && cur.len() + 1 + e.len() + tail.len() > limit {
            cur.extend_from_slice(tail);
            parts.push(std::mem::replace(&mut cur, head.clone()));
            in_cur = 0;
        }
        if in_cur > 0 {
            cur.push(b',');
        }
        cur.extend_from_slice(&e);
        in_cur += 1;
    }
    cur.extend_from_slice(tail);
    parts.push(cur);
    Ok(parts)
}

/// `{"version":..,"seq":0,"job_id":..,"batch_id":..,"events":[`
fn envelope_head(batch: &ChangeBatch) -> Result<Vec<u8>, BusError> {
    let s = |v: &str| serde_json::to_string(v).map_err(|e| BusError::Publish(Box::new(e)));
    Ok(format!(
        "{{\"version\":{},\"seq\":0,\"job_id\":{},\"batch_id\":{},\"events\":[",
        batch.version,
        s(&batch.job_id)?,
        s(&batch.batch_id)?
    )
    .into_bytes())
}

/// `i/n` from a `Weir-Part` header value.
pub(crate) fn parse_part(v: &str) -> Option<(usize, usize)> {
    let (i, n) = v.split_once('/')?;
    let (i, n) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
    (n >= 1 && i < n).then_some((i, n))
}

/// Sequences from a `Weir-Part-Seqs` header value.
pub(crate) fn parse_seqs(v: &str) -> Option<Vec<u64>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// Why a message was skipped instead of delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SkipKind {
    /// Not a change batch this build can decode (garbage, a truncated message).
    Decode,
    /// A change batch of an event format version this build does not read.
    Version,
}

/// Decodes one message's payload, telling a future format version from garbage.
pub(crate) fn decode(payload: &[u8]) -> Result<ChangeBatch, SkipKind> {
    #[derive(serde::Deserialize)]
    struct Probe {
        version: u32,
    }
    let probe: Probe = serde_json::from_slice(payload).map_err(|_| SkipKind::Decode)?;
    if probe.version != EVENT_FORMAT_VERSION {
        return Err(SkipKind::Version);
    }
    serde_json::from_slice(payload).map_err(|_| SkipKind::Decode)
}

/// Batches being put back together from their parts, bounded: at most [`Assembler::MAX_OPEN`]
/// batches open at once (each at most its own size; a batch's size is bounded by the
/// pipeline's batch bounds), the oldest given up past that.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    open: VecDeque<Assembly>,
}

#[derive(Debug)]
struct Assembly {
    batch_id: String,
    parts: Vec<Option<Vec<ChangeEvent>>>,
    have: usize,
    job_id: String,
}

/// What a part completed.
#[derive(Debug)]
pub(crate) enum Assembled {
    /// The batch is whole: its events in part order.
    Whole(ChangeBatch),
    /// More parts are needed.
    Incomplete,
}

impl Assembler {
    /// Most batches open at once; a part of a further batch gives up the oldest (counted).
    pub(crate) const MAX_OPEN: usize = 16;

    /// Whether a batch with this id is being assembled.
    pub(crate) fn is_open(&self, batch_id: &str) -> bool {
        self.open.iter().any(|a| a.batch_id == batch_id)
    }

    /// Adds part `index` of `count` (the part's own events); returns the whole batch when this
    /// was the last part missing, and how many open batches were given up to make room.
    pub(crate) fn add(
        &mut self,
        part: ChangeBatch,
        index: usize,
        count: usize,
    ) -> (Assembled, usize) {
        let mut given_up = 0;
        let pos = match self.open.iter().position(|a| a.batch_id == part.batch_id) {
            Some(p) => p,
            None => {
                while self.open.len() >= Self::MAX_OPEN {
                    self.open.pop_front();
                    given_up += 1;
                }
                self.open.push_back(Assembly {
                    batch_id: part.batch_id.clone(),
                    parts: (0..count).map(|_| None).collect(),
                    have: 0,
                    job_id: part.job_id.clone(),
                });
                self.open.len() - 1
            }
        };
        let a = &mut self.open[pos];
        if index < a.parts.len() && a.parts[index].is_none() {
            a.parts[index] = Some(part.events);
            a.have += 1;
        }
        if a.have < a.parts.len() {
            return (Assembled::Incomplete, given_up);
        }
        let Some(a) = self.open.remove(pos) else {
            return (Assembled::Incomplete, given_up);
        };
        let events = a.parts.into_iter().flatten().flatten().collect();
        (
            Assembled::Whole(ChangeBatch {
                version: EVENT_FORMAT_VERSION,
                seq: 0,
                job_id: a.job_id,
                batch_id: a.batch_id,
                events,
            }),
            given_up,
        )
    }

    /// Forgets a batch (its earlier parts cannot be had).
    pub(crate) fn abandon(&mut self, batch_id: &str) {
        self.open.retain(|a| a.batch_id != batch_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_batch;

    fn decode_all(parts: &[Vec<u8>]) -> Vec<ChangeBatch> {
        parts.iter().map(|p| decode(p).unwrap()).collect()
    }

    #[test]
    fn a_batch_that_fits_is_one_plain_message() {
        let b = test_batch("j", "b1", 10);
        let parts = encode(&b, 1 << 20).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(decode(&parts[0]).unwrap(), b);
    }

    #[test]
    fn a_large_batch_splits_under_the_limit_and_reassembles_in_order() {
        let b = test_batch("job", "big", 500);
        let whole = serde_json::to_vec(&b).unwrap().len();
        let limit = whole / 5;
        let parts = encode(&b, limit).unwrap();
        assert!(parts.len() >= 5, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.len() <= limit));
        let decoded = decode_all(&parts);
        assert!(
            decoded
                .iter()
                .all(|p| p.batch_id == "big" && p.job_id == "job")
        );
        let mut asm = Assembler::default();
        let n = parts.len();
        let mut whole_batch = None;
        for (i, p) in decoded.into_iter().enumerate() {
            match asm.add(p, i, n) {
                (Assembled::Whole(w), 0) => whole_batch = Some(w),
                (Assembled::Incomplete, 0) => assert!(i < n - 1),
                other => panic!("{other:?}"),
            }
        }
        let w = whole_batch.expect("whole after the last part");
        assert_eq!(w.events, b.events, "every event, in order");
        assert!(!asm.is_open("big"));
    }

    #[test]
    fn parts_arriving_out_of_order_or_twice_assemble_once() {
        let b = test_batch("j", "x", 90);
        let parts = decode_all(&encode(&b, serde_json::to_vec(&b).unwrap().len() / 3).unwrap());
        let n = parts.len();
        let mut asm = Assembler::default();
        let mut order: Vec<usize> = (0..n).rev().collect();
        order.insert(1, n - 1); // a repeated part
        let mut got = Vec::new();
        for i in order {
            if let (Assembled::Whole(w), _) = asm.add(parts[i].clone(), i, n) {
                got.push(w);
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].events, b.events);
    }

    #[test]
    fn one_event_larger_than_a_message_is_too_large() {
        let mut b = test_batch("j", "b", 2);
        b.events[1]
            .properties
            .insert("blob".into(), serde_json::Value::String("x".repeat(10_000)));
        match encode(&b, 4096) {
            Err(BusError::TooLarge { bytes, max }) => assert!(bytes > max),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn open_batches_are_bounded() {
        let mut asm = Assembler::default();
        let mut given_up = 0;
        for i in 0..(Assembler::MAX_OPEN + 3) {
            let (_, g) = asm.add(test_batch("j", &format!("b{i}"), 1), 0, 2);
            given_up += g;
        }
        assert_eq!(given_up, 3);
        assert!(!asm.is_open("b0"));
        assert!(asm.is_open(&format!("b{}", Assembler::MAX_OPEN + 2)));
    }

    #[test]
    fn garbage_and_future_versions_are_told_apart() {
        assert_eq!(decode(b"not json").unwrap_err(), SkipKind::Decode);
        assert_eq!(decode(b"{\"nope\":1}").unwrap_err(), SkipKind::Decode);
        let future = serde_json::json!({"version": EVENT_FORMAT_VERSION + 1, "whatever": []});
        assert_eq!(
            decode(&serde_json::to_vec(&future).unwrap()).unwrap_err(),
            SkipKind::Version
        );
        let broken = serde_json::json!({"version": EVENT_FORMAT_VERSION, "events": 3});
        assert_eq!(
            decode(&serde_json::to_vec(&broken).unwrap()).unwrap_err(),
            SkipKind::Decode
        );
    }

    #[test]
    fn header_values_parse() {
        assert_eq!(parse_part("2/5"), Some((2, 5)));
        assert_eq!(parse_part("5/5"), None);
        assert_eq!(parse_part("x"), None);
        assert_eq!(parse_seqs("10,11, 12"), Some(vec![10, 11, 12]));
        assert_eq!(parse_seqs(""), Some(vec![]));
        assert_eq!(parse_seqs("1,a"), None);
    }
}
