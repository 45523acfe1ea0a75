//! `PgStore` against a real PostgreSQL server that the tests start themselves: a private
//! instance in a temp dir (`initdb`, `pg_ctl`; as root through `runuser -u postgres`) on a free
//! port of 127.0.0.1, stopped and removed at the end.
//!
//! - the store contract (`tidewater::store::conformance`), as for the built-in stores;
//! - a durable run that survives a crash-restart of PostgreSQL (`pg_ctl stop -m immediate`)
//!   in the middle, with a gapless journal;
//! - a worker paused past its lease is taken over by another, and its late completion is fenced;
//! - the run queue and the inbox (issue 14.2): enqueued runs worked off; two workers on two
//!   stores run each step invocation once; a dead worker's run taken by the worker loop when its
//!   lease runs out; an answer posted through another store reaching the live run by NOTIFY, by
//!   polling, and (with neither) staying in the inbox; a cancel posted elsewhere; a parked run
//!   answered elsewhere resumed by a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, Store, StoreErrorKind};
use tidewater_pg::{PgOptions, PgStore};

mod support;
use support::PgServer;

#[test]
fn pg_store_conforms_to_the_store_contract() {
    let server = PgServer::start("conformance");
    let n = AtomicUsize::new(0);
    tidewater::store::conformance::check(|| {
        let db = format!("conf{}", n.fetch_add(1, Ordering::Relaxed));
        PgStore::connect(&server.create_db(&db)).unwrap()
    });
    assert!(
        n.load(Ordering::Relaxed) >= 13,
        "every rule ran on a fresh database"
    );
}

// ---------------------------------------------------------------------------------------------

/// One hop of the chain.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Hop(u32);

/// Written to the stream at every hop (journaled).
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Tick(u32);

/// Hops `ev.0` times, pausing at each, then stops with the count; `hops` counts invocations.
struct Chain {
    pause: Duration,
    hops: Arc<AtomicUsize>,
    gate: Option<Arc<tokio::sync::Notify>>,
}

#[workflow(durable)]
impl Chain {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Hop {
        Hop(ev.0)
    }

