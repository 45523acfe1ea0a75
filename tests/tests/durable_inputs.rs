//! A durable run saves what it accepts before it acts on it (issue 18 items 2 and 3): an
//! answer is in the store as soon as it is routed, not when the step taking it completes; a
//! failed attempt is saved before its retry delay, with the time the delay ends, so a crash
//! during the delay goes on with the next attempt after the rest of the delay; an answer the run cannot take is refused and leaves the run as it was; a stray
//! answer of a type outside the graph does not fail the run's next checkpoint.
//!
//! A crash is the run's runtime dropped under it: its task is dropped mid-step, as a killed
//! process's would be, and nothing more is saved (the process-level kills are in
//! `durable_kill.rs` and `durable_wait.rs`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::process::{runtime, until};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, Store};

/// No wait in this file lasts longer than this.
const DEADLINE: Duration = Duration::from_secs(10);

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

/// A response no step of `Review` takes: outside its graph.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Stray(u32);

#[derive(Clone)]
struct Review {
    /// How many times `decide` started.
    decided: Arc<AtomicU32>,
    /// `decide` waits for a permit (given up front, or never: the crash happens there).
    gate: Arc<tokio::sync::Semaphore>,
    /// The attempts `flaky` saw, in order.
    attempts: Arc<Mutex<Vec<u32>>>,
}

impl Default for Review {
    fn default() -> Review {
        Review {
            decided: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            attempts: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Retry(u32);

#[workflow(durable)]
impl Review {
    #[step]
    async fn ask(&self, ev: StartEvent<u32>) -> Either<Ask, Retry> {
        if ev.0 == 0 {
            Either::Right(Retry(0))
        } else {
            Either::Left(Ask { n: ev.0 })
        }
    }

    #[step]
    async fn decide(&self, ev: Verdict) -> StopEvent<String> {
        self.decided.fetch_add(1, Ordering::SeqCst);
        self.gate
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
        StopEvent(format!("ok={}", ev.ok))
    }

    /// Fails its first attempt; the retry delay is long enough for a crash.
    #[step(retry = RetryPolicy::fixed(3, Duration::from_secs(3600)))]
    async fn flaky(
        &self,
        ctx: &Context<Self>,
        _ev: Retry,
    ) -> Result<StopEvent<String>, std::io::Error> {
        self.attempts.lock().unwrap().push(ctx.attempt());
        if ctx.attempt() == 1 {
            return Err(std::io::Error::other("first attempt fails"));
        }
        Ok(StopEvent(format!("attempt {}", ctx.attempt())))
    }
}

/// The run parks for its verdict and is saved as waiting.
fn parked(review: &Review, store: &Arc<MemoryStore>, multi: bool) {
    let runner = review
        .clone()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true);
    let parked = runtime(multi).block_on(async { runner.start_durable("r", 7).unwrap().await });
    assert!(
        matches!(parked, Err(WorkflowError::Suspended { .. })),
        "{parked:?}"
    );
    assert_eq!(store.load("r").unwrap().unwrap().status, RunStatus::Waiting);
}

fn an_answer_is_saved_before_the_step_taking_it_completes(multi: bool) {
    let review = Review::default();
    let store = Arc::new(MemoryStore::new());
    parked(&review, &store, multi);
    let runner = review
        .clone()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true);
    // The answer comes; the process dies while `decide` runs on it.
    let crashed = runtime(multi);
    crashed.block_on(async {
        let _run = runner.answer("r", Verdict { ok: true }).unwrap();
        until("decide to start", DEADLINE, || {
            review.decided.load(Ordering::SeqCst) == 1
        })
        .await;
        until("the answer to be saved", DEADLINE, || {
            let record = store.load("r").unwrap().unwrap();
            record.status == RunStatus::Running
                && record.snapshot.pending_requests.is_empty()
                && record
                    .snapshot
                    .in_flight
                    .iter()
                    .any(|c| c.step == "decide" && c.event.data == serde_json::json!({"ok": true}))
        })
        .await;
    });
    drop(crashed);
    // Resumed: the answer was not lost, `decide` runs on it again and the run ends.
    review.gate.add_permits(1);
    let output = runtime(multi).block_on(async {
        tokio::time::timeout(DEADLINE, runner.resume_stored("r").unwrap())
            .await
            .expect("the resumed run ends in time")
    });
    assert_eq!(output.unwrap(), "ok=true");
    assert_eq!(
        review.decided.load(Ordering::SeqCst),
        2,
        "in flight at the crash: run again once"
    );
    let record = store.load("r").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
}

#[test]
fn an_answer_is_saved_before_it_is_acted_on_current_thread() {
    an_answer_is_saved_before_the_step_taking_it_completes(false);
}

#[test]
fn an_answer_is_saved_before_it_is_acted_on_multi_thread() {
    an_answer_is_saved_before_the_step_taking_it_completes(true);
}

fn a_crash_during_a_retry_delay_goes_on_with_the_next_attempt(multi: bool) {
    let review = Review::default();
    let store = Arc::new(MemoryStore::new());
    let runner = review.clone().runner().store(store.clone());
    let crashed = runtime(multi);
    crashed.block_on(async {
        let _run = runner.start_durable("f", 0).unwrap();
        until("the failed attempt to be saved", DEADLINE, || {
            store.load("f").unwrap().is_some_and(|record| {
                record
                    .snapshot
                    .in_flight
                    .iter()
                    .any(|c| c.step == "flaky" && c.attempt == 2)
            })
        })
        .await;
    });
    drop(crashed);
    assert_eq!(*review.attempts.lock().unwrap(), [1]);
    let saved = store.load("f").unwrap().unwrap();
    let due = saved.snapshot.in_flight[0]
        .retry_at_ms
        .expect("the end of the retry delay is saved");
    // Resumed before the delay is over: the run waits out the rest of it (an hour), not a
    // fresh delay and not no delay at all.
    let resumed = runtime(multi);
    resumed.block_on(async {
        let run = runner.resume_stored("f").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            *review.attempts.lock().unwrap(),
            [1],
            "the next attempt waits for the end of the delay"
        );
        let snapshot = run.snapshot().await.unwrap();
        assert_eq!(snapshot.in_flight[0].attempt, 2);
        let kept = snapshot.in_flight[0].retry_at_ms.unwrap();
        assert!(kept.abs_diff(due) <= 5, "{kept} vs {due}");
    });
    drop(resumed);
    // The delay ended while the process was down (the record says it ended a second ago):
    // the resumed run goes on with the next attempt at once, never the failed one again.
    let lease = store
        .acquire(
            "f",
            &tidewater::store::Owner::this_process(),
            tidewater::store::Claim::Resume,
        )
        .unwrap();
    let mut record = store.load("f").unwrap().unwrap();
    record.snapshot.in_flight[0].retry_at_ms = Some(due - 3_600_000 - 1000);
    store.save("f", &lease, &record).unwrap();
    store.release("f", &lease).unwrap();
    let output = runtime(multi).block_on(async {
        tokio::time::timeout(DEADLINE, runner.resume_stored("f").unwrap())
            .await
            .expect("the resumed run ends in time")
    });
    assert_eq!(output.unwrap(), "attempt 2");
    assert_eq!(
        *review.attempts.lock().unwrap(),
        [1, 2],
        "the failed attempt is not run again"
    );
}

