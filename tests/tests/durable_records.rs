//! What a durable run leaves in its store says what happened (issue 18 item 5): a cancelled run
//! is recorded as cancelled (not failed), in memory and in SQLite; a state or an event holding
//! a NaN is refused when it is saved, naming the field, instead of being saved as `null` that
//! cannot be resumed; a run resumed after a crash keeps its original deadline instead of
//! getting a fresh time limit.
//!
//! A crash is the run's runtime dropped under it, as in `durable_inputs.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use integration_tests::process::{runtime, until};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, SqliteStore, Store};

/// No wait in this file lasts longer than this.
const DEADLINE: Duration = Duration::from_secs(10);

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tidewater-durable-records-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
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

// --- A cancelled run is recorded as cancelled ------------------------------------------------

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Work(u32);

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Note(String);

/// `hold` writes a note, then waits for ever: the run is cancelled there.
struct Hold;

#[workflow(durable)]
impl Hold {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Work {
        Work(ev.0)
    }

    #[step]
    async fn hold(&self, ctx: &Context<Self>, ev: Work) -> StopEvent<u32> {
        ctx.write_event_to_stream(Note(format!("holding {}", ev.0)));
        std::future::pending::<()>().await;
        StopEvent(ev.0)
    }
}

async fn a_cancelled_run_is_recorded_as_cancelled(store: Arc<dyn Store>) {
    let runner = Hold.runner().store(store.clone());
    let mut run = runner.start_durable("c", 5).unwrap();
    let mut events = run.events();
    let first = tokio::time::timeout(DEADLINE, events.next()).await.unwrap();
    assert_eq!(first.unwrap().event::<Note>().unwrap().0, "holding 5");
    run.cancel();
    let result = tokio::time::timeout(DEADLINE, run).await.unwrap();
    assert!(
        matches!(result, Err(WorkflowError::Cancelled)),
        "{result:?}"
    );
    let rest: Vec<StreamItem> = events.collect().await;
    assert!(
        matches!(rest.as_slice(), [StreamItem::End(Outcome::Cancelled)]),
        "{rest:?}"
    );
    let record = store.load("c").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(record.error, None);
    assert_eq!(store.keys(RunStatus::Cancelled).unwrap(), ["c"]);
    assert!(store.keys(RunStatus::Failed).unwrap().is_empty());
    // It has ended: nothing to resume, and its output says why there is none.
    let error = runner.resume_stored("c").unwrap_err().to_string();
    assert!(error.contains("the run has ended (Cancelled)"), "{error}");
    let error = runner.stored_output("c").unwrap_err().to_string();
    assert!(error.contains("it is Cancelled"), "{error}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_run_is_recorded_as_cancelled_in_memory_current_thread() {
    a_cancelled_run_is_recorded_as_cancelled(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_is_recorded_as_cancelled_in_memory_multi_thread() {
    a_cancelled_run_is_recorded_as_cancelled(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_run_is_recorded_as_cancelled_in_sqlite_current_thread() {
    let dir = Scratch::new("cancel");
    let store = SqliteStore::open(dir.0.join("runs.db")).unwrap();
    a_cancelled_run_is_recorded_as_cancelled(Arc::new(store)).await;
    // Another reader of the file sees it so too.
    let monitor = SqliteStore::open_read_only(dir.0.join("runs.db")).unwrap();
    assert_eq!(monitor.keys(RunStatus::Cancelled).unwrap(), ["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_is_recorded_as_cancelled_in_sqlite_multi_thread() {
    let dir = Scratch::new("cancel");
    let store = SqliteStore::open(dir.0.join("runs.db")).unwrap();
    a_cancelled_run_is_recorded_as_cancelled(Arc::new(store)).await;
}

// --- A NaN is refused when it is saved -------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Scores {
    name: String,
    scores: Vec<f64>,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Reading {
    value: f64,
}

/// `measure` puts `value` in the state's scores (and in a reading it emits, when `into_event`).
struct Measure {
    value: f64,
    into_event: bool,
}

#[workflow(durable, state = Scores)]
impl Measure {
    #[step]
    async fn measure(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> Reading {
        if self.into_event {
            Reading { value: self.value }
        } else {
            ctx.update_state(|s| {
                s.name = ev.0;
                s.scores = vec![1.5, self.value];
            });
            Reading { value: 0.0 }
        }
    }

    #[step]
    async fn report(&self, ev: Reading) -> StopEvent<f64> {
        StopEvent(ev.value)
    }
}

async fn a_nan_is_refused_when_it_is_saved() {
    let store = Arc::new(MemoryStore::new());
    // In the state.
    let runner = Measure {
        value: f64::NAN,
        into_event: false,
    }
    .runner()
    .store(store.clone());
    let result = runner.start_durable("s", "m".into()).unwrap().await;
    let Err(WorkflowError::Snapshot(error)) = result else {
        panic!("{result:?}");
    };
    assert_eq!(error.path, "state");
    assert_eq!(
        error.reason,
        "`scores[1]` is NaN, which JSON cannot hold (it would be saved as null and the run \
         could not be resumed)"
    );
    // The store keeps the last checkpoint that could be saved: no null in place of a number.
    let record = store.load("s").unwrap().unwrap();
    assert_eq!(record.snapshot.state["scores"], serde_json::json!([]));
    assert!(!record.snapshot.to_json().contains("null"));
    // A finite number goes through.
    let runner = Measure {
        value: 2.5,
        into_event: true,
    }
    .runner()
    .store(store.clone());
    let output = runner
        .start_durable("fine", "m".into())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(output, 2.5);

    // In an event.
    let runner = Measure {
        value: f64::INFINITY,
        into_event: true,
    }
    .runner()
    .store(store.clone());
    let result = runner.start_durable("e", "m".into()).unwrap().await;
    let Err(WorkflowError::Snapshot(error)) = result else {
        panic!("{result:?}");
    };
    assert_eq!(
        error.path, "in_flight[0].event",
        "the reading `report` takes"
    );
    assert!(
        error
            .reason
            .starts_with("`value` is inf, which JSON cannot hold"),
        "{error}"
    );
    let record = store.load("e").unwrap().unwrap();
    assert_eq!(
        record.status,
        RunStatus::Running,
        "the last good checkpoint"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_nan_is_refused_when_it_is_saved_current_thread() {
    a_nan_is_refused_when_it_is_saved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_is_refused_when_it_is_saved_multi_thread() {
    a_nan_is_refused_when_it_is_saved().await;
}

// --- A resumed run keeps its deadline --------------------------------------------------------

/// `work` waits for ever the first time (the crash happens there); re-run, it takes 300 ms.
struct Timed {
    started: Arc<AtomicU32>,
}

#[workflow(durable)]
impl Timed {
    #[step]
    async fn work(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        if self.started.fetch_add(1, Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        StopEvent(ev.0)
    }
}

fn a_resumed_run_keeps_its_deadline(multi: bool) {
    let limit = Duration::from_millis(700);
    let started = Arc::new(AtomicU32::new(0));
    let store = Arc::new(MemoryStore::new());
    let runner = Timed {
        started: started.clone(),
    }
    .runner()
    .store(store.clone())
    .timeout(limit);
    let crashed = runtime(multi);
    let began = std::time::SystemTime::now();
    crashed.block_on(async {
        let _run = runner.start_durable("t", 1).unwrap();
        until("the step to start", DEADLINE, || {
            started.load(Ordering::SeqCst) == 1
        })
        .await;
    });
    drop(crashed);
    let record = store.load("t").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Running);
    let deadline = record.snapshot.deadline_ms.expect("the deadline is saved");
    let began = began
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        (began..=began + 700 + 1000).contains(&deadline),
        "{deadline} vs start {began}"
    );
    // The process comes back after the deadline: the run gets no fresh 700 ms (in which its
    // 300 ms step would end), it times out at once.
    std::thread::sleep(limit + Duration::from_millis(100));
    let result = runtime(multi).block_on(async {
        tokio::time::timeout(DEADLINE, runner.resume_stored("t").unwrap())
            .await
            .expect("the resumed run ends in time")
    });
    let Err(WorkflowError::TimedOut { timeout, .. }) = result else {
        panic!("{result:?}");
    };
    assert_eq!(timeout, limit);
    let record = store.load("t").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    let kept = record.snapshot.deadline_ms.unwrap();
    assert!(kept.abs_diff(deadline) <= 5, "{kept} vs {deadline}");
}

#[test]
fn a_resumed_run_keeps_its_deadline_current_thread() {
    a_resumed_run_keeps_its_deadline(false);
}

#[test]
fn a_resumed_run_keeps_its_deadline_multi_thread() {
    a_resumed_run_keeps_its_deadline(true);
}

// --- A cancelled run's record keeps the failures before the cancel --------------------------

/// `call` fails; it is retried after an hour (the cancel comes during the delay).
struct FlakyCall;

#[workflow(durable)]
impl FlakyCall {
    #[step(retry = RetryPolicy::fixed(3, Duration::from_secs(3600)))]
    async fn call(&self, _ev: StartEvent<u32>) -> Result<StopEvent<u32>, std::io::Error> {
        Err(std::io::Error::other("connection refused"))
    }
}

async fn a_cancelled_record_keeps_the_failures_before_the_cancel() {
    let store = Arc::new(MemoryStore::new());
    let runner = FlakyCall.runner().store(store.clone());
    let mut run = runner.start_durable("f", 1).unwrap();
    until("the first attempt to fail", DEADLINE, || {
        !run.failures().is_empty()
    })
    .await;
    run.cancel();
    assert!(matches!((&mut run).await, Err(WorkflowError::Cancelled)));
    let record = store.load("f").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(
        record.error.as_deref(),
        Some("cancelled after step `call` attempt 1 failed: connection refused")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_record_keeps_the_failures_before_the_cancel_current_thread() {
    a_cancelled_record_keeps_the_failures_before_the_cancel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_record_keeps_the_failures_before_the_cancel_multi_thread() {
    a_cancelled_record_keeps_the_failures_before_the_cancel().await;
}
