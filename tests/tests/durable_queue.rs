//! The run queue and the inbox of durable runs (issue 14.2): runs enqueued and worked off by
//! worker loops with a concurrency bound; messages (answers, cancels) posted to a stored run
//! from another runner or another store on the same file reach it wherever it lives,
//! once per message id, consumed with the checkpoint that routes them; a parked run with mail
//! is claimed and resumed by a worker. Each on both tokio runtimes, checking the outcome and
//! the sequence of events; a worker shutting down hands its runs over, and a dead worker's run
//! is claimed by the others. (PostgreSQL: `workflow-pg/tests/pg.rs`.)

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use integration_tests::process::{Scratch, runtime, until};
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, SqliteStore, Store};

/// No wait in this file lasts longer than this.
const DEADLINE: Duration = Duration::from_secs(10);

/// Never, in a test: a runner that polls this rarely gets its messages by wake-ups alone.
const NEVER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Verdict)]
struct Ask {
    n: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Verdict {
    ok: bool,
}

/// Written to the stream (and journaled) by each step.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Note(u32);

/// Asks for a verdict and stops with it.
#[derive(Clone)]
struct Desk {
    /// How many times `decide` started.
    decided: Arc<AtomicU32>,
    /// `decide` waits for a permit (given up front, or never: a crash happens there).
    gate: Arc<tokio::sync::Semaphore>,
    /// The invocation key of each `decide` started.
    keys: Arc<Mutex<Vec<String>>>,
}

impl Desk {
    fn open() -> Desk {
        Desk {
            decided: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(1000)),
            keys: Arc::default(),
        }
    }

    /// `decide` waits until the test opens the gate: a duplicate posted meanwhile finds the
    /// run live.
    fn closed() -> Desk {
        Desk {
            decided: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            keys: Arc::default(),
        }
    }
}

#[workflow(durable)]
impl Desk {
    #[step]
    async fn ask(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Ask {
        ctx.write_event_to_stream(Note(ev.0));
        Ask { n: ev.0 }
    }

    #[step]
    async fn decide(&self, ctx: &Context<Self>, ev: Verdict) -> StopEvent<String> {
        self.decided.fetch_add(1, Ordering::SeqCst);
        self.keys.lock().unwrap().push(ctx.invocation_key());
        self.gate.acquire().await.expect("the gate stays").forget();
        ctx.write_event_to_stream(Note(100));
        StopEvent(format!("ok={}", ev.ok))
    }
}

/// A run's journaled stream events, as the store keeps them (`Note` is outside the graph: its
/// debug text).
fn journal(store: &dyn Store, key: &str) -> Vec<String> {
    tidewater::store::current_events(store.events(key).unwrap())
        .into_iter()
        .map(|(_, record)| match record.data["debug"].as_str() {
            Some(debug) => debug.to_string(),
            // A request for a human, journaled as the run publishes it.
            None => record.event.rsplit("::").next().unwrap_or("?").to_string(),
        })
        .collect()
}

/// What a handler's stream shows, by event type name (the end item left out).
async fn names(mut stream: tidewater::EventStream) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(item) = stream.next().await {
        if let StreamItem::Event(event) = item {
            let name = event.name();
            names.push(name.rsplit("::").next().unwrap_or(name).to_string());
        }
    }
    names
}

fn answer_from_another_runner_reaches_a_live_run(multi: bool) {
    // The same store: its wake-up delivers the answer (the owner never polls).
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let desk = Desk::closed();
    let owner = desk
        .clone()
        .runner()
        .store(store.clone())
        .poll_interval(NEVER);
    let elsewhere = Desk::open().runner().store(store.clone());
    runtime(multi).block_on(async {
        let mut run = owner.start_durable("d", 7).unwrap();
        let stream = run.events();
        let seen = tokio::spawn(names(stream));
        until("the run to ask", DEADLINE, || {
            store
                .load("d")
                .unwrap()
                .is_some_and(|r| !r.snapshot.pending_requests.is_empty())
        })
        .await;
        assert!(
            elsewhere
                .post_event("d", "v-1", Verdict { ok: true })
                .unwrap()
        );
        assert!(
            !elsewhere
                .post_event("d", "v-1", Verdict { ok: false })
                .unwrap(),
            "a message id posted before is not posted again"
        );
        desk.gate.add_permits(1);
        let output = tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
        assert_eq!(output, "ok=true");
        assert_eq!(seen.await.unwrap(), ["Note", "Ask", "Note"]);
    });
    assert_eq!(
        desk.decided.load(Ordering::SeqCst),
        1,
        "one answer, one decision"
    );
    let record = store.load("d").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(
        record.snapshot.inbox, 1,
        "the end records the message it consumed"
    );
    assert_eq!(journal(&*store, "d"), ["Note(7)", "Ask", "Note(100)"]);
}

