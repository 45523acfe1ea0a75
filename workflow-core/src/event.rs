//! Events: the typed values that flow between steps.

use std::any::{Any, TypeId};
use std::fmt;
use std::ops::{Deref, DerefMut};

/// A value that flows between the steps of a workflow.
///
/// Derive it with `#[derive(Event)]`; the derive gives the type a stable [`NAME`](Event::NAME)
/// (`crate::module::Type`) used in diagnostics, the stream and, later, serialization.
/// Events are plain values: an event that several steps accept is cloned for each of them
/// (broadcast), so events are `Clone`, and `Debug` so that a failure can show its input.
///
/// ```
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Draft {
///     text: String,
/// }
///
/// assert!(<Draft as Event>::NAME.ends_with("::Draft"));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "add `#[derive(Debug, Clone, Event)]` to the type to use it as a workflow event"
)]
pub trait Event: fmt::Debug + Clone + Send + 'static {
    /// The stable name of the event type: its module path and its name.
    const NAME: &'static str;
    /// The identity of the event type, derived from [`NAME`](Event::NAME). Equal names, equal ids.
    const ID: EventId = EventId::of(Self::NAME);
    /// What the event means to the executor; `Regular` unless derived with
    /// `#[event(request = R)]` or `#[event(response)]`.
    #[doc(hidden)]
    const KIND: EventKind = EventKind::Regular;
    /// For a request: the id of its paired response type.
    #[doc(hidden)]
    const RESPONSE: Option<EventId> = None;

    /// For a request: does `response` (its paired response type, erased) answer this request?
    /// `#[event(request = R, correlate = field)]` compares `field` of both; without it, any
    /// `R` answers any request of this type.
    #[doc(hidden)]
    fn __answered_by(&self, response: &dyn Any) -> bool {
        let _ = response;
        true
    }

    /// The event as JSON, when its type is `Serialize` (`#[derive(Event)]` finds out); `None`
    /// otherwise. Used by the stream of a served workflow.
    #[doc(hidden)]
    fn __to_json(&self) -> Option<Result<serde_json::Value, String>> {
        None
    }

    /// The event from JSON, when its type is `Deserialize`; the error names the bad field.
    #[doc(hidden)]
    fn __from_json(value: serde_json::Value) -> Option<Result<Self, String>> {
        let _ = value;
        None
    }

    /// The JSON schema of the event, when its type derives `schemars::JsonSchema` (and the
    /// `serve` feature is on).
    #[doc(hidden)]
    fn __schema() -> Option<serde_json::Value> {
        None
    }
}

/// A request to the world outside the workflow (a human, another system): a step emits it, the
/// run publishes it on its stream and waits, and the outside answers with
/// [`Request::Response`] through `Handler::send_event`.
///
/// Derive it with `#[event(request = ResponseType)]`; derive the response with
/// `#[event(response)]`. A request whose response no step accepts does not compile.
///
/// ```
/// use tidewater::prelude::*;
/// use tidewater::Request;
///
/// #[derive(Debug, Clone, Event)]
/// #[event(request = Approval)]
/// struct AskApproval { text: String }
///
/// #[derive(Debug, Clone, Event)]
/// #[event(response)]
/// struct Approval { approved: bool }
///
/// fn response_name<R: Request>() -> &'static str { <R::Response as Event>::NAME }
/// assert!(response_name::<AskApproval>().ends_with("::Approval"));
/// ```
pub trait Request: Event {
    /// The event the outside answers with.
    type Response: Event;
}

/// The compile-time identity of an event type: an FNV-1a hash of its stable name.
///
/// ```
/// use tidewater::EventId;
/// assert_eq!(EventId::of("a::B"), EventId::of("a::B"));
/// assert_ne!(EventId::of("a::B"), EventId::of("a::C"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(u64);

impl EventId {
    /// Hashes a stable event name into its id; usable in constants.
    pub const fn of(name: &str) -> EventId {
        let bytes = name.as_bytes();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        EventId(hash)
    }

    /// Compares two ids in a constant context.
    pub const fn eq(self, other: EventId) -> bool {
        self.0 == other.0
    }

    /// The id as a number.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({:#018x})", self.0)
    }
}

/// The role an event type plays in the graph.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An ordinary event between steps.
    Regular,
    /// [`StartEvent`]: enters the run with its input.
    Start,
    /// [`StopEvent`]: ends the run with its output.
    Stop,
    /// [`StepFailure`]: emitted by the executor when a step fails, for a catch-error step.
    Failure,
    /// A [`Request`] to the outside world: published on the stream, answered from outside.
    Request,
    /// The answer to a request: enters the run from outside.
    Response,
}

