//! Events: the typed values that flow between steps.

use std::any::{Any, TypeId};
use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
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
    /// For a request: the compile error when no step of a workflow emitting it accepts its
    /// response. `#[derive(Event)]` names both types in it; `#[workflow]` cannot, since it does
    /// not see which emitted events are requests.
    #[doc(hidden)]
    const UNANSWERED: &'static str = "a request is emitted but no step accepts its response\n\
        help: add a step taking the response named by its `Request::Response`";

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
/// An event of up to [`DynEvent::INLINE_BYTES`] bytes (and alignment up to a pointer's) is
/// stored inside the `DynEvent` itself, so erasing it and taking it back allocate nothing; a
/// larger one is boxed. Either way the type is checked by its `TypeId`.
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
pub struct DynEvent {
    /// What the stored value is, and how to drop, clone, show and downcast it.
    vtable: &'static VTable,
    /// The value itself when its type fits ([`Erased::INLINE`]), otherwise the `*mut E` of its
    /// box (from `Box::into_raw`). In an `UnsafeCell` because a `&DynEvent` hands out `&E`,
    /// and `E` may have interior mutability (a `Cell`).
    slot: UnsafeCell<MaybeUninit<Slot>>,
    /// Auto traits as for the `Box<dyn Any + Send>` this replaces: `Send` (every event is
    /// `Send`), neither `Sync` nor unwind-safe.
    _owns: PhantomData<Box<dyn Any + Send>>,
}

/// The inline storage of a [`DynEvent`]: two words, aligned as a pointer. Two, not three:
/// every event held by a run (in its queues, its calls, a parked step's future) pays for the
/// slot, and a third word costs a parked run about 56 bytes more for the events of 17 to 24
/// bytes (a `String`) that it would keep out of a box.
type Slot = [usize; 2];

/// The per-type operations of a [`DynEvent`], one constant per event type.
struct VTable {
    type_id: TypeId,
    meta: EventMeta,
    /// Drops the value in the slot (or its box).
    drop: unsafe fn(*mut Slot),
    /// The value in the slot (or in its box), as `&dyn Any`; the lifetime is the slot's.
    as_any: unsafe fn(*const Slot) -> *const dyn Any,
    clone: unsafe fn(*const Slot) -> DynEvent,
    debug: unsafe fn(*const Slot, &mut fmt::Formatter<'_>) -> fmt::Result,
    to_json: unsafe fn(*const Slot) -> Option<Result<serde_json::Value, String>>,
    answered_by: unsafe fn(*const Slot, &dyn Any) -> bool,
}

/// The [`VTable`] of events of type `E`, and how an `E` sits in a slot.
///
/// Every function taking a slot requires that it holds a live `E` put there by
/// [`DynEvent::new::<E>`] (which is what a `DynEvent` whose vtable is `Erased::<E>::VTABLE`
/// guarantees) and, for `drop` and `take`, that the value is not used again.
struct Erased<E>(PhantomData<E>);

impl<E: Event> Erased<E> {
    /// `E` fits in the slot: no larger and no more aligned than it.
    const INLINE: bool = std::mem::size_of::<E>() <= std::mem::size_of::<Slot>()
        && std::mem::align_of::<E>() <= std::mem::align_of::<Slot>();

    const VTABLE: VTable = VTable {
        type_id: TypeId::of::<E>(),
        meta: EventMeta::of::<E>(),
        drop: Self::drop,
        as_any: Self::as_any,
        clone: Self::clone,
        debug: Self::debug,
        to_json: Self::to_json,
        answered_by: Self::answered_by,
    };

    /// Moves `event` into `slot`: in place when it fits, else boxed.
    fn put(event: E) -> MaybeUninit<Slot> {
        let mut slot = MaybeUninit::<Slot>::uninit();
        let at = slot.as_mut_ptr();
        if Self::INLINE {
            // SAFETY: `INLINE` says an `E` fits in `Slot` and needs no stricter alignment,
            // so `at` is valid and aligned for one `E` (a zero-sized one included).
            unsafe { at.cast::<E>().write(event) };
        } else {
            // SAFETY: `Slot` is larger than a pointer and aligned as one.
            unsafe { at.cast::<*mut E>().write(Box::into_raw(Box::new(event))) };
        }
        slot
    }

    /// Where the `E` held in `slot` is.
    ///
    /// # Safety
    /// `slot` holds an `E` (see the type's doc).
    unsafe fn ptr(slot: *const Slot) -> *const E {
        if Self::INLINE {
            slot.cast::<E>()
        } else {
            // SAFETY: the caller's; a boxed `E` left its pointer in the slot.
            unsafe { slot.cast::<*const E>().read() }
        }
    }