#[test]
fn answer_from_another_runner_reaches_a_live_run_current_thread() {
    answer_from_another_runner_reaches_a_live_run(false);
}

#[test]
fn answer_from_another_runner_reaches_a_live_run_multi_thread() {
    answer_from_another_runner_reaches_a_live_run(true);
}

fn answer_from_another_store_on_the_file_reaches_a_live_run(multi: bool) {
    // Another store on the same file (another process, in real life): nothing wakes the owner,
    // which finds the message by polling its inbox.
    let scratch = Scratch::new("queue", if multi { "poll-m" } else { "poll-c" });
    let path = scratch.path("runs.db");
    let mine: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let theirs: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let desk = Desk::closed();
    let owner = desk
        .clone()
        .runner()
        .store(mine.clone())
        .poll_interval(Duration::from_millis(20));
    let elsewhere = Desk::open().runner().store(theirs.clone());
    runtime(multi).block_on(async {
        let mut run = owner.start_durable("d", 3).unwrap();
        let seen = tokio::spawn(names(run.events()));
        until("the run to ask", DEADLINE, || {
            theirs
                .load("d")
                .unwrap()
                .is_some_and(|r| !r.snapshot.pending_requests.is_empty())
        })
        .await;
        assert!(
            elsewhere
                .post_event("d", "v-1", Verdict { ok: false })
                .unwrap()
        );
        assert!(
            !elsewhere
                .post_event("d", "v-1", Verdict { ok: true })
                .unwrap()
        );
        desk.gate.add_permits(1);
        let output = tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
        assert_eq!(output, "ok=false");
        assert_eq!(seen.await.unwrap(), ["Note", "Ask", "Note"]);
    });
    assert_eq!(desk.decided.load(Ordering::SeqCst), 1);
    let record = theirs.load("d").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(record.snapshot.inbox, 1);
    assert_eq!(journal(&*theirs, "d"), ["Note(3)", "Ask", "Note(100)"]);
}

#[test]
fn answer_from_another_store_on_the_file_reaches_a_live_run_current_thread() {
    answer_from_another_store_on_the_file_reaches_a_live_run(false);
}

#[test]
fn answer_from_another_store_on_the_file_reaches_a_live_run_multi_thread() {
    answer_from_another_store_on_the_file_reaches_a_live_run(true);
}

fn a_cancel_posted_to_the_inbox_cancels_the_live_run(multi: bool) {
    let scratch = Scratch::new("queue", if multi { "cancel-m" } else { "cancel-c" });
    let path = scratch.path("runs.db");
    let mine: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let theirs: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let desk = Desk::open();
    let owner = desk
        .clone()
        .runner()
        .store(mine)
        .poll_interval(Duration::from_millis(20));
    let elsewhere = Desk::open().runner().store(theirs.clone());
    runtime(multi).block_on(async {
        let mut run = owner.start_durable("c", 1).unwrap();
        let seen = tokio::spawn(names(run.events()));
        until("the run to ask", DEADLINE, || {
            theirs
                .load("c")
                .unwrap()
                .is_some_and(|r| !r.snapshot.pending_requests.is_empty())
        })
        .await;
        assert!(elsewhere.post_cancel("c", "stop-1").unwrap());
        let error = tokio::time::timeout(DEADLINE, run)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(error, WorkflowError::Cancelled), "{error:?}");
        assert_eq!(seen.await.unwrap(), ["Note", "Ask"]);
    });
    assert_eq!(desk.decided.load(Ordering::SeqCst), 0);
    assert_eq!(
        theirs.load("c").unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    let refused = elsewhere.post_cancel("c", "stop-2").unwrap_err();
    assert!(
        matches!(refused, WorkflowError::Durable { .. }),
        "an ended run takes no mail: {refused}"
    );
}