impl EventKind {
    /// Compares two kinds in a constant context.
    pub const fn is(self, other: EventKind) -> bool {
        self as u8 == other as u8
    }
}

/// The event that starts a run; it carries the workflow's typed input.
///
/// Exactly one step type takes `StartEvent<Input>`; `runner.run(input)` wraps the input in it.
///
/// ```
/// use tidewater::StartEvent;
/// let ev = StartEvent("pirates".to_string());
/// assert_eq!(ev.len(), 7); // derefs to the input
/// assert_eq!(ev.into_inner(), "pirates");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StartEvent<T>(pub T);

/// The event that ends a run; it carries the workflow's typed output.
///
/// A step that returns it finishes the run: the first `StopEvent` wins and the steps still running
/// are cancelled.
///
/// ```
/// use tidewater::StopEvent;
/// let ev = StopEvent(42_u32);
/// assert_eq!(*ev, 42);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StopEvent<T>(pub T);

macro_rules! payload_event {
    ($ty:ident, $name:literal, $kind:ident) => {
        impl<T> $ty<T> {
            /// Takes the payload out of the event.
            pub fn into_inner(self) -> T {
                self.0
            }
        }

        impl<T> Deref for $ty<T> {
            type Target = T;
            fn deref(&self) -> &T {
                &self.0
            }
        }

        impl<T> DerefMut for $ty<T> {
            fn deref_mut(&mut self) -> &mut T {
                &mut self.0
            }
        }

        impl<T: fmt::Debug + Clone + Send + 'static> Event for $ty<T> {
            const NAME: &'static str = $name;
            const KIND: EventKind = EventKind::$kind;
        }
    };
}

payload_event!(StartEvent, "tidewater::StartEvent", Start);
payload_event!(StopEvent, "tidewater::StopEvent", Stop);

/// The event a catch-error step receives when another step failed for good (after its
/// retries): which step, on which input, after how many attempts, and the error.
///
/// A workflow opts into recovery by having a step that accepts `StepFailure`; it may emit any
/// event to carry on, or a `StopEvent`. Recoveries per run are limited
/// (`Runner::max_recoveries`, 3 by default) so a failure cannot loop forever. Timeouts,
/// cancellation and panics never reach it.
///
/// ```
/// use tidewater::prelude::*;
/// use tidewater::StepFailure;
///
/// #[derive(Debug, Clone, Event)]
/// struct Fetch(u32);
///
/// struct Flaky;
///
/// #[workflow]
/// impl Flaky {
///     #[step]
///     async fn begin(&self, ev: StartEvent<u32>) -> Fetch { Fetch(ev.0) }
///
///     #[step]
///     async fn fetch(&self, ev: Fetch) -> Result<StopEvent<String>, std::io::Error> {
///         Err(std::io::Error::other(format!("server down for {}", ev.0)))
///     }
///
///     #[step]
///     async fn recover(&self, failure: StepFailure) -> StopEvent<String> {
///         let input = failure.input.downcast_ref::<Fetch>().unwrap();
///         StopEvent(format!("{} failed on {}: {}", failure.step, input.0, failure.error))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(Flaky.run(7).await.unwrap(), "fetch failed on 7: server down for 7");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StepFailure {
    /// The step that failed.
    pub step: &'static str,
    /// The event it failed on.
    pub input: DynEvent,
    /// How many times it ran on that event.
    pub attempts: u32,
    /// Its last error.
    pub error: std::sync::Arc<dyn std::error::Error + Send + Sync>,
}

impl Event for StepFailure {
    const NAME: &'static str = "tidewater::StepFailure";
    const KIND: EventKind = EventKind::Failure;
}

/// One of two events: the way a step spells a branch in its return type (or, as a parameter,
/// a step that accepts two event types). Nest it for more: `Either<A, Either<B, C>>`.
///
/// ```
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Retry;
///
/// fn judge(ok: bool) -> Either<Retry, StopEvent<&'static str>> {
///     if ok { Either::Right(StopEvent("done")) } else { Either::Left(Retry) }
/// }
/// assert!(matches!(judge(true), Either::Right(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Either<L, R> {
    /// The first event type.
    Left(L),
    /// The second event type.
    Right(R),
}

