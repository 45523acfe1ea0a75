//! The executor: one run is one future that routes events between steps and polls the step
//! invocations itself.
//!
//! Hot path (an event leaves a step, its consumers run): the event's [`EventId`] is looked up in
//! a table built once per runner (a scan of a few integers, or a binary search in a large
//! graph; no strings), the event is cloned only when several steps accept it, and the
//! consumer's invocation future is written into a free [`Call`] of the run and polled by the
//! run's own loop: no task spawn, no lock, no allocation once the run has as many calls as it
//! ever runs at once (an event of up to 16 bytes is stored inside its `DynEvent`; a larger one
//! is boxed). Retries, time limits and the catch-error step's copy of the input are kept beside
//! the call, by the loop, so a step without them pays nothing for them.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::Sleep;

use crate::child::ChildControl;
use crate::context::{CollectBuffer, Context, RunShared};
use crate::error::{BoxError, FailedAttempt, Result, SharedError, WorkflowError};
use crate::event::StepFailure;
use crate::event::{DynEvent, EventId, EventKind};
use crate::graph::Graph;
use crate::output::Emitted;
use crate::snapshot::{
    ChildRecord, CollectRecord, EventRecord, InFlightRecord, QueuedRecord, SNAPSHOT_FORMAT,
    Snapshot, SnapshotError, decode_event, encode_event,
};
use crate::store::{RunRecord, RunStatus};
use crate::stream::{Outcome, StreamItem, lock};
use crate::trace::{Recorder, TraceEvent};
use crate::workflow::{Runner, Workflow};

/// Event id -> the steps accepting it, built once per runner from the graph.
#[derive(Debug)]
pub(crate) struct RouteTable {
    /// Sorted by id; each entry is a range of `consumers`.
    entries: Vec<(EventId, u32, u32)>,
    consumers: Vec<usize>,
}

impl RouteTable {
    pub(crate) fn new(graph: &Graph) -> RouteTable {
        let mut ids: Vec<EventId> = graph
            .steps
            .iter()
            .flat_map(|s| s.accepts.iter().map(|m| m.id))
            .collect();
        ids.sort();
        ids.dedup();
        let mut entries = Vec::with_capacity(ids.len());
        let mut consumers = Vec::new();
        for id in ids {
            let start = consumers.len() as u32;
            consumers.extend(graph.consumers(id));
            entries.push((id, start, consumers.len() as u32 - start));
        }
        RouteTable { entries, consumers }
    }

    pub(crate) fn consumers(&self, id: EventId) -> &[usize] {
        &self.consumers[self.range(id)]
    }

    /// Where the consumers of `id` are in `consumers`. A graph with a few event types (most)
    /// is scanned: cheaper than a binary search at that size.
    fn range(&self, id: EventId) -> std::ops::Range<usize> {
        let found = if self.entries.len() <= 8 {
            self.entries.iter().position(|e| e.0 == id)
        } else {
            self.entries.binary_search_by_key(&id, |e| e.0).ok()
        };
        match found {
            Some(i) => {
                let (_, start, len) = self.entries[i];
                start as usize..(start + len) as usize
            }
            None => 0..0,
        }
    }
}

/// What one finished step invocation reports to the loop.
struct Done {
    step: usize,
    worker: u32,
    /// A failure is boxed: it is rare and large, and `Done` is moved through the loop at every
    /// hop.
    result: std::result::Result<Emitted, Box<Failed>>,
}

/// A failed invocation: the error, and the input when a catch-error step may want it.
struct Failed {
    error: WorkflowError,
    input: Option<DynEvent>,
    last: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Failed {
    /// A failure no catch-error step sees (a panic, a time limit).
    fn fatal(error: WorkflowError) -> Failed {
        Failed {
            error,
            input: None,
            last: None,
        }
    }
}

/// Per-step bookkeeping: waiting events and which workers are busy.
struct StepState {
    queue: VecDeque<DynEvent>,
    busy: u32,
    /// The next worker number never used (freed ones are in `Rare::free_workers`).
    next_worker: u32,
}

/// How many invocations of `step` may run at once (`num_workers`).
fn limit<W: Workflow>(step: usize) -> u32 {
    W::GRAPH.steps[step].num_workers.clamp(1, u32::MAX as usize) as u32
}

/// Where a call is in its invocation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Free: no invocation.
    Idle,
    /// An attempt is running (`Call::future` is set).
    Running,
    /// Waiting out the delay before the next attempt (`Call::timer` is armed).
    Backoff,
}

/// The type of the step invocation futures of workflow `W`: `W::__invoke`, named through a
/// function pointer because it is an opaque `impl Future` type.
type Invoke<W, F> = fn(Arc<W>, Context<W>, DynEvent) -> F;

/// A place where one step invocation runs, allocated the first time the run needs one more
/// and reused by every later invocation of any step: a hop costs no allocation for the future
/// nor for its waker. The future lives in its own box so that it stays pinned while `calls`
/// grows.
struct Call<W: Workflow, F> {
    future: Pin<Box<Option<F>>>,
    /// Wakes the run and tells it to poll this call (and no other); polled with a waker
    /// borrowed from it (`waker_ref`: no count change per poll). `None` for the run's first
    /// call, whose waker is the run's shared state itself (`RunShared::first_call_queued`):
    /// a run with one step at a time allocates no waker.
    wake: Option<Arc<CallWake<W>>>,
    phase: Phase,
    step: usize,
    worker: u32,
    attempt: u32,
    /// The invocation's number in its run: its start order (a resumed run starts them again
    /// in the same order), its `Context::invocation_key` and the key of what it recorded.
    order: u64,
    /// The input, the last error and the timer: made for a step that keeps its input
    /// (durable runs, retries, a catch-error step) or has a time limit, reused by the call's
    /// later invocations.
    kept: Option<Box<Kept>>,
    /// The `workflow.step` span of the running attempt, when a subscriber records it.
    span: Option<Box<tracing::Span>>,
    /// The next free call, while this one is free (`NO_CALL`: none).
    next_free: u32,
}

/// What a call keeps for steps that need it (see `Call::kept`).
#[derive(Default)]
struct Kept {
    /// The input, when the step's `keep_input` says so: a snapshot re-runs it, a retry gets a
    /// copy, a catch-error step receives it.
    input: Option<DynEvent>,
    last_error: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// The step's time limit for the running attempt, or the delay before the next attempt.
    /// Only steps with a timeout or a retry policy ever have one.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<W: Workflow, F> Call<W, F> {
    fn input(&self) -> Option<&DynEvent> {
        self.kept.as_ref().and_then(|k| k.input.as_ref())
    }

    fn timer(&self) -> Option<&Pin<Box<Sleep>>> {
        self.kept.as_ref().and_then(|k| k.timer.as_ref())
    }

    fn kept(&mut self) -> &mut Kept {
        self.kept.get_or_insert_with(Box::default)
    }
}

/// No call (the end of the free list).
const NO_CALL: u32 = u32::MAX;

/// The waker of one call: queues the call's index for the run loop and wakes the run.
struct CallWake<W: Workflow> {
    index: u32,
    /// The call is queued to be polled (in the loop's `ready` or in `RunShared::woken`); a
    /// second wake before the poll is a no-op.
    queued: AtomicBool,
    shared: Arc<RunShared<W>>,
}

impl<W: Workflow> futures_util::task::ArcWake for CallWake<W> {
    fn wake_by_ref(this: &Arc<Self>) {
        if !this.queued.swap(true, Ordering::AcqRel) {
            lock(&this.shared.woken).push(this.index);
            this.shared.notify();
        }
    }
}

/// How many invocations the loop polls before it lets the runtime run other tasks (and checks
/// the run's time limit): a run that never waits must not hold its thread forever.
const POLL_BUDGET: u32 = 256;

struct Executor<W: Workflow, F> {
    runner: Runner<W>,
    invoke: Invoke<W, F>,
    shared: Arc<RunShared<W>>,
    steps: Vec<StepState>,
    /// Events waiting in the steps' queues.
    queued: u32,
    calls: Vec<Call<W, F>>,
    /// The first free call (`NO_CALL`: none); each free call names the next (`Call::next_free`).
    free_call: u32,
    /// Calls running an invocation (or waiting out a retry delay).
    busy_calls: u32,
    /// Calls to poll, in the order they were started or woken.
    ready: VecDeque<u32>,
    /// A spare buffer swapped with `RunShared::inbox`, so draining it keeps its capacity and
    /// sending an event does not allocate.
    inbox: Vec<crate::context::Envelope>,
    output: Option<W::Output>,
    /// The last step to finish and how many events it emitted (`u32::MAX`: an empty batch),
    /// for the stuck diagnostic.
    last: Option<(u32, u32)>,
    /// Does a step take `StepFailure`? Then failing invocations keep their input for it.
    catches: bool,
    recoveries: u32,
    /// How many invocations completed.
    completed: u64,
    /// How many invocations started: the number of the last one.
    started: u64,
    /// How the run begins; taken by the first poll.
    init: Option<Init>,
    /// What few runs use (a time limit, a turn under `max_concurrent_runs`, requests, eviction),
    /// made at first use: a run without any of them pays one pointer.
    rare: Option<Box<Rare<W::Output>>>,
    /// The run's span (`workflow.run`) is made: until then `Run::span` is its parent.
    span_made: bool,
    begun: bool,
    ended: bool,
    /// Invocations of steps on a loop so far (the runaway-loop guard).
    loop_invocations: u64,
    /// The step whose invocation crossed the loop limit.
    runaway: Option<u32>,
    /// A durable run saved a status that gave up its claim on the store (ended or parked).
    released: bool,
    /// An attempt of a durable run failed and will be retried: checkpoint it.
    attempt_failed: bool,
    /// A durable run routed an input that is in no checkpoint yet (an event from outside, or
    /// one sent by a step that is still running): checkpoint before any step acts on it.
    unsaved_input: bool,
}

/// The parts of a run that few runs use (see `Executor::rare`).
struct Rare<O> {
    /// The run's trace recorder, when the runner records (`Runner::trace`).
    trace: Option<Arc<Recorder>>,
    /// Durable runs: their writes in flight (boxed, made at the first one).
    writes: Option<Box<Writes<O>>>,
    /// Waiting for a turn under `max_concurrent_runs`.
    admission: Option<Admission>,
    permit: Option<OwnedSemaphorePermit>,
    /// The run's time limit, armed once the run is admitted.
    deadline: Option<Pin<Box<Sleep>>>,
    /// When the run's time limit passes (checked after every step's poll too).
    deadline_at: Option<tokio::time::Instant>,
    /// The run's time limit: its runner's, or less for a child whose parent ends first.
    limit: Option<std::time::Duration>,
    /// Requests published to the outside and not answered yet: the run waits for them.
    pending_requests: Vec<DynEvent>,
    /// Workers of steps with several that finished, as (step, worker), reused last-freed
    /// first (`StepState::next_worker` numbers new ones).
    free_workers: Vec<(u32, u32)>,
    /// Armed while a durable run is parked on requests alone and evicts after an idle time
    /// (`Runner::evict_waiting_after`); disarmed by any activity.
    evict_timer: Option<Pin<Box<Sleep>>>,
}