#[test]
fn a_cancel_posted_to_the_inbox_cancels_the_live_run_current_thread() {
    a_cancel_posted_to_the_inbox_cancels_the_live_run(false);
}

#[test]
fn a_cancel_posted_to_the_inbox_cancels_the_live_run_multi_thread() {
    a_cancel_posted_to_the_inbox_cancels_the_live_run(true);
}

fn a_parked_run_with_mail_is_claimed_by_a_worker(multi: bool) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let desk = Desk::open();
    let runner = desk
        .clone()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true)
        .poll_interval(NEVER);
    runtime(multi).block_on(async {
        let parked = runner.start_durable("p", 5).unwrap().await;
        assert!(
            matches!(parked, Err(WorkflowError::Suspended { .. })),
            "{parked:?}"
        );
        let worker = runner.work(1).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store.load("p").unwrap().unwrap().status,
            RunStatus::Waiting,
            "a parked run with no mail is left alone"
        );
        // The post wakes the worker (it never polls), which claims and resumes the run.
        assert!(runner.post_event("p", "v", Verdict { ok: true }).unwrap());
        until("the run to finish", DEADLINE, || {
            runner.stored_output("p").is_ok()
        })
        .await;
        assert_eq!(runner.stored_output("p").unwrap(), "ok=true");
        assert_eq!(worker.stop().await.unwrap(), 1);
    });
    assert_eq!(desk.decided.load(Ordering::SeqCst), 1);
    assert_eq!(journal(&*store, "p"), ["Note(5)", "Ask", "Note(100)"]);
}

#[test]
fn a_parked_run_with_mail_is_claimed_by_a_worker_current_thread() {
    a_parked_run_with_mail_is_claimed_by_a_worker(false);
}

#[test]
fn a_parked_run_with_mail_is_claimed_by_a_worker_multi_thread() {
    a_parked_run_with_mail_is_claimed_by_a_worker(true);
}

fn a_message_is_consumed_by_the_checkpoint_that_routes_it(multi: bool) {
    // The answer is routed and checkpointed, then the process dies in `decide`: the resumed
    // run re-runs `decide` from its checkpoint and does not take the message again.
    let store = Arc::new(MemoryStore::new());
    let closed = Desk::closed();
    let runner = closed
        .clone()
        .runner()
        .store(store.clone())
        .poll_interval(NEVER);
    {
        let rt = runtime(multi);
        rt.block_on(async {
            let run = runner.start_durable("x", 9).unwrap();
            until("the run to ask", DEADLINE, || {
                store
                    .load("x")
                    .unwrap()
                    .is_some_and(|r| !r.snapshot.pending_requests.is_empty())
            })
            .await;
            assert!(runner.post_event("x", "v", Verdict { ok: true }).unwrap());
            until("the answer to be checkpointed", DEADLINE, || {
                store
                    .load("x")
                    .unwrap()
                    .is_some_and(|r| r.snapshot.inbox == 1)
            })
            .await;
            until("decide to start", DEADLINE, || {
                closed.decided.load(Ordering::SeqCst) == 1
            })
            .await;
            std::mem::forget(run);
        });
        // The crash: the runtime and the run's task are dropped mid-step.
    }
    let record = store.load("x").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Running);
    assert_eq!(record.snapshot.in_flight.len(), 1, "decide was running");
    closed.gate.add_permits(10);
    let output = runtime(multi).block_on(async {
        let run = runner.resume_stored("x").unwrap();
        tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap()
    });
    assert_eq!(output, "ok=true");
    assert_eq!(
        closed.decided.load(Ordering::SeqCst),
        2,
        "decide ran again once (at least once), and the message was not delivered twice"
    );
    assert_eq!(
        *closed.keys.lock().unwrap(),
        ["x/decide/2", "x/decide/2"],
        "the re-run has the invocation key of the run that died: a service deduplicates by it"
    );
    assert_eq!(journal(&*store, "x"), ["Note(9)", "Ask", "Note(100)"]);
}

