//! Durable runs: where a journaled run keeps its checkpoints and the events it published.
//!
//! A runner given a [`Store`] (`Runner::store`) journals every run it starts with
//! `start_durable(key, input)`: a checkpoint (a [`Snapshot`]) when the run starts and after each
//! step completion, each event written to the stream, and the outcome at the end. A process that
//! dies mid-run (even by `SIGKILL`) loses nothing: `Runner::resume_stored(key)` resumes from the
//! last checkpoint, where completed steps do not run again and the steps that were running run
//! again (at least once).
//!
//! [`MemoryStore`] keeps everything in memory (tests, and the history of every checkpoint); the
//! `sqlite` feature adds `SqliteStore`, an embedded database with no server to start.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::snapshot::{EventRecord, Snapshot};
use crate::stream::lock;

#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// Where a journaled run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RunStatus {
    /// Running (or it was, when its process died): resume it.
    Running,
    /// Parked waiting for an answer from outside, and evicted from memory.
    Waiting,
    /// Ended with its output (`RunRecord::output`).
    Finished,
    /// Ended with an error (`RunRecord::error`).
    Failed,
}

/// The journal entry of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Where the run is.
    pub status: RunStatus,
    /// The last checkpoint.
    pub snapshot: Snapshot,
    /// The output of a finished run.
    pub output: Option<serde_json::Value>,
    /// The error message of a failed run.
    pub error: Option<String>,
}

/// A store failed (I/O, a corrupt row, ...).
#[derive(Debug, thiserror::Error)]
#[error("store: {message}")]
pub struct StoreError {
    /// What went wrong.
    pub message: String,
}

impl StoreError {
    /// A store error with this message.
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
        }
    }
}

/// Where durable runs are journaled. Implement it for a server database; the crate ships
/// [`MemoryStore`] and, with the `sqlite` feature, `SqliteStore`.
///
/// Calls come from the run's own task, between two step completions: a `save` returns once
/// the checkpoint is durable.
pub trait Store: Send + Sync + 'static {
    /// Writes the run's record (insert or replace).
    ///
    /// # Errors
    /// When the record could not be made durable.
    fn save(&self, key: &str, record: &RunRecord) -> Result<(), StoreError>;

    /// Reads the run's record.
    ///
    /// # Errors
    /// When the store could not be read or the record is corrupt.
    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError>;

    /// Appends one event the run wrote to its stream, with its sequence number (from 1). The
    /// same number written again (by a step that re-ran after a crash) replaces the first.
    ///
    /// # Errors
    /// When the event could not be made durable.
    fn append_event(&self, key: &str, seq: u64, event: &EventRecord) -> Result<(), StoreError>;

    /// The events the run wrote to its stream, in order.
    ///
    /// # Errors
    /// When the store could not be read.
    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError>;

    /// The keys of the runs with this status.
    ///
    /// # Errors
    /// When the store could not be read.
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError>;
}

/// A [`Store`] in memory, which also keeps every checkpoint ever saved
/// ([`MemoryStore::history`]).
///
/// ```
/// use tidewater::store::{MemoryStore, RunStatus, Store};
/// let store = MemoryStore::new();
/// assert!(store.load("nope").unwrap().is_none());
/// assert!(store.keys(RunStatus::Running).unwrap().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<String, MemoryRun>>,
}

#[derive(Debug, Default)]
struct MemoryRun {
    record: Option<RunRecord>,
    history: Vec<Snapshot>,
    events: Vec<(u64, EventRecord)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every checkpoint saved for `key`, oldest first.
    pub fn history(&self, key: &str) -> Vec<Snapshot> {
        lock(&self.runs)
            .get(key)
            .map(|run| run.history.clone())
            .unwrap_or_default()
    }
}

impl Store for MemoryStore {
    fn save(&self, key: &str, record: &RunRecord) -> Result<(), StoreError> {
        let mut runs = lock(&self.runs);
        let run = runs.entry(key.to_string()).or_default();
        if run.history.last() != Some(&record.snapshot) {
            run.history.push(record.snapshot.clone());
        }
        run.record = Some(record.clone());
        Ok(())
    }

    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(lock(&self.runs).get(key).and_then(|run| run.record.clone()))
    }

    fn append_event(&self, key: &str, seq: u64, event: &EventRecord) -> Result<(), StoreError> {
        let mut runs = lock(&self.runs);
        let events = &mut runs.entry(key.to_string()).or_default().events;
        // Like a database keyed by (run, seq): the same number written again replaces it.
        let rewrite = events.last().is_some_and(|(last, _)| *last >= seq);
        match events.iter_mut().find(|(s, _)| rewrite && *s == seq) {
            Some(existing) => existing.1 = event.clone(),
            None => events.push((seq, event.clone())),
        }
        Ok(())
    }

    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        Ok(lock(&self.runs)
            .get(key)
            .map(|run| run.events.clone())
            .unwrap_or_default())
    }

    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = lock(&self.runs)
            .iter()
            .filter(|(_, run)| run.record.as_ref().is_some_and(|r| r.status == status))
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        Ok(keys)
    }
}
