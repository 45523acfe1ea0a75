//! A server on a SQLite file evicts a durable run that waited for a human past its idle time
//! (the run leaves memory, its record says waiting, its handler stays `running` and
//! readable); the answer posted to `/events/{id}` brings it back, and a stream reader that was
//! there before the eviction sees the rest with no gap and no duplicate. A bad answer is
//! refused with the run left parked; a parked run can be cancelled, also while it is leaving
//! memory (its file already says waiting, its handler does not know yet).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use common::{Ask, Scratch, Sse, get, post, wait_ended};
use serde_json::{Value, json};
use tidewater::prelude::*;
use tidewater::serve::{ServedRun, ServedWorkflow, StartError, served};
use tidewater::snapshot::EventRecord;
use tidewater::store::{
    Claim, Lease, Message, Owner, RunRecord, RunStatus, SqliteStore, Store, StoreError, Wakeups,
    Write,
};

async fn serve(db: &std::path::Path, proposals: &Arc<AtomicU32>) -> std::net::SocketAddr {
    let server = tidewater_server::Server::new()
        .serve_workflow(
            "ask",
            Ask {
                proposals: proposals.clone(),
            }
            .runner(),
        )
        .sqlite(db)
        .evict_idle_after(Some(Duration::from_millis(150)));
    common::spawn(server).await
}

async fn start(addr: std::net::SocketAddr, topic: &str) -> String {
    let reply = post(
        addr,
        "/workflows/ask/run-nowait",
        &json!({ "start_event": topic }).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["handler_id"].as_str().unwrap().to_string()
}

/// Waits until the run's record in the file says `status` (the run left memory when it says
/// waiting: only the run itself writes that, as it goes).
async fn wait_status(db: &std::path::Path, id: &str, status: RunStatus) {
    let store = SqliteStore::open(db).unwrap();
    for _ in 0..500 {
        if store.load(id).unwrap().is_some_and(|r| r.status == status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {id} never reached {status:?}");
}

fn answer(approved: bool) -> String {
    json!({ "event": { "type": "Verdict", "value": { "approved": approved } } }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_leaves_memory_and_its_answer_brings_it_back() {
    let scratch = Scratch::new("evict-answer");
    let db = scratch.0.join("server.db");
    let proposals = Arc::new(AtomicU32::new(0));
    let addr = serve(&db, &proposals).await;
    let id = start(addr, "tidewater").await;

    // A reader from the start, kept open across the eviction.
    let from_start = format!("/events/{id}?after_sequence=-1");
    let (status, mut sse) = Sse::open(addr, &from_start, &[]).await;
    assert_eq!(status, 200);
    let first = loop {
        match sse.next().await.expect("the request arrives") {
            common::Frame::Event(seq, data) => break (seq, data),
            common::Frame::Heartbeat => {}
        }
    };
    assert_eq!(first.1["type"], "Review", "{first:?}");

    wait_status(&db, &id, RunStatus::Waiting).await;
    // Parked out of memory, the handler is still running and readable.
    let handler = get(addr, &format!("/handlers/{id}")).await;
    assert_eq!(handler.status, 202, "{}", handler.body);
    assert_eq!(handler.json()["status"], "running");

    // A bad answer is refused, naming the field; the run stays parked.
    let bad = post(
        addr,
        &format!("/events/{id}"),
        &json!({ "event": { "type": "Verdict", "value": { "approved": "maybe" } } }).to_string(),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("approved"), "{}", bad.body);
    let unknown = post(
        addr,
        &format!("/events/{id}"),
        &json!({ "event": { "type": "Nope", "value": {} } }).to_string(),
    )
    .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert_eq!(
        SqliteStore::open(&db)
            .unwrap()
            .load(&id)
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Waiting
    );

    let sent = post(addr, &format!("/events/{id}"), &answer(true)).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.json()["status"], "sent");

    let done = wait_ended(addr, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["value"]["result"], "published", "{done}");
    // The reader saw the rest: the stop event next, numbered on from the request.
    let rest: Vec<(u64, Value)> = sse.events().await;
    let types: Vec<&str> = rest
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["StopEvent"], "{rest:?}");
    assert_eq!(rest[0].0, first.0 + 1, "{rest:?}");
    // The whole log, read afresh: no gap, no duplicate.
    let (_, mut again) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    let all = again.events().await;
    let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..all.len() as u64).collect::<Vec<_>>(), "{all:?}");
    let types: Vec<&str> = all
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Review", "StopEvent"], "{all:?}");
    assert_eq!(
        proposals.load(Ordering::SeqCst),
        1,
        "the step before the request ran once"
    );
    wait_status(&db, &id, RunStatus::Finished).await;

    // Once ended, more answers are refused.
    let late = post(addr, &format!("/events/{id}"), &answer(true)).await;
    assert_eq!(late.status, 409, "{}", late.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_can_be_cancelled() {
    let scratch = Scratch::new("evict-cancel");
    let db = scratch.0.join("server.db");
    let proposals = Arc::new(AtomicU32::new(0));
    let addr = serve(&db, &proposals).await;
    let id = start(addr, "never").await;
    wait_status(&db, &id, RunStatus::Waiting).await;

    let cancelled = post(addr, &format!("/handlers/{id}/cancel"), "").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    let handler = wait_ended(addr, &id).await;
    assert_eq!(handler["status"], "cancelled", "{handler}");
    let (_, mut sse) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    let types: Vec<String> = sse
        .events()
        .await
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["Review", "WorkflowCancelledEvent"]);
    // The record in the file has ended too: nothing resumes it at the next start.
    let record = SqliteStore::open(&db).unwrap().load(&id).unwrap().unwrap();
    assert!(
        !matches!(record.status, RunStatus::Running | RunStatus::Waiting),
        "{:?}",
        record.status
    );
    assert_eq!(proposals.load(Ordering::SeqCst), 1);
}

/// Holds back the report that a run's eviction is durable: the first batch that saves a run
/// as waiting is written, then its writer (the store's commit thread) waits until the test
/// lets it go. Meanwhile the file says waiting, and the run has not left memory: its handler
/// is neither parked nor ended.
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    held: AtomicBool,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// The server's store, with the gate on its batches.
struct GatedStore {
    inner: Arc<dyn Store>,
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
            // Bounded, so that a broken server fails the test instead of hanging it.
            let _ = self
                .gate
                .opened
                .wait_timeout_while(open, Duration::from_secs(20), |open| !*open)
                .unwrap();
        }
        results
    }
}