    /// Moves the `E` out of `slot` (and frees its box).
    ///
    /// # Safety
    /// `slot` holds an `E`, and nothing uses or drops it afterwards.
    unsafe fn take(slot: *mut Slot) -> E {
        if Self::INLINE {
            // SAFETY: the caller's: a live, aligned `E`, read once.
            unsafe { slot.cast::<E>().read() }
        } else {
            // SAFETY: the caller's: the pointer came from `Box::into_raw` and is freed once.
            unsafe { *Box::from_raw(slot.cast::<*mut E>().read()) }
        }
    }

    unsafe fn drop(slot: *mut Slot) {
        if Self::INLINE {
            // SAFETY: the caller's: a live, aligned `E`, dropped once.
            unsafe { std::ptr::drop_in_place(slot.cast::<E>()) }
        } else {
            // SAFETY: the caller's: the pointer came from `Box::into_raw` and is freed once.
            drop(unsafe { Box::from_raw(slot.cast::<*mut E>().read()) })
        }
    }

    unsafe fn as_any(slot: *const Slot) -> *const dyn Any {
        // SAFETY: the caller's.
        unsafe { Self::ptr(slot) as *const dyn Any }
    }

    unsafe fn clone(slot: *const Slot) -> DynEvent {
        // SAFETY: the caller's: a live `E`, borrowed for the call.
        DynEvent::new(unsafe { &*Self::ptr(slot) }.clone())
    }

    unsafe fn debug(slot: *const Slot, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: the caller's.
        fmt::Debug::fmt(unsafe { &*Self::ptr(slot) }, f)
    }

    unsafe fn to_json(slot: *const Slot) -> Option<Result<serde_json::Value, String>> {
        // SAFETY: the caller's.
        unsafe { &*Self::ptr(slot) }.__to_json()
    }

    unsafe fn answered_by(slot: *const Slot, response: &dyn Any) -> bool {
        // SAFETY: the caller's.
        unsafe { &*Self::ptr(slot) }.__answered_by(response)
    }
}

impl DynEvent {
    /// The largest event stored without a box (two words: 16 bytes on 64-bit targets),
    /// when its alignment is at most a pointer's.
    pub const INLINE_BYTES: usize = std::mem::size_of::<Slot>();

    /// Erases the type of an event.
    pub fn new<E: Event>(event: E) -> DynEvent {
        DynEvent {
            vtable: &Erased::<E>::VTABLE,
            slot: UnsafeCell::new(Erased::<E>::put(event)),
            _owns: PhantomData,
        }
    }

    /// The slot, for the vtable's functions: it holds the vtable's type.
    fn slot(&self) -> *const Slot {
        self.slot.get().cast_const().cast()
    }

    /// The stable name of the event's type.
    pub fn name(&self) -> &'static str {
        self.vtable.meta.name
    }

    /// The id of the event's type.
    pub fn id(&self) -> EventId {
        self.vtable.meta.id
    }

    #[doc(hidden)]
    pub fn kind(&self) -> EventKind {
        self.vtable.meta.kind
    }

    #[doc(hidden)]
    pub fn meta(&self) -> EventMeta {
        self.vtable.meta
    }

    /// The event as JSON: `None` when its type is not `Serialize`.
    #[doc(hidden)]
    pub fn to_json(&self) -> Option<Result<serde_json::Value, String>> {
        // SAFETY: the slot holds the vtable's type.
        unsafe { (self.vtable.to_json)(self.slot()) }
    }

    /// The event as `&dyn Any`.
    fn as_any(&self) -> &dyn Any {
        // SAFETY: the slot holds the vtable's type, alive as long as `self` is borrowed.
        unsafe { &*(self.vtable.as_any)(self.slot()) }
    }

    /// For a request: does `response` answer it (see `#[event(request = R, correlate = f)]`)?
    pub(crate) fn answered_by(&self, response: &DynEvent) -> bool {
        // SAFETY: the slot holds the vtable's type.
        unsafe { (self.vtable.answered_by)(self.slot(), response.as_any()) }
    }

    /// Is this event an `E`?
    pub fn is<E: Event>(&self) -> bool {
        self.vtable.type_id == TypeId::of::<E>()
    }