#[test]
fn a_message_is_consumed_by_the_checkpoint_that_routes_it_current_thread() {
    a_message_is_consumed_by_the_checkpoint_that_routes_it(false);
}

#[test]
fn a_message_is_consumed_by_the_checkpoint_that_routes_it_multi_thread() {
    a_message_is_consumed_by_the_checkpoint_that_routes_it(true);
}

#[test]
fn a_message_not_checkpointed_is_read_again_on_resume() {
    // Posted while no process runs the run (its owner died before reading it): whoever
    // resumes the run reads it from the inbox.
    let store = Arc::new(MemoryStore::new());
    let desk = Desk::open();
    let runner = desk
        .clone()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true);
    runtime(false).block_on(async {
        let parked = runner.start_durable("r", 2).unwrap().await;
        assert!(matches!(parked, Err(WorkflowError::Suspended { .. })));
        assert!(runner.post_event("r", "v", Verdict { ok: false }).unwrap());
        let output = runner.resume_stored("r").unwrap().await.unwrap();
        assert_eq!(output, "ok=false");
    });
    assert_eq!(desk.decided.load(Ordering::SeqCst), 1);
}

#[test]
fn a_message_the_run_cannot_take_is_refused_before_it_is_posted() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runner = Desk::open().runner().store(store.clone());
    runtime(false).block_on(async {
        let run = runner.start_durable("u", 1).unwrap();
        let refused = runner.post_event("u", "n", Note(1)).unwrap_err();
        assert!(
            matches!(refused, WorkflowError::Undeliverable { .. }),
            "{refused}"
        );
        assert!(
            store.inbox("u", 0).unwrap().is_empty(),
            "nothing was posted"
        );
        let missing = runner
            .post_event("nope", "v", Verdict { ok: true })
            .unwrap_err();
        assert!(
            matches!(missing, WorkflowError::Durable { .. }),
            "{missing}"
        );
        run.cancel();
    });
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Half(u32);

