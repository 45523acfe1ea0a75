//! Child runs: a step runs another workflow as a typed call ([`Context::run_child`]).
//!
//! A child run is polled inside the step that started it, by its parent's own loop: it cannot
//! outlive that step (its future borrows the step's context), so cancelling, timing out or
//! ending the parent ends its children first. Its stream items go to the parent's stream as
//! [`StreamItem::Child`], its deadline is the earlier of its own and its parent's, answers
//! sent to the parent's handler reach the child that asked, and the parent's snapshots hold
//! its running children (a durable parent journals each child under a key of its own).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A run's family, when it has one (see [`Family`]).
pub(crate) type FamilySlot = OnceLock<Box<Family>>;
use std::task::{Context as TaskContext, Poll};

use crate::context::{Context, Journal, RunShared};
use crate::error::{Result, WorkflowError};
use crate::event::{DynEvent, EventId};
use crate::runtime::{ChildPoll, Init, execute_child, restore, restore_buffers};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::store::{Claim, RunStatus};
use crate::stream::{ChildId, Forward, Outcome, Publisher, Upstream, lock};
use crate::workflow::{Runner, Workflow};

/// What links a run to its parent and to its children. Made the first time a run needs it
/// (a child, a run starting a child, a resume with children): most runs never pay for it.
#[derive(Default)]
pub(crate) struct Family {
    /// Set for a child run.
    pub(crate) upward: Option<Upward>,
    /// The children running now, in start order.
    pub(crate) children: Mutex<Vec<ChildEntry>>,
    /// A resumed run's children from its snapshot, taken by the re-run steps that start them
    /// again: (invocation, label, snapshot).
    pub(crate) restored: Mutex<Vec<(u64, String, Snapshot)>>,
}

/// A child run's side of the link.
pub(crate) struct Upward {
    /// The parent's deadline when the child began.
    pub(crate) cap: Option<tokio::time::Instant>,
    /// How the parent ended, when it ended while the child ran: the child's stream ends so.
    pub(crate) parent_outcome: Mutex<Option<Outcome>>,
    /// The response types the child's pending requests wait for, so that its parent forwards
    /// an answer to the child that asked.
    pub(crate) awaiting: Mutex<Vec<EventId>>,
}

/// A running child, as its parent's loop sees it.
pub(crate) struct ChildEntry {
    id: u64,
    /// The parent's invocation that started it.
    pub(crate) invocation: u64,
    /// `Workflow#n`: the n-th child of that workflow the invocation started.
    pub(crate) label: String,
    pub(crate) control: Weak<Mutex<dyn ChildControl>>,
}

/// What a parent's loop does with a running child, between two polls of its steps (the child
/// is polled only inside one of them, so it is never locked by anyone else then).
pub(crate) trait ChildControl: Send {
    /// The child as it is now.
    fn capture(&self) -> std::result::Result<Snapshot, SnapshotError>;
    /// A journaled child keeps its own checkpoints, and one that is not durable cannot be
    /// captured: its parent's snapshot leaves both out.
    fn kept_apart(&self) -> bool;
    /// Hands the child (or one of its children) an answer from outside, if it waits for one
    /// of its type; back when it does not.
    fn offer(&self, event: DynEvent) -> Option<DynEvent>;
    /// The parent ended (`saved`: and journaled its end): the child's stream ends with this
    /// outcome when it is dropped, and a journaled child records that it was stopped.
    fn parent_ended(&mut self, outcome: &Outcome, saved: bool);
}

/// A running child, strongly held: (invocation, label, handle).
pub(crate) type Running = (u64, String, Arc<Mutex<dyn ChildControl>>);

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(1);

impl<W: Workflow> Upstream for RunShared<W> {
    fn publisher(&self) -> &Publisher {
        &self.stream
    }
}

impl Family {
    /// The running children (strong handles), in start order.
    pub(crate) fn running(&self) -> Vec<Running> {
        lock(&self.children)
            .iter()
            .filter_map(|e| {
                e.control
                    .upgrade()
                    .map(|c| (e.invocation, e.label.clone(), c))
            })
            .collect()
    }

    /// Gives `event` to the first running child that waits for it; back when none does.
    pub(crate) fn offer(&self, event: DynEvent) -> Option<DynEvent> {
        if lock(&self.children).is_empty() {
            return Some(event);
        }
        let mut event = event;
        for (_, _, child) in self.running() {
            event = lock(&child).offer(event)?;
        }
        Some(event)
    }

