//! Weir's stream processor: **source → decode → map → batch → sink**, with memory bounded by
//! construction, backpressure on real memory pressure, error isolation, and checkpoints.
//!
//! # Shape
//!
//! * A [`Source`] hands over chunks of framed [`RawRecord`]s with [`Position`]s (input index,
//!   line, byte offset). [`FileSource`] reads files, sorted directories and stdin on its own
//!   thread (gzip detected by magic bytes); [`ReaderSource`] frames any reader in place.
//! * The intake task decodes ([`Decoder`]: CSV or JSON Lines, buffers reused), maps
//!   ([`Mapper`]) and batches by records, bytes and linger (from when the batch took its first record).
//!   Records that fail to frame, decode or map go to the [`DeadLetterSink`] and the stream
//!   goes on.
//! * A queue bounded in batches *and* bytes (permits sized by each batch's bytes) feeds the
//!   sink stage, which keeps at most `concurrency` batches in flight to the [`Sink`] (by
//!   default an adaptive limit between 1 and `concurrency` that halves when writes contend,
//!   see [`ConcurrencyLimit`]). Transient errors are retried with exponential backoff and
//!   jitter; data errors are isolated (by the sink's indexes, else by halving) and only the bad
//!   items dead-lettered.
//! * The checkpoint (the first position not known to be committed or dead-lettered) moves only
//!   over a contiguous prefix of finished batches, and is written atomically (temporary file,
//!   fsync, rename; dead letters are flushed and synced first). At most `2 × concurrency`
//!   batches are dispatched ahead of the oldest unfinished one, which bounds the bookkeeping.
//!   To resume, give the same checkpoint to the source ([`FileSource::open`],
//!   [`ReaderSource::resume_from`]) and the file to [`Pipeline::with_checkpoint`]. Records after
//!   the checkpoint are written again (the sink must be idempotent, e.g. `MERGE` on keys), and
//!   dead letters after it may be repeated.
//! * The memory gauge is sampled every `pressure_sample_interval`: at or above
//!   `high_watermark` intake flushes, pauses and halves the batch size; at or below
//!   `low_watermark` it resumes and batches grow back one doubling per sample. If usage stays
//!   above the low watermark with nothing queued or in flight for `pressure_stall_after`, the
//!   memory is not the pipeline's: intake goes on with the smallest batches and pauses again
//!   only when usage grows by the watermark gap above that level (never a wait forever).
//!
//! Every record read ends exactly one way: committed, dead-lettered, or (for cancelled and
//! failed runs only) uncommitted after the final checkpoint — [`RunSummary::is_balanced`].
//!
//! # Memory bound
//!
//! With `C = read_chunk_bytes + max_record_bytes + chunk_records × size_of::<RawRecord>()`
//! (the largest chunk a reader hands over) and `B = batch_bytes` (estimated item bytes, see
//! [`Mapper::item_bytes`]), the memory the pipeline holds is at most
//!
//! ```text
//!   (chunk_queue + 2) × C                         chunks queued, being framed, being decoded
//! + (2 + concurrency) × (B + 2C)                  batch being built, prepared ahead, in flight
//! + min(batch_queue_bytes, batch_queue × B)
//!   + batch_queue × 2C                            batches queued for the sink
//! + 2 × dead_letter_raw_bytes + 64 KiB            dead-letter copies and small state
//! ```
//!
//! The `2C` per batch accounts for the read buffers its raw slices keep alive at its edges.
//! [`PipelineConfig::memory_bound_bytes`] computes it: 65,806,336 bytes (about 62.8 MiB) at the defaults. It assumes
//! the mapper's `item_bytes` estimate is honest and the sink does not keep items after a write.
//! It excludes the runtime, the allocator's retained free memory and the sink's own buffers.

mod checkpoint;
mod concurrency;
mod config;
mod deadletter;
mod decode;
mod error;
mod input_format;
mod map;
mod pipeline;
mod pressure;
mod queue;
mod record;
mod sink;
mod source;

pub use checkpoint::{CHECKPOINT_VERSION, Checkpoint, CheckpointFile};
pub use concurrency::{
    ConcurrencyLimit, INITIAL_PROBE_WINDOWS, LOWER_LOSS, MAX_PROBE_WINDOWS, RAISE_GAIN,
    WINDOW_MIN_BATCHES,
};
pub use config::PipelineConfig;
pub use deadletter::{DeadLetter, DeadLetterSink, JsonlDeadLetters, MemoryDeadLetters, Stage};
pub use decode::{CsvRow, DecodeError, Decoded, DecodedRecord, Decoder, Format};
pub use error::StreamError;
pub use input_format::{InputFormat, JSON_LINES_EXTENSIONS, UnknownInputFormat};
pub use map::{MapError, Mapper};
pub use pipeline::{BatchReport, Pipeline, PipelineObserver, RunOutcome, RunSummary};
pub use record::{Position, RawRecord, RecordKind, SourceNames, Staged};
pub use sink::{Contention, NullSink, Prepared, Sink, SinkBatch, SinkError};
pub use source::{FileSource, ReaderSource, Source, list_dir};
pub use tokio_util::sync::CancellationToken;
/// The retry policy of transient sink errors ([`PipelineConfig::retry`]).
pub use weir_config::Backoff;
pub use weir_memwatch::{MemoryGauge, MemoryUsage, ProcessGauge};
