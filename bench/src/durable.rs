//! The durable scenarios: the chain journaled in an SQLite file, and runs parked for a human in
//! the store, each against the raw commit rate of SQLite on the same file system (WAL,
//! `synchronous = FULL`, one small row per transaction), which is the disk's limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::snapshot::EventRecord;
use tidewater::store::{
    Claim, Lease, Owner, RunRecord, RunStatus, SqliteStore, Store, StoreError, Write,
};

use crate::{Check, check};

/// First hop of the durable chain.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct A(u64);
/// Second hop.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct B(u64);
/// Third hop.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct C(u64);
/// Fourth hop.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct D(u64);

/// The chain of `chain5_*`, journaled: `StartEvent -> A -> B -> C -> D -> StopEvent`.
struct DurableChain;

#[workflow(durable)]
impl DurableChain {
    #[step]
    async fn s0(&self, ev: StartEvent<u64>) -> A {
        A(ev.0)
    }
    #[step]
    async fn s1(&self, ev: A) -> B {
        B(ev.0 + 1)
    }
    #[step]
    async fn s2(&self, ev: B) -> C {
        C(ev.0 + 1)
    }
    #[step]
    async fn s3(&self, ev: C) -> D {
        D(ev.0 + 1)
    }
    #[step]
    async fn s4(&self, ev: D) -> StopEvent<u64> {
        StopEvent(ev.0 + 1)
    }
}

/// The question a parked run asks.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Answer)]
struct Question(u64);

/// The human's answer.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Answer(u64);

/// Asks, parks, and stops with the question plus the answer.
struct Ask;

#[workflow(durable)]
impl Ask {
    #[step]
    async fn ask(&self, ev: StartEvent<u64>) -> Question {
        Question(ev.0)
    }
    #[step]
    async fn done(&self, ev: Answer) -> StopEvent<u64> {
        StopEvent(ev.0)
    }
}

/// A fresh database file under the temp dir, removed (with its WAL) when dropped.
pub(crate) struct TempDb(PathBuf);

impl TempDb {
    pub(crate) fn new(name: &str) -> TempDb {
        let path = std::env::temp_dir().join(format!(
            "tidewater-bench-{}-{name}-{}.db",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let db = TempDb(path);
        db.remove();
        db
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

/// An `SqliteStore` that counts its writes and its commits, so that commits per run are
/// measured, not assumed.
struct Counted {
    inner: SqliteStore,
    /// Rows written: claims, releases, checkpoints, journaled events.
    writes: AtomicU64,
    /// Transactions that sync the log: one per batch of the group commit (or per direct
    /// `save`/`append_event`). Claims and releases commit without a sync of their own.
    syncs: AtomicU64,
}

impl Counted {
    fn count(&self, writes: u64, syncs: u64) {
        self.writes.fetch_add(writes, Ordering::Relaxed);
        self.syncs.fetch_add(syncs, Ordering::Relaxed);
    }
}

impl Store for Counted {
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError> {
        self.count(1, 0);
        self.inner.acquire(key, owner, claim)
    }
    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError> {
        self.count(1, 1);
        self.inner.save(key, lease, record)
    }
    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        self.count(1, 0);
        self.inner.release(key, lease)
    }
    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        self.inner.load(key)
    }
    fn append_event(
        &self,
        key: &str,
        lease: &Lease,
        seq: u64,
        event: &EventRecord,
    ) -> Result<(), StoreError> {
        self.count(1, 1);
        self.inner.append_event(key, lease, seq, event)
    }
    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.inner.events(key)
    }
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        self.inner.keys(status)
    }
    fn write_batch(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        self.count(writes.len() as u64, 1);
        self.inner.write_batch(writes)
    }
}

fn store(db: &TempDb) -> Result<Arc<Counted>, String> {
    let inner = SqliteStore::open(db.path()).map_err(|e| e.to_string())?;
    Ok(Arc::new(Counted {
        inner,
        writes: AtomicU64::new(0),
        syncs: AtomicU64::new(0),
    }))
}

/// What a durable scenario wrote, per run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PerRun {
    /// Rows written (claims, releases, checkpoints, journaled events).
    pub(crate) writes: f64,
    /// Commits that synced the log (group commits shared by several runs count once).
    pub(crate) syncs: f64,
}

impl Counted {
    fn per_run(&self, n: u64) -> PerRun {
        PerRun {
            writes: self.writes.load(Ordering::Relaxed) as f64 / n as f64,
            syncs: self.syncs.load(Ordering::Relaxed) as f64 / n as f64,
        }
    }
}

/// The disk's limit: `n` transactions of one small row each, in WAL mode with
/// `synchronous = FULL` (what `SqliteStore` uses), on the same file system. Returns seconds.
pub(crate) fn raw_commits(n: u64) -> Result<f64, String> {
    let db = TempDb::new("raw");
    let connection = rusqlite::Connection::open(db.path()).map_err(|e| e.to_string())?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| e.to_string())?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    connection
        .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    for i in 0..n {
        connection
            .execute(
                "INSERT INTO t (k, v) VALUES (?1, 'a small checkpoint row')",
                [i as i64],
            )
            .map_err(|e| e.to_string())?;
    }
    let seconds = t.elapsed().as_secs_f64();
    let count: i64 = connection
        .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    check(count == n as i64, || {
        format!("raw commits: {count} rows of {n}")
    })?;
    Ok(seconds)
}