    /// Tells every running child how the parent ended; returns whether there were any.
    pub(crate) fn parent_ended(&self, outcome: &Outcome, saved: bool) -> bool {
        let running = self.running();
        for (_, _, child) in &running {
            lock(child).parent_ended(outcome, saved);
        }
        !running.is_empty()
    }

    fn take_restored(&self, invocation: u64, label: &str) -> Option<Snapshot> {
        let mut restored = lock(&self.restored);
        let i = restored
            .iter()
            .position(|(inv, l, _)| *inv == invocation && l == label)?;
        Some(restored.remove(i).2)
    }

    /// The outcome a child's stream ends with when its parent drops it.
    pub(crate) fn dropped_outcome(&self) -> Option<Outcome> {
        let upward = self.upward.as_ref()?;
        Some(match lock(&upward.parent_outcome).clone() {
            Some(Outcome::TimedOut(message)) => Outcome::TimedOut(message),
            _ => Outcome::Cancelled,
        })
    }
}

impl<W: Workflow> Context<W> {
    /// Runs workflow `C` as a child of this run, on `input`, and returns its output: a typed
    /// call (a wrong input or output type does not compile).
    ///
    /// The child is polled inside this step, so nothing of it outlives the step or the run:
    ///
    /// - its stream items reach this run's stream as [`StreamItem::Child`] (marked with the
    ///   child's [`ChildId`] path), its end included, which does not end this run's stream;
    /// - its deadline is the earlier of its runner's timeout and this run's; cancelling or
    ///   timing out this run (or this step) stops it first;
    /// - its failure is `Err(WorkflowError::ChildFailed)` with the child's error as source:
    ///   with `?` the step fails with it, so retries and the catch-error step apply;
    /// - a request it publishes for a human appears on this run's stream, and the answer sent
    ///   to this run's handler (`send_response`) goes to the child that waits for it;
    /// - a snapshot of this run holds the running child, and resuming goes on with it without
    ///   running its completed steps again; a durable run journals each child as a durable run
    ///   of its own under `"<invocation key>/<Workflow>#<n>"` (see `docs/composition.md`).
    ///
    /// Fan out several with [`Context::run_children`], or join `run_child` futures of
    /// different workflows (`futures::join!`, `tokio::join!`).
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// struct Double;
    ///
    /// #[workflow]
    /// impl Double {
    ///     #[step]
    ///     async fn double(&self, ev: StartEvent<u32>) -> StopEvent<u32> { StopEvent(ev.0 * 2) }
    /// }
    ///
    /// struct Parent { double: Runner<Double> }
    ///
    /// #[workflow]
    /// impl Parent {
    ///     #[step]
    ///     async fn go(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Result<StopEvent<u32>, WorkflowError> {
    ///         let doubled: u32 = ctx.run_child(&self.double, ev.0).await?;
    ///         Ok(StopEvent(doubled + 1))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let parent = Parent { double: Double.runner() };
    /// assert_eq!(parent.run(20).await.unwrap(), 41);
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`WorkflowError::ChildFailed`] when the child run fails, times out, or cannot start
    /// (its durable record cannot be read or resumed).
    ///
    /// [`StreamItem::Child`]: crate::StreamItem::Child
    pub fn run_child<'a, C: Workflow>(
        &'a self,
        child: &Runner<C>,
        input: C::Input,
    ) -> ChildCall<'a, W, C> {
        // Numbered now, not at the first poll: a fan-out's children are numbered in the order
        // the step made them, whatever order they are polled in (resumes find them again).
        let nth = self.ask(&format!("child:{}", C::GRAPH.workflow));
        ChildCall {
            ctx: self,
            label: format!("{}#{nth}", C::GRAPH.workflow),
            start: Some((child.clone(), input)),
            slot: None,
            entry: 0,
            id: None,
        }
    }

    /// Runs one child of workflow `C` per input, all at once, and returns their outputs in
    /// input order. The first child to fail fails the call (the others are stopped then).
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// struct Square;
    ///
    /// #[workflow]
    /// impl Square {
    ///     #[step]
    ///     async fn square(&self, ev: StartEvent<u64>) -> StopEvent<u64> { StopEvent(ev.0 * ev.0) }
    /// }
    ///
    /// struct Sum { square: Runner<Square> }
    ///
    /// #[workflow]
    /// impl Sum {
    ///     #[step]
    ///     async fn go(&self, ctx: &Context<Self>, ev: StartEvent<u64>) -> Result<StopEvent<u64>, WorkflowError> {
    ///         let squares = ctx.run_children(&self.square, 1..=ev.0).await?;
    ///         Ok(StopEvent(squares.iter().sum()))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(Sum { square: Square.runner() }.run(3).await.unwrap(), 14);
    /// # }
    /// ```
    ///
    /// # Errors
    /// The first child's [`WorkflowError::ChildFailed`].
    pub fn run_children<'a, C: Workflow>(
        &'a self,
        child: &Runner<C>,
        inputs: impl IntoIterator<Item = C::Input>,
    ) -> impl Future<Output = Result<Vec<C::Output>>> + Send + 'a {
        let calls: Vec<ChildCall<'a, W, C>> = inputs
            .into_iter()
            .map(|input| self.run_child(child, input))
            .collect();
        futures_util::future::try_join_all(calls)
    }
}

