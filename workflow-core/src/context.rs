//! The per-run context a step may take as `ctx: &Context<Self>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::task::AtomicWaker;

use crate::event::{DynEvent, Event};
use crate::stream::{Publisher, StreamItem, lock};
use crate::workflow::Workflow;

/// The identity of one run, unique within the process.
pub type RunId = u64;

static NEXT_RUN_ID: AtomicU64 = AtomicU64::new(1);

/// An event sent from a step's context or from outside, waiting for the run loop.
pub(crate) struct Envelope {
    pub(crate) event: DynEvent,
    /// `Some(step)`: deliver to this step only.
    pub(crate) target: Option<usize>,
}

/// What one run shares between its loop, its steps' contexts and its handler.
pub(crate) struct RunShared<W: Workflow> {
    pub(crate) run_id: RunId,
    pub(crate) state: Mutex<W::State>,
    /// Events sent with `send_event`, waiting for the loop.
    pub(crate) inbox: Mutex<Vec<Envelope>>,
    /// Set when `inbox` holds something or the run was cancelled: one atomic read on the hot path.
    pub(crate) mail: AtomicBool,
    pub(crate) cancelled: AtomicBool,
    /// Wakes the run loop when something arrives from outside its own poll.
    pub(crate) waker: AtomicWaker,
    pub(crate) stream: Publisher,
}

impl<W: Workflow> RunShared<W> {
    pub(crate) fn new(state: W::State, stream_capacity: usize) -> RunShared<W> {
        RunShared {
            run_id: NEXT_RUN_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(state),
            inbox: Mutex::new(Vec::new()),
            mail: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            stream: Publisher::new(stream_capacity),
        }
    }

    pub(crate) fn post(&self, envelope: Envelope) {
        lock(&self.inbox).push(envelope);
        self.mail.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.mail.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// A step's view of its run: shared typed state, sending events, writing to the stream.
///
/// A step receives it by declaring a parameter `ctx: &Context<Self>`; the type parameter is the
/// workflow, so `send_event` only accepts events of that workflow's graph.
///
/// ```
/// use workflow_core::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Tick(u32);
///
/// #[derive(Default)]
/// struct Count { ticks: u32 }
///
/// struct Counter;
///
/// #[workflow(state = Count)]
/// impl Counter {
///     #[step]
///     async fn start(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Tick {
///         ctx.update_state(|s| s.ticks = 0);
///         Tick(ev.0)
///     }
///
///     #[step]
///     async fn tick(&self, ctx: &Context<Self>, ev: Tick) -> Either<Tick, StopEvent<u32>> {
///         let ticks = ctx.update_state(|s| { s.ticks += 1; s.ticks });
///         if ev.0 == 0 { Either::Right(StopEvent(ticks)) } else { Either::Left(Tick(ev.0 - 1)) }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(Counter.run(3).await.unwrap(), 4);
/// # }
/// ```
pub struct Context<W: Workflow> {
    pub(crate) shared: Arc<RunShared<W>>,
    pub(crate) step: usize,
    pub(crate) attempt: u32,
    pub(crate) worker: u32,
}

impl<W: Workflow> Context<W> {
    /// The run's id, unique within the process.
    pub fn run_id(&self) -> RunId {
        self.shared.run_id
    }

    /// The name of the step this context was given to.
    pub fn step_name(&self) -> &'static str {
        W::GRAPH.steps[self.step].name
    }

    /// The index of the step in the graph (generated code dispatches on it).
    #[doc(hidden)]
    pub fn step_index(&self) -> usize {
        self.step
    }

    /// Which attempt this invocation is: 1 for the first, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Which of the step's workers runs this invocation (`0..num_workers`).
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// Reads or changes the run's state atomically: no other step sees it half-changed.
    ///
    /// The closure runs under the state's lock, so it cannot await; keep it short.
    ///
    /// # Panics
    /// Re-panics nothing itself; if the closure panics, the step fails with that panic.
    pub fn update_state<R>(&self, f: impl FnOnce(&mut W::State) -> R) -> R {
        f(&mut lock(&self.shared.state))
    }

    /// A copy of the run's state.
    pub fn state(&self) -> W::State
    where
        W::State: Clone,
    {
        lock(&self.shared.state).clone()
    }

    /// Sends an event into the run, to every step that accepts it. Only events of this
    /// workflow's graph compile.
    pub fn send_event<E: EventOf<W>>(&self, event: E) {
        self.shared.post(Envelope {
            event: DynEvent::new(event),
            target: None,
        });
    }

    /// Writes an event to the run's stream, for whoever watches the run (progress, tokens, ...).
    /// It does not enter the graph. Costs nothing when nobody subscribed.
    pub fn write_event_to_stream<E: Event>(&self, event: E) {
        if self.shared.stream.has_subscribers() {
            self.shared
                .stream
                .publish(StreamItem::Event(DynEvent::new(event)));
        }
    }
}

/// Marks the event types that belong to workflow `W`'s graph; `#[workflow]` implements it for
/// every event a step of `W` accepts or emits.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event of workflow `{W}`",
    label = "no step of `{W}` accepts or emits this event",
    note = "only events of the workflow's graph can be sent; add a step that accepts `{Self}`"
)]
pub trait EventOf<W: Workflow>: Event {}
