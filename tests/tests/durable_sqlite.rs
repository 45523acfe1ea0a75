//! Durable runs on `SqliteStore`: a run parked for a human is evicted to the database file and
//! answered later through another store on the same file (another process, in real life), on
//! a multi-threaded runtime where the resumed run's task starts at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, SqliteStore, Store};

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
        // A side effect before the request: it happens once, whatever the evictions.
        self.proposals.fetch_add(1, Ordering::SeqCst);
        Proposal {
            text: format!("publish {}", ev.0),
        }
    }

    #[step]
    async fn decide(&self, ev: Decision) -> StopEvent<String> {
        StopEvent(if ev.approved { "published" } else { "dropped" }.to_string())
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "workflow-durable-sqlite-{name}-{}",
            std::process::id()
        ));
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

/// `Runner::answer` resumes the run in a new task and sends it the answer. On a multi-threaded
/// runtime that task may run before the answer is sent: it must not find the run "parked with
/// nothing to do" and evict it again, losing the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_run_answered_on_a_multi_threaded_runtime_takes_its_answer() {
    let scratch = Scratch::new("answer");
    let db = scratch.0.join("runs.db");
    let proposals = Arc::new(AtomicU32::new(0));
    for i in 0..20 {
        let key = format!("post-{i}");
        let runner = Approve {
            proposals: proposals.clone(),
        }
        .runner()
        .store(Arc::new(SqliteStore::open(&db).unwrap()))
        .evict_when_waiting(true);
        let error = runner
            .start_durable(&key, format!("news {i}"))
            .unwrap()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, WorkflowError::Suspended { key: k } if *k == key),
            "{error:?}"
        );

        // "Another process": a new runner on a new connection to the same file.
        let other = Approve {
            proposals: proposals.clone(),
        }
        .runner()
        .store(Arc::new(SqliteStore::open(&db).unwrap()))
        .evict_when_waiting(true);
        let handler = other
            .answer(
                &key,
                Decision {
                    approved: i % 2 == 0,
                },
            )
            .unwrap();
        let output = tokio::time::timeout(Duration::from_secs(10), handler)
            .await
            .expect("the answered run ends");
        assert_eq!(
            output.unwrap_or_else(|e| panic!("run {i}: {e}")),
            if i % 2 == 0 { "published" } else { "dropped" },
            "run {i}"
        );
        assert_eq!(other.stored_output(&key).unwrap(), output_of(i));
    }
    assert_eq!(proposals.load(Ordering::SeqCst), 20, "one proposal per run");
    let store = SqliteStore::open(&db).unwrap();
    assert!(store.keys(RunStatus::Waiting).unwrap().is_empty());
    assert_eq!(store.keys(RunStatus::Finished).unwrap().len(), 20);
}

fn output_of(i: u32) -> &'static str {
    if i.is_multiple_of(2) {
        "published"
    } else {
        "dropped"
    }
}

// ---------------------------------------------------------------------------------------------
// Stream events of a step that is in flight at a checkpoint.

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Slow;

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Fast;

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Done(String);

/// Written to the stream by `slow` before it waits.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Note(String);

struct Streamer {
    /// `slow` waits this long after writing its note.
    pause: Duration,
}

#[workflow(durable)]
impl Streamer {
    #[step(emits = [Slow, Fast])]
    async fn begin(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        ctx.send_event(Slow);
        ctx.send_event(Fast);
    }

    #[step]
    async fn slow(&self, ctx: &Context<Self>, _ev: Slow) -> Done {
        ctx.write_event_to_stream(Note("slow started".into()));
        tokio::time::sleep(self.pause).await;
        Done("slow".into())
    }

    #[step]
    async fn fast(&self, _ev: Fast) -> Done {
        // Completes after `slow` wrote its note: the checkpoint after it counts the note.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Done("fast".into())
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Done) -> Option<StopEvent<u32>> {
        ctx.collect(ev, 2).map(|all| StopEvent(all.len() as u32))
    }
}

