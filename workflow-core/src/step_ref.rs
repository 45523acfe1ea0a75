//! Typed references to steps, for targeted delivery checked at compile time.
//!
//! `#[workflow]` gives each workflow a constant `STEPS` with one field per step:
//! `ctx.send_to(Self::STEPS.judge, ev)` compiles only when the workflow has a step `judge` and
//! that step accepts the event's type.

use std::fmt;
use std::marker::PhantomData;

use crate::context::{Context, Envelope, EventOf};
use crate::event::{DynEvent, Either, Event};
use crate::handler::Handler;
use crate::workflow::Workflow;

/// A step of workflow `W` whose event parameter is `I` (an event, or an `Either` of events).
/// Get one from the generated `Flow::STEPS.step_name`.
///
/// ```
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Job(u32);
///
/// struct Jobs;
///
/// #[workflow]
/// impl Jobs {
///     #[step(emits = [Job])]
///     async fn begin(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
///         ctx.send_to(Self::STEPS.second, Job(ev.0)); // only `second` gets it
///     }
///     #[step]
///     async fn first(&self, ev: Job) -> StopEvent<&'static str> { StopEvent("first") }
///     #[step]
///     async fn second(&self, ev: Job) -> StopEvent<&'static str> { StopEvent("second") }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(Jobs.run(1).await.unwrap(), "second");
/// assert_eq!(Jobs::STEPS.second.name(), "second");
/// # }
/// ```
pub struct StepRef<W, I> {
    index: usize,
    _marker: PhantomData<fn() -> (W, I)>,
}

impl<W, I> Clone for StepRef<W, I> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W, I> Copy for StepRef<W, I> {}

impl<W: Workflow, I> fmt::Debug for StepRef<W, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StepRef({})", self.name())
    }
}

impl<W, I> StepRef<W, I> {
    /// Used by the generated `STEPS` constant.
    #[doc(hidden)]
    pub const fn new(index: usize) -> StepRef<W, I> {
        StepRef {
            index,
            _marker: PhantomData,
        }
    }
}

impl<W: Workflow, I> StepRef<W, I> {
    /// The step's name.
    pub fn name(&self) -> &'static str {
        W::GRAPH.steps[self.index].name
    }
}

/// Where in a step's event parameter the event `E` fits: `Here` for the type itself, `Left`
/// or `Right` into an `Either`. Inferred; never written by hand.
#[diagnostic::on_unimplemented(
    message = "the step does not accept `{E}`",
    label = "this step's event parameter is `{Self}`",
    note = "a targeted send must name a step whose event parameter is `{E}` or an `Either` containing it"
)]
pub trait Accepts<E, Position> {}

/// `E` is the parameter's type.
#[doc(hidden)]
#[derive(Debug)]
pub enum Here {}

/// `E` is in the left side of an `Either`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Left<P>(PhantomData<P>);

/// `E` is in the right side of an `Either`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Right<P>(PhantomData<P>);

/// A type that a `collect_each::<(..)>` collects, and where in the step's event parameter `I`
/// it fits (as [`Accepts`]): checked at compile time for every type of the collected tuple,
/// since an event the step does not accept never reaches it and the set could never complete.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`collect_each` collects `{Self}`, which this step does not accept",
    label = "a `{Self}` never reaches a step whose event parameter is `{I}`",
    note = "the set could never complete: collect only the types of the step's event parameter (an `Either` of them), or add `{Self}` to it"
)]
pub trait CollectedBy<I, Position> {}

impl<E: Event> CollectedBy<E, Here> for E {}
impl<E: CollectedBy<L, P>, L, R, P> CollectedBy<Either<L, R>, Left<P>> for E {}
impl<E: CollectedBy<R, P>, L, R, P> CollectedBy<Either<L, R>, Right<P>> for E {}

/// Used by the generated code: compiles only when a step whose event parameter is `I` accepts
/// `E`, a type its `collect_each::<(..)>` collects.
#[doc(hidden)]
pub fn step_collects<E: CollectedBy<I, P>, I, P>() {}

impl<E: Event> Accepts<E, Here> for E {}
impl<E, L: Accepts<E, P>, R, P> Accepts<E, Left<P>> for Either<L, R> {}
impl<E, L, R: Accepts<E, P>, P> Accepts<E, Right<P>> for Either<L, R> {}

impl<W: Workflow> Context<W> {
    /// Sends an event to one step only, checked at compile time: the step exists and accepts
    /// `E` (see [`StepRef`]).
    pub fn send_to<I, E, P>(&self, step: StepRef<W, I>, event: E)
    where
        E: EventOf<W>,
        I: Accepts<E, P>,
    {
        if self.sent_before(E::NAME, Some(step.index)) {
            return;
        }
        self.shared.post(Envelope {
            event: DynEvent::new(event),
            target: Some(step.index),
            from: crate::context::Sender::Step(self.invocation),
        });
    }
}

impl<W: Workflow> Handler<W> {
    /// Sends an event from outside to one step only, checked at compile time (see
    /// [`StepRef`]).
    pub fn send_to<I, E, P>(&self, step: StepRef<W, I>, event: E)
    where
        E: EventOf<W>,
        I: Accepts<E, P>,
    {
        crate::workflow::post_external(self.shared(), DynEvent::new(event), Some(step.index));
    }
}