impl<O> Default for Rare<O> {
    fn default() -> Self {
        Rare {
            trace: None,
            writes: None,
            admission: None,
            permit: None,
            deadline: None,
            deadline_at: None,
            limit: None,
            pending_requests: Vec::new(),
            free_workers: Vec::new(),
            evict_timer: None,
        }
    }
}

/// A durable run's writes handed to the store's writer (group commit).
struct Writes<O> {
    /// Not durable yet, in order. No step is polled and nothing is answered until they are
    /// (the run's task waits without holding its thread).
    commits: Vec<crate::commit::Ticket>,
    /// Steps waiting for what they recorded to be durable (`Context::once`, an answer taken by
    /// `wait_for`): let go once `commits` are.
    then: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Stream events journaled since the last checkpoint, written with the next one.
    rows: Vec<(u64, EventRecord)>,
    /// A status other than running was handed to the writer: once it is durable the run no
    /// longer holds its claim.
    releasing: bool,
    /// The run's result, held while its end is written.
    ending: Option<Result<O>>,
}

impl<O> Default for Writes<O> {
    fn default() -> Self {
        Writes {
            commits: Vec::new(),
            then: Vec::new(),
            rows: Vec::new(),
            releasing: false,
            ending: None,
        }
    }
}

type Admission = Pin<
    Box<
        dyn Future<Output = std::result::Result<OwnedSemaphorePermit, AcquireError>>
            + Send
            + 'static,
    >,
>;

/// How a run begins: with its start event, or from a snapshot.
pub(crate) enum Init {
    Start(DynEvent),
    Resume(Box<Restored>),
}

/// A snapshot, decoded and checked against the workflow.
pub(crate) struct Restored {
    pub(crate) in_flight: Vec<RestoredCall>,
    /// How many invocations the run had started.
    pub(crate) invocations: u64,
    pub(crate) queued: Vec<(usize, DynEvent)>,
    pub(crate) pending_requests: Vec<DynEvent>,
    pub(crate) recoveries: u32,
    pub(crate) completed: u64,
    /// When the run's time limit passes (Unix milliseconds), if the snapshot kept it.
    pub(crate) deadline_ms: Option<u64>,
}

/// An invocation that was running when the snapshot was taken.
pub(crate) struct RestoredCall {
    pub(crate) step: usize,
    pub(crate) event: DynEvent,
    pub(crate) attempt: u32,
    /// Its number (0: none recorded, a new one is given).
    pub(crate) invocation: u64,
    pub(crate) memo: Vec<crate::snapshot::MemoRecord>,
    /// Its children that were running: (label, snapshot).
    pub(crate) children: Vec<(String, Snapshot)>,
    /// The attempt is due when this retry delay ends (Unix milliseconds): the invocation was
    /// waiting out its backoff.
    pub(crate) retry_at_ms: Option<u64>,
}

/// Runs one workflow run to its end.
pub(crate) fn execute<W: Workflow>(
    runner: Runner<W>,
    shared: Arc<RunShared<W>>,
    init: Init,
) -> impl Future<Output = Result<W::Output>> + Send + 'static {
    Run {
        executor: Executor::new(W::__invoke, runner, shared, init),
        // The caller's span where the run is made (`start`, `run`): the parent of the run's
        // span, whichever task polls it first.
        span: boxed_span(tracing::Span::current()),
    }
}

/// A child run, polled by the step that started it (`Context::run_child`).
pub(crate) trait ChildPoll<O>: Send {
    fn poll_child(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<O>>;
}

impl<W: Workflow, F> ChildPoll<W::Output> for Run<W, F>
where
    F: Future<Output = std::result::Result<Emitted, BoxError>> + Send + 'static,
{
    fn poll_child(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<W::Output>> {
        Pin::new(self).poll(cx)
    }
}

impl<W: Workflow, F> ChildControl for Run<W, F>
where
    F: Future<Output = std::result::Result<Emitted, BoxError>> + Send + 'static,
{
    fn capture(&self) -> std::result::Result<Snapshot, SnapshotError> {
        self.executor.capture()
    }

    fn kept_apart(&self) -> bool {
        // Journaled: its own checkpoints keep it. Not durable: it cannot be captured, and
        // runs again from its start with its step (at least once, like any in-flight work).
        self.executor.shared.journal.is_some() || !W::DURABLE
    }

    fn offer(&self, event: DynEvent) -> Option<DynEvent> {
        let shared = &self.executor.shared;
        // A step of the child waiting inline takes it now (its waiter is gone at once, so a
        // second answer of the type goes to the next one who waits).
        let event = shared.offer_to_waiters(event)?;
        let Some(upward) = shared.family().and_then(|f| f.upward.as_ref()) else {
            return Some(event);
        };
        let mut awaiting = lock(&upward.awaiting);
        if let Some(i) = awaiting.iter().position(|id| *id == event.id()) {
            // Answers one of the child's pending requests: routed by the child's own loop.
            awaiting.remove(i);
            drop(awaiting);
            crate::workflow::post_external(shared, event, None);
            return None;
        }
        drop(awaiting);
        match shared.family() {
            Some(family) => family.offer(event),
            None => Some(event),
        }
    }

    fn parent_ended(&mut self, outcome: &Outcome, saved: bool) {
        let executor = &mut self.executor;
        if let Some(upward) = executor.shared.family().and_then(|f| f.upward.as_ref()) {
            *lock(&upward.parent_outcome) = Some(outcome.clone());
        }
        // The parent journaled its end: a journaled child records its own (stopped), so that
        // nobody resumes it.
        // (A child whose own end is being written keeps that end.)
        if saved
            && executor.shared.journal.is_some()
            && !executor.released
            && !executor.ended
            && !executor.ending()
        {
            let error = match outcome {
                Outcome::TimedOut(message) => format!("stopped by its parent: {message}"),
                _ => "stopped by its parent: the parent run ended first".to_string(),
            };
            if let Err(error) = executor
                .save(RunStatus::Failed, None, Some(error))
                .and_then(|()| executor.wait_commits())
            {
                tracing::warn!(%error, "could not journal the end of a child run");
            }
        }
    }
}

/// A child run (`Context::run_child`): polled by its calling step through the first handle;
/// the second lets the parent's loop reach it between polls (snapshots, answers, its end).
#[expect(
    clippy::type_complexity,
    reason = "two handles on one run, erased two ways"
)]
pub(crate) fn execute_child<C: Workflow>(
    runner: Runner<C>,
    shared: Arc<RunShared<C>>,
    init: Init,
) -> (
    Arc<std::sync::Mutex<dyn ChildPoll<C::Output>>>,
    std::sync::Weak<std::sync::Mutex<dyn ChildControl>>,
) {
    let run = Arc::new(std::sync::Mutex::new(Run {
        executor: Executor::new(C::__invoke, runner, shared, init),
        span: boxed_span(tracing::Span::current()),
    }));
    let weak = Arc::downgrade(&run);
    let control: std::sync::Weak<std::sync::Mutex<dyn ChildControl>> = weak;
    (run, control)
}

/// The run's future: the executor, polled inside the run's span.
///
/// A hand-written future rather than an `async fn`: an `async fn` keeps its arguments for its
/// whole life beside the executor made from them, and every parked run pays for that.
struct Run<W: Workflow, F> {
    executor: Executor<W, F>,
    /// `workflow.run`, made at the first poll (as an `async fn` would); until then the span
    /// current where the run was made, its parent (`Executor::span_made` tells which). Boxed,
    /// and only when there is a span: with no subscriber listening a run carries none.
    span: Option<Box<tracing::Span>>,
}

/// `span`, boxed, unless it is no span at all (no subscriber, or none interested).
fn boxed_span(span: tracing::Span) -> Option<Box<tracing::Span>> {
    (!span.is_none()).then(|| Box::new(span))
}

// Nothing in a run is pinned in place: the invocation futures are pinned in their own boxes,
// and the output is only ever moved.
impl<W: Workflow, F> Unpin for Run<W, F> {}

impl<W: Workflow, F> Future for Run<W, F>
where
    F: Future<Output = std::result::Result<Emitted, BoxError>> + Send + 'static,
{
    type Output = Result<W::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.executor.span_made {
            this.executor.span_made = true;
            let (workflow, run_id) = (W::GRAPH.workflow, this.executor.shared.run_id);
            let span = match this.span.take() {
                Some(parent) => {
                    tracing::info_span!(parent: &*parent, "workflow.run", workflow, run_id)
                }
                // Made outside any span: the span current where it is first polled.
                None => tracing::info_span!("workflow.run", workflow, run_id),
            };
            // Kept only when a subscriber records it.
            this.span = (!span.is_disabled()).then(|| Box::new(span));
        }
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        this.executor.poll(cx)
    }
}

