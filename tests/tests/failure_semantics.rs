//! Failures that must neither hang, repeat nor lose work (issue 17): a recovered failure frees
//! its worker for the queue, the catch-error step never handles its own failure, the fan-in
//! takes exactly the collected types, and stream consumers see a failure's cause. Each on the
//! current-thread and the multi-thread runtime.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use tidewater::Outcome;
use tidewater::prelude::*;

#[derive(Debug, thiserror::Error)]
#[error("the disk is full")]
struct DiskFull;

#[derive(Debug, Clone, Event)]
struct Job(u32);

#[derive(Debug, Clone, Event)]
struct Saved(u32);

/// Three jobs to a one-worker step that always fails; the catch-error step turns each failure
/// into a `Saved`, and `gather` waits for all three.
struct Stranded {
    ran: Mutex<Vec<String>>,
}

#[workflow]
impl Stranded {
    #[step]
    async fn plan(&self, ev: StartEvent<u32>) -> Vec<Job> {
        (0..ev.0).map(Job).collect()
    }

    #[step(num_workers = 1)]
    async fn fragile(&self, ev: Job) -> Result<Saved, DiskFull> {
        self.ran.lock().unwrap().push(format!("fragile {}", ev.0));
        Err(DiskFull)
    }

    #[step]
    async fn recover(&self, failure: StepFailure) -> Saved {
        let job = failure.input.downcast_ref::<Job>().unwrap().0;
        self.ran.lock().unwrap().push(format!("recover {job}"));
        Saved(job)
    }

    #[step]
    async fn gather(&self, ctx: &Context<Self>, ev: Saved) -> Option<StopEvent<usize>> {
        let all = ctx.collect(ev, 3)?;
        let mut jobs: Vec<u32> = all.iter().map(|s| s.0).collect();
        jobs.sort_unstable();
        assert_eq!(jobs, [0, 1, 2]);
        Some(StopEvent(all.len()))
    }
}

