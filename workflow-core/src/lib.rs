//! Event-driven workflows whose graph is checked by the compiler.
//!
//! Annotate an `impl` block with [`#[workflow]`](macro@workflow) and its async methods with
//! [`#[step]`](macro@step). Each step takes one typed event and returns the events it emits; the
//! macro reads the signatures, generates the routing table, and refuses to compile a graph with
//! an event nobody consumes or produces, a step that can never run, or no way from the start
//! event to the stop event. This crate runs the graph on tokio.
//!
//! ```
//! use tidewater::prelude::*;
//!
//! #[derive(Debug, Clone, Event)]
//! struct Joke(String);
//!
//! struct JokeFlow;
//!
//! #[workflow]
//! impl JokeFlow {
//!     #[step]
//!     async fn write(&self, ev: StartEvent<String>) -> Joke {
//!         Joke(format!("Why did the {} cross the road?", ev.0))
//!     }
//!
//!     #[step]
//!     async fn critique(&self, ev: Joke) -> StopEvent<String> {
//!         StopEvent(format!("{} Not bad.", ev.0))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let out = JokeFlow.run("chicken".to_string()).await.unwrap();
//! assert_eq!(out, "Why did the chicken cross the road? Not bad.");
//! # }
//! ```
//!
//! # The concepts, in the order you meet them
//!
//! 1. **Event**: a plain type with [`#[derive(Event)]`](macro@Event). [`StartEvent<I>`](StartEvent)
//!    carries the run's input, [`StopEvent<O>`](StopEvent) its output; every other event is yours.
//! 2. **Step**: an async method marked [`#[step]`](macro@step) taking one event (or
//!    [`Either`] of several) and returning what it emits: an event, `Option`, `Vec`, `Either`,
//!    `()` or a `Result` of those.
//! 3. **Workflow**: the `impl` block marked [`#[workflow]`](macro@workflow); it implements
//!    [`Workflow`], and its [`Graph`] is checked while compiling (see `docs/compile-time-checks.md`).
//! 4. **Context**: a step that takes `ctx: &`[`Context<Self>`](Context) can send more events,
//!    fan in with [`Context::collect`], share typed state with [`Context::update_state`], write to
//!    the stream, and wait for a human with [`Context::wait_for`].
//! 5. **Runner**: [`Workflow::runner`] (or `Flow.run(input)` for the defaults) sets time limits,
//!    verbosity, a store; [`Runner::run`] awaits the output, [`Runner::start`] hands you a
//!    [`Handler`].
//! 6. **Handler**: the running run: await it for the output, [`Handler::send_event`] answers a
//!    request, [`Handler::cancel`], [`Handler::snapshot`].
//! 7. **Stream**: [`Handler::events`] is an [`EventStream`] of [`StreamItem`]s ending in an
//!    [`Outcome`]; the prelude brings `next()` for it.
//! 8. **Child runs**: a step runs another workflow as a typed call with
//!    [`Context::run_child`] (or fans out with [`Context::run_children`]); the child's stream,
//!    deadline, cancel, failure and human questions belong to its parent (`docs/composition.md`).
//! 9. **Store**: with `#[workflow(durable)]` and a [`store::Store`], runs are checkpointed, outlive
//!    their process and are answered later ([`Runner::start_durable`], [`Runner::answer`]).
//!
//! A failed run is a [`WorkflowError`]; return [`Report`] from `main` to print it as sentences.
//!
//! The guide chapters are in [`guide`] (the repository's `docs/`, included): fundamentals, the
//! compile-time checks, the runtime (state, fan-in, streaming, retries, time limits),
//! durability (human-in-the-loop, snapshots, durable runs), composition, pictures and traces,
//! and reading the expansion with `cargo expand`.
//!
//! Features: `macros` (default) re-exports the macros; `sqlite` adds
//! `store::SqliteStore`, an embedded store for durable runs; `viz` adds `viz`, pictures of a
//! workflow's graph and of run traces (Mermaid, DOT, SVG).

mod child;
mod commit;
mod context;
mod error;
mod event;
pub mod graph;
mod handler;
mod inbox;
mod output;
mod report;
mod retry;
mod runtime;
#[cfg(feature = "serve")]
pub mod serve;
pub mod snapshot;
mod step_ref;
pub mod store;
mod stream;
pub mod trace;
#[cfg(feature = "viz")]
pub mod viz;
mod worker;
mod workflow;