/// A type-erased event, as it travels inside the executor and on the stream.
///
/// ```
/// use tidewater::prelude::*;
/// use tidewater::DynEvent;
///
/// #[derive(Debug, Clone, Event, PartialEq)]
/// struct Progress(u32);
///
/// let ev = DynEvent::new(Progress(3));
/// assert!(ev.is::<Progress>());
/// assert_eq!(ev.downcast_ref::<Progress>(), Some(&Progress(3)));
/// assert_eq!(ev.downcast::<Progress>().ok(), Some(Progress(3)));
/// ```
pub struct DynEvent(Box<dyn ErasedEvent>);

/// The object-safe face of [`Event`].
trait ErasedEvent: Any + Send {
    fn meta(&self) -> EventMeta;
    fn clone_box(&self) -> Box<dyn ErasedEvent>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_box(self: Box<Self>) -> Box<dyn Any>;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    fn to_json(&self) -> Option<Result<serde_json::Value, String>>;
    fn answered_by(&self, response: &dyn Any) -> bool;
}

impl<E: Event> ErasedEvent for E {
    fn meta(&self) -> EventMeta {
        EventMeta::of::<E>()
    }
    fn clone_box(&self) -> Box<dyn ErasedEvent> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_box(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
    fn to_json(&self) -> Option<Result<serde_json::Value, String>> {
        self.__to_json()
    }
    fn answered_by(&self, response: &dyn Any) -> bool {
        self.__answered_by(response)
    }
}

impl DynEvent {
    /// Erases the type of an event.
    pub fn new<E: Event>(event: E) -> DynEvent {
        DynEvent(Box::new(event))
    }

    /// The stable name of the event's type.
    pub fn name(&self) -> &'static str {
        self.0.meta().name
    }

    /// The id of the event's type.
    pub fn id(&self) -> EventId {
        self.0.meta().id
    }

    #[doc(hidden)]
    pub fn kind(&self) -> EventKind {
        self.0.meta().kind
    }

    #[doc(hidden)]
    pub fn meta(&self) -> EventMeta {
        self.0.meta()
    }

    /// The event as JSON: `None` when its type is not `Serialize`.
    #[doc(hidden)]
    pub fn to_json(&self) -> Option<Result<serde_json::Value, String>> {
        self.0.to_json()
    }

    /// For a request: does `response` answer it (see `#[event(request = R, correlate = f)]`)?
    pub(crate) fn answered_by(&self, response: &DynEvent) -> bool {
        self.0.answered_by(response.0.as_any())
    }

    /// Is this event an `E`?
    pub fn is<E: Event>(&self) -> bool {
        self.0.as_any().type_id() == TypeId::of::<E>()
    }

    /// Borrows the event as an `E`, if it is one.
    pub fn downcast_ref<E: Event>(&self) -> Option<&E> {
        self.0.as_any().downcast_ref()
    }

    /// Takes the event back as an `E`, or returns it unchanged if it is another type.
    ///
    /// # Errors
    /// The event itself, when it is not an `E`.
    pub fn downcast<E: Event>(self) -> Result<E, DynEvent> {
        if self.is::<E>() {
            match self.0.as_any_box().downcast::<E>() {
                Ok(event) => Ok(*event),
                Err(_) => unreachable!("type id checked above"),
            }
        } else {
            Err(self)
        }
    }
}

impl Clone for DynEvent {
    fn clone(&self) -> Self {
        DynEvent(self.0.clone_box())
    }
}

impl fmt::Debug for DynEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.debug(f)
    }
}

/// What the graph knows about one event type, built in constants by the generated code.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct EventMeta {
    /// The stable name.
    pub name: &'static str,
    /// The id derived from the name.
    pub id: EventId,
    /// Start, stop or regular.
    pub kind: EventKind,
    /// For a request: its paired response's id.
    pub response: Option<EventId>,
    /// The Rust type's identity, for run-time checks the constants cannot make.
    pub type_id: fn() -> TypeId,
    /// Decodes the event from JSON (`None`: the type is not `Deserialize`).
    pub from_json: fn(serde_json::Value) -> Option<Result<DynEvent, String>>,
    /// The event's JSON schema (`None`: the type has none).
    pub schema: fn() -> Option<serde_json::Value>,
}

impl EventMeta {
    /// The metadata of `E`.
    pub const fn of<E: Event>() -> EventMeta {
        EventMeta {
            name: E::NAME,
            id: E::ID,
            kind: E::KIND,
            response: E::RESPONSE,
            type_id: TypeId::of::<E>,
            from_json: dyn_from_json::<E>,
            schema: E::__schema,
        }
    }
}

