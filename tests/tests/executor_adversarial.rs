//! Adversarial tests of the executor: wake-ups from other threads while the run loop is
//! between "drain" and "sleep", stale wakes of reused calls, the poll budget, timers that fire
//! when the run has nothing else to do, cancel at awkward moments, stuck detection, panics at
//! various points, many concurrent runs, and failures interleaved with foreign wake-ups
//! (recovered failures on a busy step, retries of a join racing its fan-in, snapshots taken in
//! a retry delay and resumed). Every run is bounded by a timeout, so a lost wake-up fails the
//! test instead of hanging it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use tidewater::Outcome;
use tidewater::prelude::*;

/// How long any single run may take before a test calls it a hang.
const HANG: Duration = Duration::from_secs(5);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no outcome within {HANG:?} (a lost wake-up?)"),
    }
}

/// A cheap per-thread pseudo-random number (xorshift), for timing jitter.
fn random(below: u64) -> u64 {
    static SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x % below.max(1)
}

/// Spins a random short while: shifts a wake from another thread across the run loop's
/// "drain, then sleep" window.
fn jitter() {
    for _ in 0..random(2_000) {
        std::hint::spin_loop();
    }
}

/// Two plain OS threads (not tokio's) that run jobs: the source of foreign wake-ups.
fn foreign(job: impl FnOnce() + Send + 'static) {
    type Job = Box<dyn FnOnce() + Send>;
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let (send, receive) = mpsc::channel::<Job>();
        let receive = Arc::new(Mutex::new(receive));
        for _ in 0..2 {
            let receive = receive.clone();
            std::thread::spawn(move || {
                loop {
                    let job = receive.lock().unwrap().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        }
        Mutex::new(send)
    });
    pool.lock().unwrap().send(Box::new(job)).unwrap();
}

use integration_tests::Live;

#[derive(Debug, thiserror::Error)]
#[error("boom {0}")]
struct Boom(u32);

// ---------------------------------------------------------------------------------------------
// Wake-ups from outside the run's task: a std::thread, spawn_blocking, another tokio task, a
// Notify. A fan-out over four workers and a chain of hops that reuses one call again and again.

#[derive(Debug, Clone, Copy)]
enum Fire {
    Thread,
    Blocking,
    Task,
    Notify,
}

/// Waits for a wake-up sent from elsewhere.
async fn external(fire: Fire) {
    match fire {
        Fire::Thread => {
            let (send, receive) = tokio::sync::oneshot::channel();
            foreign(move || {
                jitter();
                let _ = send.send(());
            });
            receive.await.unwrap();
        }
        Fire::Blocking => {
            let (send, receive) = tokio::sync::oneshot::channel();
            drop(tokio::task::spawn_blocking(move || {
                jitter();
                let _ = send.send(());
            }));
            receive.await.unwrap();
        }
        Fire::Task => {
            let (send, receive) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if random(2) == 0 {
                    tokio::task::yield_now().await;
                }
                jitter();
                let _ = send.send(());
            });
            receive.await.unwrap();
        }
        Fire::Notify => {
            let notify = Arc::new(tokio::sync::Notify::new());
            let other = notify.clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before the wake can come: `notify_waiters` stores no permit.
            notified.as_mut().enable();
            foreign(move || {
                jitter();
                other.notify_waiters();
            });
            notified.await;
        }
    }
}

#[derive(Debug, Clone, Event)]
struct Job(u32);

#[derive(Debug, Clone, Event)]
struct JobDone(u32);

#[derive(Debug, Clone, Event)]
struct Hop(u32);

struct External {
    fire: Fire,
    width: u32,
}

#[workflow]
impl External {
    #[step(emits = [Job])]
    async fn fan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        for i in 0..self.width {
            ctx.send_event(Job(i));
        }
    }

    #[step(num_workers = 4)]
    async fn work(&self, ev: Job) -> JobDone {
        external(self.fire).await;
        if random(2) == 0 {
            external(self.fire).await;
        }
        JobDone(ev.0 * 2)
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: JobDone) -> Option<StopEvent<u32>> {
        let all = ctx.collect(ev, self.width as usize)?;
        Some(StopEvent(all.iter().map(|d| d.0).sum()))
    }
}

struct Chain {
    fire: Fire,
}

#[workflow]
impl Chain {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Hop {
        Hop(ev.0)
    }

    #[step]
    async fn hop(&self, ev: Hop) -> Either<Hop, StopEvent<u32>> {
        external(self.fire).await;
        if ev.0 == 0 {
            Either::Right(StopEvent(7))
        } else {
            Either::Left(Hop(ev.0 - 1))
        }
    }
}

