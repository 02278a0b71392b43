//! Checkpoints: the position of the first record not yet known to be committed or
//! dead-lettered, persisted atomically, advanced only over a contiguous prefix of batches.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Position, StreamError};

/// Checkpoint file format version.
pub const CHECKPOINT_VERSION: u32 = 1;

/// Where to resume: everything before `position` is committed or dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version, [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// The job that wrote it.
    pub job_id: String,
    /// Name of the input `position.file` points at (checked on resume).
    pub source: String,
    /// The first uncommitted record's position.
    pub position: Position,
    /// Whether the whole input was processed.
    pub complete: bool,
    /// The run that wrote it: a resumed run keeps it, so what it writes again carries the same
    /// batch ids (change batches published before the interruption are then recognised as
    /// duplicates by the bus, never delivered twice). Absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// A checkpoint file, replaced atomically (write a temporary file, sync, rename).
#[derive(Clone, Debug)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// A checkpoint at `path` (nothing is read or written yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: std::io::Error) -> StreamError {
        StreamError::Checkpoint {
            path: self.path.clone(),
            source,
        }
    }

    /// The stored checkpoint, `None` when there is no file.
    pub fn load(&self) -> Result<Option<Checkpoint>, StreamError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Replaces the stored checkpoint atomically.
    pub fn store(&self, cp: &Checkpoint) -> Result<(), StreamError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let body = serde_json::to_vec(cp).map_err(|e| self.err(std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            // A leftover of a crash (or anything planted there, a symlink included) is removed,
            // then the file is made anew: exclusively, never through a symlink, private.
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| self.err(e))
    }
}

/// Tracks finished batches and yields the end of the contiguous finished prefix. Holds at most
/// the batches dispatched ahead of the oldest unfinished one (the sink stage caps that window).
#[derive(Debug)]
pub(crate) struct Committer {
    next_seq: u64,
    frontier: Position,
    done: BTreeMap<u64, Position>,
}

impl Committer {
    pub(crate) fn new(start: Position) -> Self {
        Self {
            next_seq: 0,
            frontier: start,
            done: BTreeMap::new(),
        }
    }

    /// Batch `seq`, covering input up to `end`, is finished. Returns the new frontier when it
    /// moved.
    pub(crate) fn finish(&mut self, seq: u64, end: Position) -> Option<Position> {
        self.done.insert(seq, end);
        let mut moved = false;
        while let Some(end) = self.done.remove(&self.next_seq) {
            self.frontier = end;
            self.next_seq += 1;
            moved = true;
        }
        moved.then_some(self.frontier)
    }

    /// The oldest unfinished batch.
    pub(crate) fn oldest_pending(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn frontier(&self) -> Position {
        self.frontier
    }

    /// Finished batches waiting on an older one.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: u64) -> Position {
        Position {
            file: 0,
            line,
            offset: line * 10,
        }
    }

    #[test]
    fn frontier_moves_only_over_contiguous_prefix() {
        let mut c = Committer::new(p(1));
        assert_eq!(c.finish(2, p(30)), None);
        assert_eq!(c.finish(1, p(20)), None);
        assert_eq!(c.waiting(), 2);
        assert_eq!(c.frontier(), p(1));
        assert_eq!(c.finish(0, p(10)), Some(p(30)));
        assert_eq!(c.waiting(), 0);
        assert_eq!(c.oldest_pending(), 3);
        assert_eq!(c.finish(3, p(40)), Some(p(40)));
    }

    #[test]
    fn file_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = CheckpointFile::new(dir.path().join("cp.json"));
        assert_eq!(f.load().unwrap(), None);
        let mut cp = Checkpoint {
            version: CHECKPOINT_VERSION,
            job_id: "j".into(),
            source: "a.csv".into(),
            position: p(5),
            complete: false,
            run_id: Some("0123abcd".into()),
        };
        f.store(&cp).unwrap();
        cp.position = p(9);
        f.store(&cp).unwrap();
        assert_eq!(f.load().unwrap(), Some(cp));
        assert!(!dir.path().join("cp.json.tmp").exists());
        // A checkpoint written before run ids existed still loads.
        std::fs::write(
            dir.path().join("cp.json"),
            r#"{"version":1,"job_id":"j","source":"a.csv","position":{"file":0,"line":5,"offset":50},"complete":false}"#,
        )
        .unwrap();
        assert_eq!(f.load().unwrap().unwrap().run_id, None);
    }
}