async fn a_recovered_failure_frees_its_worker_for_the_queue() {
    let flow = Stranded {
        ran: Mutex::default(),
    };
    let runner = flow
        .runner()
        .max_recoveries(10)
        .timeout(std::time::Duration::from_secs(5));
    assert_eq!(
        runner.run(3).await.unwrap(),
        3,
        "all three jobs were recovered"
    );
    let ran = runner.workflow().ran.lock().unwrap().clone();
    let fragile: Vec<_> = ran.iter().filter(|l| l.starts_with("fragile")).collect();
    assert_eq!(
        fragile,
        ["fragile 0", "fragile 1", "fragile 2"],
        "FIFO, one at a time"
    );
    for job in 0..3 {
        let f = ran
            .iter()
            .position(|l| *l == format!("fragile {job}"))
            .unwrap();
        let r = ran
            .iter()
            .position(|l| *l == format!("recover {job}"))
            .unwrap();
        assert!(f < r, "job {job} failed before it was recovered: {ran:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_recovered_failure_frees_its_worker_for_the_queue_current_thread() {
    a_recovered_failure_frees_its_worker_for_the_queue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_failure_frees_its_worker_for_the_queue_multi_thread() {
    a_recovered_failure_frees_its_worker_for_the_queue().await;
}

/// The catch-error step itself fails.
struct BadRecovery {
    recoveries: AtomicU32,
}

#[workflow]
impl BadRecovery {
    #[step]
    async fn work(&self, _ev: StartEvent<()>) -> Result<StopEvent<()>, DiskFull> {
        Err(DiskFull)
    }

    #[step]
    async fn recover(&self, _failure: StepFailure) -> Result<StopEvent<()>, DiskFull> {
        self.recoveries.fetch_add(1, Ordering::SeqCst);
        Err(DiskFull)
    }
}

async fn the_catch_error_step_never_handles_its_own_failure() {
    let runner = BadRecovery {
        recoveries: AtomicU32::new(0),
    }
    .runner()
    .max_recoveries(5);
    let mut handler = runner.start(());
    let mut events = handler.events();
    let error = (&mut handler).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "step `recover` failed after 1 attempt(s)"
    );
    assert_eq!(
        runner.workflow().recoveries.load(Ordering::SeqCst),
        1,
        "ran once"
    );
    // Stream consumers get the cause too, not only "failed after 1 attempt(s)".
    let mut last = None;
    while let Some(item) = events.next().await {
        last = Some(item);
    }
    match last {
        Some(StreamItem::End(Outcome::Failed(message))) => assert_eq!(
            message,
            "step `recover` failed after 1 attempt(s): the disk is full"
        ),
        other => panic!("expected the failure outcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_catch_error_step_never_handles_its_own_failure_current_thread() {
    the_catch_error_step_never_handles_its_own_failure().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_error_step_never_handles_its_own_failure_multi_thread() {
    the_catch_error_step_never_handles_its_own_failure().await;
}

#[derive(Debug, Clone, Event)]
struct Hit(u32);

#[derive(Debug, Clone, Event)]
struct Miss(u32);

#[derive(Debug, Clone, Event)]
struct Other(u32);

/// `collect_each::<(Hit, Miss, Hit)>` in a step that also accepts `Other`.
struct Joiner {
    others: Mutex<Vec<u32>>,
}

#[workflow]
impl Joiner {
    #[step(emits = [Hit, Miss, Other])]
    async fn fan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        ctx.send_event(Other(9));
        ctx.send_event(Hit(1));
        ctx.send_event(Other(8));
        ctx.send_event(Miss(2));
        ctx.send_event(Hit(3));
    }

    #[step]
    async fn join(
        &self,
        ctx: &Context<Self>,
        ev: Either<Hit, Either<Miss, Other>>,
    ) -> Option<StopEvent<String>> {
        if let Either::Right(Either::Right(other)) = &ev {
            self.others.lock().unwrap().push(other.0);
        }
        let (a, miss, b) = ctx.collect_each::<(Hit, Miss, Hit)>(ev)?;
        Some(StopEvent(format!("{} {} {}", a.0, miss.0, b.0)))
    }
}

async fn collect_each_takes_exactly_the_collected_types() {
    let runner = Joiner {
        others: Mutex::default(),
    }
    .runner();
    assert_eq!(runner.run(()).await.unwrap(), "1 2 3");
    let mut others = runner.workflow().others.lock().unwrap().clone();
    others.sort_unstable();
    assert_eq!(others, [8, 9], "the other type was left to the step");
}

#[tokio::test(flavor = "current_thread")]
async fn collect_each_takes_exactly_the_collected_types_current_thread() {
    collect_each_takes_exactly_the_collected_types().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_each_takes_exactly_the_collected_types_multi_thread() {
    collect_each_takes_exactly_the_collected_types().await;
}

/// `collect(ev, 0)`: a count that cannot hold the event.
struct ZeroCount;

#[workflow]
impl ZeroCount {
    #[step]
    async fn fan(&self, _ev: StartEvent<()>) -> Job {
        Job(1)
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Job) -> Option<StopEvent<usize>> {
        let all = ctx.collect(ev, 0)?;
        Some(StopEvent(all.len()))
    }
}

#[tokio::test]
async fn collect_with_a_count_of_zero_fails_the_step_clearly() {
    let error = ZeroCount.run(()).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("step `join` panicked: `collect` of a `"),
        "{text}"
    );
    assert!(text.contains("with a count of 0"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The runaway-loop guard (issue 10, item 2).

#[derive(Debug, Clone, Event)]
struct Draft(u32);

#[derive(Debug, Clone, Event)]
struct Review(u32);

/// `write` and `judge` loop until the judge is satisfied, which it never is when `never` is
/// set; `setup` and the fan-out are on no loop.
struct Critic {
    never: bool,
}

#[workflow]
impl Critic {
    #[step]
    async fn setup(&self, ev: StartEvent<u32>) -> Draft {
        Draft(ev.0)
    }

    #[step]
    async fn write(&self, ev: Draft) -> Review {
        Review(ev.0 + 1)
    }

    #[step]
    async fn judge(&self, ev: Review) -> Either<Draft, StopEvent<u32>> {
        if self.never || ev.0 < 10 {
            Either::Left(Draft(ev.0))
        } else {
            Either::Right(StopEvent(ev.0))
        }
    }
}

async fn a_runaway_loop_ends_with_an_error_naming_the_loop() {
    assert_eq!(Critic { never: false }.run(0).await.unwrap(), 10);
    let error = Critic { never: true }
        .runner()
        .max_loop_invocations(Some(500))
        .run(0)
        .await
        .unwrap_err();
    assert!(matches!(
        &error,
        WorkflowError::LoopLimit {
            count: 501,
            limit: 500,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        "the run invoked steps on a loop 501 times without ending (`write` -> `judge` -> \
         `write`): a loop whose exit is never taken? The limit is 500 per run \
         (`Runner::max_loop_invocations`)"
    );
    // The default guard ends it too, and `None` removes the guard (bounded here by a timeout).
    let error = Critic { never: true }.run(0).await.unwrap_err();
    assert!(
        matches!(error, WorkflowError::LoopLimit { limit: 10_000, .. }),
        "{error}"
    );
    let error = Critic { never: true }
        .runner()
        .max_loop_invocations(None)
        .timeout(std::time::Duration::from_millis(200))
        .run(0)
        .await
        .unwrap_err();
    assert!(matches!(error, WorkflowError::TimedOut { .. }), "{error}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_runaway_loop_ends_with_an_error_naming_the_loop_current_thread() {
    a_runaway_loop_ends_with_an_error_naming_the_loop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_loop_ends_with_an_error_naming_the_loop_multi_thread() {
    a_runaway_loop_ends_with_an_error_naming_the_loop().await;
}

/// A fan-out far past the loop limit is no loop: the guard leaves it alone.
struct Wide;

#[workflow]
impl Wide {
    #[step]
    async fn fan(&self, ev: StartEvent<u32>) -> Vec<Job> {
        (0..ev.0).map(Job).collect()
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Job) -> Option<StopEvent<usize>> {
        let all = ctx.collect(ev, 20_000)?;
        Some(StopEvent(all.len()))
    }
}

#[tokio::test]
async fn the_loop_guard_does_not_count_steps_on_no_loop() {
    assert_eq!(Wide.run(20_000).await.unwrap(), 20_000);
}

// ---------------------------------------------------------------------------------------------
// Nothing hangs or loses the caller's data (issue 17, item 6).

#[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
struct Wait(u32);

/// Parks its run on a gate, so that a second run waits for admission behind it.
struct Gate {
    gate: std::sync::Arc<tokio::sync::Notify>,
}

#[workflow(durable)]
impl Gate {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Wait {
        Wait(ev.0)
    }

    #[step]
    async fn wait(&self, ev: Wait) -> StopEvent<u32> {
        self.gate.notified().await;
        StopEvent(ev.0)
    }
}

async fn a_snapshot_of_a_run_waiting_for_admission_is_answered_at_once() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let runner = Gate { gate: gate.clone() }.runner().max_concurrent_runs(1);
    let first = runner.start(1);
    let queued = runner.start(2);
    let snapshot = tokio::time::timeout(std::time::Duration::from_secs(5), queued.snapshot())
        .await
        .expect("answered while the run waits for its turn")
        .unwrap();
    assert_eq!(snapshot.completed, 0);
    assert_eq!(
        snapshot.queued.len(),
        1,
        "the start event, not yet delivered"
    );
    // The snapshot resumes elsewhere like the run would have started.
    let resumed = Gate { gate: gate.clone() }
        .runner()
        .resume(&snapshot)
        .unwrap();
    gate.notify_waiters();
    for _ in 0..3 {
        gate.notify_one();
    }
    let _ = first.await;
    queued.cancel();
    let _ = queued.await;
    gate.notify_one();
    assert_eq!(resumed.await.unwrap(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_snapshot_of_a_run_waiting_for_admission_is_answered_at_once_current_thread() {
    a_snapshot_of_a_run_waiting_for_admission_is_answered_at_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_run_waiting_for_admission_is_answered_at_once_multi_thread() {
    a_snapshot_of_a_run_waiting_for_admission_is_answered_at_once().await;
}

#[derive(Default)]
struct Ledger {
    entries: Vec<String>,
}

#[derive(Debug, Clone, Event)]
struct Posted;

/// Writes one entry, then hangs in the next step.
struct Book;

#[workflow(state = Ledger)]
impl Book {
    #[step]
    async fn post(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> Posted {
        ctx.update_state(|l| l.entries.push(ev.0));
        Posted
    }

    #[step]
    async fn hang(&self, _ev: Posted) -> StopEvent<()> {
        std::future::pending::<()>().await;
        StopEvent(())
    }
}

async fn run_with_dropped_half_way_keeps_the_callers_state() {
    let runner = Book.runner();
    let mut ledger = Ledger {
        entries: vec!["opening balance".into()],
    };
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        runner.run_with("coffee".into(), &mut ledger),
    )
    .await;
    assert!(cut.is_err(), "the outer timeout cut the run off");
    assert_eq!(
        ledger.entries,
        ["opening balance", "coffee"],
        "the state as the run left it, not wiped"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn run_with_dropped_half_way_keeps_the_callers_state_current_thread() {
    run_with_dropped_half_way_keeps_the_callers_state().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_dropped_half_way_keeps_the_callers_state_multi_thread() {
    run_with_dropped_half_way_keeps_the_callers_state().await;
}

// ---------------------------------------------------------------------------------------------
// A join that can never complete is named in the stuck diagnostic (issue 17 item 5, 10 item 4).

/// Fans out `n` jobs but tells the join to wait for `n + 2`.
struct ShortFan;

#[workflow]
impl ShortFan {
    #[step]
    async fn fan(&self, ev: StartEvent<u32>) -> Vec<Job> {
        (0..ev.0).map(Job).collect()
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Job) -> Option<StopEvent<usize>> {
        let all = ctx.collect(ev, 5)?;
        Some(StopEvent(all.len()))
    }
}

/// Waits for one `Hit` and one `Miss`; only `Hit`s come.
struct HalfPair;

#[workflow]
impl HalfPair {
    #[step(emits = [Hit, Miss])]
    async fn fan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        ctx.send_event(Hit(1));
        ctx.send_event(Hit(2));
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Either<Hit, Miss>) -> Option<StopEvent<u32>> {
        let (hit, miss) = ctx.collect_each::<(Hit, Miss)>(ev)?;
        Some(StopEvent(hit.0 + miss.0))
    }
}

async fn a_join_that_cannot_complete_is_named_with_its_counts() {
    let error = ShortFan.run(3).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(
            "step `join` waits in `collect` for 5 `failure_semantics::Job` event(s) and has 3"
        ),
        "{text}"
    );
    let error = HalfPair.run(()).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(
            "step `join` waits in `collect_each` for one of each of (`failure_semantics::Hit`, \
             `failure_semantics::Miss`) and has `failure_semantics::Hit` 1/1, \
             `failure_semantics::Miss` 0/1 (missing: `failure_semantics::Miss`)"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_join_that_cannot_complete_is_named_with_its_counts_current_thread() {
    a_join_that_cannot_complete_is_named_with_its_counts().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_cannot_complete_is_named_with_its_counts_multi_thread() {
    a_join_that_cannot_complete_is_named_with_its_counts().await;
}

#[tokio::test]
async fn a_fan_out_of_zero_items_is_named_as_such() {
    let error = ShortFan.run(0).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("step `fan` emitted an empty batch (a fan-out of 0 items)"),
        "{text}"
    );
    assert!(text.contains("must handle 0 itself"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// A retried join sees the same fan-in (issue 17, item 3).

/// `join` retries; it fails once right after `collect` hands it the full set, and once after
/// buffering job 1 (before the set is complete).
struct RetriedJoin {
    failed_on_set: std::sync::atomic::AtomicBool,
    failed_on_one: std::sync::atomic::AtomicBool,
    sets: Mutex<Vec<Vec<u32>>>,
}

#[workflow]
impl RetriedJoin {
    #[step]
    async fn fan(&self, ev: StartEvent<u32>) -> Vec<Job> {
        (0..ev.0).map(Job).collect()
    }

    #[step(retry = RetryPolicy::fixed(3, std::time::Duration::from_millis(1)))]
    async fn join(&self, ctx: &Context<Self>, ev: Job) -> Result<Option<StopEvent<u32>>, DiskFull> {
        let id = ev.0;
        let set = ctx.collect(ev, 4);
        if id == 1 && set.is_none() && !self.failed_on_one.swap(true, Ordering::SeqCst) {
            return Err(DiskFull); // job 1 is in the buffer; its retry must not add it again
        }
        let Some(set) = set else { return Ok(None) };
        let ids: Vec<u32> = set.iter().map(|j| j.0).collect();
        self.sets.lock().unwrap().push(ids.clone());
        if !self.failed_on_set.swap(true, Ordering::SeqCst) {
            return Err(DiskFull); // the retry must get this same set
        }
        Ok(Some(StopEvent(ids.iter().sum())))
    }
}

async fn a_retried_join_sees_the_same_set() {
    let runner = RetriedJoin {
        failed_on_set: Default::default(),
        failed_on_one: Default::default(),
        sets: Mutex::default(),
    }
    .runner()
    .timeout(std::time::Duration::from_secs(5));
    assert_eq!(runner.run(4).await.unwrap(), 6, "0 + 1 + 2 + 3, each once");
    let sets = runner.workflow().sets.lock().unwrap().clone();
    assert_eq!(
        sets.len(),
        2,
        "the set, then the same set on the retry: {sets:?}"
    );
    assert_eq!(sets[0], sets[1]);
    let mut ids = sets[0].clone();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_retried_join_sees_the_same_set_current_thread() {
    a_retried_join_sees_the_same_set().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_join_sees_the_same_set_multi_thread() {
    a_retried_join_sees_the_same_set().await;
}

// --- After a cancel, the failures before it are still readable (17.7) -----------------------

#[derive(Debug, Clone, Event)]
struct Patched(u32);

#[derive(Debug, Clone, Event)]
struct Holding(u32);

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Refused;

/// `plan`'s job goes to `flaky` (retried after an hour, so it is in its retry delay at the
/// cancel) and `broken` (fails for good, recovered into `hold`, which waits for ever).
struct Cancelled;

#[workflow]
impl Cancelled {
    #[step]
    async fn plan(&self, _ev: StartEvent<()>) -> Job {
        Job(7)
    }

    #[step(retry = RetryPolicy::fixed(3, std::time::Duration::from_secs(3600)))]
    async fn flaky(&self, _ev: Job) -> Result<StopEvent<u32>, Refused> {
        Err(Refused)
    }

    #[step]
    async fn broken(&self, _ev: Job) -> Result<Patched, DiskFull> {
        Err(DiskFull)
    }

    #[step]
    async fn recover(&self, failure: StepFailure) -> Patched {
        Patched(failure.input.downcast_ref::<Job>().unwrap().0)
    }

    #[step]
    async fn hold(&self, ctx: &Context<Self>, ev: Patched) -> StopEvent<u32> {
        ctx.write_event_to_stream(Holding(ev.0));
        std::future::pending::<()>().await;
        StopEvent(ev.0)
    }
}

async fn the_failures_before_a_cancel_stay_readable() {
    let mut run = Cancelled.runner().start(());
    let mut events = run.events();
    let first = events.next().await.unwrap();
    assert_eq!(first.event::<Holding>().map(|h| h.0), Some(7), "{first:?}");
    // `broken` failed and was recovered; `flaky` failed and waits out its retry delay.
    while run.failures().len() < 2 {
        tokio::task::yield_now().await;
    }
    run.cancel();
    assert!(matches!((&mut run).await, Err(WorkflowError::Cancelled)));
    let rest: Vec<StreamItem> = events.collect().await;
    assert!(
        matches!(rest.as_slice(), [StreamItem::End(Outcome::Cancelled)]),
        "{rest:?}"
    );
    let mut failures: Vec<(&str, u32, bool, String)> = run
        .failures()
        .iter()
        .map(|f| (f.step, f.attempt, f.retried, f.error.to_string()))
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            ("broken", 1, false, "the disk is full".to_string()),
            ("flaky", 1, true, "connection refused".to_string()),
        ]
    );
    // The error values themselves, not only their text.
    assert!(
        run.failures()
            .iter()
            .any(|f| f.error.downcast_ref::<Refused>().is_some())
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_failures_before_a_cancel_stay_readable_current_thread() {
    the_failures_before_a_cancel_stay_readable().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failures_before_a_cancel_stay_readable_multi_thread() {
    the_failures_before_a_cancel_stay_readable().await;
}

// --- A trace tells which attempt sent each event (17.3) --------------------------------------

#[derive(Debug, Clone, Event)]
struct Ping(u32);

/// `send` sends a ping on every attempt; its first attempt then fails. Both pings are
/// delivered (what a failed attempt sent stays sent), and the trace says which attempt sent each.
struct Sends {
    pings: Mutex<Vec<(u32, u32)>>,
}

#[workflow]
impl Sends {
    #[step(retry = RetryPolicy::fixed(2, std::time::Duration::from_millis(1)), emits = [Ping])]
    async fn send(&self, ctx: &Context<Self>, _ev: StartEvent<()>) -> Result<(), DiskFull> {
        ctx.send_event(Ping(ctx.attempt()));
        if ctx.attempt() == 1 {
            return Err(DiskFull);
        }
        Ok(())
    }

    #[step]
    async fn count(&self, ctx: &Context<Self>, ev: Ping) -> Option<StopEvent<usize>> {
        self.pings.lock().unwrap().push((ev.0, ctx.attempt()));
        let all = ctx.collect(ev, 2)?;
        Some(StopEvent(all.len()))
    }
}

async fn a_trace_names_the_attempt_that_sent_each_event() {
    let runner = Sends {
        pings: Mutex::default(),
    }
    .runner()
    .trace(true);
    let mut run = runner.start(());
    let recording = run.recording().unwrap();
    assert_eq!((&mut run).await.unwrap(), 2);
    let trace = recording.trace();
    let sent: Vec<(String, Option<String>, Option<u32>)> = trace
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            tidewater::trace::TraceEvent::EventSent {
                event,
                step,
                attempt,
                ..
            } => Some((event.clone(), step.clone(), *attempt)),
            _ => None,
        })
        .collect();
    let ping = "failure_semantics::Ping".to_string();
    let send = Some("send".to_string());
    assert_eq!(
        sent,
        [(ping.clone(), send.clone(), Some(1)), (ping, send, Some(2))]
    );
    // In order: the first attempt's send, its failure, the retry's send.
    let order: Vec<String> = trace
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            tidewater::trace::TraceEvent::EventSent { attempt, .. } => {
                Some(format!("sent by attempt {}", attempt.unwrap()))
            }
            tidewater::trace::TraceEvent::StepFailed { step, attempt, .. } => {
                Some(format!("{step} attempt {attempt} failed"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "sent by attempt 1",
            "send attempt 1 failed",
            "sent by attempt 2"
        ]
    );
    assert!(
        trace.timeline().contains("sent Ping (by send, attempt 2)"),
        "{}",
        trace.timeline()
    );
    let mut pings = runner.workflow().pings.lock().unwrap().clone();
    pings.sort();
    assert_eq!(pings, [(1, 1), (2, 1)], "both attempts' pings delivered");
}

#[tokio::test(flavor = "current_thread")]
async fn a_trace_names_the_attempt_that_sent_each_event_current_thread() {
    a_trace_names_the_attempt_that_sent_each_event().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_names_the_attempt_that_sent_each_event_multi_thread() {
    a_trace_names_the_attempt_that_sent_each_event().await;
}