/// The guide: the chapters of the repository's `docs/`, included as they are (links between
/// chapters point at the repository's files). Built only by rustdoc, and not as doctests: the
/// chapters' code blocks are sketches (`cfg(doctest)` is set while rustdoc collects tests).
#[cfg(all(doc, not(doctest)))]
pub mod guide {
    #[doc = include_str!("../guide/fundamentals.md")]
    pub mod fundamentals {}
    #[doc = include_str!("../guide/compile-time-checks.md")]
    pub mod compile_time_checks {}
    #[doc = include_str!("../guide/runtime.md")]
    pub mod runtime {}
    #[doc = include_str!("../guide/durability.md")]
    pub mod durability {}
    #[doc = include_str!("../guide/composition.md")]
    pub mod composition {}
    #[doc = include_str!("../guide/visualize.md")]
    pub mod visualize {}
    #[doc = include_str!("../guide/server.md")]
    pub mod server {}
    #[doc = include_str!("../guide/scale-out.md")]
    pub mod scale_out {}
    #[doc = include_str!("../guide/llm.md")]
    pub mod llm {}
    #[doc = include_str!("../guide/cargo-expand.md")]
    pub mod cargo_expand {}
    #[doc = include_str!("../guide/design.md")]
    pub mod design {}
}

pub use child::ChildCall;
pub use context::{CollectSet, Context, EventOf, RunId, WaitFor, Waiting};
pub use error::{BoxError, FailedAttempt, Result, WorkflowError};
pub use event::{DynEvent, Either, Event, EventId, Request, StartEvent, StepFailure, StopEvent};
pub use graph::{Graph, GraphError, StepSpec};
pub use handler::Handler;
pub use report::Report;
pub use retry::RetryPolicy;
pub use step_ref::{Accepts, StepRef};
pub use stream::{ChildId, DEFAULT_STREAM_CAPACITY, EventStream, Outcome, Since, StreamItem};
pub use worker::Worker;
pub use workflow::{DEFAULT_MAX_LOOP_INVOCATIONS, DEFAULT_POLL_INTERVAL, Runner, Workflow};

#[doc(hidden)]
pub use event::{EventKind, EventMeta, IntoDynEvent, StepInput};
#[doc(hidden)]
pub use output::Emitted;
#[doc(hidden)]
pub use workflow::StepConfig;

/// `#[workflow]`: turns an `impl` block of `#[step]` methods into a [`Workflow`].
///
/// Options: `state = Type` (the run's shared state, `()` by default), `durable` (runs can be
/// snapshotted and journaled), `crate = "path"` (where `tidewater` is, when it is renamed),
/// `skip_graph_checks` (no reachability checks).
///
/// ```
/// use tidewater::prelude::*;
///
/// #[derive(Default)]
/// struct Tally { words: usize }
///
/// struct Count;
///
/// #[workflow(state = Tally)]
/// impl Count {
///     #[step]
///     async fn count(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> StopEvent<usize> {
///         // `update_state` returns what its closure returns.
///         StopEvent(ctx.update_state(|t| { t.words += ev.0.split_whitespace().count(); t.words }))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(Count.run("a b c".to_string()).await.unwrap(), 3);
/// # }
/// ```
#[cfg(feature = "macros")]
pub use tidewater_macros::workflow;

/// `#[step]`: marks an async method of a `#[workflow]` impl as a step.
///
/// Options: `num_workers = N` (concurrent invocations within one run, default 1),
/// `emits = [A, B]` (events the step sends with `ctx.send_event` besides its return value),
/// `retry = RetryPolicy::..`, `timeout = Duration::..`, `skip_graph_checks` (the step is an
/// island on purpose).
///
/// ```
/// use std::time::Duration;
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Page(u32);
///
/// struct Crawl;
///
/// #[workflow]
/// impl Crawl {
///     // Sends more events than it returns: they are listed in `emits`.
///     #[step(emits = [Page])]
///     async fn plan(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
///         for page in 0..ev.0 { ctx.send_event(Page(page)); }
///     }
///
///     // Up to four pages at once, each tried up to three times, ten seconds each.
///     #[step(num_workers = 4, retry = RetryPolicy::exponential(3), timeout = Duration::from_secs(10))]
///     async fn fetch(&self, ctx: &Context<Self>, ev: Page) -> Option<StopEvent<u32>> {
///         let pages = ctx.collect(ev, 3)?;
///         Some(StopEvent(pages.len() as u32))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(Crawl.run(3).await.unwrap(), 3);
/// # }
/// ```
#[cfg(feature = "macros")]
pub use tidewater_macros::step;

