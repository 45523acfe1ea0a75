//! A durable run evicted while it waits for a human, and an answer or a cancel that comes as it
//! leaves memory: after its eviction is decided (its record is being written as waiting) and
//! before its handler has its outcome. The eviction's commit is held back by a gated store, so
//! the race is taken every time: the run refuses the answer (`RunControl::offer_json` says so,
//! nothing is lost with the run), does not see the cancel (its outcome says it left), and both
//! are carried out on the run in the store. On both tokio runtimes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tidewater::prelude::*;
use tidewater::serve::{ServedRun, ServedWorkflow, served};
use tidewater::snapshot::EventRecord;
use tidewater::store::{
    Claim, Lease, Message, Owner, RunRecord, RunStatus, SqliteStore, Store, StoreError, Wakeups,
    Write,
};

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Decision)]
struct Proposal {
    text: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Decision {
    approved: bool,
}

struct Approve {
    proposals: Arc<AtomicU32>,
}

#[workflow(durable)]
impl Approve {
    #[step]
    async fn propose(&self, ev: StartEvent<String>) -> Proposal {
        self.proposals.fetch_add(1, Ordering::SeqCst);
        Proposal { text: ev.0 }
    }

    #[step]
    async fn decide(&self, ev: Decision) -> StopEvent<String> {
        StopEvent(if ev.approved { "published" } else { "dropped" }.to_string())
    }
}

/// Holds the first batch that saves a run as waiting (written, its commit not reported) until
/// released.
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    held: AtomicBool,
    open: Mutex<bool>,
    opened: Condvar,
}

struct GatedStore {
    inner: SqliteStore,
    gate: Arc<Gate>,
}

impl Store for GatedStore {
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError> {
        self.inner.acquire(key, owner, claim)
    }
    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError> {
        self.inner.save(key, lease, record)
    }
    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
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
        self.inner.append_event(key, lease, seq, event)
    }
    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.inner.events(key)
    }
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        self.inner.keys(status)
    }
    fn post(&self, key: &str, message: &Message) -> Result<bool, StoreError> {
        self.inner.post(key, message)
    }
    fn inbox(&self, key: &str, after: u64) -> Result<Vec<(u64, Message)>, StoreError> {
        self.inner.inbox(key, after)
    }
    fn claim(&self, workflow: &str, owner: &Owner) -> Result<Option<(String, Lease)>, StoreError> {
        self.inner.claim(workflow, owner)
    }
    fn wakeups(&self) -> Option<&Wakeups> {
        self.inner.wakeups()
    }
    fn write_batch(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        let results = self.inner.write_batch(writes);
        let evicts = writes.iter().any(
            |w| matches!(w, Write::Save { record, .. } if record.status == RunStatus::Waiting),
        );
        if evicts && self.gate.armed.swap(false, Ordering::SeqCst) {
            self.gate.held.store(true, Ordering::SeqCst);
            let open = self.gate.open.lock().unwrap();
            // Bounded, so that a broken runtime fails the test instead of hanging it.
            let _ = self
                .gate
                .opened
                .wait_timeout_while(open, Duration::from_secs(20), |open| !*open)
                .unwrap();
        }
        results
    }
}

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("workflow-evict-race-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A run started on a gated store, evicted at once and held there: its record says waiting,
/// its outcome is not out yet.
async fn leaving(
    name: &str,
) -> (
    Scratch,
    Arc<dyn ServedWorkflow>,
    Arc<dyn Store>,
    Arc<Gate>,
    ServedRun,
    Arc<AtomicU32>,
) {
    let scratch = Scratch::new(name);
    let gate = Arc::new(Gate::default());
    gate.armed.store(true, Ordering::SeqCst);
    let store: Arc<dyn Store> = Arc::new(GatedStore {
        inner: SqliteStore::open(scratch.0.join("runs.db")).unwrap(),
        gate: gate.clone(),
    });
    let proposals = Arc::new(AtomicU32::new(0));
    let served = served(
        Approve {
            proposals: proposals.clone(),
        }
        .runner(),
    );
    let run = served
        .start_stored("k", json!("post"), store.clone(), Some(Duration::ZERO))
        .unwrap();
    for _ in 0..2000 {
        if gate.held.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        gate.held.load(Ordering::SeqCst),
        "the run was never evicted"
    );
    assert_eq!(store.load("k").unwrap().unwrap().status, RunStatus::Waiting);
    (scratch, served, store, gate, run, proposals)
}

/// What a run's stream showed: event names, then its outcome.
async fn seen(run: &mut ServedRun) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(item) = futures_util::StreamExt::next(&mut run.events).await {
        match item {
            StreamItem::Event(event) => {
                seen.push(tidewater::serve::short_name(event.name()).to_string())
            }
            StreamItem::End(outcome) => seen.push(format!("{outcome:?}")),
            _ => {}
        }
    }
    seen
}