/// Two steps; records every invocation's key, and how many run at once.
#[derive(Clone, Default)]
struct Job {
    invocations: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

#[workflow(durable)]
impl Job {
    #[step]
    async fn double(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Half {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.invocations.lock().unwrap().push(ctx.invocation_key());
        ctx.write_event_to_stream(Note(ev.0));
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Half(ev.0 * 2)
    }

    #[step]
    async fn finish(&self, ctx: &Context<Self>, ev: Half) -> StopEvent<u32> {
        self.invocations.lock().unwrap().push(ctx.invocation_key());
        StopEvent(ev.0 + 1)
    }
}

fn enqueued_runs_are_worked_off(store: Arc<dyn Store>, multi: bool) {
    let job = Job::default();
    let runner = job
        .clone()
        .runner()
        .store(store.clone())
        .poll_interval(NEVER);
    runtime(multi).block_on(async {
        for i in 0..6 {
            runner.enqueue(&format!("k{i}"), i).unwrap();
        }
        let refused = runner.enqueue("k0", 99).unwrap_err();
        assert!(
            matches!(refused, WorkflowError::Durable { .. }),
            "{refused}"
        );
        // Woken by the enqueues (it never polls), two at a time.
        let worker = runner.work(2).unwrap();
        until("every run to finish", DEADLINE, || {
            (0..6).all(|i| runner.stored_output(&format!("k{i}")).is_ok())
        })
        .await;
        // A run enqueued while the worker waits is taken too.
        runner.enqueue("late", 50).unwrap();
        until("the late run", DEADLINE, || {
            runner.stored_output("late").is_ok()
        })
        .await;
        assert_eq!(worker.stop().await.unwrap(), 7);
    });
    for i in 0..6 {
        let key = format!("k{i}");
        assert_eq!(runner.stored_output(&key).unwrap(), 2 * i + 1);
        assert_eq!(journal(&*store, &key), [format!("Note({i})")]);
    }
    let invocations = job.invocations.lock().unwrap().clone();
    let unique: BTreeSet<&String> = invocations.iter().collect();
    assert_eq!(invocations.len(), 14, "two steps per run: {invocations:?}");
    assert_eq!(
        unique.len(),
        14,
        "no step invocation ran twice: {invocations:?}"
    );
    assert!(unique.contains(&"k3/double/1".to_string()), "{unique:?}");
    assert!(unique.contains(&"k3/finish/2".to_string()), "{unique:?}");
    assert!(
        job.most.load(Ordering::SeqCst) <= 2,
        "at most two runs at a time"
    );
}

#[test]
fn enqueued_runs_are_worked_off_memory_current_thread() {
    enqueued_runs_are_worked_off(Arc::new(MemoryStore::new()), false);
}

#[test]
fn enqueued_runs_are_worked_off_memory_multi_thread() {
    enqueued_runs_are_worked_off(Arc::new(MemoryStore::new()), true);
}

#[test]
fn enqueued_runs_are_worked_off_sqlite_current_thread() {
    let scratch = Scratch::new("queue", "work-c");
    enqueued_runs_are_worked_off(
        Arc::new(SqliteStore::open(scratch.path("q.db")).unwrap()),
        false,
    );
}

#[test]
fn enqueued_runs_are_worked_off_sqlite_multi_thread() {
    let scratch = Scratch::new("queue", "work-m");
    enqueued_runs_are_worked_off(
        Arc::new(SqliteStore::open(scratch.path("q.db")).unwrap()),
        true,
    );
}

#[test]
fn two_workers_on_two_stores_of_one_file_share_the_queue() {
    // Two stores on one file (two processes): each run is claimed once, by polling.
    let scratch = Scratch::new("queue", "two");
    let path = scratch.path("q.db");
    let job = Job::default();
    let a = job
        .clone()
        .runner()
        .store(Arc::new(SqliteStore::open(&path).unwrap()))
        .poll_interval(Duration::from_millis(10));
    let b = job
        .clone()
        .runner()
        .store(Arc::new(SqliteStore::open(&path).unwrap()))
        .poll_interval(Duration::from_millis(10));
    let (ran_a, ran_b) = runtime(true).block_on(async {
        let workers = (a.work(3).unwrap(), b.work(3).unwrap());
        for i in 0..12 {
            let enqueuer = if i % 2 == 0 { &a } else { &b };
            enqueuer.enqueue(&format!("k{i}"), i).unwrap();
        }
        until("every run to finish", DEADLINE, || {
            (0..12).all(|i| a.stored_output(&format!("k{i}")).is_ok())
        })
        .await;
        (
            workers.0.stop().await.unwrap(),
            workers.1.stop().await.unwrap(),
        )
    });
    assert_eq!(ran_a + ran_b, 12, "each run ended once");
    let invocations = job.invocations.lock().unwrap().clone();
    let unique: BTreeSet<&String> = invocations.iter().collect();
    assert_eq!(
        (invocations.len(), unique.len()),
        (24, 24),
        "{invocations:?}"
    );
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Second(u32);

/// `first` waits for its gate; each step records `<worker name> <invocation key>`.
#[derive(Clone)]
struct Relay {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    gate: Arc<tokio::sync::Semaphore>,
    first_started: Arc<tokio::sync::Notify>,
}

#[workflow(durable)]
impl Relay {
    #[step]
    async fn first(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Second {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {}", self.name, ctx.invocation_key()));
        self.first_started.notify_one();
        self.gate.acquire().await.expect("the gate stays").forget();
        Second(ev.0)
    }

    #[step]
    async fn second(&self, ctx: &Context<Self>, ev: Second) -> StopEvent<u32> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {}", self.name, ctx.invocation_key()));
        StopEvent(ev.0 * 10)
    }
}

fn a_worker_shutting_down_hands_its_runs_to_the_others(multi: bool) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let log = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let relay = |name| Relay {
        name,
        log: log.clone(),
        gate: gate.clone(),
        first_started: Arc::new(tokio::sync::Notify::new()),
    };
    let a = relay("A");
    let started = a.first_started.clone();
    let on_a = a.runner().store(store.clone()).poll_interval(NEVER);
    let on_b = relay("B")
        .runner()
        .store(store.clone())
        .poll_interval(NEVER);
    runtime(multi).block_on(async {
        let worker_a = on_a.work(1).unwrap();
        on_a.enqueue("r", 4).unwrap();
        tokio::time::timeout(DEADLINE, started.notified())
            .await
            .unwrap();
        // A shuts down while `first` runs: the step finishes, the run is saved with `second`
        // queued and released, and B (started after) takes it from there.
        // Every run in hand is asked to suspend when `shutdown` returns: the step is let go
        // after that.
        let shutdown = worker_a.shutdown();
        gate.add_permits(10);
        assert_eq!(shutdown.await.unwrap(), 1, "A ended its one run");
        let record = store.load("r").unwrap().unwrap();
        assert_eq!(record.status, RunStatus::Waiting, "suspended");
        assert_eq!(record.snapshot.queued.len(), 1, "with `second` queued");
        let worker_b = on_b.work(1).unwrap();
        until("B to finish the run", DEADLINE, || {
            on_b.stored_output("r").is_ok()
        })
        .await;
        assert_eq!(worker_b.stop().await.unwrap(), 1);
    });
    assert_eq!(on_b.stored_output("r").unwrap(), 40);
    assert_eq!(
        *log.lock().unwrap(),
        ["A r/first/1", "B r/second/2"],
        "each step once, the second on B"
    );
}

#[test]
fn a_worker_shutting_down_hands_its_runs_to_the_others_current_thread() {
    a_worker_shutting_down_hands_its_runs_to_the_others(false);
}

#[test]
fn a_worker_shutting_down_hands_its_runs_to_the_others_multi_thread() {
    a_worker_shutting_down_hands_its_runs_to_the_others(true);
}

fn a_cancel_posted_to_a_parked_run_is_carried_out_by_a_worker(multi: bool) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let desk = Desk::open();
    let runner = desk
        .clone()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true)
        .poll_interval(NEVER);
    runtime(multi).block_on(async {
        let parked = runner.start_durable("p", 1).unwrap().await;
        assert!(matches!(parked, Err(WorkflowError::Suspended { .. })));
        let worker = runner.work(1).unwrap();
        assert!(runner.post_cancel("p", "stop").unwrap());
        until("the run to be cancelled", DEADLINE, || {
            store.load("p").unwrap().unwrap().status == RunStatus::Cancelled
        })
        .await;
        assert_eq!(worker.stop().await.unwrap(), 1);
    });
    assert_eq!(desk.decided.load(Ordering::SeqCst), 0);
    assert_eq!(journal(&*store, "p"), ["Note(1)", "Ask"]);
}