/// A step writes a stream event, then a checkpoint is taken while it is still running (another
/// step completed), then the process dies. On resume the step runs again and writes its event
/// again: the journal holds it once, because a step's events are journaled when it completes.
#[tokio::test]
async fn an_in_flight_steps_stream_events_are_journaled_once_across_a_resume() {
    let scratch = Scratch::new("in-flight-events");
    let db = scratch.0.join("runs.db");
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    // The "process that dies": runs until `fast` completes while `slow` waits, then stops.
    let runner = Streamer {
        pause: Duration::from_secs(60),
    }
    .runner()
    .store(store.clone());
    let run = runner.start_durable("s", ()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let checkpoint = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint with `slow` in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Some(record) = store.load("s").unwrap() else {
            continue;
        };
        let snapshot = &record.snapshot;
        // `begin`, `fast` (and `join` on its result) done, `slow` in flight after its note:
        // the note is journaled when `slow` completes, not before.
        if snapshot.completed >= 2
            && snapshot.in_flight.len() == 1
            && snapshot.in_flight[0].step == "slow"
        {
            break record;
        }
    };
    assert_eq!(checkpoint.snapshot.stream_seq, 0);
    assert!(store.events("s").unwrap().is_empty());
    // The process dies here: the store keeps this checkpoint (cancelling journals the run as
    // failed, so put the checkpoint back as a killed process would have left it).
    run.cancel();
    let _ = run.await;
    let lease = store
        .acquire(
            "s",
            &tidewater::store::Owner::this_process(),
            tidewater::store::Claim::Start,
        )
        .unwrap();
    store.save("s", &lease, &checkpoint).unwrap();
    store.release("s", &lease).unwrap();

    let resumed = Streamer {
        pause: Duration::ZERO,
    }
    .runner()
    .store(store.clone())
    .resume_stored("s")
    .unwrap();
    assert_eq!(resumed.await.unwrap(), 2);
    let notes: Vec<u64> = store
        .events("s")
        .unwrap()
        .iter()
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(notes, [1], "one `slow started` note, journaled once");
}

/// Two event types with the same last name in different modules: both are journaled under
/// their full names and decode back to their own types (the codec used to know one of them
/// only, and the run failed at its first checkpoint).
mod same_last_name {
    use super::*;

    mod a {
        #[derive(Debug, Clone, tidewater::Event, serde::Serialize, serde::Deserialize)]
        pub struct Ping(pub u32);
    }
    mod b {
        #[derive(Debug, Clone, tidewater::Event, serde::Serialize, serde::Deserialize)]
        pub struct Ping(pub String);
    }

    pub struct TwoPings;

    #[workflow(durable)]
    impl TwoPings {
        #[step]
        async fn first(&self, ev: StartEvent<u32>) -> a::Ping {
            a::Ping(ev.0)
        }
        #[step]
        async fn second(&self, ev: a::Ping) -> b::Ping {
            b::Ping(format!("n={}", ev.0))
        }
        #[step]
        async fn third(&self, ev: b::Ping) -> StopEvent<String> {
            StopEvent(ev.0)
        }
    }