impl<W: Workflow, F> Executor<W, F>
where
    F: Future<Output = std::result::Result<Emitted, BoxError>> + Send + 'static,
{
    fn new(
        invoke: Invoke<W, F>,
        runner: Runner<W>,
        shared: Arc<RunShared<W>>,
        init: Init,
    ) -> Executor<W, F> {
        let catches = W::GRAPH
            .steps
            .iter()
            .any(|s| s.accepts.iter().any(|m| m.kind == EventKind::Failure));
        let steps = W::GRAPH
            .steps
            .iter()
            .map(|_| StepState {
                queue: VecDeque::new(),
                busy: 0,
                next_worker: 0,
            })
            .collect();
        let trace = runner.config.trace.then(|| {
            // A resumed durable run continues the trace its journal holds.
            let prior = shared.journal.as_ref().and_then(|j| j.trace.clone());
            let recorder = Arc::new(Recorder::new(W::GRAPH.workflow, shared.run_id, prior));
            let _ = shared.rare().trace.set(recorder.clone());
            recorder
        });
        let admission = runner
            .config
            .run_limit
            .clone()
            .map(|semaphore| Box::pin(semaphore.acquire_owned()) as Admission);
        let rare = (admission.is_some() || trace.is_some()).then(|| {
            Box::new(Rare {
                admission,
                trace,
                ..Rare::default()
            })
        });
        Executor {
            invoke,
            shared,
            steps,
            queued: 0,
            calls: Vec::new(),
            free_call: NO_CALL,
            busy_calls: 0,
            ready: VecDeque::new(),
            inbox: Vec::new(),
            output: None,
            last: None,
            catches,
            recoveries: 0,
            completed: 0,
            started: 0,
            init: Some(init),
            rare,
            span_made: false,
            begun: false,
            ended: false,
            loop_invocations: 0,
            runaway: None,
            released: false,
            attempt_failed: false,
            unsaved_input: false,
            runner,
        }
    }

    fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<W::Output>> {
        if self.ending() {
            return self.poll_end(cx);
        }
        if !self.begun {
            // Wait for a turn under `max_concurrent_runs` (the run's timeout starts after).
            if self.rare.as_ref().is_some_and(|r| r.admission.is_some()) {
                // A run cancelled while it waits for its turn ends now, never admitted (it
                // used to wait for a permit first, forever if none came back). `cancel`
                // wakes this waker: registered before the flag is read, so no cancel is
                // missed between the two.
                self.shared.waker.register(cx.waker());
                if self.shared.cancelled.load(Ordering::Acquire) {
                    return self.end(Err(WorkflowError::Cancelled), cx);
                }
                // A snapshot of a run still waiting for its turn: the run as it will begin.
                self.answer_snapshots_before_begin();
                let rare = self.rare.as_mut().expect("checked above");
                let admission = rare.admission.as_mut().expect("checked above");
                let permit = std::task::ready!(admission.as_mut().poll(cx));
                rare.permit = Some(permit.expect("the semaphore is never closed"));
                rare.admission = None;
            }
            self.begun = true;
            let now = tokio::time::Instant::now();
            // A resumed run keeps the deadline it had (a crash does not buy it a fresh limit).
            let kept = match &self.init {
                Some(Init::Resume(restored)) => restored.deadline_ms,
                _ => None,
            };
            let own = self.runner.config.timeout.map(|limit| match kept {
                Some(at) => crate::snapshot::unix_millis_to_instant(at),
                None => now + limit,
            });
            // A child's deadline is the earlier of its own and its parent's.
            let cap = self
                .shared
                .family()
                .and_then(|f| f.upward.as_ref())
                .and_then(|u| u.cap);
            let deadline_at = match (own, cap) {
                (Some(own), Some(cap)) => Some(own.min(cap)),
                (own, cap) => own.or(cap),
            };
            if let Some(at) = deadline_at {
                // The limit a timeout names: the runner's own, unless the parent's deadline
                // comes first (then what was left of it).
                let limit = match own {
                    Some(own) if own == at => self.runner.config.timeout,
                    _ => Some(at.saturating_duration_since(now)),
                };
                let rare = self.rare();
                rare.deadline_at = Some(at);
                rare.limit = limit;
                rare.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
            }
            let init = self.init.take().expect("a run begins once");
            if let Err(error) = self.begin(init) {
                return self.end(Err(error), cx);
            }
        }
        let result = std::task::ready!(self.poll_run(cx));
        self.end(result, cx)
    }

    /// Answers the snapshot requests of a run that has not begun (it waits for admission):
    /// a run that was to start holds its start event; one that was to resume, what it restored.
    fn answer_snapshots_before_begin(&self) {
        let requests = self.shared.take_snapshot_requests();
        if requests.is_empty() {
            return;
        }
        let start = match &self.init {
            Some(Init::Start(event)) => Some(event.clone()),
            _ => None,
        };
        let snapshot = self.capture_with(start.as_ref());
        for reply in requests {
            let _ = reply.send(snapshot.clone());
        }
    }

    fn begin(&mut self, init: Init) -> Result<()> {
        match init {
            Init::Start(event) => {
                if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                    let event = event.name().to_string();
                    trace.record(TraceEvent::Began { event });
                }
                self.checkpoint_with(Some(&event))?;
                self.route(event, None)
            }
            Init::Resume(restored) => {
                if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                    trace.record(TraceEvent::Resumed);
                }
                let restored = *restored;
                self.recoveries = restored.recoveries;
                self.completed = restored.completed;
                self.started = restored
                    .in_flight
                    .iter()
                    .map(|c| c.invocation)
                    .fold(restored.invocations, u64::max);
                // The steps that were running run again, first, with their attempt counters,
                // their numbers and what they recorded.
                for call in restored.in_flight {
                    let state = &mut self.steps[call.step];
                    if state.busy < limit::<W>(call.step) {
                        let invocation = (call.invocation > 0).then_some(call.invocation);
                        if let Some(invocation) = invocation {
                            self.shared.restore_memo(invocation, call.memo);
                            if !call.children.is_empty() {
                                let family = self.shared.rare().family.get_or_init(Box::default);
                                let mut restored = lock(&family.restored);
                                for (label, snapshot) in call.children {
                                    restored.push((invocation, label, snapshot));
                                }
                            }
                        }
                        // One that was waiting out a retry delay waits out the rest of it.
                        let retry_at = call
                            .retry_at_ms
                            .map(crate::snapshot::unix_millis_to_instant);
                        self.start_with(call.step, call.event, call.attempt, invocation, retry_at);
                    } else {
                        state.queue.push_back(call.event);
                        self.queued += 1;
                    }
                }
                for (step, event) in restored.queued {
                    self.deliver(step, event);
                }
                // Requests still unanswered are published again for whoever watches now.
                for request in restored.pending_requests {
                    self.shared
                        .stream
                        .publish(StreamItem::Event(request.clone()));
                    self.await_response(&request);
                    self.rare().pending_requests.push(request);
                }
                // The re-run steps go first, up to their first pause: a step that waits inline
                // registers its waiter again before any answer in the inbox is routed, so that
                // the answer reaches it rather than another step taking its type.
                let first: Vec<u32> = self.ready.drain(..).collect();
                for index in first {
                    if let Some(done) = self.poll_call(index as usize) {
                        self.complete(done)?;
                        if self.output.is_some() {
                            break;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn poll_run(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<W::Output>> {
        self.shared.polling.store(true, Ordering::Relaxed);
        let result = self.poll_loop(cx);
        self.shared.polling.store(false, Ordering::SeqCst);
        result
    }

    /// Polls ready calls until the run ends or nothing can progress without a wake-up.
    fn poll_loop(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<W::Output>> {
        let mut budget = POLL_BUDGET;
        loop {
            // Durable runs: what the last steps did is acted on only once it is in the store.
            if self.writes_in_flight() {
                match self.poll_commits(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            if self.shared.mail.load(Ordering::Acquire) {
                if let Err(error) = self
                    .drain_mail()
                    .and_then(|()| self.flush())
                    .and_then(|()| self.save_accepted())
                {
                    return Poll::Ready(Err(error));
                }
                if self.writes_in_flight() && self.output.is_none() {
                    // An input was saved: no step acts on it before it is durable.
                    continue;
                }
            }
            if let Some(output) = self.output.take() {
                return Poll::Ready(Ok(output));
            }
            if let Some(step) = self.runaway.map(|s| s as usize) {
                let cycle = W::GRAPH
                    .cycle_through(step)
                    .unwrap_or_default()
                    .into_iter()
                    .chain([step])
                    .map(|s| W::GRAPH.steps[s].name)
                    .collect();
                return Poll::Ready(Err(WorkflowError::LoopLimit {
                    cycle,
                    count: self.loop_invocations,
                    limit: self.runner.config.max_loop_invocations.unwrap_or(0),
                }));
            }
            if budget > 0 {
                if let Some(index) = self.ready.pop_front() {
                    budget -= 1;
                    let deadline_at = self.deadline_at();
                    if let Some(at) = deadline_at {
                        // Past the deadline before this poll (a busy runtime polled the run
                        // late): no step is to blame, and none is polled any more.
                        if tokio::time::Instant::now() >= at {
                            return Poll::Ready(Err(self.timed_out(None)));
                        }
                        let step = self.calls[index as usize].step as u32 + 1;
                        self.shared.holding.store(step, Ordering::Relaxed);
                    }
                    let done = self.poll_call(index as usize);
                    // A step that held the thread (blocking I/O, a CPU loop) past the run's
                    // deadline returns here only after it: the deadline still holds, it is
                    // named first, and what the late step produced is discarded.
                    if let Some(at) = deadline_at {
                        self.shared.holding.store(0, Ordering::Relaxed);
                        if tokio::time::Instant::now() >= at {
                            return Poll::Ready(Err(self.timed_out(Some(index as usize))));
                        }
                    }
                    if let Some(done) = done {
                        if let Err(error) = self.complete(done) {
                            return Poll::Ready(Err(error));
                        }
                    }
                    if std::mem::take(&mut self.attempt_failed) {
                        if let Err(error) = self.checkpoint() {
                            return Poll::Ready(Err(error));
                        }
                    }
                    continue;
                }
            } else if !self.ready.is_empty() {
                // Out of budget with work left: come back after the runtime's other tasks,
                // deferred as `tokio::task::yield_now` does (a plain self-wake would put the run
                // back in front of tasks that yielded to it, and starve them).
                let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                return self.check_deadline(cx);
            }
            if self.writes_in_flight() {
                // Writes in flight: wait for them first (their writer wakes the run).
                continue;
            }
            // Nothing to poll: sleep until a step, the inbox or the clock wakes us.
            self.shared.waker.register(cx.waker());
            self.shared.polling.store(false, Ordering::SeqCst);
            if self.shared.mail.load(Ordering::SeqCst) {
                self.shared.polling.store(true, Ordering::Relaxed);
                continue;
            }
            let calls_free = self.busy_calls == 0;
            let idle = calls_free && self.queued == 0;
            if let Some(rare) = self.rare.as_mut().filter(|_| !idle) {
                rare.evict_timer = None;
            }
            if calls_free
                && self.suspending()
                && (self.queued > 0 || !self.pending_requests().is_empty())
            {
                // Asked to stop (a server shutting down): nothing runs any more, and the
                // queues and requests are saved for a resume.
                let key = self.shared.journal.as_ref().map(|j| j.key.clone());
                if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                    let outcome = "suspended".to_string();
                    trace.record(TraceEvent::Ended { outcome });
                }
                return Poll::Ready(match self.save(RunStatus::Waiting, None, None) {
                    Ok(()) => Err(WorkflowError::Suspended {
                        key: key.unwrap_or_default(),
                    }),
                    Err(error) => Err(error),
                });
            }
            if idle {
                if self.pending_requests().is_empty() {
                    return Poll::Ready(Err(self.stuck()));
                }
                let evict_after = self
                    .shared
                    .journal
                    .as_ref()
                    .and_then(|j| j.evict_waiting_after);
                let evict_now = match evict_after {
                    None => false,
                    Some(after) if after.is_zero() => true,
                    Some(after) => {
                        // Parked for a while first: an answer that comes soon finds the run
                        // here.
                        let timer = self
                            .rare()
                            .evict_timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                        timer.as_mut().poll(cx).is_ready()
                    }
                };
                if evict_now && !self.shared.leave_unless_mail() {
                    // An event came as the run was leaving: its poster wakes the run (it saw
                    // the run not polling), which routes it.
                    return self.check_deadline(cx);
                }
                if let Some(journal) = self.shared.journal.as_ref().filter(|_| evict_now) {
                    // Parked for a human: keep the run in the store, not in memory.
                    let key = journal.key.clone();
                    if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                        let outcome = "suspended".to_string();
                        trace.record(TraceEvent::Ended { outcome });
                    }
                    return Poll::Ready(match self.save(RunStatus::Waiting, None, None) {
                        Ok(()) => Err(WorkflowError::Suspended { key }),
                        Err(error) => Err(error),
                    });
                }
            }
            return self.check_deadline(cx);
        }
    }

    /// Pending, unless the run's time limit has passed.
    fn check_deadline(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<W::Output>> {
        if let Some(sleep) = self.rare.as_mut().and_then(|r| r.deadline.as_mut()) {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(self.timed_out(None)));
            }
        }
        Poll::Pending
    }

    /// The run's time limit has passed; `held` is the call that was polled when it did (the
    /// step that held the thread), named first.
    fn timed_out(&self, held: Option<usize>) -> WorkflowError {
        let mut active = self.active_steps();
        if let Some(index) = held {
            let name = W::GRAPH.steps[self.calls[index].step].name;
            active.retain(|step| *step != name);
            active.insert(0, name);
        }
        WorkflowError::TimedOut {
            timeout: self.rare.as_ref().and_then(|r| r.limit).unwrap_or_default(),
            active,
        }
    }

    /// Routes the events sent with `send_event` (from steps or from outside), queues the calls
    /// whose wakers fired, answers snapshot requests, and notices a cancellation.
    fn drain_mail(&mut self) -> Result<()> {
        // A swap, not a store: it reads the latest `true`, so it synchronizes with the
        // `cancel()` (or post) that set it, and the flags it published before are visible here
        // even on weakly ordered CPUs.
        self.shared.mail.swap(false, Ordering::AcqRel);
        if self.shared.cancelled.load(Ordering::Acquire) {
            return Err(WorkflowError::Cancelled);
        }
        self.ready.extend(lock(&self.shared.woken).drain(..));
        let mut mail = std::mem::take(&mut self.inbox);
        {
            let mut inbox = lock(&self.shared.inbox);
            std::mem::swap(&mut *inbox, &mut mail);
            // Durable runs: the store inbox's messages in this mail are routed by the next
            // checkpoint, which records how far it read (`Snapshot::inbox`).
            if let Some(journal) = &self.shared.journal {
                journal.inbox.took_mail();
            }
        }
        let result = self.route_mail(&mut mail);
        mail.clear();
        self.inbox = mail;
        result?;
        let requests = self.shared.take_snapshot_requests();
        for reply in requests {
            let _ = reply.send(self.capture());
        }
        Ok(())
    }

    /// Durable runs: checkpoints what steps recorded (`Context::once`, the answers of their
    /// waits), then lets them go on.
    fn flush(&mut self) -> Result<()> {
        let Some(rare) = self.shared.rare_if_made() else {
            return Ok(());
        };
        let mut waiting = std::mem::take(&mut *lock(&rare.flush_requests));
        if waiting.is_empty() {
            return Ok(());
        }
        self.checkpoint()?;
        // The checkpoint may have drained more requests: they are saved too. They go on once
        // the checkpoint is durable.
        waiting.append(&mut lock(&self.shared.rare().flush_requests));
        self.writes().then.append(&mut waiting);
        Ok(())
    }

    /// Durable runs: an event from outside, or one sent by a step still running, was routed
    /// (to a step, a queue, a waiter): saved now, before the step taking it is polled, so that
    /// a crash before that step completes neither loses it nor (the sender running again)
    /// delivers it twice.
    fn save_accepted(&mut self) -> Result<()> {
        if self.unsaved_input && self.output.is_none() {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Is the invocation numbered `order` still running (or waiting for its next attempt)?
    fn in_flight(&self, order: u64) -> bool {
        self.calls
            .iter()
            .any(|c| c.phase != Phase::Idle && c.order == order)
    }

    fn route_mail(&mut self, mail: &mut Vec<crate::context::Envelope>) -> Result<()> {
        if mail.is_empty() {
            return Ok(());
        }
        let waiters = self.shared.has_waiters();
        let durable = self.shared.journal.is_some();
        for envelope in mail.drain(..) {
            if durable && !self.unsaved_input {
                // A step that already completed had its sends routed by the checkpoint of its
                // completion; one still running needs a checkpoint of its own.
                self.unsaved_input = match envelope.from {
                    crate::context::Sender::Outside => true,
                    crate::context::Sender::Step(order) => self.in_flight(order),
                    crate::context::Sender::Run => false,
                };
            }
            // A step's send was traced when it was made, with the sending attempt.
            if let Some(trace) = self
                .rare
                .as_ref()
                .and_then(|r| r.trace.as_ref())
                .filter(|_| !matches!(envelope.from, crate::context::Sender::Step(_)))
            {
                let event = envelope.event.name().to_string();
                trace.record(if envelope.event.kind() == EventKind::Response {
                    TraceEvent::HumanAnswer { response: event }
                } else {
                    TraceEvent::EventSent {
                        event,
                        target: envelope.target.map(|t| W::GRAPH.steps[t].name.to_string()),
                        step: None,
                        attempt: None,
                    }
                });
            }
            // A step waiting inline for this event takes it; no other step sees it.
            let event = if waiters {
                match self.shared.offer_to_waiters(envelope.event) {
                    Some(event) => event,
                    None => continue,
                }
            } else {
                envelope.event
            };
            // An answer that none of this run's own requests waits for goes to the child run
            // that asked for it, if one does.
            let event = if envelope.target.is_none()
                && event.kind() == EventKind::Response
                && !self
                    .pending_requests()
                    .iter()
                    .any(|r| r.meta().response == Some(event.id()))
            {
                let offered = match self.shared.family() {
                    Some(family) => family.offer(event),
                    None => Some(event),
                };
                match offered {
                    Some(event) => event,
                    None => continue,
                }
            } else {
                event
            };
            if envelope.target.is_none()
                && event.kind() == EventKind::Response
                && self.runner.routes.consumers(event.id()).is_empty()
            {
                // An answer no step takes and nobody waits for yet: kept for a later
                // `wait_for`, never lost and never fatal.
                tracing::debug!(event = event.name(), "keeping an unclaimed response");
                lock(&self.shared.rare().unclaimed).push(event);
                continue;
            }
            self.route(event, envelope.target)?;
            if self.output.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Polls call `index` (an attempt, or its retry delay); returns its result when the
    /// invocation is over, retries included.
    fn poll_call(&mut self, index: usize) -> Option<Done> {
        // A wake from now on queues the call again.
        self.queued_flag(index).store(false, Ordering::Release);
        loop {
            let call = &mut self.calls[index];
            let timeout = self.runner.config.steps[call.step].timeout;
            let error = match poll_attempt(&self.shared, call, timeout) {
                Polled::Pending => return None,
                Polled::BackoffOver => {
                    call.attempt += 1;
                    let input = call
                        .input()
                        .cloned()
                        .expect("a step with retries keeps its input");
                    self.begin_attempt(index, input);
                    continue;
                }
                Polled::Emitted(emitted) => {
                    if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                        trace.record(TraceEvent::StepFinished {
                            step: W::GRAPH.steps[call.step].name.to_string(),
                            worker: call.worker,
                            attempt: call.attempt,
                            emitted: match &emitted {
                                Emitted::Nothing => Vec::new(),
                                Emitted::One(event) => vec![event.name().to_string()],
                                Emitted::Many(events) => {
                                    events.iter().map(|e| e.name().to_string()).collect()
                                }
                            },
                        });
                    }
                    if self.runner.config.verbose {
                        let name = W::GRAPH.steps[call.step].name;
                        let (run, worker) = (self.shared.run_id, call.worker);
                        eprintln!("[run {run}] step `{name}` finished (worker {worker})");
                    }
                    return Some(self.finish(index, Ok(emitted)));
                }
                Polled::Panicked(message) => {
                    let step = W::GRAPH.steps[call.step].name;
                    if self.runner.config.verbose {
                        let run = self.shared.run_id;
                        eprintln!("[run {run}] step `{step}` panicked: {message}");
                    }
                    if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                        trace.record(TraceEvent::StepFailed {
                            step: step.to_string(),
                            worker: call.worker,
                            attempt: call.attempt,
                            error: format!("panicked: {message}"),
                            retry_in_us: None,
                        });
                    }
                    let (attempt, worker) = (call.attempt, call.worker);
                    let kept = WorkflowError::StepPanicked {
                        step,
                        message: message.clone(),
                    };
                    self.shared.failed(FailedAttempt {
                        step,
                        attempt,
                        worker,
                        error: Arc::new(kept),
                        retried: false,
                    });
                    let error = WorkflowError::StepPanicked { step, message };
                    return Some(self.finish(index, Err(Box::new(Failed::fatal(error)))));
                }
                Polled::TimedOut(timeout) => {
                    let step = W::GRAPH.steps[call.step].name;
                    if self.runner.config.verbose {
                        let run = self.shared.run_id;
                        eprintln!("[run {run}] step `{step}` timed out after {timeout:?}");
                    }
                    if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                        trace.record(TraceEvent::StepFailed {
                            step: step.to_string(),
                            worker: call.worker,
                            attempt: call.attempt,
                            error: format!("timed out after {timeout:?}"),
                            retry_in_us: None,
                        });
                    }
                    let error = WorkflowError::StepTimedOut { step, timeout };
                    self.shared.failed(FailedAttempt {
                        step,
                        attempt: call.attempt,
                        worker: call.worker,
                        error: Arc::new(WorkflowError::StepTimedOut { step, timeout }),
                        retried: false,
                    });
                    return Some(self.finish(index, Err(Box::new(Failed::fatal(error)))));
                }
                Polled::Failed(error) => error,
            };
            // The attempt failed: retry after the policy's delay, or give up.
            let (step, attempt) = (call.step, call.attempt);
            let name = W::GRAPH.steps[step].name;
            let run_id = self.shared.run_id;
            let verbose = self.runner.config.verbose;
            let retry = self.runner.config.steps[step].retry;
            if let Some(policy) = retry.filter(|p| p.should_retry(attempt, &*error)) {
                let delay = policy.delay(attempt, run_id, step);
                if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                    trace.record(TraceEvent::StepFailed {
                        step: name.to_string(),
                        worker: call.worker,
                        attempt,
                        error: error.to_string(),
                        retry_in_us: Some(delay.as_micros() as u64),
                    });
                }
                if verbose {
                    eprintln!(
                        "[run {run_id}] step `{name}` failed (attempt {attempt}): {error}; retrying in {delay:?}"
                    );
                }
                tracing::debug!(step = name, run_id, attempt, %error, ?delay, "retrying step");
                call.future.set(None);
                call.span = None;
                let error: Arc<dyn std::error::Error + Send + Sync> = Arc::from(error);
                self.shared.failed(FailedAttempt {
                    step: name,
                    attempt,
                    worker: call.worker,
                    error: error.clone(),
                    retried: true,
                });
                call.kept().last_error = Some(error);
                arm(&mut call.kept().timer, delay);
                call.phase = Phase::Backoff;
                // Durable runs save the failed attempt before the delay: a crash during it
                // resumes with the next attempt, never the one that already failed.
                self.attempt_failed |= self.shared.journal.is_some();
                // Polled at once, so that the timer knows whom to wake.
                continue;
            }
            if verbose {
                eprintln!("[run {run_id}] step `{name}` failed (attempt {attempt}): {error}");
            }
            if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                trace.record(TraceEvent::StepFailed {
                    step: name.to_string(),
                    worker: call.worker,
                    attempt,
                    error: error.to_string(),
                    retry_in_us: None,
                });
            }
            let last: Arc<dyn std::error::Error + Send + Sync> = Arc::from(error);
            self.shared.failed(FailedAttempt {
                step: name,
                attempt,
                worker: call.worker,
                error: last.clone(),
                retried: false,
            });
            let failed = Failed {
                error: WorkflowError::StepFailed {
                    step: name,
                    attempts: attempt,
                    source: Box::new(SharedError(last.clone())),
                },
                input: call.kept.as_mut().and_then(|k| k.input.take()),
                last: Some(last),
            };
            return Some(self.finish(index, Err(Box::new(failed))));
        }
    }

    /// Frees call `index` for the next invocation.
    fn finish(&mut self, index: usize, result: std::result::Result<Emitted, Box<Failed>>) -> Done {
        let call = &mut self.calls[index];
        // The step's future goes now, with its context: no step outlives its invocation.
        call.future.set(None);
        call.span = None;
        call.phase = Phase::Idle;
        if let Some(kept) = &mut call.kept {
            kept.input = None;
            kept.last_error = None;
        }
        if W::DURABLE {
            self.shared.forget(call.order);
        }
        // A timer still armed stays for the call's next invocation, which re-arms it if its
        // step has a time limit; if it fires first, it only polls an idle call for nothing.
        call.next_free = self.free_call;
        self.free_call = index as u32;
        self.busy_calls -= 1;
        if self.runner.config.steps[call.step].retry.is_some() {
            // The invocation is over: its retries no longer need what its collects did.
            let at = (call.step, call.worker);
            if let Some(rare) = self.shared.rare_if_made() {
                crate::stream::lock(&rare.held).retain(|(a, _, _)| *a != at);
            }
        }
        Done {
            step: call.step,
            worker: call.worker,
            result,
        }
    }

    /// Starts an attempt of the invocation in call `index` on `input`.
    fn begin_attempt(&mut self, index: usize, input: DynEvent) {
        let call = &mut self.calls[index];
        let (step, worker, attempt) = (call.step, call.worker, call.attempt);
        let name = W::GRAPH.steps[step].name;
        let run_id = self.shared.run_id;
        let ctx = Context {
            shared: self.shared.clone(),
            step: step as u32,
            attempt,
            worker,
            retries: self.runner.config.steps[step].retry.is_some(),
            invocation: call.order,
            extra: crate::context::ContextExtra::slot(
                call.kept.as_ref().and_then(|k| k.last_error.clone()),
                self.rare.as_ref().and_then(|r| r.deadline_at),
            ),
        };
        let span = tracing::debug_span!(
            "workflow.step",
            workflow = W::GRAPH.workflow,
            step = name,
            run_id,
            attempt,
            worker
        );
        // Kept only when a subscriber records it.
        call.span = (!span.is_disabled()).then(|| Box::new(span));
        let input_name = input.name();
        call.future.set(Some((self.invoke)(
            self.runner.workflow.clone(),
            ctx,
            input,
        )));
        call.phase = Phase::Running;
        if let Some(limit) = self.runner.config.steps[step].timeout {
            arm(&mut call.kept().timer, limit);
        }
        if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
            trace.record(TraceEvent::StepStarted {
                step: name.to_string(),
                worker,
                attempt,
                input: input_name.to_string(),
            });
        }
        if self.runner.config.verbose {
            eprintln!("[run {run_id}] step `{name}` started (worker {worker}, attempt {attempt})");
        }
    }

    /// A free call, or a new one.
    fn free_call(&mut self) -> usize {
        self.busy_calls += 1;
        if self.free_call != NO_CALL {
            let index = self.free_call as usize;
            self.free_call = self.calls[index].next_free;
            return index;
        }
        let index = self.calls.len();
        // Grown from one: a run with one step at a time (a chain, a parked run) needs one call.
        if index == self.calls.capacity() {
            self.calls.reserve_exact(index.max(1));
        }
        let wake = (index > 0).then(|| {
            Arc::new(CallWake {
                index: index as u32,
                queued: AtomicBool::new(false),
                shared: self.shared.clone(),
            })
        });
        self.calls.push(Call {
            future: Box::pin(None),
            wake,
            phase: Phase::Idle,
            step: 0,
            worker: 0,
            attempt: 0,
            order: 0,
            kept: None,
            span: None,
            next_free: NO_CALL,
        });
        index
    }

    /// Starts an invocation of `step` on `event`: a new one, or the one numbered
    /// `invocation` again (a resumed run).
    fn start(&mut self, step: usize, event: DynEvent, attempt: u32, invocation: Option<u64>) {
        self.start_with(step, event, attempt, invocation, None);
    }

    /// [`Executor::start`]; with `retry_at`, attempt `attempt` is due only then: the
    /// invocation waits out the rest of a retry delay first (a resumed run).
    fn start_with(
        &mut self,
        step: usize,
        event: DynEvent,
        attempt: u32,
        invocation: Option<u64>,
        retry_at: Option<tokio::time::Instant>,
    ) {
        if self.runner.config.on_loop[step] {
            self.loop_invocations += 1;
            if self
                .runner
                .config
                .max_loop_invocations
                .is_some_and(|limit| self.loop_invocations > limit)
            {
                self.runaway.get_or_insert(step as u32);
            }
        }
        self.steps[step].busy += 1;
        let worker = if limit::<W>(step) == 1 {
            0
        } else {
            // The last freed worker of this step, or a new number.
            let freed = self.rare.as_mut().and_then(|rare| {
                let free = &mut rare.free_workers;
                match free.last() {
                    // Mostly the one freed last (one step with several workers).
                    Some(&(s, worker)) if s == step as u32 => {
                        free.pop();
                        Some(worker)
                    }
                    _ => {
                        let at = free.iter().rposition(|(s, _)| *s == step as u32)?;
                        Some(free.remove(at).1)
                    }
                }
            });
            freed.unwrap_or_else(|| {
                let state = &mut self.steps[step];
                state.next_worker += 1;
                state.next_worker - 1
            })
        };
        // A copy of each input: for snapshots, retries or the catch-error step.
        let keep_input =
            W::DURABLE || self.catches || self.runner.config.steps[step].retry.is_some();
        if self.runner.config.internal_events && self.shared.stream.has_subscribers() {
            self.shared.stream.publish(StreamItem::StepStarted {
                step: W::GRAPH.steps[step].name,
                worker,
            });
        }
        let invocation = invocation.unwrap_or_else(|| {
            self.started += 1;
            self.started
        });
        let index = self.free_call();
        let call = &mut self.calls[index];
        call.step = step;
        call.worker = worker;
        call.attempt = attempt.max(1);
        call.order = invocation;
        if keep_input {
            call.kept().input = Some(event.clone());
        }
        match &call.wake {
            Some(wake) => &wake.queued,
            None => &self.shared.first_call_queued,
        }
        .store(true, Ordering::Relaxed);
        match retry_at {
            Some(at) if call.attempt > 1 => {
                // The attempt before it failed: back off until `at`, then `BackoffOver` starts
                // this one (polled at once, so that the timer knows whom to wake).
                call.attempt -= 1;
                arm_until(&mut call.kept().timer, at);
                call.phase = Phase::Backoff;
            }
            _ => self.begin_attempt(index, event),
        }
        if self.ready.capacity() == 0 {
            // Grown from one: a run with one step at a time needs one slot.
            self.ready.reserve_exact(1);
        }
        self.ready.push_back(index as u32);
    }

    fn complete(&mut self, done: Done) -> Result<()> {
        self.journal_stream_events(done.step, done.worker)?;
        self.steps[done.step].busy -= 1;
        if limit::<W>(done.step) > 1 {
            self.rare()
                .free_workers
                .push((done.step as u32, done.worker));
        }
        self.completed += 1;
        if self.runner.config.internal_events && self.shared.stream.has_subscribers() {
            self.shared.stream.publish(StreamItem::StepFinished {
                step: W::GRAPH.steps[done.step].name,
                worker: done.worker,
            });
        }
        match done.result {
            Ok(Emitted::Nothing) => self.last = Some((done.step as u32, 0)),
            Ok(Emitted::One(event)) => {
                self.last = Some((done.step as u32, 1));
                self.route(event, None)?;
            }
            Ok(Emitted::Many(events)) => {
                // An empty batch is told apart from "nothing" (usize::MAX) for the stuck
                // diagnostic: it is a fan-out of zero items.
                self.last = Some((
                    done.step as u32,
                    if events.is_empty() {
                        u32::MAX
                    } else {
                        events.len().min(u32::MAX as usize - 1) as u32
                    },
                ));
                for event in events {
                    self.route(event, None)?;
                    if self.output.is_some() {
                        return Ok(());
                    }
                }
            }
            // Handed to the catch-error step (or the run fails); either way the worker is
            // free for the next queued event, like after a success.
            Err(failed) => self.recover(done.step, *failed)?,
        }
        // A worker of this step is free again: give it the next waiting event.
        if self.output.is_none() {
            if !self.suspending() {
                if let Some(event) = self.steps[done.step].queue.pop_front() {
                    self.queued -= 1;
                    self.start(done.step, event, 1, None);
                }
            }
            // Durable runs: the completion and what it emitted are now in the store, so this
            // step never runs again on this input, whatever happens to the process.
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Durable runs: journals the stream events the invocation of `step` on `worker` wrote,
    /// numbered now, before the checkpoint that records its completion. If the process dies in
    /// between, the step runs again from the last checkpoint and writes its events anew: the
    /// resumed run marks these as superseded and numbers its own after them
    /// (`store::supersede_after`), so a number never names two different events.
    fn journal_stream_events(&mut self, step: usize, worker: u32) -> Result<()> {
        let Some(journal) = &self.shared.journal else {
            return Ok(());
        };
        let mine: Vec<_> = {
            let Some(rare) = self.shared.rare_if_made() else {
                return Ok(());
            };
            let mut pending = lock(&rare.journal_pending);
            if pending.is_empty() {
                return Ok(());
            }
            let (mine, others) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(key, _)| *key == (step, worker));
            *pending = others;
            mine
        };
        let _ = journal;
        for (_, record) in mine {
            let seq = self.shared.stream_seq.fetch_add(1, Ordering::Relaxed) + 1;
            // Written with the next checkpoint (the one recording this completion), before it.
            self.writes().rows.push((seq, record));
        }
        Ok(())
    }

    /// Durable runs: journals a request for a human as the run publishes it, numbered now in
    /// the stream journal (after the events its step wrote) and written with the checkpoint
    /// that follows, which records the number: a resumed run does not journal it again (it
    /// only publishes its pending requests anew).
    fn journal_request(&mut self, event: &DynEvent) {
        if self.shared.journal.is_none() {
            return;
        }
        let record = crate::snapshot::encode_event::<W>(event).unwrap_or_else(|_| {
            crate::snapshot::EventRecord {
                event: event.name().to_string(),
                data: serde_json::json!({ "debug": format!("{event:?}") }),
            }
        });
        let seq = self.shared.stream_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.writes().rows.push((seq, record));
    }

    /// A step failed for good: hand it to the catch-error step while the budget lasts, or fail
    /// the run. Panics and timeouts are never caught.
    fn recover(&mut self, index: usize, failed: Failed) -> Result<()> {
        let Failed { error, input, last } = failed;
        let WorkflowError::StepFailed { step, attempts, .. } = &error else {
            return Err(error);
        };
        // The catch-error step's own failure is final: handing it back to itself would only
        // repeat it until the budget runs out.
        if W::GRAPH.accepts(index, <StepFailure as crate::event::Event>::ID) {
            return Err(error);
        }
        let (Some(input), Some(last)) = (input, last) else {
            return Err(error);
        };
        if !self.catches || self.recoveries >= self.runner.config.max_recoveries {
            return Err(error);
        }
        self.recoveries += 1;
        let failure = StepFailure {
            step,
            input,
            attempts: *attempts,
            error: last,
        };
        self.route(DynEvent::new(failure), None)
    }

    /// Sends one event to its consumers (or to `target` only): start now where a worker is
    /// free, queue otherwise. The stop event ends the run; the first one wins.
    fn route(&mut self, event: DynEvent, target: Option<usize>) -> Result<()> {
        if self.output.is_some() {
            return Ok(());
        }
        let meta = event.meta();
        match meta.kind {
            EventKind::Stop => {
                return match W::__output(event) {
                    Ok(output) => {
                        self.output = Some(output);
                        Ok(())
                    }
                    Err(event) => Err(WorkflowError::Undeliverable {
                        event: event.name(),
                        reason: "it is a stop event of another workflow's output type".into(),
                    }),
                };
            }
            EventKind::Request => {
                if let Some(trace) = self.rare.as_ref().and_then(|r| r.trace.as_ref()) {
                    let request = meta.name.to_string();
                    trace.record(TraceEvent::HumanWait { request });
                }
                if self.runner.config.verbose {
                    let run = self.shared.run_id;
                    let request = meta.name.rsplit("::").next().unwrap_or(meta.name);
                    eprintln!("[run {run}] waiting for a human: {request}");
                }
                // Leaves the graph: published for the outside world, which answers later.
                // A durable run journals it with its stream, so that a process reading the
                // journal (a server other than the run's owner) sees the question too.
                self.journal_request(&event);
                self.shared.stream.publish(StreamItem::Event(event.clone()));
                self.await_response(&event);
                self.rare().pending_requests.push(event);
                return Ok(());
            }
            EventKind::Response => {
                // The request this answers: the first pending one of its type that it
                // correlates with (`#[event(request = R, correlate = id)]`), so that answering
                // the second of several requests of one type clears that one.
                let id = Some(meta.id);
                if let Some(i) = self
                    .pending_requests()
                    .iter()
                    .position(|r| r.meta().response == id && r.answered_by(&event))
                {
                    self.rare().pending_requests.remove(i);
                    if let Some(upward) = self.shared.family().and_then(|f| f.upward.as_ref()) {
                        let mut awaiting = lock(&upward.awaiting);
                        if let Some(i) = awaiting.iter().position(|r| Some(*r) == id) {
                            awaiting.remove(i);
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(step) = target {
            if !W::GRAPH.accepts(step, meta.id) {
                return Err(WorkflowError::Undeliverable {
                    event: meta.name,
                    reason: format!("step `{}` does not accept it", W::GRAPH.steps[step].name),
                });
            }
            self.deliver(step, event);
            return Ok(());
        }
        // By position, not by slice: `deliver` needs `self` while the table is read.
        let consumers = self.runner.routes.range(meta.id);
        let Some(last) = consumers
            .end
            .checked_sub(1)
            .filter(|&l| l >= consumers.start)
        else {
            return Err(WorkflowError::Undeliverable {
                event: meta.name,
                reason: "no step of the workflow accepts it".into(),
            });
        };
        for i in consumers.start..last {
            let step = self.runner.routes.consumers[i];
            self.deliver(step, event.clone());
        }
        let step = self.runner.routes.consumers[last];
        self.deliver(step, event);
        Ok(())
    }

    /// A child run tells its parent which answer its pending request waits for.
    fn await_response(&self, request: &DynEvent) {
        if let Some(upward) = self.shared.family().and_then(|f| f.upward.as_ref()) {
            if let Some(response) = request.meta().response {
                lock(&upward.awaiting).push(response);
            }
        }
    }

    /// A durable run asked to stop at its next quiet point (`Handler::suspend`): no step
    /// starts any more.
    fn suspending(&self) -> bool {
        self.shared.journal.is_some() && self.shared.suspend.load(Ordering::Acquire)
    }

    fn deliver(&mut self, step: usize, event: DynEvent) {
        let suspending = self.suspending();
        let state = &mut self.steps[step];
        if state.busy < limit::<W>(step) && state.queue.is_empty() && !suspending {
            self.start(step, event, 1, None);
        } else {
            state.queue.push_back(event);
            self.queued += 1;
        }
    }

    fn active_steps(&self) -> Vec<&'static str> {
        W::GRAPH
            .steps
            .iter()
            .zip(&self.steps)
            .filter(|(_, state)| state.busy > 0 || !state.queue.is_empty())
            .map(|(spec, _)| spec.name)
            .collect()
    }

    fn stuck(&self) -> WorkflowError {
        let diagnostic = match self
            .last
            .map(|(step, n)| (W::GRAPH.steps[step as usize].name, n))
        {
            Some((step, 0)) => format!(
                "step `{step}` finished without emitting an event, and no step is running, no \
                 event is queued and nothing waits for outside input"
            ),
            Some((step, u32::MAX)) => format!(
                "step `{step}` emitted an empty batch (a fan-out of 0 items), and no step is \
                 running, no event is queued and nothing waits for outside input: a step that \
                 fans out a count known only at run time must handle 0 itself: tell the join \
                 the count up front (`ctx.collect_counted`), or emit what the join would"
            ),
            Some((step, n)) => format!(
                "step `{step}` emitted {n} event(s) but no step is running, no event is queued \
                 and nothing waits for outside input"
            ),
            None => "no step ever ran".to_string(),
        };
        // A fan-in that can never complete is usually the real cause: say what it waits for.
        let joins = match self.shared.rare_if_made() {
            Some(rare) => lock(&rare.collect).incomplete(|step| W::GRAPH.steps[step].name),
            None => Vec::new(),
        };
        let diagnostic = if joins.is_empty() {
            diagnostic
        } else {
            format!("{}; {diagnostic}", joins.join("; "))
        };
        WorkflowError::Stuck { diagnostic }
    }

    /// Captures the run as it is between two polls of its steps.
    fn capture(&self) -> std::result::Result<Snapshot, SnapshotError> {
        self.capture_with(None)
    }

    fn capture_with(
        &self,
        extra_start: Option<&DynEvent>,
    ) -> std::result::Result<Snapshot, SnapshotError> {
        if !W::DURABLE {
            return Err(SnapshotError::new(
                "",
                format!(
                    "workflow `{}` is not `#[workflow(durable)]`: its runs cannot be snapshotted",
                    W::GRAPH.workflow
                ),
            ));
        }
        let encode = |path: String, event: &DynEvent| {
            encode_event::<W>(event).map_err(|reason| SnapshotError::new(path, reason))
        };
        let state = W::__encode_state(&lock(&self.shared.state))
            .map_err(|reason| SnapshotError::new("state", reason))?;
        let mut in_flight = Vec::new();
        let mut running: Vec<&Call<W, F>> = self
            .calls
            .iter()
            .filter(|c| c.phase != Phase::Idle)
            .collect();
        running.sort_by_key(|c| c.order);
        for call in running {
            let input = call.input().expect("durable runs keep every input");
            // Waiting out a retry delay: that attempt failed, the next one is due when the
            // delay ends.
            let (attempt, retry_at_ms) = if call.phase == Phase::Backoff {
                let timer = call.timer().expect("a retry delay has a timer");
                let at = crate::snapshot::instant_to_unix_millis(timer.deadline());
                (call.attempt + 1, Some(at))
            } else {
                (call.attempt, None)
            };
            let i = in_flight.len();
            in_flight.push(InFlightRecord {
                step: W::GRAPH.steps[call.step].name.to_string(),
                attempt,
                event: encode(format!("in_flight[{i}].event"), input)?,
                invocation: call.order,
                memo: self.shared.memo_of(call.order),
                children: self.capture_children(i, call.order)?,
                retry_at_ms,
            });
        }
        let mut queued = Vec::new();
        if let Some(start) = extra_start {
            // The very first checkpoint: the start event has not been routed yet.
            for &step in self.runner.routes.consumers(start.id()) {
                queued.push(QueuedRecord {
                    step: W::GRAPH.steps[step].name.to_string(),
                    event: encode(format!("queued[{}].event", queued.len()), start)?,
                });
            }
        }
        for (step, state) in self.steps.iter().enumerate() {
            for event in &state.queue {
                queued.push(QueuedRecord {
                    step: W::GRAPH.steps[step].name.to_string(),
                    event: encode(format!("queued[{}].event", queued.len()), event)?,
                });
            }
        }
        let mut collect = Vec::new();
        let buffers = lock(&self.shared.rare().collect);
        for (&(step, key), buffer) in buffers.sorted() {
            let n = collect.len();
            let mut slots = Vec::new();
            for (s, events) in buffer.erased_slots().iter().enumerate() {
                let mut records = Vec::new();
                for (e, event) in events.iter().enumerate() {
                    records.push(encode(format!("collect[{n}].slots[{s}][{e}]"), event)?);
                }
                slots.push(records);
            }
            collect.push(CollectRecord {
                step: W::GRAPH.steps[step].name.to_string(),
                key,
                slots,
            });
        }
        drop(buffers);
        let pending_requests = self
            .pending_requests()
            .iter()
            .enumerate()
            .map(|(i, event)| encode(format!("pending_requests[{i}]"), event))
            .collect::<std::result::Result<_, _>>()?;
        // An answer nobody claimed, of a type outside the graph, cannot be stored: it stays in
        // memory for a later `wait_for` and is left out of the snapshot (it used to fail the
        // checkpoint, and with it the run). Only events of the graph survive a resume.
        let unclaimed = lock(&self.shared.rare().unclaimed)
            .iter()
            .filter_map(|event| match encode_event::<W>(event) {
                Ok(record) => Some(record),
                Err(reason) => {
                    tracing::warn!(event = event.name(), %reason, "an unclaimed answer outside the graph is not saved");
                    None
                }
            })
            .collect();
        Ok(Snapshot {
            format: SNAPSHOT_FORMAT,
            workflow: W::GRAPH.workflow.to_string(),
            fingerprint: self.runner.config.fingerprint.to_string(),
            run_id: self.shared.run_id,
            completed: self.completed,
            state,
            in_flight,
            queued,
            collect,
            pending_requests,
            unclaimed,
            recoveries: self.recoveries,
            stream_seq: self.shared.stream_seq.load(Ordering::Relaxed),
            invocations: self.started,
            deadline_ms: self
                .deadline_at()
                .map(crate::snapshot::instant_to_unix_millis),
            inbox: self.shared.journal.as_ref().map_or(0, |j| j.inbox.routed()),
        })
    }

    /// The running children of invocation `invocation` (the `i`-th in flight), captured now
    /// (they are polled only inside their step, so they are between two polls too). A
    /// journaled child keeps its own checkpoints and is left out, as is a child that is not
    /// durable (it runs again with its step on resume).
    fn capture_children(
        &self,
        i: usize,
        invocation: u64,
    ) -> std::result::Result<Vec<ChildRecord>, SnapshotError> {
        let mut children = Vec::new();
        let Some(family) = self.shared.family() else {
            return Ok(Vec::new());
        };
        for (inv, label, child) in family.running() {
            if inv != invocation {
                continue;
            }
            let child = lock(&child);
            if child.kept_apart() {
                continue;
            }
            let snapshot = child.capture().map_err(|error| {
                let path = format!("in_flight[{i}].children[{}]", children.len());
                let at = if error.path.is_empty() {
                    path
                } else {
                    format!("{path}.{}", error.path)
                };
                SnapshotError::new(at, error.reason)
            })?;
            children.push(ChildRecord { label, snapshot });
        }
        Ok(children)
    }

    /// Durable runs: journals the run as it is now.
    fn checkpoint(&mut self) -> Result<()> {
        self.checkpoint_with(None)
    }

    fn checkpoint_with(&mut self, start: Option<&DynEvent>) -> Result<()> {
        if self.shared.journal.is_none() {
            return Ok(());
        }
        // Events the step sent with `send_event` belong to its completion: route them first,
        // so the checkpoint holds them.
        if self.shared.mail.load(Ordering::Acquire) {
            self.drain_mail()?;
            if self.output.is_some() {
                return Ok(());
            }
        }
        let snapshot = self.capture_with(start).map_err(WorkflowError::Snapshot)?;
        self.save_snapshot(RunStatus::Running, snapshot, None, None)?;
        // Everything routed so far is in this checkpoint.
        self.unsaved_input = false;
        Ok(())
    }

    fn save(
        &mut self,
        status: RunStatus,
        output: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<()> {
        let snapshot = self.capture().map_err(WorkflowError::Snapshot)?;
        self.save_snapshot(status, snapshot, output, error)
    }

    fn save_snapshot(
        &mut self,
        status: RunStatus,
        snapshot: Snapshot,
        output: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<()> {
        if self.shared.journal.is_none() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.writes().rows);
        let journal = self.shared.journal.as_ref().expect("checked above");
        let record = RunRecord {
            status,
            snapshot,
            output,
            error,
            trace: self
                .rare
                .as_ref()
                .and_then(|r| r.trace.as_ref())
                .map(|t| t.trace()),
        };
        // Handed to the store's writer with the events journaled since the last checkpoint;
        // the loop waits for it before it polls a step again (`poll_commits`).
        let ticket = journal.committer.submit(crate::commit::Job {
            key: journal.key.clone(),
            lease: journal.lease.clone(),
            events,
            record: Some(record),
            release: false,
        });
        let writes = self.writes();
        writes.commits.push(ticket);
        // Any other status gives the run up, once it is durable.
        writes.releasing |= status != RunStatus::Running;
        Ok(())
    }

    /// Ready once every write handed to the store's writer is durable (then the steps waiting
    /// for their records go on), or with the first one's error.
    fn poll_commits(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let Some(writes) = self.rare.as_mut().and_then(|r| r.writes.as_mut()) else {
            return Poll::Ready(Ok(()));
        };
        let mut failed = None;
        while let Some(ticket) = writes.commits.first() {
            let outcome = std::task::ready!(ticket.poll(cx));
            writes.commits.remove(0);
            if let Err(error) = outcome {
                failed.get_or_insert(error);
            }
        }
        if let Some(error) = failed {
            writes.releasing = false;
            return Poll::Ready(Err(WorkflowError::Store(error)));
        }
        if std::mem::take(&mut writes.releasing) {
            self.released = true;
        }
        for done in writes.then.drain(..) {
            let _ = done.send(());
        }
        Poll::Ready(Ok(()))
    }

    /// Blocks until every write handed to the store's writer is durable (the few writes made
    /// outside the run's poll: a child stopped by its parent's end).
    fn wait_commits(&mut self) -> Result<()> {
        let Some(writes) = self.rare.as_mut().and_then(|r| r.writes.as_mut()) else {
            return Ok(());
        };
        let mut failed = None;
        for ticket in writes.commits.drain(..) {
            if let Err(error) = ticket.wait() {
                failed.get_or_insert(error);
            }
        }
        if let Some(error) = failed {
            writes.releasing = false;
            return Err(WorkflowError::Store(error));
        }
        if std::mem::take(&mut writes.releasing) {
            self.released = true;
        }
        Ok(())
    }

    /// Call `index` is queued to be polled (see `CallWake::queued`).
    fn queued_flag(&self, index: usize) -> &AtomicBool {
        match &self.calls[index].wake {
            Some(wake) => &wake.queued,
            None => &self.shared.first_call_queued,
        }
    }

    /// What few runs use (made at the first use).
    fn rare(&mut self) -> &mut Rare<W::Output> {
        self.rare.get_or_insert_with(Box::default)
    }

    /// When the run's time limit passes, if it has one.
    fn deadline_at(&self) -> Option<tokio::time::Instant> {
        self.rare.as_ref().and_then(|r| r.deadline_at)
    }

    /// Requests published to the outside and not answered yet.
    fn pending_requests(&self) -> &[DynEvent] {
        self.rare.as_ref().map_or(&[], |r| &r.pending_requests)
    }

    /// The run's writes (made at the first one).
    fn writes(&mut self) -> &mut Writes<W::Output> {
        self.rare().writes.get_or_insert_with(Box::default)
    }

    /// Writes handed to the store's writer are not durable yet, or steps wait for them.
    fn writes_in_flight(&self) -> bool {
        self.rare
            .as_ref()
            .and_then(|r| r.writes.as_ref())
            .is_some_and(|w| !w.commits.is_empty() || !w.then.is_empty())
    }

    /// The run's end is being written.
    fn ending(&self) -> bool {
        self.rare
            .as_ref()
            .and_then(|r| r.writes.as_ref())
            .is_some_and(|w| w.ending.is_some())
    }

    /// What a cancelled run's record says of the attempts that had failed before the cancel
    /// (`None` when none had).
    fn failures_before_cancel(&self) -> Option<String> {
        let failures = lock(&self.shared.rare_if_made()?.failures);
        if failures.is_empty() {
            return None;
        }
        let each: Vec<String> = failures
            .iter()
            .map(|f| {
                format!(
                    "step `{}` attempt {} failed: {}",
                    f.step,
                    f.attempt,
                    crate::error::chain(&*f.error)
                )
            })
            .collect();
        Some(format!("cancelled after {}", each.join("; ")))
    }

    /// Journals the outcome of a durable run, then (once it is durable) publishes the terminal
    /// item.
    fn end(
        &mut self,
        result: Result<W::Output>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<W::Output>> {
        let result = self.save_outcome(result);
        if self.rare.as_ref().is_none_or(|r| r.writes.is_none()) {
            // Nothing written (a run that is not durable): it ends now.
            return Poll::Ready(self.ended_with(result, Ok(())));
        }
        self.writes().ending = Some(result);
        self.poll_end(cx)
    }

    /// Waits for the run's last writes (its end, or its parking), then ends the run: a run
    /// whose end cannot be journaled ends with the store's error, never with an `Ok` that the
    /// store does not know about.
    fn poll_end(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<W::Output>> {
        let saved = std::task::ready!(self.poll_commits(cx));
        let result = self
            .rare
            .as_mut()
            .and_then(|r| r.writes.as_mut())
            .and_then(|w| w.ending.take())
            .expect("a run ends once");
        Poll::Ready(self.ended_with(result, saved))
    }

    /// Ends the run with `result`, or with the error of its last writes (`saved`).
    fn ended_with(&mut self, result: Result<W::Output>, saved: Result<()>) -> Result<W::Output> {
        let mut result = result;
        if let Err(error) = saved {
            if !matches!(result, Err(WorkflowError::Store(_))) {
                tracing::error!(%error, "could not journal the end of a durable run");
                result = Err(error);
            }
        }
        self.ended = true;
        let outcome = match &result {
            Ok(_) => Outcome::Stopped,
            Err(WorkflowError::Cancelled) => Outcome::Cancelled,
            Err(WorkflowError::Suspended { .. }) => Outcome::Suspended,
            Err(error @ (WorkflowError::TimedOut { .. } | WorkflowError::StepTimedOut { .. })) => {
                Outcome::TimedOut(error.to_string())
            }
            Err(error) => Outcome::Failed(crate::error::chain(error)),
        };
        // The run's end is journaled now (unless the store failed): its journaled children
        // record that they were stopped.
        let saved = !matches!(result, Err(WorkflowError::Store(_)));
        self.stop_children(&outcome, saved);
        self.shared.stream.end(outcome);
        result
    }

    /// Hands the outcome of a durable run to the store's writer (a record that cannot be made
    /// ends the run with that error); `poll_end` waits for it.
    fn save_outcome(&mut self, result: Result<W::Output>) -> Result<W::Output> {
        let mut result = result;
        if let Some(trace) = self
            .rare
            .as_ref()
            .and_then(|r| r.trace.as_ref())
            .filter(|_| !matches!(result, Err(WorkflowError::Suspended { .. })))
        {
            let outcome = match &result {
                Ok(_) => "stopped".to_string(),
                Err(WorkflowError::Cancelled) => "cancelled".to_string(),
                Err(
                    error @ (WorkflowError::TimedOut { .. } | WorkflowError::StepTimedOut { .. }),
                ) => {
                    format!("timed out: {error}")
                }
                Err(error) => format!("failed: {}", crate::error::chain(error)),
            };
            trace.record(TraceEvent::Ended { outcome });
        }
        if self.shared.journal.is_some() {
            let saved = match &result {
                Ok(output) => match W::__encode_output(output) {
                    Ok(value) => self.save(RunStatus::Finished, Some(value), None),
                    Err(reason) => self.save(RunStatus::Failed, None, Some(reason)),
                },
                // Suspended runs were saved as waiting; a run that could not journal cannot
                // journal its end either.
                Err(WorkflowError::Suspended { .. } | WorkflowError::Store(_)) => Ok(()),
                // Cancelled: the failures before the cancel stay readable in the store.
                Err(WorkflowError::Cancelled) => {
                    let failures = self.failures_before_cancel();
                    self.save(RunStatus::Cancelled, None, failures)
                }
                Err(error) => self.save(RunStatus::Failed, None, Some(crate::error::chain(error))),
            };
            if let Err(error) = saved {
                tracing::error!(%error, "could not journal the end of a durable run");
                result = Err(error);
            }
        }
        result
    }
}

impl<W: Workflow, F> Executor<W, F> {
    /// The run ends with `outcome`: its children end first (their ends come before its own on
    /// its stream), with the run's timeout when it timed out, cancelled otherwise.
    fn stop_children(&mut self, outcome: &Outcome, saved: bool) {
        if self
            .shared
            .family()
            .is_some_and(|f| f.parent_ended(outcome, saved))
        {
            for call in &mut self.calls {
                call.future.set(None);
            }
        }
    }
}

impl<W: Workflow, F> Drop for Executor<W, F> {
    fn drop(&mut self) {
        // The run's future was dropped before it ended (the caller dropped `run()`, or the
        // runtime shut down): the run is cancelled, and its stream still ends.
        if !self.ended {
            let outcome =
                if let Some(outcome) = self.shared.family().and_then(|f| f.dropped_outcome()) {
                    // A child run stopped by its parent's end.
                    outcome
                } else if self.shared.timed_out.load(Ordering::Acquire) {
                    // Its handler gave up at the deadline while a step held the thread.
                    let error = WorkflowError::TimedOut {
                        timeout: self
                            .rare
                            .as_ref()
                            .and_then(|r| r.limit)
                            .or(self.runner.config.timeout)
                            .unwrap_or_default(),
                        active: Vec::new(),
                    };
                    Outcome::TimedOut(error.to_string())
                } else {
                    Outcome::Cancelled
                };
            self.stop_children(&outcome, false);
            self.shared.stream.end(outcome);
        }
        // A durable run that stops here without having saved its end (its future dropped, its
        // store failing) gives up its claim, so that it can be resumed at once.
        // Through the store's writer, after the writes this run handed it.
        if let Some(journal) = self.shared.journal.as_ref().filter(|_| !self.released) {
            let release = crate::commit::Job {
                key: journal.key.clone(),
                lease: journal.lease.clone(),
                events: Vec::new(),
                record: None,
                release: true,
            };
            if let Err(error) = journal.committer.write_now(release) {
                tracing::warn!(%error, "could not release a durable run");
            }
        }
        // The run's store inbox is not watched any more (`crate::inbox`).
        if let Some(journal) = &self.shared.journal {
            journal.inbox.close();
        }
        // Nobody answers snapshot requests any more: `Handler::snapshot` on a run that ended
        // used to wait forever (its handler keeps `RunShared`, and with it the reply).
        self.shared.close_snapshot_requests();
        // In-flight invocations are dropped with `calls`, after this: no step outlives its
        // run.
    }
}

/// What one poll of a call came to.
enum Polled {
    Pending,
    /// The retry delay is over: start the next attempt.
    BackoffOver,
    Emitted(Emitted),
    Failed(BoxError),
    Panicked(String),
    TimedOut(std::time::Duration),
}

/// Polls the attempt or the retry delay of `call` once, with the call's own waker, inside the
/// attempt's span; a panic of the step is caught and reported, never unwound into the run.
fn poll_attempt<W: Workflow, F>(
    shared: &Arc<RunShared<W>>,
    call: &mut Call<W, F>,
    timeout: Option<std::time::Duration>,
) -> Polled
where
    F: Future<Output = std::result::Result<Emitted, BoxError>>,
{
    let waker = match &call.wake {
        Some(wake) => futures_util::task::waker_ref(wake),
        None => futures_util::task::waker_ref(shared),
    };
    let mut cx = TaskContext::from_waker(&waker);
    match call.phase {
        // A stale wake of a call that finished.
        Phase::Idle => return Polled::Pending,
        Phase::Backoff => {
            let timer = call
                .kept
                .as_mut()
                .and_then(|k| k.timer.as_mut())
                .expect("a retry delay has a timer");
            return match timer.as_mut().poll(&mut cx) {
                Poll::Pending => Polled::Pending,
                Poll::Ready(()) => Polled::BackoffOver,
            };
        }
        Phase::Running => {}
    }
    let future = call.future.as_mut();
    // With a time limit: when this poll began, to tell a step that held the thread past its
    // deadline (it is late) from one polled late by a busy runtime (it is not).
    let began = timeout.map(|_| tokio::time::Instant::now());
    let polled = {
        let _entered = call.span.as_deref().map(tracing::Span::enter);
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            future.as_pin_mut().expect("a running call").poll(&mut cx)
        }))
    };
    if let (Some(began), Some(timer), Some(limit), Ok(Poll::Ready(_))) =
        (began, call.timer(), timeout, &polled)
    {
        let deadline = timer.deadline();
        if began < deadline && tokio::time::Instant::now() > deadline {
            return Polled::TimedOut(limit);
        }
    }
    match polled {
        Ok(Poll::Ready(Ok(emitted))) => Polled::Emitted(emitted),
        Ok(Poll::Ready(Err(error))) => Polled::Failed(error),
        Err(panic) => Polled::Panicked(panic_message(panic.as_ref())),
        Ok(Poll::Pending) => {
            // The attempt's time limit, checked after the step as `tokio::time::timeout`
            // does: a step that is ready in time is never cut off.
            if let (Some(timer), Some(limit)) =
                (call.kept.as_mut().and_then(|k| k.timer.as_mut()), timeout)
            {
                if timer.as_mut().poll(&mut cx).is_ready() {
                    return Polled::TimedOut(limit);
                }
            }
            Polled::Pending
        }
    }
}

/// Arms `timer` to fire `after` from now, allocating it the first time.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, after: std::time::Duration) {
    let now = tokio::time::Instant::now();
    // As `tokio::time::sleep` does with a delay too long to represent: thirty years.
    let deadline = now
        .checked_add(after)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400 * 365 * 30));
    arm_until(timer, deadline);
}

/// Arms `timer` to fire at `deadline`, allocating it the first time.
fn arm_until(timer: &mut Option<Pin<Box<Sleep>>>, deadline: tokio::time::Instant) {
    match timer {
        Some(timer) => timer.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Decodes a snapshot and checks it against workflow `W`.
pub(crate) fn restore<W: Workflow>(
    snapshot: &Snapshot,
    fingerprint: &str,
) -> std::result::Result<(W::State, Box<Restored>), SnapshotError> {
    if snapshot.format == 0 || snapshot.format > SNAPSHOT_FORMAT {
        return Err(SnapshotError::new(
            "format",
            crate::snapshot::unsupported_format(snapshot.format.into()),
        ));
    }
    if snapshot.workflow != W::GRAPH.workflow {
        return Err(SnapshotError::new(
            "workflow",
            format!(
                "the snapshot is of workflow `{}`, not `{}`",
                snapshot.workflow,
                W::GRAPH.workflow
            ),
        ));
    }
    if snapshot.fingerprint != fingerprint {
        return Err(SnapshotError::new(
            "fingerprint",
            format!(
                "the graph of `{}` changed since the snapshot was taken (snapshot {}, this build {fingerprint})",
                W::GRAPH.workflow,
                snapshot.fingerprint
            ),
        ));
    }
    if !W::DURABLE {
        return Err(SnapshotError::new(
            "workflow",
            format!(
                "workflow `{}` is not `#[workflow(durable)]`",
                W::GRAPH.workflow
            ),
        ));
    }
    let state = W::__decode_state(snapshot.state.clone())
        .map_err(|reason| SnapshotError::new("state", reason))?;
    let step_of = |path: String, name: &str| {
        W::GRAPH.step_index(name).ok_or_else(|| {
            SnapshotError::new(
                path,
                format!("workflow `{}` has no step `{name}`", W::GRAPH.workflow),
            )
        })
    };
    let event_of = |path: String, record: &EventRecord| {
        decode_event::<W>(record)
            .map_err(|(field, reason)| SnapshotError::new(format!("{path}.{field}"), reason))
    };
    let accepted = |path: String, step: usize, event: DynEvent| {
        if W::GRAPH.accepts(step, event.id()) {
            Ok(event)
        } else {
            Err(SnapshotError::new(
                path,
                format!(
                    "step `{}` does not accept `{}`",
                    W::GRAPH.steps[step].name,
                    event.name()
                ),
            ))
        }
    };
    let mut in_flight = Vec::new();
    for (i, record) in snapshot.in_flight.iter().enumerate() {
        let step = step_of(format!("in_flight[{i}].step"), &record.step)?;
        let event = event_of(format!("in_flight[{i}].event"), &record.event)?;
        let event = accepted(format!("in_flight[{i}].event"), step, event)?;
        in_flight.push(RestoredCall {
            step,
            event,
            attempt: record.attempt.max(1),
            invocation: record.invocation,
            memo: record.memo.clone(),
            children: record
                .children
                .iter()
                .map(|c| (c.label.clone(), c.snapshot.clone()))
                .collect(),
            retry_at_ms: record.retry_at_ms,
        });
    }
    let mut queued = Vec::new();
    for (i, record) in snapshot.queued.iter().enumerate() {
        let step = step_of(format!("queued[{i}].step"), &record.step)?;
        let event = event_of(format!("queued[{i}].event"), &record.event)?;
        queued.push((step, accepted(format!("queued[{i}].event"), step, event)?));
    }
    let mut pending_requests = Vec::new();
    for (i, record) in snapshot.pending_requests.iter().enumerate() {
        pending_requests.push(event_of(format!("pending_requests[{i}]"), record)?);
    }
    Ok((
        state,
        Box::new(Restored {
            in_flight,
            invocations: snapshot.invocations,
            queued,
            pending_requests,
            recoveries: snapshot.recoveries,
            completed: snapshot.completed,
            deadline_ms: snapshot.deadline_ms,
        }),
    ))
}

/// Decodes the fan-in buffers and unclaimed answers of a snapshot into a fresh run.
pub(crate) fn restore_buffers<W: Workflow>(
    snapshot: &Snapshot,
    shared: &RunShared<W>,
) -> std::result::Result<(), SnapshotError> {
    let event_of = |path: String, record: &EventRecord| {
        decode_event::<W>(record)
            .map_err(|(field, reason)| SnapshotError::new(format!("{path}.{field}"), reason))
    };
    let mut buffers = lock(&shared.rare().collect);
    for (i, record) in snapshot.collect.iter().enumerate() {
        let step = W::GRAPH.step_index(&record.step).ok_or_else(|| {
            SnapshotError::new(
                format!("collect[{i}].step"),
                format!(
                    "workflow `{}` has no step `{}`",
                    W::GRAPH.workflow,
                    record.step
                ),
            )
        })?;
        let mut slots = Vec::new();
        for (s, events) in record.slots.iter().enumerate() {
            let mut queue = VecDeque::new();
            for (e, event) in events.iter().enumerate() {
                queue.push_back(event_of(format!("collect[{i}].slots[{s}][{e}]"), event)?);
            }
            slots.push(queue);
        }
        buffers.insert((step, record.key), CollectBuffer::Erased(slots));
    }
    drop(buffers);
    let mut unclaimed = lock(&shared.rare().unclaimed);
    for (i, record) in snapshot.unclaimed.iter().enumerate() {
        unclaimed.push(event_of(format!("unclaimed[{i}]"), record)?);
    }
    shared
        .stream_seq
        .store(snapshot.stream_seq, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::RouteTable;
    use crate::event::{EventId, EventMeta, StopEvent};
    use crate::graph::{Graph, StepSpec};

    /// Event type `i` of a made-up graph (only the id matters to the table).
    fn meta(i: usize) -> EventMeta {
        let name: &'static str = Box::leak(format!("tests::E{i}").into_boxed_str());
        EventMeta {
            name,
            id: EventId::of(name),
            ..EventMeta::of::<StopEvent<()>>()
        }
    }

    /// `types` event types; step `s` accepts the types `t` with `t % (s + 1) == 0`.
    fn graph(types: usize, steps: usize) -> &'static Graph {
        let steps: Vec<StepSpec> = (0..steps)
            .map(|s| StepSpec {
                name: "step",
                accepts: Vec::leak((0..types).filter(|t| t % (s + 1) == 0).map(meta).collect()),
                emits: &[],
                num_workers: 1,
                skip_graph_checks: true,
            })
            .collect();
        Box::leak(Box::new(Graph {
            workflow: "tests::Made",
            steps: Vec::leak(steps),
        }))
    }

    #[test]
    fn small_and_large_tables_find_the_same_consumers() {
        // Up to 8 types the table is scanned, past that binary-searched: both must agree with
        // the graph.
        for types in [1, 3, 8, 9, 40] {
            let graph = graph(types, 4);
            let table = RouteTable::new(graph);
            for t in 0..types {
                let id = meta(t).id;
                let expected: Vec<usize> = graph.consumers(id).collect();
                assert!(!expected.is_empty());
                assert_eq!(
                    table.consumers(id),
                    expected.as_slice(),
                    "{types} types, E{t}"
                );
            }
            assert!(table.consumers(EventId::of("tests::Nobody")).is_empty());
        }
    }
}
