//! The workflow trait that `#[workflow]` implements, and the runner that executes it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::context::{Context, Envelope, Journal, RunShared};
use crate::error::WorkflowError;
use crate::error::{BoxError, Result};
use crate::event::{DynEvent, Event, StartEvent};
use crate::graph::Graph;
use crate::handler::Handler;
use crate::output::Emitted;
use crate::retry::RetryPolicy;
use crate::runtime::{Init, restore, restore_buffers};
use crate::runtime::{RouteTable, execute};
use crate::snapshot::{EventRecord, Snapshot, SnapshotError, fingerprint};
use crate::store::{Claim, Lease, Owner, RunStatus, Store, StoreErrorKind};
use crate::stream::{DEFAULT_STREAM_CAPACITY, lock};
use tokio::sync::Semaphore;

/// A workflow: a set of steps joined by the events they accept and emit.
///
/// Implemented by `#[workflow]` on an `impl` block; never by hand. The provided methods make the
/// workflow runnable directly (`MyFlow.run(input).await`); [`Workflow::runner`] gives a reusable,
/// configurable [`Runner`].
///
/// ```
/// use tidewater::prelude::*;
///
/// struct Echo;
///
/// #[workflow]
/// impl Echo {
///     #[step]
///     async fn echo(&self, ev: StartEvent<String>) -> StopEvent<String> {
///         StopEvent(ev.0)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let out = Echo.run("hi".to_string()).await.unwrap();
/// assert_eq!(out, "hi");
/// # }
/// ```
pub trait Workflow: Sized + Send + Sync + 'static {
    /// The payload of the workflow's `StartEvent`.
    type Input: Send + 'static;
    /// The payload of the workflow's `StopEvent`.
    type Output: Send + 'static;
    /// The run's shared state (`#[workflow(state = S)]`, `()` by default).
    type State: Default + Send + 'static;

    /// The graph: steps, what each accepts and emits.
    const GRAPH: &'static Graph;

    /// Runs step `ctx.step_index()` on `event`. Generated; not part of the public API.
    #[doc(hidden)]
    fn __invoke(
        self: Arc<Self>,
        ctx: Context<Self>,
        event: DynEvent,
    ) -> impl Future<Output = std::result::Result<Emitted, BoxError>> + Send + 'static;

    /// Wraps the workflow's input in its start event. Generated; not part of the public API.
    #[doc(hidden)]
    fn __start_event(input: Self::Input) -> DynEvent;

    /// Takes the output out of the workflow's stop event. Generated; not part of the public API.
    #[doc(hidden)]
    fn __output(stop: DynEvent) -> std::result::Result<Self::Output, DynEvent>;

    /// The retry policy and time limit of step `step`. Generated from `#[step(retry = ..,
    /// timeout = ..)]`; not part of the public API.
    #[doc(hidden)]
    fn __step_config(step: usize) -> StepConfig {
        let _ = step;
        StepConfig::default()
    }

    /// `#[workflow(durable)]`: the run can be snapshotted and journaled. Generated.
    #[doc(hidden)]
    const DURABLE: bool = false;

    /// Serializes an event of the graph (durable workflows). Generated.
    #[doc(hidden)]
    fn __encode_event(event: &DynEvent) -> std::result::Result<serde_json::Value, String> {
        Err(format!(
            "cannot serialize `{}`: workflow `{}` is not `#[workflow(durable)]`",
            event.name(),
            Self::GRAPH.workflow
        ))
    }

    /// Deserializes an event of the graph by its stable name (durable workflows). Generated.
    #[doc(hidden)]
    fn __decode_event(
        name: &str,
        data: serde_json::Value,
    ) -> std::result::Result<DynEvent, String> {
        let _ = data;
        Err(format!(
            "unknown event type `{name}` for workflow `{}` (it is not `#[workflow(durable)]`)",
            Self::GRAPH.workflow
        ))
    }

    /// Serializes the state (durable workflows). Generated.
    #[doc(hidden)]
    fn __encode_state(state: &Self::State) -> std::result::Result<serde_json::Value, String> {
        let _ = state;
        Err(format!(
            "workflow `{}` is not `#[workflow(durable)]`: its runs cannot be snapshotted",
            Self::GRAPH.workflow
        ))
    }

    /// Deserializes the state (durable workflows). Generated.
    #[doc(hidden)]
    fn __decode_state(data: serde_json::Value) -> std::result::Result<Self::State, String> {
        let _ = data;
        Err(format!(
            "workflow `{}` is not `#[workflow(durable)]`",
            Self::GRAPH.workflow
        ))
    }

    /// Serializes the output (durable workflows keep it in their store). Generated.
    #[doc(hidden)]
    fn __encode_output(output: &Self::Output) -> std::result::Result<serde_json::Value, String> {
        let _ = output;
        Err("not durable".to_string())
    }

    /// Deserializes the output of a finished durable run. Generated.
    #[doc(hidden)]
    fn __decode_output(data: serde_json::Value) -> std::result::Result<Self::Output, String> {
        let _ = data;
        Err("not durable".to_string())
    }

    /// The graph of this workflow (same as [`Workflow::GRAPH`]).
    fn graph() -> &'static Graph {
        Self::GRAPH
    }

    /// A reusable runner for this workflow, with default settings.
    fn runner(self) -> Runner<Self> {
        Runner::new(self)
    }

    /// A runner whose runs time out after `limit`.
    fn timeout(self, limit: Duration) -> Runner<Self> {
        Runner::new(self).timeout(limit)
    }

    /// Runs the workflow once on `input` and returns its output.
    ///
    /// # Errors
    /// See [`Runner::run`].
    fn run(self, input: Self::Input) -> impl Future<Output = Result<Self::Output>> + Send {
        // Made now, not at the first poll: the run's span is a child of the caller's span
        // where `run` is called, as with `Runner::run`.
        Runner::new(self).run(input)
    }

    /// Starts the workflow on `input` in a new task and returns its [`Handler`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    fn start(self, input: Self::Input) -> Handler<Self> {
        Runner::new(self).start(input)
    }
}

