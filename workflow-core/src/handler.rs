//! The handle on a started run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tokio::task::JoinHandle;

use crate::context::{EventOf, RunId, RunShared};
use crate::error::{Result, WorkflowError};
use crate::event::DynEvent;
use crate::stream::{EventStream, Since};
use crate::workflow::{Workflow, post_external};

/// A run started with `start`: await it for the output, read its stream, send it events,
/// cancel it.
///
/// Dropping the handler does not stop the run (it runs to its end, like a detached task);
/// call [`Handler::cancel`] for that.
///
/// ```
/// use futures_util::StreamExt;
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Progress(u32);
///
/// struct Count;
///
/// #[workflow]
/// impl Count {
///     #[step]
///     async fn count(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> StopEvent<u32> {
///         for i in 0..ev.0 { ctx.write_event_to_stream(Progress(i)); }
///         StopEvent(ev.0)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut run = Count.start(3);
/// let mut events = run.events();
/// let mut seen = Vec::new();
/// while let Some(item) = events.next().await {
///     if let Some(Progress(i)) = item.event::<Progress>() { seen.push(*i); }
/// }
/// assert_eq!(seen, [0, 1, 2]);
/// assert_eq!(run.await.unwrap(), 3);
/// # }
/// ```
pub struct Handler<W: Workflow> {
    shared: Arc<RunShared<W>>,
    task: JoinHandle<Result<W::Output>>,
    /// The run's time limit, kept by the handler too: when a step holds the run's thread past
    /// it, the handler answers at the deadline instead of when the step lets go.
    deadline: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
}

/// How long after a run's own deadline its handler gives up on a run whose thread is held.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

impl<W: Workflow> Handler<W> {
    /// The run's stream must have been reserved (`Publisher::reserve`) before it started.
    pub(crate) fn new(
        shared: Arc<RunShared<W>>,
        task: JoinHandle<Result<W::Output>>,
        timeout: Option<std::time::Duration>,
    ) -> Handler<W> {
        let deadline =
            timeout.map(|limit| (limit, Box::pin(tokio::time::sleep(limit + DEADLINE_GRACE))));
        Handler {
            shared,
            task,
            deadline,
        }
    }

    /// A resumed run keeps the deadline its snapshot had (Unix milliseconds): so does its
    /// handler.
    pub(crate) fn keep_deadline(mut self, at_ms: Option<u64>) -> Handler<W> {
        if let (Some((_, sleep)), Some(at)) = (&mut self.deadline, at_ms) {
            let at = crate::snapshot::unix_millis_to_instant(at);
            sleep.as_mut().reset(at + DEADLINE_GRACE);
        }
        self
    }

    #[cfg(feature = "serve")]
    pub(crate) fn shared_arc(&self) -> Arc<RunShared<W>> {
        self.shared.clone()
    }