/// A child run started by [`Context::run_child`]; `.await` it for the child's output.
/// Dropping it stops the child.
#[must_use = "a child run does nothing until it is awaited"]
pub struct ChildCall<'a, W: Workflow, C: Workflow> {
    ctx: &'a Context<W>,
    /// `Workflow#n`.
    label: String,
    /// Until the first poll.
    start: Option<(Runner<C>, C::Input)>,
    slot: Option<Arc<Mutex<dyn ChildPoll<C::Output>>>>,
    /// The child's entry in the parent's registry (0: none).
    entry: u64,
    id: Option<ChildId>,
}

impl<W: Workflow, C: Workflow> std::fmt::Debug for ChildCall<'_, W, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildCall")
            .field("label", &self.label)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

// Nothing is pinned in place: the child run lives behind an `Arc`, the input is only moved.
impl<W: Workflow, C: Workflow> Unpin for ChildCall<'_, W, C> {}

/// How a child begins.
enum Begun<O> {
    /// Its output is known already (recorded, or in its durable record).
    Done(O),
    Running,
}

impl<W: Workflow, C: Workflow> ChildCall<'_, W, C> {
    fn memo_label(&self) -> String {
        format!("child:{}", self.label)
    }

    fn failed(&self, source: WorkflowError) -> WorkflowError {
        WorkflowError::ChildFailed {
            child: self.id.unwrap_or(ChildId {
                step: self.ctx.step_name(),
                workflow: C::GRAPH.workflow,
                run_id: 0,
            }),
            source: Box::new(source),
        }
    }

    fn begin(&mut self) -> Result<Begun<C::Output>> {
        let (runner, input) = self.start.take().expect("a child begins once");
        let ctx = self.ctx;
        let parent = &ctx.shared;
        if W::DURABLE {
            // Finished before a snapshot or a retry: its output, without running it again.
            if let Some(value) = parent.recall(ctx.invocation, &self.memo_label(), 0) {
                return C::__decode_output(value)
                    .map(Begun::Done)
                    .map_err(|reason| {
                        SnapshotError::new(
                            format!("in_flight.memo `{}`", self.memo_label()),
                            reason,
                        )
                        .into()
                    });
            }
        }
        let mut shared = RunShared::<C>::new(C::State::default(), runner.config.stream_capacity);
        let id = ChildId {
            step: ctx.step_name(),
            workflow: C::GRAPH.workflow,
            run_id: shared.run_id,
        };
        self.id = Some(id);
        let cap = ctx.extra.get().and_then(|e| e.deadline);
        shared.stream = Publisher::child(
            runner.config.stream_capacity,
            Forward {
                parent: parent.clone(),
                path: Arc::from([id]),
            },
        );
        let _ = shared.rare().family.set(Box::new(Family {
            upward: Some(Upward {
                cap,
                parent_outcome: Mutex::new(None),
                awaiting: Mutex::new(Vec::new()),
            }),
            ..Family::default()
        }));
        let mut runner = runner;
        let init = match (&parent.journal, C::DURABLE) {
            (Some(journal), true) => {
                // A durable sub-run under the parent's key, with its own journal.
                let key = format!("{}/{}", ctx.invocation_key(), self.label);
                let config = Arc::make_mut(&mut runner.config);
                config.evict_waiting_after = None;
                let store = config
                    .store
                    .get_or_insert_with(|| journal.store.clone())
                    .clone();
                let record = store.load(&key)?;
                match record.as_ref().map(|r| r.status) {
                    Some(RunStatus::Finished) => {
                        let output = record.and_then(|r| r.output).unwrap_or_default();
                        return C::__decode_output(output)
                            .map(Begun::Done)
                            .map_err(|reason| WorkflowError::Durable { key, reason });
                    }
                    Some(RunStatus::Running | RunStatus::Waiting) => {
                        let lease = runner.acquire(&*store, &key, Claim::Resume)?;
                        let record = store.load(&key)?.ok_or_else(|| WorkflowError::Durable {
                            key: key.clone(),
                            reason: "no run with this key in the store".into(),
                        })?;
                        let (state, restored) =
                            restore::<C>(&record.snapshot, &runner.config.fingerprint)?;
                        *lock(&shared.state) = state;
                        restore_buffers::<C>(&record.snapshot, &shared)?;
                        let mut journal = runner.journal(store, &key, lease);
                        journal.trace = record.trace;
                        shared = shared.with_journal(Some(journal));
                        Init::Resume(restored)
                    }
                    _ => {
                        let lease = runner.acquire(&*store, &key, Claim::Start)?;
                        let journal: Journal = runner.journal(store, &key, lease);
                        shared = shared.with_journal(Some(journal));
                        Init::Start(C::__start_event(input))
                    }
                }
            }
            _ => match parent
                .family()
                .and_then(|f| f.take_restored(ctx.invocation, &self.label))
            {
                // Running when the parent's snapshot was taken: it goes on from there.
                Some(snapshot) => {
                    let (state, restored) = restore::<C>(&snapshot, &runner.config.fingerprint)?;
                    *lock(&shared.state) = state;
                    restore_buffers::<C>(&snapshot, &shared)?;
                    Init::Resume(restored)
                }
                None => Init::Start(C::__start_event(input)),
            },
        };
        // Made here, inside the calling step's poll: the child's span is the step's child.
        let (slot, control) = execute_child(runner, Arc::new(shared), init);
        self.entry = NEXT_ENTRY.fetch_add(1, Ordering::Relaxed);
        lock(&parent.rare().family.get_or_init(Box::default).children).push(ChildEntry {
            id: self.entry,
            invocation: ctx.invocation,
            label: self.label.clone(),
            control,
        });
        self.slot = Some(slot);
        self.record(
            |step, workflow, run_id| crate::trace::TraceEvent::ChildStarted {
                step,
                workflow,
                run_id,
            },
        );
        Ok(Begun::Running)
    }

    /// Records a child's start or end in the parent's trace, when the parent records one.
    fn record(&self, event: impl FnOnce(String, String, u64) -> crate::trace::TraceEvent) {
        if let (Some(recorder), Some(id)) = (self.ctx.shared.trace(), self.id) {
            recorder.record(event(
                id.step.to_string(),
                id.workflow.to_string(),
                id.run_id,
            ));
        }
    }

    fn record_end(&self, outcome: String) {
        self.record(
            |step, workflow, run_id| crate::trace::TraceEvent::ChildEnded {
                step,
                workflow,
                run_id,
                outcome,
            },
        );
    }

    /// Leaves the parent's registry and drops the child run (its stream ends if it has not).
    fn stop(&mut self) {
        if self.slot.is_some() {
            // Stopped before it ended: with its step.
            self.record_end("cancelled".to_string());
        }
        if self.entry != 0 {
            if let Some(family) = self.ctx.shared.family() {
                lock(&family.children).retain(|e| e.id != self.entry);
            }
            self.entry = 0;
        }
        self.slot = None;
    }
}