/// Runs a workflow: holds it, its routing table and the run settings. Cheap to clone; every
/// run gets its own state, queues and stream, so concurrent runs never share per-run data.
///
/// ```
/// use std::time::Duration;
/// use tidewater::prelude::*;
///
/// struct Echo;
///
/// #[workflow]
/// impl Echo {
///     #[step]
///     async fn echo(&self, ev: StartEvent<u8>) -> StopEvent<u8> { StopEvent(ev.0) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let runner = Echo.timeout(Duration::from_secs(5));
/// assert_eq!(runner.run(1).await.unwrap(), 1);
/// assert_eq!(runner.run(2).await.unwrap(), 2);
/// # }
/// ```
pub struct Runner<W: Workflow> {
    pub(crate) workflow: Arc<W>,
    pub(crate) routes: Arc<RouteTable>,
    pub(crate) config: Arc<RunConfig>,
}

/// How many invocations of steps on a loop one run may make by default before it fails with
/// [`WorkflowError::LoopLimit`] (see [`Runner::max_loop_invocations`]).
pub const DEFAULT_MAX_LOOP_INVOCATIONS: u64 = 10_000;

/// The per-step settings from `#[step(retry = .., timeout = ..)]`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StepConfig {
    /// Retries of a failing invocation.
    pub retry: Option<RetryPolicy>,
    /// The time limit of one invocation.
    pub timeout: Option<Duration>,
}

/// The settings of a runner.
#[derive(Debug, Clone)]
pub(crate) struct RunConfig {
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream_capacity: usize,
    pub(crate) internal_events: bool,
    pub(crate) verbose: bool,
    pub(crate) max_recoveries: u32,
    /// The runaway-loop guard: at most this many invocations per run of steps that lie on a
    /// loop of the graph.
    pub(crate) max_loop_invocations: Option<u64>,
    /// Which steps lie on a loop (computed once per runner).
    pub(crate) on_loop: Arc<[bool]>,
    pub(crate) run_limit: Option<Arc<Semaphore>>,
    pub(crate) steps: Arc<[StepConfig]>,
    pub(crate) store: Option<Arc<dyn Store>>,
    /// The writer of `store`, kept while the runner lives so that its thread outlives a run.
    pub(crate) committer: Option<Arc<crate::commit::Committer>>,
    /// Evict durable runs parked only on requests once they have been idle this long.
    pub(crate) evict_waiting_after: Option<Duration>,
    /// Record a trace of every run (`Runner::trace`).
    pub(crate) trace: bool,
    /// How often a durable run's inbox watcher and a worker loop look at the store when no
    /// wake-up came (`Runner::poll_interval`).
    pub(crate) poll_every: Duration,
    /// The graph's fingerprint, which snapshots carry and restores check.
    pub(crate) fingerprint: Arc<str>,
}

/// How often a durable run looks at its store inbox, and a worker loop at the run queue, when
/// the store announced nothing (see [`Runner::poll_interval`]).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Store")
    }
}

impl<W: Workflow> std::fmt::Debug for Runner<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("workflow", &W::GRAPH.workflow)
            .field("timeout", &self.config.timeout)
            .field("durable", &self.config.store.is_some())
            .finish_non_exhaustive()
    }
}

impl<W: Workflow> Clone for Runner<W> {
    fn clone(&self) -> Self {
        Runner {
            workflow: self.workflow.clone(),
            routes: self.routes.clone(),
            config: self.config.clone(),
        }
    }
}

impl<W: Workflow> Runner<W> {
    /// A runner with default settings: no run timeout (a run that cannot progress fails as
    /// stuck at once), streams buffering [`DEFAULT_STREAM_CAPACITY`] items per subscriber.
    pub fn new(workflow: W) -> Runner<W> {
        Runner {
            workflow: Arc::new(workflow),
            routes: Arc::new(RouteTable::new(W::GRAPH)),
            config: Arc::new(RunConfig {
                timeout: None,
                stream_capacity: DEFAULT_STREAM_CAPACITY,
                internal_events: false,
                verbose: false,
                max_recoveries: 3,
                max_loop_invocations: Some(DEFAULT_MAX_LOOP_INVOCATIONS),
                on_loop: (0..W::GRAPH.steps.len())
                    .map(|step| W::GRAPH.cycle_through(step).is_some())
                    .collect(),
                run_limit: None,
                steps: (0..W::GRAPH.steps.len()).map(W::__step_config).collect(),
                store: None,
                committer: None,
                evict_waiting_after: None,
                trace: false,
                poll_every: DEFAULT_POLL_INTERVAL,
                fingerprint: fingerprint(W::GRAPH).into(),
            }),
        }
    }

