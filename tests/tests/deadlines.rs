//! A deadline is a deadline (issue 10, item 1): a step that blocks its thread (a synchronous
//! call, a CPU loop) cannot turn a timed-out run into a success. On the multi-thread runtime
//! the caller gets the timeout at the deadline; on the current-thread runtime, when the step
//! lets go; never `Ok`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidewater::Outcome;
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Work(u64);

/// `hold` blocks its thread for `ms` milliseconds (as a synchronous HTTP call would).
struct Blocking {
    finished: Arc<AtomicBool>,
}

#[workflow]
impl Blocking {
    #[step]
    async fn begin(&self, ev: StartEvent<u64>) -> Work {
        Work(ev.0)
    }

    #[step]
    async fn hold(&self, ev: Work) -> StopEvent<u64> {
        std::thread::sleep(Duration::from_millis(ev.0));
        self.finished.store(true, Ordering::SeqCst);
        StopEvent(ev.0)
    }
}

fn blocking() -> (Blocking, Arc<AtomicBool>) {
    let finished = Arc::new(AtomicBool::new(false));
    (
        Blocking {
            finished: finished.clone(),
        },
        finished,
    )
}

fn assert_timed_out_naming_hold(error: &WorkflowError) {
    match error {
        WorkflowError::TimedOut { timeout, active } => {
            assert_eq!(*timeout, Duration::from_millis(200));
            assert_eq!(active.first(), Some(&"hold"), "{error}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_step_cannot_hold_the_caller_past_the_deadline() {
    let (flow, finished) = blocking();
    let runner = flow.timeout(Duration::from_millis(200));
    let started = Instant::now();
    let error = runner.run(1_500).await.unwrap_err();
    let took = started.elapsed();
    assert_timed_out_naming_hold(&error);
    assert!(
        took < Duration::from_millis(1_000),
        "answered at the deadline: {took:?}"
    );
    assert!(
        !finished.load(Ordering::SeqCst),
        "the step was still holding its thread"
    );

    // A handler's stream ends with the timeout too, once the step lets go.
    let (flow, _) = blocking();
    let mut handler = flow.timeout(Duration::from_millis(200)).start(600);
    let mut events = handler.events();
    let error = (&mut handler).await.unwrap_err();
    assert_timed_out_naming_hold(&error);
    let mut last = None;
    while let Some(item) = events.next().await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(StreamItem::End(Outcome::TimedOut(_)))),
        "{last:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn on_one_thread_a_blocking_step_still_ends_as_a_timeout() {
    let (flow, finished) = blocking();
    let error = flow
        .timeout(Duration::from_millis(200))
        .run(600)
        .await
        .unwrap_err();
    assert_timed_out_naming_hold(&error);
    assert!(
        finished.load(Ordering::SeqCst),
        "one thread: the step ran to its end first"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_ready_in_time_is_not_cut_off() {
    let (flow, _) = blocking();
    assert_eq!(
        flow.timeout(Duration::from_millis(500))
            .run(50)
            .await
            .unwrap(),
        50
    );
}

/// A step with its own time limit that blocks past it.
struct StepLimit;

#[workflow]
impl StepLimit {
    #[step(timeout = Duration::from_millis(100))]
    async fn hold(&self, ev: StartEvent<u64>) -> StopEvent<u64> {
        std::thread::sleep(Duration::from_millis(ev.0));
        StopEvent(ev.0)
    }
}

async fn a_step_that_blocks_past_its_own_limit_times_out() {
    let error = StepLimit.run(400).await.unwrap_err();
    assert!(
        matches!(error, WorkflowError::StepTimedOut { step: "hold", .. }),
        "{error:?}"
    );
    assert_eq!(StepLimit.run(10).await.unwrap(), 10, "in time: not cut off");
}

#[tokio::test(flavor = "current_thread")]
async fn a_step_that_blocks_past_its_own_limit_times_out_current_thread() {
    a_step_that_blocks_past_its_own_limit_times_out().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_blocks_past_its_own_limit_times_out_multi_thread() {
    a_step_that_blocks_past_its_own_limit_times_out().await;
}