/// The served workflow, its durable runs journaled through the gated store.
struct Gated {
    inner: Arc<dyn ServedWorkflow>,
    gate: Arc<Gate>,
    store: OnceLock<Arc<dyn Store>>,
}

impl Gated {
    fn store(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        self.store
            .get_or_init(|| {
                Arc::new(GatedStore {
                    inner: store,
                    gate: self.gate.clone(),
                })
            })
            .clone()
    }
}

impl ServedWorkflow for Gated {
    fn graph(&self) -> &'static tidewater::Graph {
        self.inner.graph()
    }
    fn start_schema(&self) -> Value {
        self.inner.start_schema()
    }
    fn stop_schema(&self) -> Value {
        self.inner.stop_schema()
    }
    fn event_schemas(&self) -> Vec<(&'static str, Value)> {
        self.inner.event_schemas()
    }
    fn start(&self, input: Value) -> Result<ServedRun, tidewater::serve::InvalidEvent> {
        self.inner.start(input)
    }
    fn durable(&self) -> bool {
        self.inner.durable()
    }
    fn start_stored(
        &self,
        key: &str,
        input: Value,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, StartError> {
        self.inner
            .start_stored(key, input, self.store(store), evict_after)
    }
    fn resume_stored(
        &self,
        key: &str,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, WorkflowError> {
        self.inner
            .resume_stored(key, self.store(store), evict_after)
    }
    fn answer_stored(
        &self,
        key: &str,
        kind: &str,
        value: Value,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, StartError> {
        self.inner
            .answer_stored(key, kind, value, self.store(store), evict_after)
    }
    fn work_stored(
        &self,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
        max_runs: usize,
    ) -> Result<tidewater::Worker, WorkflowError> {
        self.inner
            .work_stored(self.store(store), evict_after, max_runs)
    }
    fn enqueue_stored(
        &self,
        key: &str,
        input: Value,
        store: Arc<dyn Store>,
    ) -> Result<(), StartError> {
        self.inner.enqueue_stored(key, input, self.store(store))
    }
    fn encode_event(
        &self,
        kind: &str,
        value: Value,
    ) -> Result<EventRecord, tidewater::serve::InvalidEvent> {
        self.inner.encode_event(kind, value)
    }
}

/// A server whose runs' first eviction is held back by a gate; returns once a run started on
/// `topic` is being evicted: its file says waiting, its handler is still running (not parked).
async fn held_eviction(
    db: &std::path::Path,
    proposals: &Arc<AtomicU32>,
    topic: &str,
) -> (std::net::SocketAddr, String, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    gate.armed.store(true, Ordering::SeqCst);
    let gated = Arc::new(Gated {
        inner: served(
            Ask {
                proposals: proposals.clone(),
            }
            .runner(),
        ),
        gate: gate.clone(),
        store: OnceLock::new(),
    });
    let server = tidewater_server::Server::new()
        .serve_erased("ask", gated)
        .sqlite(db)
        .evict_idle_after(Some(Duration::from_millis(150)));
    let addr = common::spawn(server).await;
    let id = start(addr, topic).await;
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
    wait_status(db, &id, RunStatus::Waiting).await;
    let handler = get(addr, &format!("/handlers/{id}")).await;
    assert_eq!(handler.status, 202, "{}", handler.body);
    (addr, id, gate)
}

/// Posts `body` to `path` while the eviction is held, lets the eviction commit once the
/// request has had time to reach the run in memory (a request slower than that finds the run
/// parked: the test then passes the ordinary way), and returns the reply, which must come
/// before the server's 5 s bound on waiting for the run.
async fn post_during_eviction(
    addr: std::net::SocketAddr,
    path: String,
    body: String,
    gate: &Gate,
) -> common::Reply {
    let request = tokio::spawn(async move { post(addr, &path, &body).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.release();
    tokio::time::timeout(Duration::from_secs(4), request)
        .await
        .expect("answered once the run has left memory, not after the server's 5 s bound")
        .unwrap()
}

/// The types of the handler's whole event log.
async fn log(addr: std::net::SocketAddr, id: &str) -> Vec<String> {
    let (_, mut sse) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    sse.events()
        .await
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// A cancel that comes while the run is leaving memory (its file says waiting, the commit of
/// that write not reported yet, so its handler is not parked) reaches a run that will never
/// look at it again: the run is cancelled in the store once it has left, and the cancel
/// still ends it (it used to stay parked, its handler running, the reply coming after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_while_it_is_evicted_is_cancelled() {
    let scratch = Scratch::new("evict-cancel-race");
    let db = scratch.0.join("server.db");
    let proposals = Arc::new(AtomicU32::new(0));
    let (addr, id, gate) = held_eviction(&db, &proposals, "never").await;

    let path = format!("/handlers/{id}/cancel");
    let cancelled = post_during_eviction(addr, path, String::new(), &gate).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    let handler = wait_ended(addr, &id).await;
    assert_eq!(handler["status"], "cancelled", "{handler}");
    assert_eq!(log(addr, &id).await, ["Review", "WorkflowCancelledEvent"]);
    let record = SqliteStore::open(&db).unwrap().load(&id).unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(proposals.load(Ordering::SeqCst), 1);
}

/// An answer that comes while the run is leaving memory is refused by the run (it decided to
/// leave, under its mail's lock, with no mail) and given to it in the store once it has left:
/// the run finishes with it (it used to be lost with the run, which stayed parked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_answered_while_it_is_evicted_takes_its_answer() {
    let scratch = Scratch::new("evict-answer-race");
    let db = scratch.0.join("server.db");
    let proposals = Arc::new(AtomicU32::new(0));
    let (addr, id, gate) = held_eviction(&db, &proposals, "tidewater").await;

    let sent = post_during_eviction(addr, format!("/events/{id}"), answer(true), &gate).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.json()["status"], "sent");
    let done = wait_ended(addr, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["value"]["result"], "published", "{done}");
    assert_eq!(log(addr, &id).await, ["Review", "StopEvent"]);
    wait_status(&db, &id, RunStatus::Finished).await;
    assert_eq!(proposals.load(Ordering::SeqCst), 1);
}