    async fn run() {
        let store = Arc::new(tidewater::store::MemoryStore::new());
        let runner = TwoPings.runner().store(store.clone());
        let output = runner.start_durable("p", 4).unwrap().await.unwrap();
        assert_eq!(output, "n=4");
        let names: Vec<String> = store
            .history("p")
            .iter()
            .flat_map(|s| {
                let queued = s.queued.iter().map(|q| q.event.event.clone());
                queued.chain(s.in_flight.iter().map(|c| c.event.event.clone()))
            })
            .filter(|n| n.ends_with("::Ping"))
            .collect();
        assert!(names.iter().any(|n| n.ends_with("::a::Ping")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with("::b::Ping")), "{names:?}");
        // Each checkpoint with work left resumes to the same output.
        let history = store.history("p");
        let open = history
            .iter()
            .filter(|s| !s.queued.is_empty() || !s.in_flight.is_empty());
        assert_eq!(open.clone().count(), 3);
        for snapshot in open {
            let output = TwoPings.runner().resume(snapshot).unwrap().await.unwrap();
            assert_eq!(output, "n=4");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn journaled_and_resumed_current_thread() {
        run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journaled_and_resumed_multi_thread() {
        run().await;
    }
}

/// `evict_waiting_after(idle)`: a parked run stays in memory for `idle` (an answer that comes
/// sooner is taken in place), then leaves it; paused time makes the boundary exact.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_parked_run_is_evicted_after_its_idle_time_current_thread() {
    let store: Arc<dyn Store> = Arc::new(tidewater::store::MemoryStore::new());
    let proposals = Arc::new(AtomicU32::new(0));
    let runner = Approve {
        proposals: proposals.clone(),
    }
    .runner()
    .store(store.clone())
    .evict_waiting_after(Duration::from_millis(100));

    // Answered within the idle time: taken in place, no eviction.
    let mut soon = runner.start_durable("soon", "a".into()).unwrap();
    let mut events = soon.events();
    while let Some(item) = futures_util::StreamExt::next(&mut events).await {
        if item.event::<Proposal>().is_some() {
            tokio::time::sleep(Duration::from_millis(99)).await;
            soon.send_response(Decision { approved: true });
        }
    }
    assert_eq!(soon.await.unwrap(), "published");

    // Left waiting: still in memory just before the idle time, gone at it. The checkpoints go
    // through the store's writer thread, which paused time does not wait for: spin without
    // letting the clock run (yielding keeps the runtime busy) until the run is parked in the
    // store, so that its idle time is counted from here.
    let late = runner.start_durable("late", "b".into()).unwrap();
    let late = tokio::spawn(late);
    let spinning = std::time::Instant::now();
    while store
        .load("late")
        .unwrap()
        .is_none_or(|record| record.snapshot.pending_requests.is_empty())
    {
        assert!(
            spinning.elapsed() < std::time::Duration::from_secs(10),
            "the run never parked"
        );
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(99)).await;
    assert!(!late.is_finished(), "evicted before its idle time");
    assert_eq!(
        store.load("late").unwrap().unwrap().status,
        RunStatus::Running
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    let error = late.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, WorkflowError::Suspended { key } if key == "late"),
        "{error:?}"
    );
    assert_eq!(
        store.load("late").unwrap().unwrap().status,
        RunStatus::Waiting
    );

    // The answer brings it back; the step before the request does not run again.
    let answered = runner.answer("late", Decision { approved: false }).unwrap();
    assert_eq!(answered.await.unwrap(), "dropped");
    assert_eq!(proposals.load(Ordering::SeqCst), 2, "one proposal per run");
    assert_eq!(
        store.load("late").unwrap().unwrap().status,
        RunStatus::Finished
    );
}

/// On a multi-threaded runtime with a long idle time, an answer that comes at once is taken
/// in place (with `evict_when_waiting(true)` the run would have left memory at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_answered_within_its_idle_time_stays_in_memory_multi_thread() {
    let store: Arc<dyn Store> = Arc::new(tidewater::store::MemoryStore::new());
    let runner = Approve {
        proposals: Arc::new(AtomicU32::new(0)),
    }
    .runner()
    .store(store.clone())
    .evict_waiting_after(Duration::from_secs(30));
    let mut run = runner.start_durable("k", "a".into()).unwrap();
    let mut events = run.events();
    while let Some(item) = futures_util::StreamExt::next(&mut events).await {
        if item.event::<Proposal>().is_some() {
            run.send_response(Decision { approved: true });
        }
    }
    assert_eq!(run.await.unwrap(), "published");
    assert_eq!(
        store.load("k").unwrap().unwrap().status,
        RunStatus::Finished
    );
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Item(u32);

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Worked(u32);

/// Fans out three items to a one-worker step that takes 50 ms each, then sums them.
struct Batch {
    worked: Arc<std::sync::Mutex<Vec<u32>>>,
    started: Arc<tokio::sync::Notify>,
}

#[workflow(durable)]
impl Batch {
    #[step]
    async fn split(&self, ctx: &Context<Self>, _ev: StartEvent<u32>) -> Option<Item> {
        for i in 1..=3 {
            ctx.send_event(Item(i));
        }
        None
    }

    #[step]
    async fn work(&self, ev: Item) -> Worked {
        self.started.notify_one();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.worked.lock().unwrap().push(ev.0);
        Worked(ev.0 * 10)
    }

    #[step]
    async fn sum(&self, ctx: &Context<Self>, ev: Worked) -> Option<StopEvent<u32>> {
        let all = ctx.collect(ev, 3)?;
        Some(StopEvent(all.iter().map(|d| d.0).sum()))
    }
}

/// `Handler::suspend` (a server shutting down): the running step finishes and is
/// checkpointed, nothing else starts, the run is saved as waiting with its queue and leaves
/// memory; a resume finishes it with every item worked exactly once.
async fn suspend_then_resume() {
    let store: Arc<dyn Store> = Arc::new(tidewater::store::MemoryStore::new());
    let worked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Arc::new(tokio::sync::Notify::new());
    let runner = Batch {
        worked: worked.clone(),
        started: started.clone(),
    }
    .runner()
    .store(store.clone());
    let run = runner.start_durable("batch", 0).unwrap();
    // The first item is being worked on.
    started.notified().await;
    run.suspend();
    let error = run.await.unwrap_err();
    assert!(
        matches!(&error, WorkflowError::Suspended { key } if key == "batch"),
        "{error:?}"
    );
    assert_eq!(
        *worked.lock().unwrap(),
        [1],
        "the running step finished; nothing else started"
    );
    assert_eq!(
        store.load("batch").unwrap().unwrap().status,
        RunStatus::Waiting
    );

    let resumed = runner.resume_stored("batch").unwrap();
    assert_eq!(resumed.await.unwrap(), 60);
    assert_eq!(*worked.lock().unwrap(), [1, 2, 3], "each item worked once");
    assert_eq!(
        store.load("batch").unwrap().unwrap().status,
        RunStatus::Finished
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_suspended_run_stops_at_a_quiet_point_and_resumes_current_thread() {
    suspend_then_resume().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_run_stops_at_a_quiet_point_and_resumes_multi_thread() {
    suspend_then_resume().await;
}
