//! The executor's rules (foundation): routing, broadcast, worker limits, FIFO queues, timeouts,
//! step errors, first stop wins, no task outlives its run, stuck runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tidewater::prelude::*;

use integration_tests::Live;

#[derive(Debug, Clone, Event)]
struct Ping(u32);

#[derive(Debug, Clone, Event)]
struct Pong(&'static str);

/// The order in which things happened in a run.
#[derive(Debug, Default, Clone)]
struct Trace(Vec<String>);

// ---------------------------------------------------------------------------------------------
// Broadcast: one event goes to every step that accepts it.

struct Broadcast;

#[workflow(state = Trace)]
impl Broadcast {
    #[step]
    async fn start(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Ping {
        ctx.update_state(|t| t.0.push("start".into()));
        Ping(ev.0)
    }

    #[step]
    async fn left(&self, ctx: &Context<Self>, ev: Ping) -> Pong {
        ctx.update_state(|t| t.0.push(format!("left {}", ev.0)));
        Pong("left")
    }

    #[step]
    async fn right(&self, ctx: &Context<Self>, ev: Ping) -> Pong {
        ctx.update_state(|t| t.0.push(format!("right {}", ev.0)));
        Pong("right")
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Pong) -> Option<StopEvent<Vec<String>>> {
        let pongs = ctx.collect(ev, 2)?;
        ctx.update_state(|t| t.0.push("join".into()));
        let mut trace = ctx.state().0;
        trace.extend(pongs.iter().map(|p| p.0.to_string()));
        Some(StopEvent(trace))
    }
}

#[tokio::test]
async fn an_event_goes_to_every_step_that_accepts_it_in_declaration_order() {
    let trace = Broadcast.run(7).await.unwrap();
    assert_eq!(
        trace,
        ["start", "left 7", "right 7", "join", "left", "right"]
    );
}

// ---------------------------------------------------------------------------------------------
// Worker limits and FIFO queues.

#[derive(Debug, Clone, Event)]
struct Job(u32);

struct Limited {
    running: AtomicUsize,
    peak: AtomicUsize,
}

#[workflow(state = Trace)]
impl Limited {
    #[step(emits = [Job])]
    async fn fan_out(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
        for i in 0..ev.0 {
            ctx.send_event(Job(i));
        }
    }

    #[step(num_workers = 2)]
    async fn work(&self, ctx: &Context<Self>, ev: Job) -> Pong {
        ctx.update_state(|t| {
            t.0.push(format!("begin {} on worker {}", ev.0, ctx.worker()))
        });
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Pong("done")
    }

    #[step]
    async fn done(&self, ctx: &Context<Self>, ev: Pong) -> Option<StopEvent<Trace>> {
        ctx.collect(ev, 6)?;
        Some(StopEvent(ctx.state()))
    }
}

#[tokio::test(start_paused = true)]
async fn num_workers_bounds_concurrency_and_excess_events_wait_in_fifo_order() {
    let flow = Limited {
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    };
    let runner = flow.runner();
    let trace = runner.run(6).await.unwrap();
    assert_eq!(runner.workflow().peak.load(Ordering::SeqCst), 2);
    let begun: Vec<u32> = trace
        .0
        .iter()
        .map(|line| line.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        begun,
        [0, 1, 2, 3, 4, 5],
        "jobs start in the order they were sent"
    );
    assert!(
        trace
            .0
            .iter()
            .all(|l| l.ends_with("worker 0") || l.ends_with("worker 1"))
    );
}

// ---------------------------------------------------------------------------------------------
// Branches and loops.

#[derive(Debug, Clone, Event)]
struct Count(u32);

#[derive(Debug, Clone, Event)]
struct Odd(u32);

struct Looping;

#[workflow(state = Trace)]
impl Looping {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Either<Count, Odd> {
        if ev.0.is_multiple_of(2) {
            Either::Left(Count(ev.0))
        } else {
            Either::Right(Odd(ev.0))
        }
    }

    #[step]
    async fn odd(&self, ctx: &Context<Self>, ev: Odd) -> StopEvent<Vec<String>> {
        ctx.update_state(|t| t.0.push(format!("odd {}", ev.0)));
        StopEvent(ctx.state().0)
    }

    #[step]
    async fn count(&self, ctx: &Context<Self>, ev: Count) -> Either<Count, StopEvent<Vec<String>>> {
        ctx.update_state(|t| t.0.push(format!("count {}", ev.0)));
        if ev.0 == 0 {
            Either::Right(StopEvent(ctx.state().0))
        } else {
            Either::Left(Count(ev.0 - 1))
        }
    }
}

#[tokio::test]
async fn branches_pick_one_chain_and_loops_run_until_their_exit() {
    assert_eq!(
        Looping.run(4).await.unwrap(),
        ["count 4", "count 3", "count 2", "count 1", "count 0"]
    );
    assert_eq!(Looping.run(3).await.unwrap(), ["odd 3"]);
}

// ---------------------------------------------------------------------------------------------
// Errors: a failing step fails the run, names the step, keeps the original error as source.

#[derive(Debug, thiserror::Error)]
#[error("the disk is full")]
struct DiskFull;

struct Failing;

#[workflow]
impl Failing {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Ping {
        Ping(ev.0)
    }

    #[step]
    async fn write(&self, _ev: Ping) -> Result<StopEvent<()>, DiskFull> {
        Err(DiskFull)
    }
}

#[tokio::test]
async fn a_step_error_fails_the_run_and_names_the_step_with_the_error_as_source() {
    let error = Failing.run(1).await.unwrap_err();
    assert_eq!(error.to_string(), "step `write` failed after 1 attempt(s)");
    let WorkflowError::StepFailed { step, source, .. } = &error else {
        panic!("expected StepFailed, got {error:?}");
    };
    assert_eq!(*step, "write");
    assert_eq!(source.to_string(), "the disk is full");
    let source = std::error::Error::source(&error).unwrap();
    assert_eq!(source.to_string(), "the disk is full");
}

struct Panicking;

#[workflow]
impl Panicking {
    #[step]
    async fn boom(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        if ev.0 > 0 {
            panic!("boom at {}", ev.0);
        }
        StopEvent(0)
    }
}

#[tokio::test]
async fn a_panicking_step_fails_the_run_with_its_message() {
    let error = Panicking.run(3).await.unwrap_err();
    assert!(
        matches!(&error, WorkflowError::StepPanicked { step: "boom", message } if message == "boom at 3"),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// First stop wins; the other in-flight steps are cancelled and never write again.

struct Race {
    live: Live,
}

#[workflow(state = Trace)]
impl Race {
    #[step]
    async fn begin(&self, _ev: StartEvent<()>) -> Ping {
        Ping(0)
    }

    #[step]
    async fn fast(&self, ctx: &Context<Self>, _ev: Ping) -> StopEvent<&'static str> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        ctx.update_state(|t| t.0.push("fast".into()));
        StopEvent("fast")
    }

    #[step]
    async fn slow(&self, ctx: &Context<Self>, _ev: Ping) -> StopEvent<&'static str> {
        let _guard = self.live.guard();
        tokio::time::sleep(Duration::from_secs(60)).await;
        ctx.update_state(|t| t.0.push("slow".into()));
        StopEvent("slow")
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_stop_event_wins_and_cancels_the_steps_still_running() {
    let live = Live::default();
    let runner = Race { live: live.clone() }.runner();
    let mut state = Trace::default();
    assert_eq!(runner.run_with((), &mut state).await.unwrap(), "fast");
    assert_eq!(
        live.count(),
        0,
        "the slow step's future was dropped with the run"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(state.0, ["fast"], "the cancelled step never wrote");
}

// ---------------------------------------------------------------------------------------------
// Timeouts: the error names the steps that were active.

struct Sleepy {
    live: Live,
}

#[workflow]
impl Sleepy {
    #[step]
    async fn begin(&self, _ev: StartEvent<()>) -> Ping {
        Ping(0)
    }

    #[step]
    async fn nap(&self, _ev: Ping) -> StopEvent<()> {
        let _guard = self.live.guard();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        StopEvent(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_timeout_is_terminal_names_the_active_steps_and_leaves_nothing_running() {
    let live = Live::default();
    let runner = Sleepy { live: live.clone() }.timeout(Duration::from_millis(50));
    let started = tokio::time::Instant::now();
    let error = runner.run(()).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(started.elapsed() < Duration::from_secs(1));
    let WorkflowError::TimedOut { active, timeout } = &error else {
        panic!("expected TimedOut, got {error:?}");
    };
    assert_eq!(active, &["nap"]);
    assert_eq!(*timeout, Duration::from_millis(50));
    assert_eq!(
        error.to_string(),
        "the run timed out after 50ms; steps still active: `nap`"
    );
    assert_eq!(live.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_spawned_run_times_out_the_same_way() {
    let live = Live::default();
    let runner = Sleepy { live: live.clone() }.timeout(Duration::from_millis(50));
    let handler = runner.start(());
    let error = handler.await.unwrap_err();
    assert!(matches!(error, WorkflowError::TimedOut { .. }));
    assert_eq!(live.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Stuck runs fail at once with a diagnostic.

struct Silent;

#[workflow]
impl Silent {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Option<Ping> {
        (ev.0 > 0).then_some(Ping(ev.0))
    }

    #[step]
    async fn end(&self, ev: Ping) -> StopEvent<u32> {
        StopEvent(ev.0)
    }
}

#[tokio::test]
async fn a_run_that_can_make_no_progress_fails_at_once_as_stuck() {
    // No timeout is set: without stuck detection this would hang forever.
    let error = tokio::time::timeout(Duration::from_secs(5), Silent.run(0))
        .await
        .expect("stuck runs are reported, not left hanging")
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the run is stuck: step `begin` finished without emitting an event, and no step is \
         running, no event is queued and nothing waits for outside input"
    );
    assert_eq!(Silent.run(5).await.unwrap(), 5);
}

// ---------------------------------------------------------------------------------------------
// Dropping the run's future cancels it: no step outlives its run.

#[tokio::test(start_paused = true)]
async fn dropping_a_run_drops_its_steps() {
    let live = Live::default();
    let runner = Sleepy { live: live.clone() }.runner();
    let run = runner.run(());
    let outcome = tokio::time::timeout(Duration::from_millis(10), run).await;
    assert!(outcome.is_err(), "the run was still going");
    assert_eq!(
        live.count(),
        0,
        "the step's future was dropped with the run"
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrent runs never share per-run data.

struct Tally;

#[workflow(state = Trace)]
impl Tally {
    #[step]
    async fn begin(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Ping {
        ctx.update_state(|t| t.0.push(ev.0.to_string()));
        tokio::task::yield_now().await;
        Ping(ev.0)
    }

    #[step]
    async fn end(&self, ctx: &Context<Self>, ev: Ping) -> StopEvent<Vec<String>> {
        ctx.update_state(|t| t.0.push(ev.0.to_string()));
        StopEvent(ctx.state().0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_have_their_own_state() {
    let runner = Tally.runner();
    let runs: Vec<_> = (0..50).map(|i| tokio::spawn(runner.run(i))).collect();
    for (i, run) in runs.into_iter().enumerate() {
        let trace = run.await.unwrap().unwrap();
        assert_eq!(trace, [i.to_string(), i.to_string()]);
    }
}