/// `durable_chain5_sequential_runs`: `n` journaled runs of the chain, one after another.
/// Returns what each run wrote.
pub(crate) async fn chain_sequential(n: u64) -> Result<PerRun, String> {
    let db = TempDb::new("seq");
    let store = store(&db)?;
    let runner = DurableChain.runner().store(store.clone());
    for i in 0..n {
        let out = runner
            .start_durable(&format!("run-{i}"), i)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        check(out == i + 4, || format!("chain({i}) = {out}"))?;
    }
    finished(&*store, n)?;
    Ok(store.per_run(n))
}

/// `durable_chain5_concurrent_runs`: `n` journaled runs of the chain, `in_flight` at a time.
/// Returns what each run wrote.
pub(crate) async fn chain_concurrent(n: u64, in_flight: usize) -> Result<PerRun, String> {
    let db = TempDb::new("conc");
    let store = store(&db)?;
    let runner = DurableChain.runner().store(store.clone());
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    use futures_util::StreamExt;
    while next < n || !running.is_empty() {
        while next < n && running.len() < in_flight {
            let i = next;
            let handler = runner
                .start_durable(&format!("run-{i}"), i)
                .map_err(|e| e.to_string())?;
            running.push(async move { (i, handler.await) });
            next += 1;
        }
        if let Some((i, out)) = running.next().await {
            let out = out.map_err(|e| e.to_string())?;
            check(out == i + 4, || format!("chain({i}) = {out}"))?;
        }
    }
    finished(&*store, n)?;
    Ok(store.per_run(n))
}

/// What `durable_parked_runs` measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parked {
    /// Seconds to start every run until all are parked in the store.
    pub(crate) park_seconds: f64,
    /// Seconds to answer every run until all have finished.
    pub(crate) answer_seconds: f64,
    /// Seconds to answer each successive slice of `slice` runs (answered in key order, with
    /// `in_flight` at a time): a flat cost per answer keeps these equal.
    pub(crate) slices: Vec<f64>,
    pub(crate) per_run: PerRun,
}

/// `durable_parked_runs`: `n` runs park for a human and leave memory (saved as waiting), with
/// `in_flight` of them starting at a time; then every one is answered from the store, again
/// `in_flight` at a time, timing each slice of `slice` answers.
pub(crate) async fn parked(n: u64, in_flight: usize, slice: u64) -> Result<Parked, String> {
    use futures_util::StreamExt;
    let db = TempDb::new("parked");
    let store = store(&db)?;
    let runner = Ask.runner().store(store.clone()).evict_when_waiting(true);
    let t = Instant::now();
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    while next < n || !running.is_empty() {
        while next < n && running.len() < in_flight {
            let i = next;
            let handler = runner
                .start_durable(&format!("run-{i:07}"), i)
                .map_err(|e| e.to_string())?;
            running.push(async move { (i, handler.await) });
            next += 1;
        }
        if let Some((i, parked)) = running.next().await {
            check(
                matches!(parked, Err(WorkflowError::Suspended { .. })),
                || format!("run {i} did not park: {parked:?}"),
            )?;
        }
    }
    let park_seconds = t.elapsed().as_secs_f64();
    let waiting = store
        .keys(RunStatus::Waiting)
        .map_err(|e| e.to_string())?
        .len();
    check(waiting == n as usize, || {
        format!("{waiting} runs waiting of {n}")
    })?;
    let t = Instant::now();
    let mut slices = Vec::new();
    let mut slice_start = Instant::now();
    let mut done = 0;
    let mut next = 0;
    let mut answering = futures_util::stream::FuturesUnordered::new();
    while next < n || !answering.is_empty() {
        while next < n && answering.len() < in_flight {
            let i = next;
            let handler = runner
                .answer(&format!("run-{i:07}"), Answer(i * 2))
                .map_err(|e| e.to_string())?;
            answering.push(async move { (i, handler.await) });
            next += 1;
        }
        if let Some((i, out)) = answering.next().await {
            let out = out.map_err(|e| format!("answer({i}): {e}"))?;
            check(out == i * 2, || format!("answer({i}) = {out}"))?;
            done += 1;
            if done % slice == 0 {
                slices.push(slice_start.elapsed().as_secs_f64());
                slice_start = Instant::now();
            }
        }
    }
    let answer_seconds = t.elapsed().as_secs_f64();
    finished(&*store, n)?;
    Ok(Parked {
        park_seconds,
        answer_seconds,
        slices,
        per_run: store.per_run(n),
    })
}

/// Every one of the `n` runs is recorded as finished in the store.
fn finished(store: &dyn Store, n: u64) -> Check {
    let done = store
        .keys(RunStatus::Finished)
        .map_err(|e| e.to_string())?
        .len();
    check(done == n as usize, || {
        format!("{done} runs finished in the store, expected {n}")
    })
}