    /// Runs end with [`WorkflowError::TimedOut`] after `limit`.
    ///
    /// A deadline holds even when a step blocks its thread (a synchronous HTTP call, a CPU
    /// loop), which no async code can interrupt: on a multi-thread runtime the caller of
    /// [`Runner::run`] or of a handler gets the timeout at the deadline (within a few
    /// milliseconds), naming the step that held the thread, and the run is aborted when that
    /// step lets go, its result discarded. On a current-thread runtime the blocked thread is
    /// the caller's too, so the error comes when the step returns: late, but always a timeout,
    /// never a success. Under [`Runner::max_concurrent_runs`] the clock starts at admission and
    /// only the run itself watches it (the second case). Prefer
    /// `tokio::task::spawn_blocking` for blocking work.
    ///
    /// A run resumed from a snapshot or a store keeps the deadline it had (a crash does not buy
    /// it a fresh `limit`); one resumed after its deadline times out at once.
    pub fn timeout(mut self, limit: Duration) -> Runner<W> {
        Arc::make_mut(&mut self.config).timeout = Some(limit);
        self
    }

    /// How many items each stream subscriber buffers before dropping the oldest.
    pub fn stream_capacity(mut self, items: usize) -> Runner<W> {
        Arc::make_mut(&mut self.config).stream_capacity = items.max(1);
        self
    }

    /// Publish step-started and step-finished items on the stream.
    pub fn internal_events(mut self, on: bool) -> Runner<W> {
        Arc::make_mut(&mut self.config).internal_events = on;
        self
    }

    /// Record a [`Trace`] of every run: each step started, finished or failed (with retries),
    /// the events sent, the waits for a human, the outcome, timed from the run's start. Read it
    /// with [`Handler::recording`]; a durable run keeps it in its journal
    /// ([`Runner::stored_trace`]). Off by default; when off, the executor pays one untaken
    /// branch per step event.
    ///
    /// ```
    /// use tidewater::prelude::*;
    /// struct Echo;
    /// #[workflow]
    /// impl Echo {
    ///     #[step]
    ///     async fn echo(&self, ev: StartEvent<u8>) -> StopEvent<u8> { StopEvent(ev.0) }
    /// }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let run = Echo.runner().trace(true).start(7);
    /// let recording = run.recording().unwrap();
    /// run.await.unwrap();
    /// assert_eq!(recording.trace().steps(), ["echo"]);
    /// assert_eq!(recording.trace().outcome(), Some("stopped"));
    /// # }
    /// ```
    ///
    /// [`Trace`]: crate::trace::Trace
    pub fn trace(mut self, on: bool) -> Runner<W> {
        Arc::make_mut(&mut self.config).trace = on;
        self
    }

    /// Print each step's activity (start, finish, failure, retry) and each wait for a human to
    /// stderr, one whole line per fact: a quick look at a run without a tracing subscriber.
    pub fn verbose(mut self, on: bool) -> Runner<W> {
        Arc::make_mut(&mut self.config).verbose = on;
        self
    }

    /// How many times per run a catch-error step (one taking [`StepFailure`]) may recover
    /// from a failure; the next failure fails the run. 3 by default.
    ///
    /// [`StepFailure`]: crate::StepFailure
    pub fn max_recoveries(mut self, n: u32) -> Runner<W> {
        Arc::make_mut(&mut self.config).max_recoveries = n;
        self
    }

    /// The runaway-loop guard: a run fails with [`WorkflowError::LoopLimit`] once steps that lie
    /// on a loop of its graph have been invoked more than `limit` times in it (a loop whose exit
    /// is never taken would otherwise spin forever when the run has no timeout). Steps on no
    /// loop are not counted, so fan-outs of any size are unaffected. The default is
    /// [`DEFAULT_MAX_LOOP_INVOCATIONS`]; `None` removes the guard.
    ///
    /// ```
    /// # use tidewater::prelude::*;
    /// # struct Flow;
    /// # #[workflow] impl Flow { #[step] async fn go(&self, ev: StartEvent<u8>) -> StopEvent<u8> { StopEvent(ev.0) } }
    /// let runner = Flow.runner().max_loop_invocations(Some(100_000)); // a long agent loop
    /// let unbounded = Flow.runner().max_loop_invocations(None);        // no guard
    /// ```
    pub fn max_loop_invocations(mut self, limit: Option<u64>) -> Runner<W> {
        Arc::make_mut(&mut self.config).max_loop_invocations = limit;
        self
    }

    /// At most `n` runs of this runner (and its clones) execute at once; further runs wait
    /// their turn, first come first served.
    ///
    /// # Panics
    /// When `n` is 0.
    pub fn max_concurrent_runs(mut self, n: usize) -> Runner<W> {
        assert!(n > 0, "`max_concurrent_runs` must be at least 1");
        Arc::make_mut(&mut self.config).run_limit = Some(Arc::new(Semaphore::new(n)));
        self
    }