    #[step]
    async fn hop(&self, ctx: &Context<Self>, ev: Hop) -> Either<Hop, StopEvent<u32>> {
        self.hops.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        tokio::time::sleep(self.pause).await;
        ctx.write_event_to_stream(Tick(ev.0));
        if ev.0 == 0 {
            Either::Right(StopEvent(self.hops.load(Ordering::SeqCst) as u32))
        } else {
            Either::Left(Hop(ev.0 - 1))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_run_survives_a_crash_restart_of_postgres() {
    let server = Arc::new(PgServer::start("crash"));
    let info = server.create_db("runs");
    let store = Arc::new(
        PgStore::open(PgOptions::new(&info).reconnect_for(Duration::from_secs(20))).unwrap(),
    );
    let hops = Arc::new(AtomicUsize::new(0));
    let runner = Chain {
        pause: Duration::from_millis(60),
        hops: hops.clone(),
        gate: None,
    }
    .runner()
    .store(store.clone());
    let run = runner.start_durable("job", 8).unwrap();
    // After a few hops, PostgreSQL dies and comes back 300 ms later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hops.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restarter = {
        let server = server.clone();
        std::thread::spawn(move || {
            server.crash();
            std::thread::sleep(Duration::from_millis(300));
            server.up();
        })
    };
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends in time")
        .expect("the run finishes despite the crash");
    restarter.join().unwrap();
    assert_eq!(output, 9, "9 hops (8 to 0), none repeated in this process");
    let record = store.load("job").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(record.output, Some(serde_json::json!(9)));
    let seqs: Vec<u64> = store
        .events("job")
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "a gapless journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_is_taken_over_and_fenced() {
    let server = PgServer::start("lease");
    let info = server.create_db("runs");
    // Two workers on one database (in real life two machines).
    let a =
        Arc::new(PgStore::open(PgOptions::new(&info).lease_ttl(Duration::from_secs(60))).unwrap());
    let b = Arc::new(PgStore::connect(&info).unwrap());
    let gate = Arc::new(tokio::sync::Notify::new());
    let a_hops = Arc::new(AtomicUsize::new(0));
    let run_a = Chain {
        pause: Duration::ZERO,
        hops: a_hops.clone(),
        gate: Some(gate.clone()),
    }
    .runner()
    .store(a.clone())
    .start_durable("job", 2)
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a_hops.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "worker A never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Worker B is refused while A's lease runs.
    let b_hops = Arc::new(AtomicUsize::new(0));
    let runner_b = Chain {
        pause: Duration::ZERO,
        hops: b_hops.clone(),
        gate: None,
    }
    .runner()
    .store(b.clone());
    let refused = runner_b.resume_stored("job").map(drop).unwrap_err();
    assert!(
        refused.to_string().contains("is owned by process"),
        "{refused}"
    );
    // A worker looking for orphans finds none: A holds its run.
    assert!(runner_b.adopt_orphans().unwrap().is_empty());

    // A stalls past its lease (as a worker frozen by SIGSTOP or a partition would): its lease
    // runs out, and B takes the run over and finishes it.
    server.sql("runs", "UPDATE tidewater_runs SET lease_until = 0");
    // B finds the run by itself, as a worker polling for orphans does.
    let mut adopted = runner_b.adopt_orphans().unwrap();
    let keys: Vec<&str> = adopted.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["job"]);
    let output = tokio::time::timeout(Duration::from_secs(20), adopted.pop().unwrap().1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output, 3, "B ran the three hops (2, 1, 0)");

    // A wakes up and completes its step: the write is fenced, and its run ends with that.
    for _ in 0..3 {
        gate.notify_one();
    }
    let error = tokio::time::timeout(Duration::from_secs(20), run_a)
        .await
        .unwrap()
        .unwrap_err();
    match &error {
        WorkflowError::Store(e) => assert_eq!(e.kind, StoreErrorKind::Fenced, "{e}"),
        other => panic!("expected a fenced write, got {other:?}"),
    }
    let record = b.load("job").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(
        record.output,
        Some(serde_json::json!(3)),
        "B's result stands"
    );
    let seqs: Vec<u64> = b.events("job").unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3], "one journal, B's");
}

/// Rows this build cannot read are errors naming the run, never skipped nor read as something
/// else: an unknown status (in `load`, in every `keys` list and in `acquire`), an event
/// numbered below 1, a record of a newer snapshot format with fields this build does not know.
#[test]
fn pg_store_reports_the_rows_it_cannot_read() {
    use tidewater::store::conformance::{event, record};
    use tidewater::store::{Claim, Owner};
    let server = PgServer::start("rows");
    let store = PgStore::connect(&server.create_db("rows")).unwrap();
    let me = Owner::this_process();
    for key in ["a", "b", "c"] {
        let lease = store.acquire(key, &me, Claim::Start).unwrap();
        store.append_event(key, &lease, 1, &event(1)).unwrap();
        store
            .save(key, &lease, &record(RunStatus::Running, 1, 1))
            .unwrap();
    }
    server.sql(
        "rows",
        "UPDATE tidewater_runs SET status = 'paused' WHERE key = 'b'",
    );
    let unknown = "store: run `b` has an unknown status `paused` (written by a newer build?)";
    assert_eq!(store.load("b").unwrap_err().to_string(), unknown);
    for status in RunStatus::ALL {
        assert_eq!(store.keys(status).unwrap_err().to_string(), unknown);
    }
    assert_eq!(
        store
            .acquire("b", &Owner::this_process(), Claim::Resume)
            .unwrap_err()
            .to_string(),
        unknown
    );
    server.sql("rows", "DELETE FROM tidewater_runs WHERE key = 'b'");

    server.sql(
        "rows",
        "UPDATE tidewater_events SET seq = 0 WHERE key = 'a'",
    );
    assert_eq!(
        store.events("a").unwrap_err().to_string(),
        "store: run `a` has an impossible event number 0"
    );

    let mut newer = serde_json::to_value(record(RunStatus::Running, 1, 1)).unwrap();
    newer["snapshot"]["format"] = serde_json::json!(99);
    newer["snapshot"]["a_field_from_the_future"] = serde_json::json!(true);
    let text = newer.to_string().replace('\'', "''");
    server.sql(
        "rows",
        &format!("UPDATE tidewater_runs SET record = '{text}' WHERE key = 'c'"),
    );
    let error = store.load("c").unwrap_err().to_string();
    assert!(
        error.starts_with("store: the record of run `c` is of unsupported format 99:"),
        "{error}"
    );
    assert_eq!(store.keys(RunStatus::Running).unwrap(), ["a", "c"]);
}