    pub(crate) fn shared(&self) -> &RunShared<W> {
        &self.shared
    }

    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.shared.run_id
    }

    /// The run's stream from its very start (replayed from the history when taken late). The
    /// first call takes it; later calls return a fresh subscription from the current point
    /// on, like [`Handler::subscribe`].
    pub fn events(&mut self) -> EventStream {
        self.shared.stream.take_reserved()
    }

    /// A new subscription to the run's stream, from now on. Any number may exist at once.
    /// After the run's end it holds the terminal item alone.
    pub fn subscribe(&self) -> EventStream {
        self.shared.stream.subscribe()
    }

    /// A subscription that first replays the run's history, from its start
    /// ([`Since::Start`]) or after an item number seen before ([`Since::After`], from
    /// [`EventStream::last_sequence`]), then goes on live; it always ends with the terminal
    /// item, even when the run ended long ago. The history holds the runner's
    /// `stream_capacity` last items; older ones are counted in [`EventStream::lagged`].
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tidewater::prelude::*;
    /// use tidewater::Since;
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Tick(u32);
    ///
    /// struct Count;
    ///
    /// #[workflow]
    /// impl Count {
    ///     #[step]
    ///     async fn count(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> StopEvent<u32> {
    ///         for n in 0..ev.0 {
    ///             ctx.write_event_to_stream(Tick(n));
    ///         }
    ///         StopEvent(ev.0)
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let handler = Count.start(3);
    /// while !handler.is_finished() {
    ///     tokio::task::yield_now().await;
    /// }
    /// // Subscribed after the end: items 1 and 2 (the ticks after item 0), then the end.
    /// let late: Vec<StreamItem> = handler.subscribe_from(Since::After(0)).collect().await;
    /// assert_eq!(late.len(), 3);
    /// assert_eq!(late[0].event::<Tick>().map(|t| t.0), Some(1));
    /// assert!(late[2].is_terminal());
    /// # }
    /// ```
    pub fn subscribe_from(&self, since: Since) -> EventStream {
        self.shared.stream.subscribe_from(since)
    }

    /// Sends an event into the run from outside, to every step that accepts it.
    pub fn send_event<E: EventOf<W>>(&self, event: E) {
        post_external(&self.shared, DynEvent::new(event), None);
    }

    /// Answers a request from outside: sends the response event into the run. Same as
    /// [`Handler::send_event`], for any event type (a response may be awaited inline with
    /// `ctx.wait_for` without being part of the graph).
    pub fn send_response<E: crate::Event>(&self, event: E) {
        post_external(&self.shared, DynEvent::new(event), None);
    }

    /// Cancels the run: it ends with [`WorkflowError::Cancelled`], its running steps are
    /// dropped and its stream ends with `Outcome::Cancelled`. Idempotent; a run that already
    /// ended keeps its outcome.
    pub fn cancel(&self) {
        self.shared.cancel();
    }

    /// Stops a journaled run (see [`Runner::start_durable`](crate::Runner::start_durable)) at
    /// its next quiet point, for a process that shuts down: no step starts any more, the
    /// running ones finish and are checkpointed, then the run is saved as waiting, queues and
    /// unanswered requests included, and leaves memory: it ends with
    /// [`WorkflowError::Suspended`]. [`Runner::resume_stored`](crate::Runner::resume_stored)
    /// (or [`Runner::answer`](crate::Runner::answer)) continues it, in this process or the
    /// next. A step waiting inline for an answer keeps the run from getting quiet. No effect on
    /// a run without a store.
    pub fn suspend(&self) {
        self.shared.suspend();
    }

    /// A function that suspends the run (as [`Handler::suspend`]) without holding the run:
    /// for whoever keeps a list of runs to stop (`Worker::shutdown`).
    pub(crate) fn suspender(&self) -> impl Fn() + Send + Sync + 'static {
        let run = Arc::downgrade(&self.shared);
        move || {
            if let Some(run) = run.upgrade() {
                run.suspend();
            }
        }
    }

    /// The step attempts that failed so far in this run, oldest first (the latest 100): those
    /// that were retried, those handed to the catch-error step, and the one that ended the
    /// run. Readable during the run and after its end, whatever the end: after
    /// [`Handler::cancel`] the errors of the steps that had failed before it are here, though
    /// the run's error is only [`WorkflowError::Cancelled`]. See [`FailedAttempt`].
    ///
    /// [`FailedAttempt`]: crate::FailedAttempt
    pub fn failures(&self) -> Vec<crate::FailedAttempt> {
        match self.shared.rare_if_made() {
            Some(rare) => crate::stream::lock(&rare.failures)
                .iter()
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// A copy of the run's state as it is now.
    pub fn state(&self) -> W::State
    where
        W::State: Clone,
    {
        crate::stream::lock(&self.shared.state).clone()
    }

    /// Sends an event from outside to the step named `step` only.
    ///
    /// # Errors
    /// [`WorkflowError::Undeliverable`], and nothing is sent, when there is no such step or it
    /// does not accept `E`.
    pub fn send_event_to<E: EventOf<W>>(&self, step: &str, event: E) -> Result<()> {
        let index = crate::context::target_step::<W>(step, E::ID, E::NAME)?;
        post_external(&self.shared, DynEvent::new(event), Some(index));
        Ok(())
    }

    /// Captures the run as it is now (see [`crate::snapshot`]); the run goes on.
    ///
    /// # Errors
    /// [`WorkflowError::Snapshot`] when the workflow is not `#[workflow(durable)]` or a value
    /// does not serialize; [`WorkflowError::Cancelled`] when the run has already ended.
    pub async fn snapshot(&self) -> Result<crate::snapshot::Snapshot> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.shared.request_snapshot(reply);
        match answer.await {
            Ok(snapshot) => Ok(snapshot?),
            Err(_) => Err(WorkflowError::Cancelled),
        }
    }

    /// The key of a durable run (`Runner::start_durable`), if it is one.
    pub fn key(&self) -> Option<&str> {
        self.shared.journal.as_ref().map(|j| j.key.as_str())
    }

    /// The run's recording, when its runner records ([`Runner::trace`]): keep it to read the
    /// trace while the run goes on or after it ended (awaiting the handler consumes it).
    ///
    /// [`Runner::trace`]: crate::Runner::trace
    pub fn recording(&self) -> Option<crate::trace::Recording> {
        self.shared
            .trace()
            .map(|recorder| crate::trace::Recording(recorder.clone()))
    }

    /// Has the run ended?
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl<W: Workflow> Drop for Handler<W> {
    fn drop(&mut self) {
        // The stream reserved for `events` will never be read: stop buffering for it.
        self.shared.stream.release_reserved();
    }
}

impl<W: Workflow> std::fmt::Debug for Handler<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("workflow", &W::GRAPH.workflow)
            .field("run_id", &self.shared.run_id)
            .field("finished", &self.task.is_finished())
            .finish()
    }
}

impl<W: Workflow> Future for Handler<W> {
    type Output = Result<W::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.task).poll(cx) {
            Poll::Pending => {
                // The run did not answer by its own deadline: a step holds its thread. Give up
                // on it now; the run is aborted when the step lets go, its late result unseen.
                let this = &mut *self;
                let Some((limit, sleep)) = &mut this.deadline else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let limit = *limit;
                let holding = this
                    .shared
                    .holding
                    .load(std::sync::atomic::Ordering::Relaxed);
                let Some(step) = holding.checked_sub(1) else {
                    // No step holds the run's thread: the run is only waiting for its turn on
                    // a busy runtime, and ends itself (timed out) when polled.
                    this.deadline = None;
                    return Poll::Pending;
                };
                this.deadline = None;
                this.shared
                    .timed_out
                    .store(true, std::sync::atomic::Ordering::Release);
                this.task.abort();
                let active = vec![W::GRAPH.steps[step as usize].name];
                Poll::Ready(Err(WorkflowError::TimedOut {
                    timeout: limit,
                    active,
                }))
            }
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(join)) if join.is_panic() => {
                std::panic::resume_unwind(join.into_panic())
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(WorkflowError::Cancelled)),
        }
    }
}