/// `#[derive(Event)]`: makes a type an [`Event`] with a stable name. Options:
/// `#[event(request = Response)]` (with `correlate = field` when a run may wait for several
/// requests of the type at once: the response whose `field` equals the request's answers it),
/// `#[event(response)]`, `#[event(crate = "path")]`.
///
/// ```
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Draft { text: String }
///
/// // A question for a human: the run waits until a `Verdict` is sent to its handler; the
/// // `Verdict` with the same `id` answers it.
/// #[derive(Debug, Clone, Event)]
/// #[event(request = Verdict, correlate = id)]
/// struct AskReviewer { id: u32, draft: String }
///
/// #[derive(Debug, Clone, Event)]
/// #[event(response)]
/// struct Verdict { id: u32, approved: bool }
///
/// assert!(<Draft as Event>::NAME.ends_with("Draft"));
/// ```
#[cfg(feature = "macros")]
pub use tidewater_macros::Event;

/// Everything a workflow author needs: `use tidewater::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Context, DynEvent, Either, Event, Handler, Outcome, Report, RetryPolicy, Runner,
        StartEvent, StepFailure, StopEvent, StreamItem, Workflow, WorkflowError,
    };
    #[cfg(feature = "macros")]
    pub use crate::{step, workflow};
    /// `next()` on an [`EventStream`](crate::EventStream) (`while let Some(item) =
    /// stream.next().await`) and the other stream adapters, without a `futures` dependency.
    pub use futures_util::StreamExt as _;
}

/// Support for the generated code. Not public API: anything here may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::{Context, EventOf};
    pub use crate::error::BoxError;
    pub use crate::event::probe;
    pub use crate::event::{
        DynEvent, Either, Event, EventId, EventKind, EventMeta, Request, StepInput,
    };
    pub use crate::graph::{Graph, StepSpec};
    pub use crate::output::Emitted;
    pub use crate::retry::RetryPolicy;
    #[cfg(feature = "serve")]
    pub use crate::serve;
    pub use crate::snapshot;
    pub use crate::step_ref::{StepRef, step_collects};
    pub use crate::workflow::{StepConfig, Workflow, start_event};
    #[cfg(feature = "serve")]
    pub use inventory;
    pub use serde_json;
    pub use std::format;
    pub use std::string::String;
    pub use std::sync::Arc;

    /// `<T as IsEvent>::Event` is `T` when `T` is an event. The generated code names each event
    /// type of a workflow through one alias of this projection, spanned on the type's first
    /// occurrence, so a type missing `#[derive(Event)]` gives one error there, not one per use.
    pub trait IsEvent {
        /// `Self`.
        type Event: Event;
    }
    impl<T: Event> IsEvent for T {
        type Event = T;
    }

    /// Takes a step's input out of the erased event the executor routed to it.
    pub fn take_input<T: StepInput>(event: DynEvent) -> Result<T, BoxError> {
        T::from_dyn(event).map_err(|event| {
            format!(
                "internal routing error: `{}` was delivered to a step that does not take it",
                event.name()
            )
            .into()
        })
    }

    /// The error of a step that returned `Err`.
    pub fn step_error<E: StepError>(error: E) -> BoxError {
        error.into_boxed()
    }

    /// The error type of a step's `Result`: anything that converts into [`BoxError`].
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the error of a step",
        label = "not an error type",
        note = "a step's error converts into `Box<dyn std::error::Error + Send + Sync>`: implement `std::error::Error` for it, or return `anyhow::Error`, `String` or `&'static str`"
    )]
    pub trait StepError: Send + 'static {
        /// The error, boxed.
        fn into_boxed(self) -> BoxError;
    }

    impl<E: Into<BoxError> + Send + 'static> StepError for E {
        fn into_boxed(self) -> BoxError {
            self.into()
        }
    }

    /// Before the events of a returned `Vec`: an empty one (no allocation) is still told
    /// apart from a step that emitted nothing, so the stuck diagnostic can name a fan-out of
    /// zero items.
    pub fn start_batch(out: &mut Emitted, len: usize) {
        if len == 0 && matches!(out, Emitted::Nothing) {
            *out = Emitted::Many(Vec::new());
        }
    }

    /// Takes the output out of the stop event.
    pub fn take_output<T>(event: DynEvent) -> Result<T, DynEvent>
    where
        crate::StopEvent<T>: Event,
    {
        event.downcast::<crate::StopEvent<T>>().map(|stop| stop.0)
    }

    /// Both types are the workflow's start event: generated once per extra `StartEvent`, so
    /// that rustc, not token comparison, decides whether two spellings are one type.
    #[diagnostic::on_unimplemented(
        message = "the workflow has several start event types: `{Self}` and `{T}`",
        label = "this start event differs from the first step's",
        note = "a workflow has exactly one start event type; every step taking a `StartEvent` must take the same one"
    )]
    pub trait SameStartEvent<T> {}
    impl<T> SameStartEvent<T> for T {}

    /// Asserts `A` and `B` are one start event type.
    pub const fn same_start<A: SameStartEvent<B>, B>() {}
}