// ---------------------------------------------------------------------------------------------
// The run queue and the inbox on PostgreSQL (issue 14.2).

/// Never, in a test: a runner that polls this rarely gets its messages by notifications alone.
const NEVER: Duration = Duration::from_secs(3600);

/// Polls `condition` every 5 ms; panics naming `what` after 20 s.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Half(u32);

/// Two steps; records every step invocation's key, in the order they ran.
#[derive(Clone, Default)]
struct Job {
    invocations: Arc<std::sync::Mutex<Vec<String>>>,
}

#[workflow(durable)]
impl Job {
    #[step]
    async fn double(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Half {
        self.invocations.lock().unwrap().push(ctx.invocation_key());
        ctx.write_event_to_stream(Tick(ev.0));
        tokio::time::sleep(Duration::from_millis(2)).await;
        Half(ev.0 * 2)
    }

    #[step]
    async fn finish(&self, ctx: &Context<Self>, ev: Half) -> StopEvent<u32> {
        self.invocations.lock().unwrap().push(ctx.invocation_key());
        StopEvent(ev.0 + 1)
    }
}

/// Every step invocation ran once: two per run, all different.
fn each_once(job: &Job, runs: usize) {
    let invocations = job.invocations.lock().unwrap().clone();
    let unique: std::collections::BTreeSet<&String> = invocations.iter().collect();
    assert_eq!(invocations.len(), 2 * runs, "{invocations:?}");
    assert_eq!(
        unique.len(),
        2 * runs,
        "a step invocation ran twice: {invocations:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn enqueued_runs_are_worked_off_on_postgres_current_thread() {
    let server = PgServer::start("work-c");
    let store = Arc::new(PgStore::connect(&server.create_db("runs")).unwrap());
    let job = Job::default();
    let runner = job
        .clone()
        .runner()
        .store(store.clone())
        .poll_interval(NEVER);
    for i in 0..5 {
        runner.enqueue(&format!("k{i}"), i).unwrap();
    }
    // Woken by the notifications of the enqueues (it never polls).
    let worker = runner.work(2).unwrap();
    until("every run", || {
        (0..5).all(|i| runner.stored_output(&format!("k{i}")).is_ok())
    })
    .await;
    runner.enqueue("late", 10).unwrap();
    until("the late run", || runner.stored_output("late").is_ok()).await;
    assert_eq!(worker.stop().await.unwrap(), 6);
    for i in 0..5 {
        let key = format!("k{i}");
        assert_eq!(runner.stored_output(&key).unwrap(), 2 * i + 1);
        let ticks: Vec<serde_json::Value> = store
            .events(&key)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.data)
            .collect();
        assert_eq!(
            ticks,
            [serde_json::json!({ "debug": format!("Tick({i})") })]
        );
    }
    each_once(&job, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_postgres_never_run_one_run_twice() {
    let server = PgServer::start("two");
    let info = server.create_db("runs");
    // Two stores: two machines, each with its own pool, heartbeat and LISTEN connection.
    let a = Arc::new(PgStore::connect(&info).unwrap());
    let b = Arc::new(PgStore::connect(&info).unwrap());
    let job = Job::default();
    let on_a = job
        .clone()
        .runner()
        .store(a.clone())
        .poll_interval(Duration::from_millis(200));
    let on_b = job
        .clone()
        .runner()
        .store(b.clone())
        .poll_interval(Duration::from_millis(200));
    let workers = (on_a.work(3).unwrap(), on_b.work(3).unwrap());
    for i in 0..24 {
        let enqueuer = if i % 2 == 0 { &on_a } else { &on_b };
        enqueuer.enqueue(&format!("k{i}"), i).unwrap();
    }
    until("every run", || {
        (0..24).all(|i| on_a.stored_output(&format!("k{i}")).is_ok())
    })
    .await;
    let (ran_a, ran_b) = (
        workers.0.stop().await.unwrap(),
        workers.1.stop().await.unwrap(),
    );
    assert_eq!(
        ran_a + ran_b,
        24,
        "each run ended once ({ran_a} on A, {ran_b} on B)"
    );
    each_once(&job, 24);
    for i in 0..24 {
        let record = a.load(&format!("k{i}")).unwrap().unwrap();
        assert_eq!(record.status, RunStatus::Finished);
        assert_eq!(record.output, Some(serde_json::json!(2 * i + 1)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_run_is_taken_by_the_worker_loop_when_its_lease_runs_out() {
    use tidewater::store::Owner;
    let server = PgServer::start("expiry");
    let info = server.create_db("runs");
    let job = Job::default();
    let live = Arc::new(PgStore::connect(&info).unwrap());
    let runner = job
        .clone()
        .runner()
        .store(live.clone())
        .poll_interval(Duration::from_millis(50));
    runner.enqueue("j", 4).unwrap();
    // A worker on another machine claims the run, then dies: its heartbeat stops with it.
    let mut elsewhere = Owner::this_process();
    elsewhere.host = "another-machine".into();
    elsewhere.id = "1@another-machine#1".into();
    let dead = PgStore::open(PgOptions::new(&info).lease_ttl(Duration::from_millis(600))).unwrap();
    let (key, lease) = dead
        .claim("Job", &elsewhere)
        .unwrap()
        .expect("the run is free");
    assert_eq!((key.as_str(), lease.epoch), ("j", 2));
    let worker = runner.work(1).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        live.load("j").unwrap().unwrap().status,
        RunStatus::Running,
        "not taken while the lease runs"
    );
    assert!(job.invocations.lock().unwrap().is_empty());
    drop(dead);
    until("the worker to finish the run", || {
        runner.stored_output("j").is_ok()
    })
    .await;
    assert_eq!(runner.stored_output("j").unwrap(), 9);
    assert_eq!(worker.stop().await.unwrap(), 1);
    each_once(&job, 1);
    // The dead worker's lease is fenced, should it come back.
    let refused = live
        .save(
            "j",
            &lease,
            &tidewater::store::conformance::record(RunStatus::Running, 1, 0),
        )
        .unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Fenced, "{refused}");
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Verdict)]
struct Ask;

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Verdict(bool);

/// Asks, and stops with the verdict once the gate lets it.
#[derive(Clone)]
struct Desk {
    decided: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Default for Desk {
    fn default() -> Desk {
        Desk {
            decided: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(1000)),
        }
    }
}

#[workflow(durable)]
impl Desk {
    #[step]
    async fn ask(&self, _ev: StartEvent<()>) -> Ask {
        Ask
    }

    #[step]
    async fn decide(&self, ev: Verdict) -> StopEvent<bool> {
        self.decided.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.expect("the gate stays").forget();
        StopEvent(ev.0)
    }
}

/// A run on `owner` waits for its verdict; a second store (another machine) posts it.
/// `Some(output)` when the run ended within `limit`.
async fn answer_from_elsewhere(
    owner: Arc<PgStore>,
    elsewhere: Arc<PgStore>,
    poll: Duration,
    limit: Duration,
) -> Option<bool> {
    // `decide` holds the run until both posts are made: the duplicate finds it live.
    let desk = Desk {
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        ..Desk::default()
    };
    let runner = desk
        .clone()
        .runner()
        .store(owner.clone())
        .poll_interval(poll);
    let run = runner.start_durable("d", ()).unwrap();
    until("the run to ask", || {
        owner
            .load("d")
            .unwrap()
            .is_some_and(|r| !r.snapshot.pending_requests.is_empty())
    })
    .await;
    let poster = Desk::default().runner().store(elsewhere);
    assert!(poster.post_event("d", "v-1", Verdict(true)).unwrap());
    assert!(
        !poster.post_event("d", "v-1", Verdict(false)).unwrap(),
        "a duplicate"
    );
    desk.gate.add_permits(1);
    let output = tokio::time::timeout(limit, run).await.ok()?.unwrap();
    assert_eq!(desk.decided.load(Ordering::SeqCst), 1);
    let record = owner.load("d").unwrap().unwrap();
    assert_eq!(
        (record.status, record.snapshot.inbox),
        (RunStatus::Finished, 1)
    );
    Some(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_posted_on_another_machine_wakes_the_live_run_by_notify() {
    let server = PgServer::start("notify");
    let info = server.create_db("runs");
    let owner = Arc::new(PgStore::connect(&info).unwrap());
    let elsewhere = Arc::new(PgStore::open(PgOptions::new(&info).listen(false)).unwrap());
    // The owner never polls: only the notification can bring the answer in.
    let output = answer_from_elsewhere(owner, elsewhere, NEVER, Duration::from_secs(20)).await;
    assert_eq!(output, Some(true));
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_posted_on_another_machine_is_polled_without_notify() {
    let server = PgServer::start("poll");
    let info = server.create_db("runs");
    let deaf = || Arc::new(PgStore::open(PgOptions::new(&info).listen(false)).unwrap());
    // No LISTEN: polling every 50 ms brings the answer in.
    let output = answer_from_elsewhere(
        deaf(),
        deaf(),
        Duration::from_millis(50),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(output, Some(true));
}

#[tokio::test(flavor = "current_thread")]
async fn without_notify_nor_polling_the_answer_waits() {
    // The counter-proof of the two tests above: with neither, the live run does not get the
    // answer (it is in its inbox, for its next resume).
    let server = PgServer::start("deaf");
    let info = server.create_db("runs");
    let deaf = || Arc::new(PgStore::open(PgOptions::new(&info).listen(false)).unwrap());
    let owner = deaf();
    let output =
        answer_from_elsewhere(owner.clone(), deaf(), NEVER, Duration::from_millis(500)).await;
    assert_eq!(output, None);
    assert_eq!(
        owner.inbox("d", 0).unwrap().len(),
        1,
        "the answer is in the inbox"
    );
    assert_eq!(
        owner.load("d").unwrap().unwrap().snapshot.inbox,
        0,
        "not consumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_posted_on_another_machine_cancels_the_live_run() {
    let server = PgServer::start("cancel");
    let info = server.create_db("runs");
    let owner = Arc::new(PgStore::connect(&info).unwrap());
    let elsewhere = Arc::new(PgStore::connect(&info).unwrap());
    let desk = Desk::default();
    let runner = desk
        .clone()
        .runner()
        .store(owner.clone())
        .poll_interval(NEVER);
    let run = runner.start_durable("c", ()).unwrap();
    until("the run to ask", || {
        owner
            .load("c")
            .unwrap()
            .is_some_and(|r| !r.snapshot.pending_requests.is_empty())
    })
    .await;
    let poster = Desk::default().runner().store(elsewhere.clone());
    assert!(poster.post_cancel("c", "stop").unwrap());
    let error = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, WorkflowError::Cancelled), "{error:?}");
    assert_eq!(
        elsewhere.load("c").unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert_eq!(desk.decided.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_answered_on_another_machine_is_resumed_by_a_worker() {
    let server = PgServer::start("parked");
    let info = server.create_db("runs");
    let worker_store = Arc::new(PgStore::connect(&info).unwrap());
    let server_store = Arc::new(PgStore::connect(&info).unwrap());
    let desk = Desk::default();
    let runner = desk
        .clone()
        .runner()
        .store(worker_store.clone())
        .evict_when_waiting(true)
        .poll_interval(NEVER);
    let parked = runner.start_durable("p", ()).unwrap().await;
    assert!(
        matches!(parked, Err(WorkflowError::Suspended { .. })),
        "{parked:?}"
    );
    let worker = runner.work(2).unwrap();
    let poster = Desk::default().runner().store(server_store);
    assert!(poster.post_event("p", "v", Verdict(false)).unwrap());
    until("the worker to finish the run", || {
        runner.stored_output("p").is_ok()
    })
    .await;
    assert!(!runner.stored_output("p").unwrap());
    assert_eq!(worker.stop().await.unwrap(), 1);
    assert_eq!(desk.decided.load(Ordering::SeqCst), 1);
}