impl<W: Workflow, C: Workflow> Future for ChildCall<'_, W, C> {
    type Output = Result<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.start.is_some() {
            match this.begin() {
                Ok(Begun::Done(output)) => return Poll::Ready(Ok(output)),
                Ok(Begun::Running) => {}
                Err(error) => return Poll::Ready(Err(this.failed(error))),
            }
        }
        let slot = this
            .slot
            .as_ref()
            .expect("a child call polled after it completed");
        let result = std::task::ready!(lock(slot).poll_child(cx));
        this.record_end(match &result {
            Ok(_) => "stopped".to_string(),
            Err(error) => format!("failed: {}", crate::error::chain(error)),
        });
        this.slot = None;
        this.stop();
        Poll::Ready(match result {
            Ok(output) => {
                if W::DURABLE {
                    // Kept for a snapshot taken before the step ends: a resume gets it back.
                    if let Ok(value) = C::__encode_output(&output) {
                        let label = this.memo_label();
                        this.ctx.shared.record(this.ctx.invocation, &label, value);
                    }
                }
                Ok(output)
            }
            Err(error) => Err(this.failed(error)),
        })
    }
}

impl<W: Workflow, C: Workflow> Drop for ChildCall<'_, W, C> {
    fn drop(&mut self) {
        self.stop();
    }
}