    /// How often a durable run looks at its store inbox ([`Store::post`]) for a message
    /// posted by another process, and a worker loop ([`Runner::work`]) at the store for runs
    /// to claim, when no wake-up came: [`DEFAULT_POLL_INTERVAL`] by default. A store that
    /// announces changes ([`Store::wakeups`]: in this process for `MemoryStore` and
    /// `SqliteStore`, from every process for a `PgStore` with LISTEN/NOTIFY) wakes them at
    /// once; polling is the fallback, and bounds how late a message can be. Runs that are not
    /// durable never poll. The watcher and the worker loop sleep on tokio's clock: a durable
    /// run needs a runtime with timers (`enable_time` or `enable_all`, as `#[tokio::main]`
    /// and `#[tokio::test]` build); on one without, `start_durable`, `resume_stored`,
    /// `answer`, `adopt_orphans` and `work` return [`WorkflowError::Durable`] saying so.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tidewater::prelude::*;
    /// # #[derive(Default)] struct Flow;
    /// # #[workflow(durable)] impl Flow {
    /// #     #[step] async fn go(&self, ev: StartEvent<u8>) -> StopEvent<u8> { StopEvent(ev.0) }
    /// # }
    /// let runner = Flow.runner().poll_interval(Duration::from_millis(100));
    /// # let _ = runner;
    /// ```
    pub fn poll_interval(mut self, every: Duration) -> Runner<W> {
        Arc::make_mut(&mut self.config).poll_every = every.max(Duration::from_millis(1));
        self
    }

    /// The workflow this runner runs.
    pub fn workflow(&self) -> &W {
        &self.workflow
    }

    /// Runs the workflow on `input` and returns its output. Dropping the future cancels the
    /// run. The run is polled in the calling task, or, when the runner has a
    /// [`timeout`](Runner::timeout), in a task of its own (see [`Runner::timeout`] on steps that
    /// block their thread).
    ///
    /// # Errors
    /// [`WorkflowError::StepFailed`] or [`WorkflowError::StepPanicked`] when a step fails,
    /// [`WorkflowError::TimedOut`], [`WorkflowError::Stuck`] when no step can run any more.
    pub fn run(&self, input: W::Input) -> impl Future<Output = Result<W::Output>> + Send + use<W> {
        self.run_with_state(input, W::State::default())
    }

    /// Like [`Runner::run`], starting from the given state instead of `Default::default()`.
    ///
    /// # Errors
    /// See [`Runner::run`].
    pub fn run_with_state(
        &self,
        input: W::Input,
        state: W::State,
    ) -> impl Future<Output = Result<W::Output>> + Send + use<W> {
        if self.handler_deadline().is_some() {
            // With a time limit the run gets a task of its own, so that a step holding the
            // thread cannot hold the caller past the deadline (on a multi-thread runtime).
            let runner = self.clone();
            return futures_util::future::Either::Left(async move {
                /// Dropping `run()`'s future cancels the run, as when it runs in place.
                struct CancelOnDrop<W: Workflow>(Handler<W>);
                impl<W: Workflow> Drop for CancelOnDrop<W> {
                    fn drop(&mut self) {
                        self.0.cancel();
                    }
                }
                let mut run = CancelOnDrop(runner.start_with_state(input, state));
                (&mut run.0).await
            });
        }
        let shared = Arc::new(RunShared::new(state, self.config.stream_capacity));
        futures_util::future::Either::Right(execute(
            self.clone(),
            shared,
            Init::Start(W::__start_event(input)),
        ))
    }