    /// Borrows the event as an `E`, if it is one.
    pub fn downcast_ref<E: Event>(&self) -> Option<&E> {
        // SAFETY: the type ids are equal, so the slot holds an `E`, alive while `self` is
        // borrowed.
        self.is::<E>()
            .then(|| unsafe { &*Erased::<E>::ptr(self.slot()) })
    }

    /// Takes the event back as an `E`, or returns it unchanged if it is another type.
    ///
    /// # Errors
    /// The event itself, when it is not an `E`.
    pub fn downcast<E: Event>(self) -> Result<E, DynEvent> {
        if !self.is::<E>() {
            return Err(self);
        }
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the type ids are equal, so the slot holds an `E`; `this` is never dropped,
        // so the value is moved out exactly once.
        Ok(unsafe { Erased::<E>::take(this.slot.get().cast()) })
    }
}

impl Drop for DynEvent {
    fn drop(&mut self) {
        // SAFETY: the slot holds the vtable's type, dropped here once.
        unsafe { (self.vtable.drop)(self.slot.get().cast()) }
    }
}

impl Clone for DynEvent {
    fn clone(&self) -> Self {
        // SAFETY: the slot holds the vtable's type.
        unsafe { (self.vtable.clone)(self.slot()) }
    }
}

impl fmt::Debug for DynEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: the slot holds the vtable's type.
        unsafe { (self.vtable.debug)(self.slot(), f) }
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
    /// For a request: the compile error when its response has no step (`Event::UNANSWERED`).
    pub unanswered: &'static str,
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
            unanswered: E::UNANSWERED,
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

#[cfg(test)]
mod tests {
    //! The storage of [`DynEvent`]: values inline and boxed, each dropped exactly once
    //! whichever way it leaves (dropped, cloned, downcast, downcast to the wrong type).

    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its live copies; `PAD` words of payload make it small or large.
    #[derive(Debug)]
    struct Counted<const PAD: usize> {
        live: Arc<AtomicUsize>,
        pad: [u64; PAD],
    }

    impl<const PAD: usize> Counted<PAD> {
        fn new(live: &Arc<AtomicUsize>, seed: u64) -> Self {
            live.fetch_add(1, Ordering::SeqCst);
            let mut pad = [0; PAD];
            for (i, word) in pad.iter_mut().enumerate() {
                *word = seed + i as u64;
            }
            Counted {
                live: live.clone(),
                pad,
            }
        }
    }

    impl<const PAD: usize> Clone for Counted<PAD> {
        fn clone(&self) -> Self {
            self.live.fetch_add(1, Ordering::SeqCst);
            Counted {
                live: self.live.clone(),
                pad: self.pad,
            }
        }
    }

