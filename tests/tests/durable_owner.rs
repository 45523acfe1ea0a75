//! One owner per durable run, in one process: a run that is running cannot be started or
//! resumed a second time, two answers to one parked run resume it once, and an owner whose run
//! was taken over (its lease expired elsewhere) can write nothing more. The same rules across
//! processes are in `durable_kill.rs`; the store's side of them in `tidewater::store::conformance`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, SqliteStore, Store, StoreErrorKind};
use tokio::sync::Notify;

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Slow(u32);

/// `begin` hands over to `slow`, which waits for the test's signal, then stops.
struct Gated {
    gate: Arc<Notify>,
    ran: Arc<AtomicUsize>,
}

#[workflow(durable)]
impl Gated {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Slow {
        Slow(ev.0)
    }

    #[step]
    async fn slow(&self, ev: Slow) -> StopEvent<u32> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        self.gate.notified().await;
        StopEvent(ev.0 * 2)
    }
}

fn gated() -> (Gated, Arc<Notify>, Arc<AtomicUsize>) {
    let gate = Arc::new(Notify::new());
    let ran = Arc::new(AtomicUsize::new(0));
    (
        Gated {
            gate: gate.clone(),
            ran: ran.clone(),
        },
        gate,
        ran,
    )
}

async fn until(mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the condition never held");
}

fn durable_reason(error: WorkflowError) -> String {
    match error {
        WorkflowError::Durable { reason, .. } => reason,
        other => panic!("expected a durable refusal, got {other:?}"),
    }
}