    /// Runs the workflow starting from `*state`, and leaves the run's final state in `*state`
    /// whatever the outcome: the way to carry state from one run into the next. If the future
    /// is dropped before the run ends (an outer timeout), `*state` is the state as the run left
    /// it: every `update_state` made until then, including those of steps cut off half-way.
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// #[derive(Default)]
    /// struct Memory { seen: Vec<String> }
    ///
    /// struct Chat;
    ///
    /// #[workflow(state = Memory)]
    /// impl Chat {
    ///     #[step]
    ///     async fn hear(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> StopEvent<usize> {
    ///         StopEvent(ctx.update_state(|m| { m.seen.push(ev.0); m.seen.len() }))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = Chat.runner();
    /// let mut memory = Memory::default();
    /// assert_eq!(runner.run_with("hi".into(), &mut memory).await.unwrap(), 1);
    /// assert_eq!(runner.run_with("again".into(), &mut memory).await.unwrap(), 2);
    /// assert_eq!(memory.seen, ["hi", "again"]);
    /// # }
    /// ```
    ///
    /// # Errors
    /// See [`Runner::run`].
    pub async fn run_with(&self, input: W::Input, state: &mut W::State) -> Result<W::Output> {
        /// Gives the run's state back to the caller however the run ends, also when this
        /// future is dropped half-way (an outer timeout): the caller never finds its state
        /// wiped.
        struct GiveBack<'a, W: Workflow> {
            state: &'a mut W::State,
            shared: Arc<RunShared<W>>,
        }
        impl<W: Workflow> Drop for GiveBack<'_, W> {
            fn drop(&mut self) {
                *self.state = std::mem::take(&mut *lock(&self.shared.state));
            }
        }
        let shared = Arc::new(RunShared::new(
            std::mem::take(state),
            self.config.stream_capacity,
        ));
        let _give_back = GiveBack {
            state,
            shared: shared.clone(),
        };
        execute(self.clone(), shared, Init::Start(W::__start_event(input))).await
    }

    /// Starts a run on `input` in a new tokio task and returns its handler, to stream its
    /// events, send it events, cancel it, or await its output.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(&self, input: W::Input) -> Handler<W> {
        self.start_with_state(input, W::State::default())
    }

    /// Like [`Runner::start`], starting from the given state.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start_with_state(&self, input: W::Input, state: W::State) -> Handler<W> {
        let shared = Arc::new(RunShared::new(state, self.config.stream_capacity));
        // Reserved before the run starts, so the handler's own stream misses nothing.
        shared.stream.reserve();
        let task = tokio::spawn(execute(
            self.clone(),
            shared.clone(),
            Init::Start(W::__start_event(input)),
        ));
        Handler::new(shared, task, self.handler_deadline())
    }

    /// Resumes a run from a snapshot (taken with `Handler::snapshot`, possibly in another
    /// process) in a new task. The start event is not emitted again; completed steps do not run
    /// again; the steps that were running run again (at least once), continuing their attempt
    /// count; queues, fan-in buffers and unanswered requests are as they were (unanswered
    /// requests are published again on the new handler's stream).
    ///
    /// # Errors
    /// A [`SnapshotError`] naming the bad field when the snapshot is of another format, another
    /// workflow, a changed graph, or holds data that does not decode. Nothing is started then.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn resume(&self, snapshot: &Snapshot) -> std::result::Result<Handler<W>, SnapshotError> {
        self.resume_journaled(snapshot, None, None, Vec::new())
    }

    fn resume_journaled(
        &self,
        snapshot: &Snapshot,
        journal: Option<Journal>,
        answer: Option<DynEvent>,
        unread: Vec<(u64, crate::store::Message)>,
    ) -> std::result::Result<Handler<W>, SnapshotError> {
        let (state, restored) = restore::<W>(snapshot, &self.config.fingerprint)?;
        let journal = journal.map(|mut journal| {
            journal.republished = restored.pending_requests.len();
            journal
        });
        let shared = RunShared::new(state, self.config.stream_capacity).with_journal(journal);
        restore_buffers::<W>(snapshot, &shared)?;
        if let Some(from) = shared.journal.as_ref().and_then(|j| j.stream_from) {
            shared
                .stream_seq
                .store(from, std::sync::atomic::Ordering::Relaxed);
        }
        let shared = Arc::new(shared);
        if let Some(answer) = answer {
            // In the inbox before the run's task exists: on a multi-threaded runtime the task
            // may run at once, find the run parked on its requests with no mail, and evict it
            // again before a later `send_response` lands (the answer would be lost).
            post_external(&shared, answer, None);
        }
        for (n, message) in unread {
            crate::inbox::deliver(&shared, n, message);
        }
        shared.stream.reserve();
        let task = tokio::spawn(execute(
            self.clone(),
            shared.clone(),
            Init::Resume(restored),
        ));
        crate::inbox::watch(&shared, self.config.poll_every);
        Ok(Handler::new(shared, task, self.handler_deadline()).keep_deadline(snapshot.deadline_ms))
    }

    /// Journals every run started with [`Runner::start_durable`] in `store`: a checkpoint at
    /// the start and after each step completion, each event written to the stream, and the
    /// outcome. Only for `#[workflow(durable)]` workflows.
    pub fn store(mut self, store: Arc<dyn Store>) -> Runner<W> {
        Arc::make_mut(&mut self.config).committer =
            Some(crate::commit::Committer::for_store(&store));
        Arc::make_mut(&mut self.config).store = Some(store);
        self
    }

    /// Durable runs parked only on unanswered requests are saved to the store as waiting and
    /// leave memory (their handler ends with [`WorkflowError::Suspended`]);
    /// [`Runner::answer`] brings them back when the answer comes. At once when on; see
    /// [`Runner::evict_waiting_after`] to keep them a while first.
    pub fn evict_when_waiting(mut self, on: bool) -> Runner<W> {
        Arc::make_mut(&mut self.config).evict_waiting_after = on.then_some(Duration::ZERO);
        self
    }

    /// [`Runner::evict_when_waiting`], once a run has been parked (only on unanswered
    /// requests, nothing running or queued) for `idle`: an answer that comes sooner finds the
    /// run still in memory; a run that waits longer leaves it. Any activity restarts the
    /// clock.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tidewater::prelude::*;
    /// # #[derive(Default)] struct Flow;
    /// # #[workflow(durable)] impl Flow {
    /// #     #[step] async fn go(&self, ev: StartEvent<u8>) -> StopEvent<u8> { StopEvent(ev.0) }
    /// # }
    /// let runner = Flow.runner().evict_waiting_after(Duration::from_secs(60));
    /// # let _ = runner;
    /// ```
    pub fn evict_waiting_after(mut self, idle: Duration) -> Runner<W> {
        Arc::make_mut(&mut self.config).evict_waiting_after = Some(idle);
        self
    }

    /// Starts a journaled run under `key` (see [`Runner::store`]).
    ///
    /// # Errors
    /// [`WorkflowError::Durable`] when the runner has no store, the workflow is not
    /// `#[workflow(durable)]`, a run with this key exists and has not ended, or another live
    /// owner (a process, or another run of this one) holds the key ("owned by …"), or the
    /// tokio runtime has no timers (see [`Runner::poll_interval`]);
    /// [`WorkflowError::Store`] when the store cannot be read or written.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start_durable(&self, key: &str, input: W::Input) -> Result<Handler<W>> {
        let store = self.live_store(key)?;
        let lease = self.acquire(&*store, key, Claim::Start)?;
        let journal = self.journal(store, key, lease);
        let shared = Arc::new(
            RunShared::new(W::State::default(), self.config.stream_capacity)
                .with_journal(Some(journal)),
        );
        shared.stream.reserve();
        let task = tokio::spawn(execute(
            self.clone(),
            shared.clone(),
            Init::Start(W::__start_event(input)),
        ));
        crate::inbox::watch(&shared, self.config.poll_every);
        Ok(Handler::new(shared, task, self.handler_deadline()))
    }

    /// Resumes the journaled run `key` from its last checkpoint: after a crash, a restart, or
    /// an eviction. To bring back a run evicted while waiting for an answer, use
    /// [`Runner::answer`]: with [`Runner::evict_when_waiting`] on, a run resumed with nothing
    /// but unanswered requests is evicted again at once.
    ///
    /// # Errors
    /// [`WorkflowError::Durable`] when there is no such run, it has ended, or another live owner
    /// runs it ("owned by …": a run has one owner at a time, see [`Store`]);
    /// [`WorkflowError::Snapshot`] when its checkpoint does not fit this build of the workflow;
    /// [`WorkflowError::Store`] when the store cannot be read.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn resume_stored(&self, key: &str) -> Result<Handler<W>> {
        self.resume_stored_with(key, None)
    }

    fn resume_stored_with(&self, key: &str, answer: Option<DynEvent>) -> Result<Handler<W>> {
        let store = self.live_store(key)?;
        let lease = self.acquire(&*store, key, Claim::Resume)?;
        self.resume_leased(store, key, lease, answer)
    }

    /// Resumes the journaled run `key`, held under `lease`, from its last checkpoint; gives the
    /// lease back when it cannot.
    pub(crate) fn resume_leased(
        &self,
        store: Arc<dyn Store>,
        key: &str,
        lease: Lease,
        answer: Option<DynEvent>,
    ) -> Result<Handler<W>> {
        // Read after the claim: the record is the last one any owner wrote.
        let record = match store.load(key) {
            Ok(Some(record)) => record,
            Ok(None) => {
                let _ = store.release(key, &lease);
                return Err(WorkflowError::Durable {
                    key: key.to_string(),
                    reason: "no run with this key in the store".to_string(),
                });
            }
            Err(error) => {
                let _ = store.release(key, &lease);
                return Err(error.into());
            }
        };
        let mut journal = self.journal(store.clone(), key, lease.clone());
        journal.trace = record.trace.clone();
        // The messages posted after the ones this checkpoint routed: handed to the run before
        // its task exists (as an answer is), so that a parked run claimed for its mail takes
        // it before it could be found idle and evicted again.
        journal.inbox = crate::inbox::InboxCursor::new(record.snapshot.inbox);
        let unread = match store.inbox(key, record.snapshot.inbox) {
            Ok(unread) => unread,
            Err(error) if error.kind == StoreErrorKind::Unsupported => Vec::new(),
            Err(error) => {
                let _ = store.release(key, &lease);
                return Err(error.into());
            }
        };
        // Events a dead owner journaled after this checkpoint belong to invocations that run
        // again: marked superseded, and the re-run's are numbered after them.
        match crate::store::supersede_after(&*store, key, &lease, record.snapshot.stream_seq) {
            Ok(from) => journal.stream_from = Some(from),
            Err(error) => {
                let _ = store.release(key, &lease);
                return Err(error.into());
            }
        }
        self.resume_journaled(&record.snapshot, Some(journal), answer, unread)
            .map_err(|error| {
                let _ = store.release(key, &lease);
                error.into()
            })
    }

    /// Takes the run `key` in the store for a new owner of this process; the refusals of the
    /// ownership rules are [`WorkflowError::Durable`], failures [`WorkflowError::Store`].
    pub(crate) fn acquire(&self, store: &dyn Store, key: &str, claim: Claim) -> Result<Lease> {
        store
            .acquire(key, &Owner::this_process(), claim)
            .map_err(|error| match error.kind {
                StoreErrorKind::Failed | StoreErrorKind::Fenced => WorkflowError::Store(error),
                _ => WorkflowError::Durable {
                    key: key.to_string(),
                    reason: error.message,
                },
            })
    }

    /// Delivers the answer to a journaled run waiting for it: resumes the run from the store
    /// (it may have been evicted, or its process restarted) with `response` already in its
    /// inbox, so the run takes it before it could be found idle and evicted again.
    ///
    /// # Errors
    /// As [`Runner::resume_stored`]; [`WorkflowError::Undeliverable`], with the run left as
    /// it was, when the event is not one the run can take: not a response and accepted by no
    /// step, or of a type outside the graph (which a durable run cannot store).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn answer<E: Event>(&self, key: &str, response: E) -> Result<Handler<W>> {
        self.answer_dyn(key, DynEvent::new(response))
    }

    /// [`Runner::answer`] with a type-erased event.
    pub(crate) fn answer_dyn(&self, key: &str, response: DynEvent) -> Result<Handler<W>> {
        // Refused before the run is touched: an answer the run cannot take would resume it
        // only to fail it (or its next checkpoint) for good.
        let refuse = |reason: String| {
            Err(WorkflowError::Undeliverable {
                event: response.name(),
                reason,
            })
        };
        if response.kind() != crate::event::EventKind::Response
            && !W::GRAPH.is_accepted(response.id())
        {
            return refuse(format!(
                "no step of `{}` accepts it; the run was left as it was",
                W::GRAPH.workflow
            ));
        }
        if W::DURABLE {
            if let Err(reason) = crate::snapshot::encode_event::<W>(&response) {
                // Not for this run, but maybe for one of its children (`Context::run_child`),
                // journaled under its key: the resumed run hands it to the child that asks.
                if !self.has_running_children(key)? {
                    return refuse(format!(
                        "a durable run can only store events of its graph ({reason}); the run \
                         was left as it was"
                    ));
                }
            }
        }
        self.resume_stored_with(key, Some(response))
    }

    /// Does the durable run `key` have a child run journaled under it that has not ended?
    fn has_running_children(&self, key: &str) -> Result<bool> {
        let store = self.durable_store(key)?;
        let prefix = format!("{key}/");
        for status in [RunStatus::Running, RunStatus::Waiting] {
            if store.keys(status)?.iter().any(|k| k.starts_with(&prefix)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Takes over, in this process, every run of this workflow in the runner's store that has
    /// no live owner and work to do: runs whose process died or whose lease ran out (a crashed
    /// or frozen worker), and runs a shutdown saved with steps queued. Each is resumed from its
    /// last checkpoint as [`Runner::resume_stored`] does, and its handler returned with its key.
    /// Runs that a live owner holds, runs of other workflows, runs parked only on unanswered
    /// requests (an answer brings them back) and child runs (their parent resumes them) are
    /// left alone; a record that cannot be resumed is skipped with a `tracing` warning.
    ///
    /// A worker calls it at start and then every few seconds: a dead worker's runs finish
    /// elsewhere with no operator action. Two workers calling it at once take each run once
    /// (the store's ownership rules decide).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tidewater::prelude::*;
    /// # use tidewater::store::MemoryStore;
    /// # #[derive(Default)] struct Job;
    /// # #[workflow(durable)] impl Job {
    /// #     #[step] async fn go(&self, ev: StartEvent<u8>) -> StopEvent<u8> { StopEvent(ev.0) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = Job.runner().store(Arc::new(MemoryStore::new()));
    /// for (key, run) in runner.adopt_orphans().unwrap() {
    ///     tokio::spawn(async move { (key, run.await) });
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`WorkflowError::Durable`] when the runner has no store or the workflow is not durable;
    /// [`WorkflowError::Store`] when the store cannot list its runs.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn adopt_orphans(&self) -> Result<Vec<(String, Handler<W>)>> {
        let store = self.live_store("*")?;
        let mut keys = store.keys(RunStatus::Running)?;
        keys.extend(store.keys(RunStatus::Waiting)?);
        let mut adopted = Vec::new();
        for key in keys {
            let record = match store.load(&key) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%key, %error, "adopt_orphans: record not readable");
                    continue;
                }
            };
            let snapshot = &record.snapshot;
            let has_work = !snapshot.in_flight.is_empty() || !snapshot.queued.is_empty();
            if snapshot.workflow != W::GRAPH.workflow
                || (record.status == RunStatus::Waiting && !has_work)
                || is_child_key(&*store, &key)
            {
                continue;
            }
            match self.resume_stored(&key) {
                Ok(handler) => adopted.push((key, handler)),
                // A live owner has it, or it ended meanwhile.
                Err(WorkflowError::Durable { .. }) => {}
                Err(error) => tracing::warn!(%key, %error, "adopt_orphans: run not resumed"),
            }
        }
        Ok(adopted)
    }

    /// The output of a finished journaled run, read from the store.
    ///
    /// # Errors
    /// [`WorkflowError::Durable`] when the run is unknown, not finished, or its output does
    /// not decode; [`WorkflowError::Store`] when the store cannot be read.
    pub fn stored_output(&self, key: &str) -> Result<W::Output> {
        let store = self.durable_store(key)?;
        let durable = |reason: String| WorkflowError::Durable {
            key: key.to_string(),
            reason,
        };
        let record = store
            .load(key)?
            .ok_or_else(|| durable("no run with this key in the store".into()))?;
        match (record.status, record.output) {
            (RunStatus::Finished, Some(output)) => W::__decode_output(output).map_err(durable),
            (status, _) => Err(durable(format!(
                "the run has no output: it is {status:?}{}",
                record.error.map(|e| format!(" ({e})")).unwrap_or_default()
            ))),
        }
    }

    /// The trace of the journaled run `key` up to its last checkpoint, read from the store: a
    /// run that crashed can be drawn afterwards. `None` when the run was not recorded (its
    /// runner did not have [`Runner::trace`] on).
    ///
    /// # Errors
    /// [`WorkflowError::Durable`] when the run is unknown; [`WorkflowError::Store`] when the
    /// store cannot be read.
    pub fn stored_trace(&self, key: &str) -> Result<Option<crate::trace::Trace>> {
        let store = self.durable_store(key)?;
        let record = store.load(key)?.ok_or_else(|| WorkflowError::Durable {
            key: key.to_string(),
            reason: "no run with this key in the store".into(),
        })?;
        Ok(record.trace)
    }

    /// The events the journaled run `key` wrote to its stream, read from the store: its true
    /// sequence, without the events of invocations that died before their completion was
    /// checkpointed and ran again ([`store::current_events`](crate::store::current_events)).
    /// Each event keeps its sequence number; numbers grow, with gaps where events were
    /// superseded.
    ///
    /// # Errors
    /// [`WorkflowError::Durable`] when the workflow is not durable or the runner has no store;
    /// [`WorkflowError::Store`] when the store cannot be read.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use serde::{Deserialize, Serialize};
    /// use tidewater::prelude::*;
    /// use tidewater::store::MemoryStore;
    ///
    /// #[derive(Debug, Clone, Event, Serialize, Deserialize)]
    /// struct Note(u32);
    ///
    /// struct Noisy;
    ///
    /// #[workflow(durable)]
    /// impl Noisy {
    ///     #[step]
    ///     async fn go(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> StopEvent<u32> {
    ///         for i in 0..ev.0 { ctx.write_event_to_stream(Note(i)); }
    ///         StopEvent(ev.0)
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = Noisy.runner().store(Arc::new(MemoryStore::new()));
    /// runner.start_durable("n", 2).unwrap().await.unwrap();
    /// let events = runner.stored_events("n").unwrap();
    /// assert_eq!(events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [1, 2]);
    /// # }
    /// ```
    pub fn stored_events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>> {
        let store = self.durable_store(key)?;
        Ok(crate::store::current_events(store.events(key)?))
    }

    pub(crate) fn durable_store(&self, key: &str) -> Result<Arc<dyn Store>> {
        let durable = |reason: String| WorkflowError::Durable {
            key: key.to_string(),
            reason,
        };
        if !W::DURABLE {
            return Err(durable(format!(
                "workflow `{}` is not `#[workflow(durable)]`",
                W::GRAPH.workflow
            )));
        }
        self.config
            .store
            .clone()
            .ok_or_else(|| durable("the runner has no store: call `Runner::store` first".into()))
    }

    /// [`Runner::durable_store`] for the calls that run a durable run in this process: these
    /// also need tokio's timers (the run's inbox watcher and the worker loop sleep on tokio's
    /// clock), so a runtime built without them is refused here, before anything is written,
    /// instead of the watcher panicking later in a task nobody awaits.
    pub(crate) fn live_store(&self, key: &str) -> Result<Arc<dyn Store>> {
        let store = self.durable_store(key)?;
        // Outside any runtime the documented panic comes from `tokio::spawn`, as before.
        if tokio::runtime::Handle::try_current().is_ok()
            && std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_err()
        {
            return Err(WorkflowError::Durable {
                key: key.to_string(),
                reason: "durable runs need a tokio runtime with timers: build it with \
                         `enable_all()` or `enable_time()` (`#[tokio::main]` and \
                         `#[tokio::test]` do)"
                    .to_string(),
            });
        }
        Ok(store)
    }

    /// The time limit a handler keeps for its run (see `Handler`'s poll): the run's, unless runs
    /// may wait for a turn under `max_concurrent_runs` (their clock starts when admitted).
    fn handler_deadline(&self) -> Option<Duration> {
        self.config
            .timeout
            .filter(|_| self.config.run_limit.is_none())
    }

    pub(crate) fn journal(&self, store: Arc<dyn Store>, key: &str, lease: Lease) -> Journal {
        Journal {
            committer: match &self.config.committer {
                Some(committer) if committer.writes(&store) => committer.clone(),
                _ => crate::commit::Committer::for_store(&store),
            },
            store,
            key: key.to_string(),
            lease,
            evict_waiting_after: self.config.evict_waiting_after,
            trace: None,
            republished: 0,
            stream_from: None,
            inbox: crate::inbox::InboxCursor::new(0),
            left: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Wraps an input in the start event (used by the generated `__start_event`).
#[doc(hidden)]
pub fn start_event<T>(input: T) -> DynEvent
where
    StartEvent<T>: Event,
{
    DynEvent::new(StartEvent(input))
}

pub(crate) fn post_external<W: Workflow>(
    shared: &RunShared<W>,
    event: DynEvent,
    target: Option<usize>,
) {
    shared.post(Envelope {
        event,
        target,
        from: crate::context::Sender::Outside,
    });
}

/// Is `key` a child run's (`{parent key}/{step}/{n}/{label}`), resumed by its parent?
fn is_child_key(store: &dyn Store, key: &str) -> bool {
    key.match_indices('/')
        .any(|(at, _)| matches!(store.load(&key[..at]), Ok(Some(_))))
}