fn dyn_from_json<E: Event>(value: serde_json::Value) -> Option<Result<DynEvent, String>> {
    E::__from_json(value).map(|decoded| decoded.map(DynEvent::new))
}

/// Autoref specialization for `#[derive(Event)]`: the derive calls
/// `(&&Probe::<Self>::NEW).to_json(..)`, which picks the serde impl when the concrete type has
/// one and the fallback (`None`) when it does not. Not public API.
#[doc(hidden)]
pub mod probe {
    use std::marker::PhantomData;

    /// The receiver of the probe calls.
    pub struct Probe<T>(PhantomData<fn() -> T>);

    impl<T> Probe<T> {
        /// The probe.
        pub const NEW: Probe<T> = Probe(PhantomData);
    }

    /// Picked when `T` is `Serialize + DeserializeOwned`.
    pub trait ViaSerde<T> {
        /// `T` to JSON.
        fn to_json(&self, value: &T) -> Option<Result<serde_json::Value, String>>;
        /// `T` from JSON; the error names the path of the bad field.
        fn decode_json(&self, value: serde_json::Value) -> Option<Result<T, String>>;
    }

    impl<T: serde::Serialize + serde::de::DeserializeOwned> ViaSerde<T> for &Probe<T> {
        fn to_json(&self, value: &T) -> Option<Result<serde_json::Value, String>> {
            Some(serde_json::to_value(value).map_err(|e| e.to_string()))
        }
        fn decode_json(&self, value: serde_json::Value) -> Option<Result<T, String>> {
            Some(serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    e.into_inner().to_string()
                } else {
                    format!("{path}: {}", e.into_inner())
                }
            }))
        }
    }

    /// Picked when `T` is not serde: nothing.
    pub trait NoSerde<T> {
        /// `None`.
        fn to_json(&self, value: &T) -> Option<Result<serde_json::Value, String>> {
            let _ = value;
            None
        }
        /// `None`.
        fn decode_json(&self, value: serde_json::Value) -> Option<Result<T, String>> {
            let _ = value;
            None
        }
    }

    impl<T> NoSerde<T> for Probe<T> {}

    /// Picked when `T` derives `schemars::JsonSchema` and the `serve` feature is on.
    pub trait ViaSchema {
        /// The schema.
        fn schema(&self) -> Option<serde_json::Value>;
    }

    #[cfg(feature = "serve")]
    impl<T: schemars::JsonSchema> ViaSchema for &Probe<T> {
        fn schema(&self) -> Option<serde_json::Value> {
            serde_json::to_value(schemars::schema_for!(T)).ok()
        }
    }

    /// Picked otherwise: no schema.
    pub trait NoSchema {
        /// `None`.
        fn schema(&self) -> Option<serde_json::Value> {
            None
        }
    }

    impl<T> NoSchema for Probe<T> {}
}

/// Converts a type-erased event into what a step's parameter expects: one event type or an
/// [`Either`] of several. Used by the generated code.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a step's event parameter",
    label = "not an event",
    note = "a step takes one event (a type with `#[derive(Event)]`) or an `Either` of events"
)]
pub trait StepInput: Sized + Send + 'static {
    /// Takes the event if it is one of the accepted types.
    fn from_dyn(event: DynEvent) -> Result<Self, DynEvent>;
}

impl<E: Event> StepInput for E {
    fn from_dyn(event: DynEvent) -> Result<Self, DynEvent> {
        event.downcast()
    }
}

/// The inverse of [`StepInput`]: back to an erased event (used by the collect helpers).
#[doc(hidden)]
pub trait IntoDynEvent {
    /// Erases the event.
    fn into_dyn(self) -> DynEvent;
}

impl<E: Event> IntoDynEvent for E {
    fn into_dyn(self) -> DynEvent {
        DynEvent::new(self)
    }
}

impl<L: IntoDynEvent, R: IntoDynEvent> IntoDynEvent for Either<L, R> {
    fn into_dyn(self) -> DynEvent {
        match self {
            Either::Left(left) => left.into_dyn(),
            Either::Right(right) => right.into_dyn(),
        }
    }
}

impl<L: StepInput, R: StepInput> StepInput for Either<L, R> {
    fn from_dyn(event: DynEvent) -> Result<Self, DynEvent> {
        match L::from_dyn(event) {
            Ok(left) => Ok(Either::Left(left)),
            Err(event) => R::from_dyn(event).map(Either::Right),
        }
    }
}