async fn a_running_run_is_not_started_or_resumed_twice() {
    let store = Arc::new(MemoryStore::new());
    let (flow, gate, ran) = gated();
    let runner = flow.runner().store(store.clone());
    let run = runner.start_durable("k", 4).unwrap();
    until(|| ran.load(Ordering::SeqCst) == 1).await;

    let again = durable_reason(runner.start_durable("k", 5).map(drop).unwrap_err());
    assert!(
        again.starts_with(&format!(
            "the run is owned by process {}",
            std::process::id()
        )) && again.ends_with("(this process)"),
        "{again}"
    );
    let resumed = durable_reason(runner.resume_stored("k").map(drop).unwrap_err());
    assert!(resumed.contains("is owned by process"), "{resumed}");

    gate.notify_one();
    assert_eq!(run.await.unwrap(), 8);
    assert_eq!(ran.load(Ordering::SeqCst), 1, "`slow` ran once");
    // Ended: the key is free for a new run, and nothing is left to resume.
    let resumed = durable_reason(runner.resume_stored("k").map(drop).unwrap_err());
    assert_eq!(resumed, "the run has ended (Finished)");
    let rerun = runner.start_durable("k", 1).unwrap();
    until(|| ran.load(Ordering::SeqCst) == 2).await;
    gate.notify_one();
    assert_eq!(rerun.await.unwrap(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_running_run_is_not_started_or_resumed_twice_current_thread() {
    a_running_run_is_not_started_or_resumed_twice().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_is_not_started_or_resumed_twice_multi_thread() {
    a_running_run_is_not_started_or_resumed_twice().await;
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Verdict)]
struct Ask(u32);

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Verdict(u32);

/// Asks, parks, and counts the answers its last step takes.
struct Asker {
    answered: Arc<AtomicUsize>,
}

#[workflow(durable)]
impl Asker {
    #[step]
    async fn ask(&self, ev: StartEvent<u32>) -> Ask {
        Ask(ev.0)
    }

    #[step]
    async fn settle(&self, ev: Verdict) -> StopEvent<u32> {
        self.answered.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        StopEvent(ev.0)
    }
}

async fn two_answers_to_one_parked_run_resume_it_once() {
    let store = Arc::new(MemoryStore::new());
    let answered = Arc::new(AtomicUsize::new(0));
    let runner = Asker {
        answered: answered.clone(),
    }
    .runner()
    .store(store.clone())
    .evict_when_waiting(true);
    let parked = runner.start_durable("k", 1).unwrap().await;
    assert!(matches!(parked, Err(WorkflowError::Suspended { .. })));
    assert_eq!(store.keys(RunStatus::Waiting).unwrap(), ["k"]);

    let first = runner.answer("k", Verdict(10)).unwrap();
    let second = durable_reason(runner.answer("k", Verdict(20)).map(drop).unwrap_err());
    assert!(second.contains("is owned by process"), "{second}");
    assert_eq!(first.await.unwrap(), 10);
    let late = durable_reason(runner.answer("k", Verdict(30)).map(drop).unwrap_err());
    assert_eq!(late, "the run has ended (Finished)");
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "one answer was acted on"
    );
    assert_eq!(runner.stored_output("k").unwrap(), 10);
}

#[tokio::test(flavor = "current_thread")]
async fn two_answers_to_one_parked_run_resume_it_once_current_thread() {
    two_answers_to_one_parked_run_resume_it_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_answers_to_one_parked_run_resume_it_once_multi_thread() {
    two_answers_to_one_parked_run_resume_it_once().await;
}

/// A fresh database file, removed on drop.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

async fn an_owner_whose_run_was_taken_over_writes_nothing_more(name: &str) {
    let db = TempDb(
        std::env::temp_dir().join(format!("tidewater-owner-{name}-{}.db", std::process::id())),
    );
    let store = Arc::new(SqliteStore::open(&db.0).unwrap());
    let (flow, gate, ran) = gated();
    let run = flow
        .runner()
        .store(store.clone())
        .start_durable("k", 4)
        .unwrap();
    until(|| ran.load(Ordering::SeqCst) == 1).await;
    let before = store.load("k").unwrap().unwrap();

    // Another host's worker takes the run over (as after this owner's lease expired there):
    // the owner and the epoch change under the running run.
    let other = rusqlite::Connection::open(&db.0).unwrap();
    let taken = other
        .execute(
            "UPDATE runs SET owner_id = 'elsewhere#1', epoch = epoch + 1,
                 owner = '{\"id\":\"elsewhere#1\",\"host\":\"elsewhere\",\"pid\":1,\"started\":1}'
             WHERE key = 'k'",
            [],
        )
        .unwrap();
    assert_eq!(taken, 1);

    gate.notify_one();
    let error = run.await.unwrap_err();
    let WorkflowError::Store(store_error) = &error else {
        panic!("expected a store error, got {error:?}");
    };
    assert_eq!(store_error.kind, StoreErrorKind::Fenced, "{error}");
    assert!(
        error.to_string().contains("no longer owns the run"),
        "{error}"
    );
    // Its completion was refused: the record is the one before, and it is still the other
    // owner's.
    assert_eq!(store.load("k").unwrap().unwrap(), before);
    let owner: String = other
        .query_row("SELECT owner_id FROM runs WHERE key = 'k'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(owner, "elsewhere#1");
}

#[tokio::test(flavor = "current_thread")]
async fn an_owner_whose_run_was_taken_over_writes_nothing_more_current_thread() {
    an_owner_whose_run_was_taken_over_writes_nothing_more("ct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_run_was_taken_over_writes_nothing_more_multi_thread() {
    an_owner_whose_run_was_taken_over_writes_nothing_more("mt").await;
}

#[tokio::test]
async fn a_run_dropped_before_its_end_frees_its_key_at_once() {
    let store = Arc::new(MemoryStore::new());
    let (flow, _gate, ran) = gated();
    let runner = flow.runner().store(store.clone());
    let run = runner.start_durable("k", 4).unwrap();
    until(|| ran.load(Ordering::SeqCst) == 1).await;
    run.cancel();
    let _ = run.await;
    // Cancelled, saved as ended: a new run may use the key.
    let rerun = runner.start_durable("k", 1);
    assert!(rerun.is_ok(), "{rerun:?}");
}