async fn wake_from_outside(fire: Fire, rounds: u32) {
    let fan = External { fire, width: 8 }.runner();
    let chain = Chain { fire }.runner();
    for round in 0..rounds {
        let sum = bounded(&format!("{fire:?} fan-out, round {round}"), fan.run(())).await;
        assert_eq!(sum.unwrap(), 2 * (0..8).sum::<u32>());
        let out = bounded(&format!("{fire:?} chain, round {round}"), chain.run(5)).await;
        assert_eq!(out.unwrap(), 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_from_a_std_thread_are_never_lost_multi_thread() {
    wake_from_outside(Fire::Thread, 200).await;
}

#[tokio::test(flavor = "current_thread")]
async fn wakes_from_a_std_thread_are_never_lost_current_thread() {
    wake_from_outside(Fire::Thread, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_from_spawn_blocking_are_never_lost() {
    wake_from_outside(Fire::Blocking, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_from_another_task_are_never_lost() {
    wake_from_outside(Fire::Task, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_through_a_notify_from_a_std_thread_are_never_lost() {
    wake_from_outside(Fire::Notify, 200).await;
}

/// The run is spawned (a task of its own) while the test task keeps the other worker busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_runs_woken_from_threads_all_finish() {
    let runner = External {
        fire: Fire::Thread,
        width: 8,
    }
    .runner();
    for round in 0..100 {
        let handler = runner.start(());
        let sum = bounded(&format!("spawned run, round {round}"), handler).await;
        assert_eq!(sum.unwrap(), 56);
    }
}

// ---------------------------------------------------------------------------------------------
// Stale wakes: every invocation leaves a clone of its call's waker behind, and a thread keeps
// waking all of them while later invocations run in the same (reused) calls.

struct Stale {
    wakers: Arc<Mutex<Vec<Waker>>>,
}

#[workflow]
impl Stale {
    #[step(emits = [Job])]
    async fn fan(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
        for i in 0..ev.0 {
            ctx.send_event(Job(i));
        }
    }

    #[step(num_workers = 3)]
    async fn work(&self, ev: Job) -> JobDone {
        // Leave this call's waker behind for the stale-waking thread.
        std::future::poll_fn(|cx| {
            self.wakers.lock().unwrap().push(cx.waker().clone());
            Poll::Ready(())
        })
        .await;
        external(Fire::Thread).await;
        JobDone(ev.0 + 1)
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: JobDone) -> Option<StopEvent<u32>> {
        let all = ctx.collect(ev, 20)?;
        Some(StopEvent(all.iter().map(|d| d.0).sum()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_wakes_of_reused_calls_neither_poll_the_wrong_step_nor_lose_a_wake() {
    let wakers = Arc::new(Mutex::new(Vec::<Waker>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let waking = {
        let (wakers, stop) = (wakers.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let all: Vec<Waker> = std::mem::take(&mut *wakers.lock().unwrap());
                for waker in &all {
                    waker.wake_by_ref();
                }
                // Keep a few old ones around: woken again much later.
                let mut kept = wakers.lock().unwrap();
                kept.extend(all.into_iter().take(8));
                drop(kept);
                std::thread::yield_now();
            }
        })
    };
    let runner = Stale {
        wakers: wakers.clone(),
    }
    .runner();
    for round in 0..100 {
        let sum = bounded(&format!("stale wakes, round {round}"), runner.run(20)).await;
        assert_eq!(sum.unwrap(), (1..=20).sum::<u32>());
    }
    stop.store(true, Ordering::Relaxed);
    waking.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The poll budget: a run that never waits yields, so its timer, the inbox and other tasks
// still get their turn, even on a current-thread runtime.

#[derive(Debug, Clone, Event)]
struct Tick(u64);

#[derive(Debug, Clone, Event)]
struct Halt(u64);

/// Loops forever in zero-wait hops, until a `Halt` arrives from outside.
struct Spin {
    ticks: Arc<AtomicU64>,
}

#[workflow]
impl Spin {
    #[step]
    async fn begin(&self, _ev: StartEvent<()>) -> Tick {
        Tick(0)
    }

    #[step]
    async fn tick(&self, ev: Tick) -> Either<Tick, Halt> {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        // Never at run time: the graph needs a way out of the loop.
        if ev.0 == u64::MAX {
            return Either::Right(Halt(0));
        }
        Either::Left(Tick(ev.0 + 1))
    }

    #[step]
    async fn halt(&self, ev: Halt) -> StopEvent<u64> {
        StopEvent(ev.0)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_run_still_times_out_and_lets_other_tasks_run() {
    let ticks = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let counter = {
        let other = other.clone();
        tokio::spawn(async move {
            loop {
                other.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let runner = Spin {
        ticks: ticks.clone(),
    }
    // Long enough that a loaded machine still gives both tasks many turns.
    .timeout(Duration::from_millis(300))
    .max_loop_invocations(None); // spinning is the point here
    let started = std::time::Instant::now();
    let error = bounded("busy run with a timeout", runner.run(()))
        .await
        .unwrap_err();
    assert!(matches!(error, WorkflowError::TimedOut { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(ticks.load(Ordering::Relaxed) > 100, "the run did spin");
    assert!(
        other.load(Ordering::Relaxed) > 10,
        "another task on the same thread ran while the run was busy"
    );
    counter.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_run_still_reads_its_inbox() {
    let ticks = Arc::new(AtomicU64::new(0));
    let runner = Spin {
        ticks: ticks.clone(),
    }
    .runner()
    .max_loop_invocations(None); // spinning is the point here
    for round in 0..20 {
        let handler = runner.start(());
        // The run must yield for this task to get here at all on one thread.
        while ticks.load(Ordering::Relaxed) < 300 * (round + 1) {
            tokio::task::yield_now().await;
        }
        handler.send_event(Halt(round));
        assert_eq!(bounded("halting a busy run", handler).await.unwrap(), round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_run_is_halted_from_a_std_thread() {
    let ticks = Arc::new(AtomicU64::new(0));
    let runner = Spin {
        ticks: ticks.clone(),
    }
    .runner()
    .max_loop_invocations(None); // spinning is the point here
    for round in 0..50u64 {
        let handler = runner.start(());
        // The handler goes to a plain thread, which sends the halt and hands it back.
        let (back, returned) = tokio::sync::oneshot::channel();
        foreign(move || {
            jitter();
            handler.send_event(Halt(round));
            let _ = back.send(handler);
        });
        let handler = returned.await.unwrap();
        assert_eq!(
            bounded("halting from a thread", handler).await.unwrap(),
            round
        );
    }
}

/// A step that wakes itself from inside its own poll, many times, without tokio's deferral.
struct SelfWake {
    polls: u32,
}

#[workflow]
impl SelfWake {
    #[step]
    async fn spin(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        let mut left = self.polls;
        std::future::poll_fn(|cx| {
            if left == 0 {
                return Poll::Ready(());
            }
            left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        StopEvent(ev.0)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_step_that_wakes_itself_ten_thousand_times_finishes() {
    let out = bounded("self-waking step", SelfWake { polls: 10_000 }.run(3)).await;
    assert_eq!(out.unwrap(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn a_step_that_wakes_itself_forever_times_out() {
    let runner = SelfWake { polls: u32::MAX }.timeout(Duration::from_millis(50));
    let error = bounded("self-waking step, forever", runner.run(3))
        .await
        .unwrap_err();
    assert!(
        matches!(error, WorkflowError::TimedOut { ref active, .. } if active == &["spin"]),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Timers that fire while the run has nothing else to do: never stuck, never hung.

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Answer(u32);

struct Timers {
    live: Live,
    attempts: AtomicU32,
}

impl Timers {
    fn new() -> Timers {
        Timers {
            live: Live::default(),
            attempts: AtomicU32::new(0),
        }
    }
}

#[derive(Debug, Clone, Event)]
struct Nap(u64);

#[derive(Debug, Clone, Event)]
struct Flaky(u32);

#[derive(Debug, Clone, Event)]
struct Forever;

#[derive(Debug, Clone, Event)]
struct Wait;

#[workflow]
impl Timers {
    /// 0: nap; 1: flaky (fails once, backs off 30 ms); 2: forever (step timeout);
    /// 3: a long backoff; 4: wait for an answer.
    #[step]
    async fn begin(
        &self,
        ev: StartEvent<u32>,
    ) -> Either<Nap, Either<Flaky, Either<Forever, Wait>>> {
        match ev.0 {
            0 => Either::Left(Nap(30)),
            1 => Either::Right(Either::Left(Flaky(1))),
            2 => Either::Right(Either::Right(Either::Left(Forever))),
            3 => Either::Right(Either::Left(Flaky(u32::MAX))),
            _ => Either::Right(Either::Right(Either::Right(Wait))),
        }
    }

    #[step]
    async fn nap(&self, ev: Nap) -> StopEvent<u32> {
        let _live = self.live.guard();
        tokio::time::sleep(Duration::from_millis(ev.0)).await;
        StopEvent(100)
    }

    #[step(retry = RetryPolicy::fixed(3, Duration::from_millis(30)))]
    async fn flaky(&self, ctx: &Context<Self>, ev: Flaky) -> Result<StopEvent<u32>, Boom> {
        let _live = self.live.guard();
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if ev.0 == u32::MAX {
            // Fails, then the test cancels the run during the backoff.
            return Err(Boom(0));
        }
        if ctx.attempt() <= ev.0 {
            Err(Boom(ctx.attempt()))
        } else {
            Ok(StopEvent(200 + ctx.attempt()))
        }
    }

    #[step(timeout = Duration::from_millis(30))]
    async fn forever(&self, _ev: Forever) -> StopEvent<u32> {
        let _live = self.live.guard();
        std::future::pending::<()>().await;
        StopEvent(0)
    }

    #[step(timeout = Duration::from_secs(30))]
    async fn wait(&self, ctx: &Context<Self>, _ev: Wait) -> Result<StopEvent<u32>, WorkflowError> {
        let _live = self.live.guard();
        let answer = ctx.wait_for::<Answer>().await?;
        Ok(StopEvent(answer.0))
    }
}

async fn timers_fire_when_idle() {
    for round in 0..5 {
        let what = |case: &str| format!("{case}, round {round}");
        assert_eq!(
            bounded(&what("sleeping step"), Timers::new().run(0))
                .await
                .unwrap(),
            100
        );
        let flaky = Timers::new().runner();
        assert_eq!(
            bounded(&what("retry backoff"), flaky.run(1)).await.unwrap(),
            202
        );
        assert_eq!(flaky.workflow().attempts.load(Ordering::SeqCst), 2);
        let started = tokio::time::Instant::now();
        let error = bounded(&what("step timeout"), Timers::new().run(2))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                WorkflowError::StepTimedOut {
                    step: "forever",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        let runner = Timers::new().timeout(Duration::from_millis(40));
        let error = bounded(&what("run timeout during a backoff"), runner.run(3))
            .await
            .unwrap_err();
        assert!(
            matches!(error, WorkflowError::TimedOut { ref active, .. } if active == &["flaky"]),
            "{error:?}"
        );
        assert_eq!(runner.workflow().live.count(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_while_the_run_has_nothing_else_to_do_multi_thread() {
    timers_fire_when_idle().await;
}

#[tokio::test(flavor = "current_thread")]
async fn timers_fire_while_the_run_has_nothing_else_to_do_current_thread() {
    timers_fire_when_idle().await;
}

#[tokio::test(start_paused = true)]
async fn timers_fire_while_the_run_has_nothing_else_to_do_paused_clock() {
    for _ in 0..40 {
        timers_fire_when_idle().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cancel during a retry backoff, a step timeout, an inline wait, before admission, and racing
// with the end of the run from another thread.

async fn cancel_while(case: u32, settle: impl Fn(&Timers) -> bool) {
    let runner = Timers::new().runner();
    let mut handler = runner.start(case);
    let mut events = handler.events();
    let ready = bounded("the step to get going", async {
        while !settle(runner.workflow()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    ready.await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    handler.cancel();
    let error = bounded(&format!("cancel of case {case}"), handler)
        .await
        .unwrap_err();
    assert!(matches!(error, WorkflowError::Cancelled), "{error:?}");
    let mut last = None;
    while let Some(item) = bounded("the stream's end", events.next()).await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(StreamItem::End(Outcome::Cancelled))),
        "{last:?}"
    );
    assert_eq!(runner.workflow().live.count(), 0, "a step outlived its run");
    let attempts = runner.workflow().attempts.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        runner.workflow().attempts.load(Ordering::SeqCst),
        attempts,
        "no attempt after the cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_retry_backoff_an_inline_wait_and_a_step_timeout() {
    // Backoff: the first attempt failed and nothing is running.
    cancel_while(3, |w| {
        w.attempts.load(Ordering::SeqCst) == 1 && w.live.count() == 0
    })
    .await;
    // Inline wait (the step also has a 30 s time limit armed).
    cancel_while(4, |w| w.live.count() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_a_std_thread_racing_with_the_end_of_the_run() {
    let runner = External {
        fire: Fire::Thread,
        width: 4,
    }
    .runner();
    let (mut cancelled, mut finished) = (0, 0);
    for round in 0..200 {
        let mut handler = runner.start(());
        let mut events = handler.events();
        // The handler goes to a plain thread, which cancels the run and hands it back.
        let (back, returned) = tokio::sync::oneshot::channel();
        foreign(move || {
            jitter();
            jitter();
            handler.cancel();
            let _ = back.send(handler);
        });
        let mut terminal = Vec::new();
        while let Some(item) = bounded(&format!("stream, round {round}"), events.next()).await {
            if let StreamItem::End(outcome) = item {
                terminal.push(outcome);
            }
        }
        assert_eq!(terminal.len(), 1, "exactly one terminal item");
        let handler = returned.await.unwrap();
        match bounded(&format!("output, round {round}"), handler).await {
            Ok(sum) => {
                assert_eq!(sum, 12);
                assert_eq!(terminal[0], Outcome::Stopped);
                finished += 1;
            }
            Err(WorkflowError::Cancelled) => {
                assert_eq!(terminal[0], Outcome::Cancelled);
                cancelled += 1;
            }
            Err(other) => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(cancelled + finished, 200);
}

/// Runs wait for a turn under `max_concurrent_runs`; one parks on an answer that never comes.
struct Parked {
    live: Live,
}

#[workflow]
impl Parked {
    #[step]
    async fn wait(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        let _live = self.live.guard();
        if ev.0 == 0 {
            return Ok(StopEvent(0));
        }
        let answer = ctx.wait_for::<Answer>().await?;
        Ok(StopEvent(answer.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_run_still_waiting_for_its_turn_is_final_at_once() {
    let runner = Parked {
        live: Live::default(),
    }
    .runner()
    .max_concurrent_runs(1);
    let first = runner.start(1);
    while runner.workflow().live.count() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The second run waits for the first one's permit, which is never released.
    let mut second = runner.start(0);
    let mut events = second.events();
    tokio::time::sleep(Duration::from_millis(10)).await;
    second.cancel();
    let error = bounded("cancel of a run waiting for admission", second)
        .await
        .unwrap_err();
    assert!(matches!(error, WorkflowError::Cancelled), "{error:?}");
    let last = bounded("its stream", events.next()).await;
    assert!(
        matches!(last, Some(StreamItem::End(Outcome::Cancelled))),
        "{last:?}"
    );
    // The first run is untouched and still answers.
    first.send_response(Answer(5));
    assert_eq!(bounded("the first run", first).await.unwrap(), 5);
    // The permit is free again.
    assert_eq!(bounded("a later run", runner.run(0)).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// A snapshot asked of a run that ended is answered (with `Cancelled`), never left hanging.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_an_ended_run_fails_instead_of_hanging() {
    let handler = Parked {
        live: Live::default(),
    }
    .start(0);
    bounded("the run to end", async {
        while !handler.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let error = bounded("a snapshot after the end", handler.snapshot())
        .await
        .unwrap_err();
    assert!(matches!(error, WorkflowError::Cancelled), "{error:?}");
    assert_eq!(bounded("the output", handler).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// Stuck detection: false negatives (a run that can do nothing more is reported at once, also
// after timers and waits) and false positives (covered above: sleeping, backing off, waiting
// for an answer or for another thread are never "stuck").

#[derive(Debug, Clone, Event)]
struct Maybe(u32);

struct Fizzle;

#[workflow]
impl Fizzle {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Maybe {
        Maybe(ev.0)
    }

    /// Emits nothing for 0 (at once), 1 (after a sleep), 2 (after a retry), 3 (after a wait
    /// that timed out), 4 (after a wake from another thread).
    #[step(retry = RetryPolicy::fixed(2, Duration::from_millis(5)))]
    async fn fizzle(&self, ctx: &Context<Self>, ev: Maybe) -> Result<Option<StopEvent<u32>>, Boom> {
        match ev.0 {
            1 => tokio::time::sleep(Duration::from_millis(5)).await,
            2 if ctx.attempt() == 1 => return Err(Boom(2)),
            3 => {
                let waited = ctx
                    .wait_for::<Answer>()
                    .timeout(Duration::from_millis(5))
                    .await;
                assert!(matches!(waited, Err(WorkflowError::WaitTimedOut { .. })));
            }
            4 => external(Fire::Thread).await,
            _ => {}
        }
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_nothing_left_to_do_is_reported_stuck_whatever_came_before() {
    for round in 0..20 {
        for case in 0..5 {
            let error = bounded(
                &format!("stuck case {case}, round {round}"),
                Fizzle.run(case),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&error, WorkflowError::Stuck { diagnostic } if diagnostic.contains("`fizzle` finished without emitting")),
                "case {case}: {error:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Panics: at the first poll, after an await, after a wake from another thread, in a retry,
// while other workers are mid-wait; and in a `wait_for` predicate, which the run itself runs.

#[derive(Debug, Clone, Event)]
struct Blow(u32);

struct Panics {
    live: Live,
}

#[workflow]
impl Panics {
    #[step(emits = [Blow])]
    async fn fan(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
        // Case 4: three workers park on answers that never come, one panics.
        let n = if ev.0 == 4 { 4 } else { 1 };
        for _ in 0..n {
            ctx.send_event(Blow(ev.0));
        }
    }

    #[step(num_workers = 4, retry = RetryPolicy::fixed(3, Duration::from_millis(2)))]
    async fn blow(&self, ctx: &Context<Self>, ev: Blow) -> Result<StopEvent<u32>, Boom> {
        let _live = self.live.guard();
        match ev.0 {
            0 => panic!("first poll"),
            1 => {
                tokio::task::yield_now().await;
                panic!("after a yield");
            }
            2 => {
                external(Fire::Thread).await;
                panic!("after a foreign wake");
            }
            3 => {
                if ctx.attempt() == 1 {
                    return Err(Boom(3));
                }
                panic!("in attempt {}", ctx.attempt());
            }
            _ => {
                if ctx.worker() == 2 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    panic!("worker 2");
                }
                std::future::pending::<()>().await;
                Ok(StopEvent(0))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_anywhere_in_a_step_fails_the_run_with_its_message() {
    let expected = [
        "first poll",
        "after a yield",
        "after a foreign wake",
        "in attempt 2",
        "worker 2",
    ];
    for round in 0..20 {
        for (case, message) in expected.iter().enumerate() {
            let runner = Panics {
                live: Live::default(),
            }
            .runner();
            let mut handler = runner.start(case as u32);
            let mut events = handler.events();
            let error = bounded(&format!("panic case {case}, round {round}"), &mut handler)
                .await
                .unwrap_err();
            assert!(
                matches!(&error, WorkflowError::StepPanicked { step: "blow", message: m } if m == message),
                "case {case}: {error:?}"
            );
            let mut last = None;
            while let Some(item) = bounded("the stream", events.next()).await {
                last = Some(item);
            }
            assert!(
                matches!(last, Some(StreamItem::End(Outcome::Failed(_)))),
                "{last:?}"
            );
            assert_eq!(runner.workflow().live.count(), 0, "case {case}");
        }
    }
}

struct Picky;

#[workflow]
impl Picky {
    #[step]
    async fn wait(
        &self,
        ctx: &Context<Self>,
        _ev: StartEvent<()>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        let answer = ctx
            .wait_for::<Answer>()
            .matching(|a| {
                assert!(a.0 != 13, "unlucky answer");
                true
            })
            .await?;
        Ok(StopEvent(answer.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_wait_for_predicate_fails_the_run_not_the_runtime() {
    let mut handler = Picky.start(());
    let mut events = handler.events();
    tokio::time::sleep(Duration::from_millis(5)).await;
    handler.send_response(Answer(13));
    let outcome = bounded("a run whose predicate panics", tokio::spawn(handler)).await;
    let error = outcome
        .expect("awaiting the handler does not panic")
        .unwrap_err();
    assert!(
        matches!(&error, WorkflowError::StepPanicked { step: "wait", message } if message.contains("unlucky answer")),
        "{error:?}"
    );
    let mut last = None;
    while let Some(item) = bounded("the stream", events.next()).await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(StreamItem::End(Outcome::Failed(_)))),
        "{last:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// First stop wins while other calls are mid-backoff or mid-timeout: the run ends at once, and
// no attempt starts after it.

#[derive(Debug, Clone, Event)]
struct Go(u32);

struct Photo {
    live: Live,
    attempts: AtomicU32,
}

#[workflow]
impl Photo {
    #[step(emits = [Go])]
    async fn fan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        for i in 0..6 {
            ctx.send_event(Go(i));
        }
    }

    /// Workers 0..4 fail and back off for a long time (one is still running under a time
    /// limit); the fifth stops the run once the others are in their backoff.
    #[step(num_workers = 6, timeout = Duration::from_secs(60), retry = RetryPolicy::fixed(5, Duration::from_secs(60)))]
    async fn go(&self, ev: Go) -> Result<StopEvent<u32>, Boom> {
        let _live = self.live.guard();
        self.attempts.fetch_add(1, Ordering::SeqCst);
        match ev.0 {
            5 => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                external(Fire::Thread).await;
                Ok(StopEvent(5))
            }
            4 => {
                std::future::pending::<()>().await;
                Ok(StopEvent(4))
            }
            n => {
                tokio::task::yield_now().await;
                Err(Boom(n))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_stop_wins_while_other_calls_back_off() {
    for round in 0..30 {
        let runner = Photo {
            live: Live::default(),
            attempts: AtomicU32::new(0),
        }
        .runner();
        let started = std::time::Instant::now();
        let out = bounded(&format!("first stop, round {round}"), runner.run(())).await;
        assert_eq!(out.unwrap(), 5);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(runner.workflow().live.count(), 0);
        assert_eq!(
            runner.workflow().attempts.load(Ordering::SeqCst),
            6,
            "one attempt each, no retry after the stop"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Thousands of concurrent runs on a multi-thread runtime, their steps yielding at random.

#[derive(Debug, Clone, Event)]
struct Part {
    run: u64,
    i: u64,
}

struct Crowd;

async fn random_yield() {
    match random(5) {
        0 => tokio::task::yield_now().await,
        1 => tokio::time::sleep(Duration::from_micros(random(500))).await,
        2 => external(Fire::Task).await,
        3 => {
            let mut left = random(4);
            std::future::poll_fn(|cx| {
                if left == 0 {
                    return Poll::Ready(());
                }
                left -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
        }
        _ => {}
    }
}

#[workflow]
impl Crowd {
    #[step(emits = [Part])]
    async fn split(&self, ctx: &Context<Self>, ev: StartEvent<u64>) {
        random_yield().await;
        for i in 0..4 {
            ctx.send_event(Part { run: ev.0, i });
        }
    }

    #[step(num_workers = 2)]
    async fn square(&self, ev: Part) -> JobDone {
        random_yield().await;
        random_yield().await;
        JobDone((ev.run * 10 + ev.i * ev.i) as u32)
    }

    #[step]
    async fn sum(&self, ctx: &Context<Self>, ev: JobDone) -> Option<StopEvent<u64>> {
        random_yield().await;
        let parts = ctx.collect(ev, 4)?;
        Some(StopEvent(parts.iter().map(|p| u64::from(p.0)).sum()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_runs_with_random_yields_all_finish_correctly() {
    let runner = Crowd.runner();
    let handlers: Vec<_> = (0..3_000u64).map(|run| (run, runner.start(run))).collect();
    for (run, handler) in handlers {
        let out = bounded(&format!("run {run}"), handler).await.unwrap();
        assert_eq!(out, 4 * run * 10 + (1 + 4 + 9), "run {run}");
    }
    // And as plain futures polled by one task each, not spawned by the runner.
    let tasks: Vec<_> = (0..1_000u64)
        .map(|run| (run, tokio::spawn(runner.run(run))))
        .collect();
    for (run, task) in tasks {
        let out = bounded(&format!("run {run}"), task).await.unwrap().unwrap();
        assert_eq!(out, 4 * run * 10 + 14, "run {run}");
    }
}

// ---------------------------------------------------------------------------------------------
// Failures interleaved with foreign wake-ups (issue 17): recovered failures on a busy
// two-worker step, retries of a join racing its fan-in, and snapshots taken during a retry
// delay and resumed, again and again.

#[derive(Debug, Clone, Event)]
struct Task(u32);

#[derive(Debug, Clone, Event)]
struct TaskDone(u32);

/// `work` (two workers, woken from a std thread) fails the odd tasks; `recover` turns each
/// failure into its `TaskDone`; `gather` waits for all of them.
struct Recovering {
    width: u32,
    log: Mutex<Vec<String>>,
    busy: AtomicU32,
    most_busy: AtomicU32,
}

#[workflow]
impl Recovering {
    #[step(emits = [Task])]
    async fn plan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        for i in 0..self.width {
            ctx.send_event(Task(i));
        }
    }

    #[step(num_workers = 2)]
    async fn work(&self, ev: Task) -> Result<TaskDone, Boom> {
        let busy = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_busy.fetch_max(busy, Ordering::SeqCst);
        external(Fire::Thread).await;
        self.log.lock().unwrap().push(format!("work {}", ev.0));
        self.busy.fetch_sub(1, Ordering::SeqCst);
        if !ev.0.is_multiple_of(2) {
            Err(Boom(ev.0))
        } else {
            Ok(TaskDone(ev.0))
        }
    }

    #[step]
    async fn recover(&self, failure: StepFailure) -> TaskDone {
        external(Fire::Thread).await;
        let task = failure.input.downcast_ref::<Task>().unwrap().0;
        self.log.lock().unwrap().push(format!("recover {task}"));
        TaskDone(task)
    }

    #[step]
    async fn gather(&self, ctx: &Context<Self>, ev: TaskDone) -> Option<StopEvent<Vec<u32>>> {
        let all = ctx.collect(ev, self.width as usize)?;
        let mut tasks: Vec<u32> = all.iter().map(|d| d.0).collect();
        tasks.sort_unstable();
        Some(StopEvent(tasks))
    }
}

async fn recovered_failures_under_foreign_wakes(rounds: u32) {
    for round in 0..rounds {
        let width = 12;
        let runner = Recovering {
            width,
            log: Mutex::default(),
            busy: AtomicU32::new(0),
            most_busy: AtomicU32::new(0),
        }
        .runner()
        .max_recoveries(width);
        let mut run = runner.start(());
        let out = bounded(&format!("recovered failures, round {round}"), &mut run).await;
        assert_eq!(
            out.unwrap(),
            (0..width).collect::<Vec<_>>(),
            "round {round}"
        );
        let flow = runner.workflow();
        assert!(flow.most_busy.load(Ordering::SeqCst) <= 2, "two workers");
        let log = flow.log.lock().unwrap().clone();
        for task in 0..width {
            let work = log.iter().position(|l| *l == format!("work {task}"));
            let recover = log.iter().position(|l| *l == format!("recover {task}"));
            match (task % 2, work, recover) {
                (0, Some(_), None) => {}
                (1, Some(w), Some(r)) => assert!(w < r, "task {task}: {log:?}"),
                _ => panic!("task {task} in round {round}: {log:?}"),
            }
        }
        // Every recovered failure is readable, final (not retried), with its own error.
        let mut failed: Vec<(u32, String)> = run
            .failures()
            .iter()
            .map(|f| {
                assert_eq!((f.step, f.attempt, f.retried), ("work", 1, false));
                let task = f.error.downcast_ref::<Boom>().unwrap().0;
                (task, f.error.to_string())
            })
            .collect();
        failed.sort();
        let odd: Vec<(u32, String)> = (0..width)
            .filter(|t| !t.is_multiple_of(2))
            .map(|t| (t, format!("boom {t}")))
            .collect();
        assert_eq!(failed, odd, "round {round}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn recovered_failures_under_foreign_wakes_current_thread() {
    recovered_failures_under_foreign_wakes(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_failures_under_foreign_wakes_multi_thread() {
    recovered_failures_under_foreign_wakes(20).await;
}

#[derive(Debug, Clone, Event)]
struct Share(u32);

#[derive(Debug, Clone, Event)]
struct Piece(u32);

/// What one attempt of `join` saw: (piece, attempt, the set `collect` returned).
type Collected = (u32, u32, Option<Vec<u32>>);

/// `part` (three workers, woken from a std thread) delivers the pieces in a random order;
/// `join` retries: the first attempt of an even piece fails after buffering it, and the first
/// attempt that completes the set fails after `collect` handed it the set.
struct RetriedJoin {
    width: u32,
    log: Mutex<Vec<Collected>>,
}

#[workflow]
impl RetriedJoin {
    #[step(emits = [Share])]
    async fn fan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        for i in 0..self.width {
            ctx.send_event(Share(i));
        }
    }

    #[step(num_workers = 3)]
    async fn part(&self, ev: Share) -> Piece {
        external(Fire::Thread).await;
        Piece(ev.0)
    }

    #[step(retry = RetryPolicy::fixed(3, Duration::from_millis(1)))]
    async fn join(
        &self,
        ctx: &Context<Self>,
        ev: Piece,
    ) -> Result<Option<StopEvent<Vec<u32>>>, Boom> {
        let piece = ev.0;
        let set = ctx
            .collect(ev, self.width as usize)
            .map(|s| s.iter().map(|p| p.0).collect::<Vec<_>>());
        self.log
            .lock()
            .unwrap()
            .push((piece, ctx.attempt(), set.clone()));
        if ctx.attempt() == 1 && (piece.is_multiple_of(2) || set.is_some()) {
            external(Fire::Thread).await;
            return Err(Boom(piece));
        }
        Ok(set.map(|mut set| {
            set.sort_unstable();
            StopEvent(set)
        }))
    }
}

async fn retries_of_a_join_racing_its_fan_in(rounds: u32) {
    for round in 0..rounds {
        let width = 6;
        let runner = RetriedJoin {
            width,
            log: Mutex::default(),
        }
        .runner();
        let mut run = runner.start(());
        let out = bounded(&format!("retried join, round {round}"), &mut run).await;
        // Each piece exactly once: none lost by a failed attempt, none buffered twice.
        assert_eq!(
            out.unwrap(),
            (0..width).collect::<Vec<_>>(),
            "round {round}"
        );
        let log = runner.workflow().log.lock().unwrap().clone();
        let sets: Vec<&Collected> = log.iter().filter(|(_, _, set)| set.is_some()).collect();
        // The set went to one invocation: its failed first attempt, then its retry, the same.
        assert_eq!(sets.len(), 2, "round {round}: {log:?}");
        assert_eq!(sets[0].0, sets[1].0, "{log:?}");
        assert_eq!((sets[0].1, sets[1].1), (1, 2), "{log:?}");
        assert_eq!(sets[0].2, sets[1].2, "the retry sees the same set: {log:?}");
        let completing = sets[0].0;
        // Every piece's first attempt comes before its retry.
        for piece in 0..width {
            let attempts: Vec<u32> = log
                .iter()
                .filter(|(p, _, _)| *p == piece)
                .map(|(_, a, _)| *a)
                .collect();
            let expected: &[u32] = if piece.is_multiple_of(2) || piece == completing {
                &[1, 2]
            } else {
                &[1]
            };
            assert_eq!(attempts, expected, "piece {piece}, round {round}: {log:?}");
        }
        let mut retried: Vec<u32> = run
            .failures()
            .iter()
            .map(|f| {
                assert_eq!((f.step, f.attempt, f.retried), ("join", 1, true));
                f.error.downcast_ref::<Boom>().unwrap().0
            })
            .collect();
        retried.sort_unstable();
        let mut expected: Vec<u32> = (0..width)
            .filter(|p| p.is_multiple_of(2) || *p == completing)
            .collect();
        expected.sort_unstable();
        assert_eq!(retried, expected, "round {round}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn retries_of_a_join_racing_its_fan_in_current_thread() {
    retries_of_a_join_racing_its_fan_in(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_join_racing_its_fan_in_multi_thread() {
    retries_of_a_join_racing_its_fan_in(20).await;
}

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
struct Attempted(u32);

/// `call` fails its first attempt; the next one is due after `delay`.
struct Backoff {
    attempts: Arc<Mutex<Vec<u32>>>,
}

#[workflow(durable)]
impl Backoff {
    #[step(retry = RetryPolicy::fixed(3, Duration::from_secs(10)))]
    async fn call(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Result<StopEvent<u32>, Boom> {
        self.attempts.lock().unwrap().push(ctx.attempt());
        ctx.write_event_to_stream(Attempted(ctx.attempt()));
        if ctx.attempt() == 1 {
            return Err(Boom(ev.0));
        }
        Ok(StopEvent(ev.0 + ctx.attempt()))
    }
}

/// Attempt 1 fails at t=0 (the retry is due at t=10 s); snapshots at t=3 s and, from the
/// resumed run, at t=5 s, each resumed: the retry runs once, at t=10 s, never early, never
/// twice, and attempt 1 never runs again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn snapshots_in_a_retry_delay_keep_the_rest_of_it_paused_clock() {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let runner = Backoff {
        attempts: attempts.clone(),
    }
    .runner();
    let began = tokio::time::Instant::now();
    let mut first = runner.start(5);
    while first.failures().is_empty() {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_3s = first.snapshot().await.unwrap();
    first.cancel();
    assert!(matches!((&mut first).await, Err(WorkflowError::Cancelled)));
    assert_eq!(at_3s.in_flight.len(), 1);
    assert_eq!(at_3s.in_flight[0].attempt, 2, "the next attempt is due");
    let due = at_3s.in_flight[0].retry_at_ms.expect("when it is due");

    let mut second = runner.resume(&at_3s).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_5s = second.snapshot().await.unwrap();
    second.cancel();
    assert!(matches!((&mut second).await, Err(WorkflowError::Cancelled)));
    // The due time is wall-clock: the paused tokio clock moved 2 s that the wall clock did
    // not, so the same moment reads 2 s earlier (on a real clock it reads the same, see the
    // multi-thread test). What is left of the delay is the same: 5 s.
    let kept = at_5s.in_flight[0].retry_at_ms.unwrap();
    assert!((kept + 2_000).abs_diff(due) <= 5, "{kept} vs {due}");
    assert_eq!(*attempts.lock().unwrap(), [1], "no attempt yet");

    let resumed = tokio::time::Instant::now();
    let mut third = runner.resume(&at_5s).unwrap();
    let events = third.events();
    // Paused clock: a bound longer than the delay (`bounded`'s 5 s would fire first).
    let out = tokio::time::timeout(Duration::from_secs(60), &mut third)
        .await
        .expect("the resumed retry ends")
        .unwrap();
    assert_eq!(out, 7);
    let waited = resumed.elapsed();
    // The rest of the delay: 5 s (less the few real milliseconds the test took).
    assert!(
        waited > Duration::from_millis(4_500) && waited <= Duration::from_millis(5_001),
        "{waited:?}"
    );
    assert!(began.elapsed() >= Duration::from_millis(9_500));
    assert_eq!(*attempts.lock().unwrap(), [1, 2]);
    let items: Vec<StreamItem> = events.collect().await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0].event::<Attempted>().map(|a| a.0), Some(2));
    assert!(matches!(items[1], StreamItem::End(Outcome::Stopped)));
}

/// The same on a multi-thread runtime, on the real clock: a snapshot in the delay, resumed,
/// does not retry at once, and a snapshot of the resumed run names the same due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_in_a_retry_delay_keep_the_rest_of_it_multi_thread() {
    for round in 0..5 {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let runner = Backoff {
            attempts: attempts.clone(),
        }
        .runner();
        let mut first = runner.start(5);
        bounded("the first attempt to fail", async {
            while first.failures().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let snapshot = first.snapshot().await.unwrap();
        first.cancel();
        assert!(matches!((&mut first).await, Err(WorkflowError::Cancelled)));
        let due = snapshot.in_flight[0].retry_at_ms.unwrap();
        let mut resumed = runner.resume(&snapshot).unwrap();
        // Foreign wakes and a pause: the run is polled, and still does not retry.
        external(Fire::Thread).await;
        tokio::time::sleep(Duration::from_millis(50 + random(100))).await;
        assert_eq!(*attempts.lock().unwrap(), [1], "round {round}");
        let again = resumed.snapshot().await.unwrap();
        assert_eq!(again.in_flight[0].attempt, 2);
        let kept = again.in_flight[0].retry_at_ms.unwrap();
        assert!(kept.abs_diff(due) <= 5, "{kept} vs {due}");
        resumed.cancel();
        assert!(matches!(
            (&mut resumed).await,
            Err(WorkflowError::Cancelled)
        ));
        assert_eq!(*attempts.lock().unwrap(), [1], "round {round}");
    }
}