    impl<const PAD: usize> Drop for Counted<PAD> {
        fn drop(&mut self) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl<const PAD: usize> Event for Counted<PAD> {
        const NAME: &'static str = "tests::Counted";
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Zero;
    impl Event for Zero {
        const NAME: &'static str = "tests::Zero";
    }

    /// A zero-sized type more aligned than the slot: boxed (a box of a ZST allocates nothing).
    #[derive(Debug, Clone, PartialEq)]
    #[repr(align(64))]
    struct AlignedZero;
    impl Event for AlignedZero {
        const NAME: &'static str = "tests::AlignedZero";
    }

    /// Small, but aligned past the slot: must be boxed, and come back aligned.
    #[derive(Debug, Clone, PartialEq)]
    #[repr(align(32))]
    struct Aligned(u8, u64);
    impl Event for Aligned {
        const NAME: &'static str = "tests::Aligned";
    }

    /// Interior mutability through `&DynEvent` (the slot is in an `UnsafeCell`).
    #[derive(Debug, Clone)]
    struct Cellular(std::cell::Cell<u32>);
    impl Event for Cellular {
        const NAME: &'static str = "tests::Cellular";
    }

    /// Exercises every way out of a `DynEvent` holding `Counted<PAD>`.
    fn round_trip<const PAD: usize>(inline: bool) {
        assert_eq!(Erased::<Counted<PAD>>::INLINE, inline);
        let live = Arc::new(AtomicUsize::new(0));
        // Dropped while erased.
        drop(DynEvent::new(Counted::<PAD>::new(&live, 1)));
        assert_eq!(live.load(Ordering::SeqCst), 0);
        // Cloned, both copies intact, both dropped.
        let ev = DynEvent::new(Counted::<PAD>::new(&live, 7));
        let copy = ev.clone();
        assert_eq!(live.load(Ordering::SeqCst), 2);
        assert_eq!(
            copy.downcast_ref::<Counted<PAD>>().unwrap().pad,
            ev.downcast_ref::<Counted<PAD>>().unwrap().pad
        );
        drop(copy);
        assert_eq!(live.load(Ordering::SeqCst), 1);
        // The wrong type gives the event back, still alive and intact.
        let ev = ev.downcast::<Zero>().unwrap_err();
        let ev = ev.downcast::<Counted<17>>().unwrap_err();
        assert_eq!(live.load(Ordering::SeqCst), 1);
        // Moved (the inline value moves with the `DynEvent`) and taken back.
        let moved = vec![ev];
        let back = moved
            .into_iter()
            .next()
            .unwrap()
            .downcast::<Counted<PAD>>()
            .unwrap();
        let expected: [u64; PAD] = std::array::from_fn(|i| 7 + i as u64);
        assert_eq!(back.pad, expected);
        assert_eq!(live.load(Ordering::SeqCst), 1);
        drop(back);
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn small_events_are_inline_and_dropped_once() {
        // An `Arc` (8 B) and up to one word of payload fit in 16 B.
        round_trip::<0>(true);
        round_trip::<1>(true);
    }

    #[test]
    fn large_events_are_boxed_and_dropped_once() {
        round_trip::<2>(false);
        round_trip::<16>(false);
    }

    #[test]
    fn zero_sized_and_over_aligned_events() {
        const { assert!(Erased::<Zero>::INLINE) };
        let ev = DynEvent::new(Zero);
        assert_eq!(ev.clone().downcast::<Zero>().ok(), Some(Zero));
        assert_eq!(format!("{ev:?}"), "Zero");
        assert_eq!(ev.name(), "tests::Zero");

        const { assert!(!Erased::<AlignedZero>::INLINE) };
        let ev = DynEvent::new(AlignedZero);
        assert_eq!(ev.clone().downcast::<AlignedZero>().ok(), Some(AlignedZero));
        drop(ev);

        const { assert!(!Erased::<Aligned>::INLINE) };
        let ev = DynEvent::new(Aligned(3, 9));
        let seen = ev.downcast_ref::<Aligned>().unwrap();
        assert_eq!(seen as *const Aligned as usize % 32, 0, "borrowed aligned");
        let copy = ev.clone();
        assert_eq!(copy.downcast::<Aligned>().ok(), Some(Aligned(3, 9)));
        assert_eq!(ev.downcast::<Aligned>().ok(), Some(Aligned(3, 9)));
    }

    #[test]
    fn the_type_decides_not_the_name() {
        // `StopEvent<u32>` and `StopEvent<u64>` share a name (and an id), not a type.
        let ev = DynEvent::new(StopEvent(5_u32));
        assert_eq!(ev.id(), <StopEvent<u64> as Event>::ID);
        assert!(!ev.is::<StopEvent<u64>>());
        let ev = ev.downcast::<StopEvent<u64>>().unwrap_err();
        assert_eq!(ev.kind(), EventKind::Stop);
        assert_eq!(ev.downcast::<StopEvent<u32>>().ok(), Some(StopEvent(5)));
        // A `String` is 24 B: boxed. Its heap buffer survives the moves.
        let ev = DynEvent::new(StartEvent("pirates".to_string()));
        let ev = std::hint::black_box(ev);
        assert_eq!(ev.downcast::<StartEvent<String>>().unwrap().0, "pirates");
    }

    #[test]
    fn interior_mutability_through_a_shared_borrow() {
        let ev = DynEvent::new(Cellular(std::cell::Cell::new(1)));
        ev.downcast_ref::<Cellular>().unwrap().0.set(2);
        assert_eq!(ev.downcast::<Cellular>().unwrap().0.get(), 2);
    }

    #[test]
    fn an_event_is_send_but_not_sync() {
        fn send<T: Send>() {}
        send::<DynEvent>();
        // Not `Sync`, as an event type need not be: this compiles only if the impl for
        // `Sync` types does not apply (else the `_` is ambiguous).
        trait AmbiguousIfSync<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfSync<()> for T {}
        impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
        <DynEvent as AmbiguousIfSync<_>>::check();
    }

    #[test]
    fn size_of_an_event() {
        assert_eq!(
            std::mem::size_of::<DynEvent>(),
            3 * std::mem::size_of::<usize>()
        );
        assert_eq!(
            std::mem::size_of::<Option<DynEvent>>(),
            std::mem::size_of::<DynEvent>()
        );
    }
}