#[test]
fn a_cancel_posted_to_a_parked_run_is_carried_out_by_a_worker_current_thread() {
    a_cancel_posted_to_a_parked_run_is_carried_out_by_a_worker(false);
}

#[test]
fn a_cancel_posted_to_a_parked_run_is_carried_out_by_a_worker_multi_thread() {
    a_cancel_posted_to_a_parked_run_is_carried_out_by_a_worker(true);
}

fn a_dead_workers_run_is_claimed_by_the_worker_loop(multi: bool) {
    use tidewater::store::{Owner, StoreErrorKind};
    // A worker process of this host claimed the run and died (no process has its pid).
    let mut dead = Owner::this_process();
    dead.pid = u32::MAX - 7;
    dead.id = format!("{}@{}#dead", dead.pid, dead.host);
    if !dead.is_gone() {
        return; // no way to tell a dead process here (no `/proc`)
    }
    let scratch = Scratch::new("queue", if multi { "dead-m" } else { "dead-c" });
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(scratch.path("q.db")).unwrap());
    let job = Job::default();
    let runner = job
        .clone()
        .runner()
        .store(store.clone())
        .poll_interval(NEVER);
    runner.enqueue("k", 20).unwrap();
    let (key, lease) = store.claim("Job", &dead).unwrap().expect("the run is free");
    assert_eq!(key, "k");
    runtime(multi).block_on(async {
        // No wake-up comes: the worker finds the run at its first look.
        let worker = runner.work(1).unwrap();
        until("the run", DEADLINE, || runner.stored_output("k").is_ok()).await;
        assert_eq!(worker.stop().await.unwrap(), 1);
    });
    assert_eq!(runner.stored_output("k").unwrap(), 41);
    assert_eq!(
        *job.invocations.lock().unwrap(),
        ["k/double/1", "k/finish/2"]
    );
    assert_eq!(journal(&*store, "k"), ["Note(20)"]);
    let refused = store
        .save(
            "k",
            &lease,
            &tidewater::store::conformance::record(RunStatus::Running, 1, 0),
        )
        .unwrap_err();
    assert_eq!(
        refused.kind,
        StoreErrorKind::Fenced,
        "the dead claim is fenced"
    );
}