async fn an_answer_as_the_run_leaves_is_refused_and_answered_in_the_store(name: &str) {
    let (_scratch, served, store, gate, mut run, proposals) = leaving(name).await;
    // The run decided to leave with no mail: it refuses the answer rather than lose it.
    let taken = run
        .control
        .offer_json("Decision", json!({ "approved": true }), None)
        .unwrap();
    assert!(!taken, "a run leaving memory took an answer it would lose");
    *gate.open.lock().unwrap() = true;
    gate.opened.notify_all();
    assert_eq!(seen(&mut run).await, ["Proposal", "Suspended"]);
    assert!(matches!(
        run.outcome.await,
        Err(WorkflowError::Suspended { .. })
    ));
    assert_eq!(store.load("k").unwrap().unwrap().status, RunStatus::Waiting);

    // Answered in the store, it finishes with the answer.
    let mut again = served
        .answer_stored(
            "k",
            "Decision",
            json!({ "approved": true }),
            store.clone(),
            None,
        )
        .unwrap();
    assert_eq!(seen(&mut again).await, ["Proposal", "Stopped"]);
    assert_eq!(again.outcome.await.unwrap(), json!("published"));
    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(proposals.load(Ordering::SeqCst), 1);
}

async fn a_cancel_as_the_run_leaves_ends_it_in_the_store(name: &str) {
    let (_scratch, served, store, gate, mut run, proposals) = leaving(name).await;
    // Too late for the run in memory: its outcome says it left, not that it was cancelled.
    run.control.cancel();
    *gate.open.lock().unwrap() = true;
    gate.opened.notify_all();
    assert_eq!(seen(&mut run).await, ["Proposal", "Suspended"]);
    assert!(matches!(
        run.outcome.await,
        Err(WorkflowError::Suspended { .. })
    ));
    assert_eq!(store.load("k").unwrap().unwrap().status, RunStatus::Waiting);

    // Resumed and cancelled at once (before its task could run): it ends cancelled, its
    // record too, its request republished first.
    let mut again = served.resume_stored("k", store.clone(), None).unwrap();
    again.control.cancel();
    assert_eq!(seen(&mut again).await, ["Proposal", "Cancelled"]);
    assert!(matches!(again.outcome.await, Err(WorkflowError::Cancelled)));
    assert_eq!(
        store.load("k").unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert_eq!(proposals.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_as_the_run_leaves_is_refused_and_answered_in_the_store_current_thread() {
    an_answer_as_the_run_leaves_is_refused_and_answered_in_the_store("answer-current").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_as_the_run_leaves_is_refused_and_answered_in_the_store_multi_thread() {
    an_answer_as_the_run_leaves_is_refused_and_answered_in_the_store("answer-multi").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancel_as_the_run_leaves_ends_it_in_the_store_current_thread() {
    a_cancel_as_the_run_leaves_ends_it_in_the_store("cancel-current").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_as_the_run_leaves_ends_it_in_the_store_multi_thread() {
    a_cancel_as_the_run_leaves_ends_it_in_the_store("cancel-multi").await;
}