#[test]
fn a_crash_during_a_retry_delay_goes_on_with_the_next_attempt_current_thread() {
    a_crash_during_a_retry_delay_goes_on_with_the_next_attempt(false);
}

#[test]
fn a_crash_during_a_retry_delay_goes_on_with_the_next_attempt_multi_thread() {
    a_crash_during_a_retry_delay_goes_on_with_the_next_attempt(true);
}

#[test]
fn an_answer_the_run_cannot_take_is_refused_and_the_run_left_waiting() {
    let review = Review::default();
    review.gate.add_permits(1);
    let store = Arc::new(MemoryStore::new());
    parked(&review, &store, false);
    let before = store.load("r").unwrap().unwrap();
    let runner = review
        .clone()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true);
    runtime(false).block_on(async {
        let error = runner.answer("r", Stray(1)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "event `durable_inputs::Stray` cannot be delivered: a durable run can only store \
             events of its graph (`durable_inputs::Stray` is not an event of this workflow); the \
             run was left as it was"
        );
        let error = runner.answer("r", Ask { n: 1 }).unwrap_err();
        assert_eq!(
            error.to_string(),
            "event `durable_inputs::Ask` cannot be delivered: no step of `Review` accepts it; \
             the run was left as it was"
        );
        assert_eq!(store.load("r").unwrap().unwrap(), before);
        // The right answer still works.
        let output =
            tokio::time::timeout(DEADLINE, runner.answer("r", Verdict { ok: false }).unwrap())
                .await
                .unwrap();
        assert_eq!(output.unwrap(), "ok=false");
    });
    assert_eq!(review.decided.load(Ordering::SeqCst), 1);
}

async fn a_stray_answer_outside_the_graph_is_not_fatal() {
    let review = Review::default();
    review.gate.add_permits(1);
    let store = Arc::new(MemoryStore::new());
    let runner = review.clone().runner().store(store.clone());
    let mut run = runner.start_durable("s", 3).unwrap();
    let mut events = run.events();
    let mut asked = 0;
    while let Some(item) = tokio::time::timeout(DEADLINE, events.next()).await.unwrap() {
        if item.event::<Ask>().is_some() {
            asked += 1;
            // Kept in memory for a later wait_for, left out of the checkpoint it triggers.
            run.send_response(Stray(9));
            run.send_response(Verdict { ok: true });
        }
    }
    assert_eq!(asked, 1);
    assert_eq!(run.await.unwrap(), "ok=true");
    assert_eq!(
        store.load("s").unwrap().unwrap().status,
        RunStatus::Finished
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_stray_answer_outside_the_graph_is_not_fatal_current_thread() {
    a_stray_answer_outside_the_graph_is_not_fatal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_answer_outside_the_graph_is_not_fatal_multi_thread() {
    a_stray_answer_outside_the_graph_is_not_fatal().await;
}