#[test]
fn a_dead_workers_run_is_claimed_by_the_worker_loop_current_thread() {
    a_dead_workers_run_is_claimed_by_the_worker_loop(false);
}

#[test]
fn a_dead_workers_run_is_claimed_by_the_worker_loop_multi_thread() {
    a_dead_workers_run_is_claimed_by_the_worker_loop(true);
}

// ---------------------------------------------------------------------------------------------

/// A runtime built without `enable_time`: durable runs are refused with a clear error before
/// anything is written, instead of their inbox watcher panicking in a task nobody awaits; an
/// enqueued run (a store write only) stays queued for a worker on a proper runtime.
fn durable_runs_need_timers(multi: bool) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let job = Job::default();
    let runner = job.clone().runner().store(store.clone());
    let no_timers = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread().build()
    }
    .unwrap();
    no_timers.block_on(async {
        let refused = |error: WorkflowError| {
            let text = error.to_string();
            assert!(
                matches!(error, WorkflowError::Durable { .. }) && text.contains("enable_all()"),
                "{text}"
            );
        };
        refused(runner.start_durable("k", 1).unwrap_err());
        assert!(
            store.load("k").unwrap().is_none(),
            "nothing written for `k`"
        );
        runner.enqueue("queued", 2).unwrap();
        refused(runner.work(1).unwrap_err());
        refused(runner.adopt_orphans().unwrap_err());
        refused(runner.resume_stored("queued").unwrap_err());
    });
    assert!(job.invocations.lock().unwrap().is_empty(), "no step ran");
    // The queued run is intact: a worker on a runtime with timers runs it.
    runtime(multi).block_on(async {
        let worker = runner.work(1).unwrap();
        until("the queued run", DEADLINE, || {
            runner.stored_output("queued").is_ok()
        })
        .await;
        worker.stop().await.unwrap();
    });
    assert_eq!(runner.stored_output("queued").unwrap(), 5);
    assert_eq!(
        *job.invocations.lock().unwrap(),
        ["queued/double/1", "queued/finish/2"]
    );
}

#[test]
fn durable_runs_need_timers_current_thread() {
    durable_runs_need_timers(false);
}

#[test]
fn durable_runs_need_timers_multi_thread() {
    durable_runs_need_timers(true);
}

// ---------------------------------------------------------------------------------------------

/// A store in memory whose inbox reads wait until the test lets them finish (the network to
/// PostgreSQL, a slow disk), and that records a read that waited in vain.
#[derive(Default)]
struct SlowInbox {
    inner: MemoryStore,
    /// Set when a read has begun.
    reading: std::sync::atomic::AtomicBool,
    /// Sent to by the test to let the reads finish.
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// A read was never let finish: whatever let it go was blocked behind it.
    stalled: std::sync::atomic::AtomicBool,
}

impl Store for SlowInbox {
    fn acquire(
        &self,
        key: &str,
        owner: &tidewater::store::Owner,
        claim: tidewater::store::Claim,
    ) -> Result<tidewater::store::Lease, tidewater::store::StoreError> {
        self.inner.acquire(key, owner, claim)
    }
    fn save(
        &self,
        key: &str,
        lease: &tidewater::store::Lease,
        record: &tidewater::store::RunRecord,
    ) -> Result<(), tidewater::store::StoreError> {
        self.inner.save(key, lease, record)
    }
    fn release(
        &self,
        key: &str,
        lease: &tidewater::store::Lease,
    ) -> Result<(), tidewater::store::StoreError> {
        self.inner.release(key, lease)
    }
    fn load(
        &self,
        key: &str,
    ) -> Result<Option<tidewater::store::RunRecord>, tidewater::store::StoreError> {
        self.inner.load(key)
    }
    fn append_event(
        &self,
        key: &str,
        lease: &tidewater::store::Lease,
        seq: u64,
        event: &tidewater::snapshot::EventRecord,
    ) -> Result<(), tidewater::store::StoreError> {
        self.inner.append_event(key, lease, seq, event)
    }
    fn events(
        &self,
        key: &str,
    ) -> Result<Vec<(u64, tidewater::snapshot::EventRecord)>, tidewater::store::StoreError> {
        self.inner.events(key)
    }
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, tidewater::store::StoreError> {
        self.inner.keys(status)
    }
    fn post(
        &self,
        key: &str,
        message: &tidewater::store::Message,
    ) -> Result<bool, tidewater::store::StoreError> {
        self.inner.post(key, message)
    }
    fn inbox(
        &self,
        key: &str,
        after: u64,
    ) -> Result<Vec<(u64, tidewater::store::Message)>, tidewater::store::StoreError> {
        if let Some(release) = self.release.lock().unwrap().take() {
            self.reading.store(true, Ordering::SeqCst);
            if release.recv_timeout(DEADLINE).is_err() {
                self.stalled.store(true, Ordering::SeqCst);
            }
        }
        self.inner.inbox(key, after)
    }
    fn wakeups(&self) -> Option<&tidewater::store::Wakeups> {
        self.inner.wakeups()
    }
}

/// A live durable run reads its store inbox off the runtime's threads: while the read waits
/// (here until the test, a task on the same runtime, lets it finish), the runtime goes on.
/// On the current-thread runtime a read on the runtime's thread would hold the only thread,
/// so the test's task could never let it finish.
fn inbox_reads_do_not_hold_the_runtime(multi: bool) {
    let store = Arc::new(SlowInbox::default());
    let desk = Desk::open();
    let runner = desk
        .clone()
        .runner()
        .store(store.clone())
        .poll_interval(NEVER);
    runtime(multi).block_on(async {
        let run = runner.start_durable("s", 3).unwrap();
        until("the run to ask", DEADLINE, || {
            store
                .load("s")
                .unwrap()
                .is_some_and(|r| !r.snapshot.pending_requests.is_empty())
        })
        .await;
        let (release, reads) = std::sync::mpsc::channel();
        *store.release.lock().unwrap() = Some(reads);
        assert!(runner.post_event("s", "v-1", Verdict { ok: true }).unwrap());
        until("the watcher to read its inbox", DEADLINE, || {
            store.reading.load(Ordering::SeqCst)
        })
        .await;
        release.send(()).unwrap();
        let output = tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
        assert_eq!(output, "ok=true");
    });
    assert!(
        !store.stalled.load(Ordering::SeqCst),
        "the inbox read held the runtime"
    );
    assert_eq!(journal(&*store, "s"), ["Note(3)", "Ask", "Note(100)"]);
    assert_eq!(
        store.load("s").unwrap().unwrap().status,
        RunStatus::Finished
    );
}

#[test]
fn inbox_reads_do_not_hold_the_runtime_current_thread() {
    inbox_reads_do_not_hold_the_runtime(false);
}

#[test]
fn inbox_reads_do_not_hold_the_runtime_multi_thread() {
    inbox_reads_do_not_hold_the_runtime(true);
}
