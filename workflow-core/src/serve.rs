//! Running a workflow from JSON, type-erased: what an HTTP server (`tidewater-server`) needs to
//! serve any workflow without knowing its Rust types (feature `serve`).
//!
//! A [`ServedWorkflow`] validates a start event given as JSON **before** anything runs (a bad
//! payload is an [`InvalidEvent`] naming the field, and no run exists), starts the run, and
//! hands back a [`ServedRun`]: its stream, a [`RunControl`] to send JSON events or cancel, and
//! its outcome as JSON. `#[workflow(serve = "name")]` registers a workflow (built with
//! `Default`) through [`inventory`]; [`registered`] lists them.
//!
//! ```
//! use tidewater::prelude::*;
//! use tidewater::serve::{ServedWorkflow, served};
//!
//! #[derive(Debug, Clone, Event)]
//! struct Greeted { text: String }
//!
//! struct Greet;
//!
//! #[workflow]
//! impl Greet {
//!     #[step]
//!     async fn greet(&self, ev: StartEvent<String>) -> StopEvent<String> {
//!         StopEvent(format!("hello {}", ev.0))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let served = served(Greet.runner());
//! // Refused before anything runs: a number is not a string.
//! assert!(served.start(serde_json::json!(42)).is_err());
//! let run = served.start(serde_json::json!("Ada")).unwrap();
//! assert_eq!(run.outcome.await.unwrap(), serde_json::json!("hello Ada"));
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::RunId;
use crate::error::WorkflowError;
use crate::event::{DynEvent, EventKind, EventMeta};
use crate::graph::Graph;
use crate::handler::Handler;
use crate::store::Store;
use crate::stream::EventStream;
use crate::workflow::{Runner, Workflow};

/// A workflow registered with `#[workflow(serve = "name")]`, found by [`registered`].
#[derive(Debug)]
pub struct Registration {
    /// The name it is served under.
    pub name: &'static str,
    /// Builds it (with the workflow type's `Default`).
    pub make: fn() -> Arc<dyn ServedWorkflow>,
}

inventory::collect!(Registration);

/// Every workflow registered with `#[workflow(serve = "name")]` in the binary, sorted by name.
pub fn registered() -> Vec<&'static Registration> {
    let mut all: Vec<_> = inventory::iter::<Registration>.into_iter().collect();
    all.sort_by_key(|r| r.name);
    all
}

/// A JSON payload that does not fit the event it should be: nothing was started or sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidEvent {
    /// What is wrong, naming the bad field (`text: invalid type: integer ..`).
    pub message: String,
}

impl InvalidEvent {
    fn new(message: impl Into<String>) -> InvalidEvent {
        InvalidEvent {
            message: message.into(),
        }
    }
}

/// The type-erased face of a workflow served from JSON. Made by [`served`], or by
/// `#[workflow(serve = "name")]`.
pub trait ServedWorkflow: Send + Sync + 'static {
    /// The workflow's graph (its name, steps and events).
    fn graph(&self) -> &'static Graph;
    /// The JSON schema of the start event's payload.
    fn start_schema(&self) -> Value;
    /// The JSON schema of the output.
    fn stop_schema(&self) -> Value;
    /// Every event of the graph with a schema: `(name, schema)`; an event whose type has no
    /// `JsonSchema` gets `{"title": <short name>}`.
    fn event_schemas(&self) -> Vec<(&'static str, Value)>;
    /// Validates `input` as the start event's payload, then starts the run. On error nothing
    /// runs.
    ///
    /// # Errors
    /// [`InvalidEvent`] naming the bad field.
    fn start(&self, input: Value) -> Result<ServedRun, InvalidEvent>;
    /// Is the workflow `#[workflow(durable)]` (can its runs live in a store)?
    fn durable(&self) -> bool;
    /// [`start`](ServedWorkflow::start) as a durable run under `key` in `store` (checkpointed
    /// at every step, resumable after a crash with
    /// [`resume_stored`](ServedWorkflow::resume_stored)); a plain run when the workflow is not
    /// durable. With `evict_after`, a run parked on unanswered requests for that long is saved
    /// as waiting and leaves memory (its outcome is [`WorkflowError::Suspended`]);
    /// [`answer_stored`](ServedWorkflow::answer_stored) brings it back.
    ///
    /// # Errors
    /// [`StartError::Invalid`] for a bad payload (nothing runs), [`StartError::Failed`] when the
    /// store refuses.
    fn start_stored(
        &self,
        key: &str,
        input: Value,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, StartError>;
    /// Resumes the durable run `key` from `store`, where its last checkpoint left it (evicted
    /// again after `evict_after` if it is parked on requests alone).
    ///
    /// # Errors
    /// The store has no such run, it has ended, or its record is corrupt.
    fn resume_stored(
        &self,
        key: &str,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, WorkflowError>;
    /// Decodes the event named `kind` from `value` and resumes the durable run `key` (evicted
    /// while it waited for an answer) with it: see [`Runner::answer`].
    ///
    /// # Errors
    /// [`StartError::Invalid`] for an unknown type, a bad payload or an event the run cannot
    /// take (the run is left as it was); [`StartError::Failed`] when the run cannot resume.
    fn answer_stored(
        &self,
        key: &str,
        kind: &str,
        value: Value,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, StartError>;
    /// Starts a worker loop ([`Runner::work`]) over the durable runs of this workflow in
    /// `store`: it claims the runs that need an owner (enqueued, orphaned by a dead process,
    /// parked with an answer waiting) and runs them here, `max_runs` at a time, evicting parked
    /// runs after `evict_after`.
    ///
    /// # Errors
    /// The workflow is not durable.
    fn work_stored(
        &self,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
        max_runs: usize,
    ) -> Result<crate::Worker, WorkflowError>;
    /// Validates `input` as the start event's payload and records the durable run `key` in
    /// `store` for a worker to take ([`Runner::enqueue`]): nothing runs here.
    ///
    /// # Errors
    /// [`StartError::Invalid`] for a bad payload; [`StartError::Failed`] when the workflow is
    /// not durable or the store refuses (a run with this key has not ended).
    fn enqueue_stored(
        &self,
        key: &str,
        input: Value,
        store: Arc<dyn Store>,
    ) -> Result<(), StartError>;

    /// Decodes the event named `kind` from `value`, as [`RunControl::send_json`] would, and
    /// encodes it as a durable run's journal and inbox keep it (a store's
    /// `Message::event`): what a server posts to a stored run that runs in another process.
    ///
    /// # Errors
    /// [`InvalidEvent`]: an unknown event type or a payload that does not fit it.
    fn encode_event(
        &self,
        kind: &str,
        value: Value,
    ) -> Result<crate::snapshot::EventRecord, InvalidEvent>;
}

/// Why [`ServedWorkflow::start_stored`] started nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The payload does not fit the start event.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The store refused the run.
    #[error(transparent)]
    Failed(#[from] WorkflowError),
}

/// A started run of a [`ServedWorkflow`].
pub struct ServedRun {
    /// The run's id.
    pub run_id: RunId,
    /// The run's stream from its start (nothing missed), ending with the terminal item.
    pub events: EventStream,
    /// Sends events into the run, cancels it.
    pub control: RunControl,
    /// The run's output as JSON, or its error.
    pub outcome: Pin<Box<dyn Future<Output = Result<Value, WorkflowError>> + Send>>,
    /// A resumed run: its stream begins with this many requests it had published before it
    /// stopped (published again for whoever watches now; a log that kept them can skip them).
    pub republished: usize,
}

impl std::fmt::Debug for ServedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedRun")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Sends JSON events into a served run and cancels it; cheap to clone.
#[derive(Clone)]
pub struct RunControl(Arc<dyn Control>);

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunControl")
    }
}

trait Control: Send + Sync {
    /// `Ok(false)`: the run had left memory parked, nothing was delivered.
    fn send(&self, event: DynEvent, step: Option<&str>) -> Result<bool, InvalidEvent>;
    fn cancel(&self);
    fn suspend(&self);
    fn decode(&self, kind: &str, value: Value) -> Result<DynEvent, InvalidEvent>;
}

impl RunControl {
    /// Decodes `value` as the event named `kind` (its short name, `Answer`, or its full name,
    /// `my_crate::Answer`) and delivers it to the run (to `step` only, when given). Nothing is
    /// delivered when the payload is refused.
    ///
    /// # Errors
    /// [`InvalidEvent`]: an unknown event type, a payload that does not fit it (naming the
    /// field), or an unknown step.
    pub fn send_json(
        &self,
        kind: &str,
        value: Value,
        step: Option<&str>,
    ) -> Result<(), InvalidEvent> {
        self.offer_json(kind, value, step).map(|_| ())
    }

    /// [`RunControl::send_json`], telling whether the run took the event: `Ok(false)` when a
    /// durable run had left memory, parked for a human in its store (its eviction decided
    /// before the event came, its outcome [`WorkflowError::Suspended`] on its way): nothing
    /// was delivered, and [`ServedWorkflow::answer_stored`] answers it there.
    ///
    /// ```
    /// use tidewater::prelude::*;
    /// use tidewater::serve::served;
    ///
    /// #[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
    /// #[event(request = Go)]
    /// struct Ask;
    ///
    /// #[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)]
    /// #[event(response)]
    /// struct Go { n: u8 }
    ///
    /// struct Wait;
    ///
    /// #[workflow]
    /// impl Wait {
    ///     #[step]
    ///     async fn ask(&self, _ev: StartEvent<()>) -> Ask { Ask }
    ///     #[step]
    ///     async fn go(&self, ev: Go) -> StopEvent<u8> { StopEvent(ev.n) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let run = served(Wait.runner()).start(serde_json::json!(null)).unwrap();
    /// let taken = run.control.offer_json("Go", serde_json::json!({ "n": 7 }), None);
    /// assert_eq!(taken, Ok(true));
    /// assert_eq!(run.outcome.await.unwrap(), serde_json::json!(7));
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`RunControl::send_json`].
    pub fn offer_json(
        &self,
        kind: &str,
        value: Value,
        step: Option<&str>,
    ) -> Result<bool, InvalidEvent> {
        let event = self.0.decode(kind, value)?;
        self.0.send(event, step)
    }

    /// Cancels the run.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Stops a durable run at its next quiet point and saves it for a resume (see
    /// [`Handler::suspend`]).
    pub fn suspend(&self) {
        self.0.suspend();
    }
}

/// The short name of an event (`my_crate::events::Answer` -> `Answer`), as the wire's `type`.
pub fn short_name(name: &str) -> &str {
    match name {
        "tidewater::StartEvent" => "StartEvent",
        "tidewater::StopEvent" => "StopEvent",
        _ => name.rsplit("::").next().unwrap_or(name),
    }
}

/// The wire envelope of an event: `{"type", "types", "qualified_name", "value"}`; a request to
/// a human is also an `InputRequiredEvent`, a response a `HumanResponseEvent` (the names the
/// Python clients look for). A type without serde shows as `{"debug": "<Debug>"}`.
pub fn envelope(event: &DynEvent) -> Value {
    let value = match event.to_json() {
        Some(Ok(value)) => value,
        Some(Err(error)) => serde_json::json!({ "error": error }),
        None => serde_json::json!({ "debug": format!("{event:?}") }),
    };
    let types = match event.kind() {
        EventKind::Request => serde_json::json!(["InputRequiredEvent"]),
        EventKind::Response => serde_json::json!(["HumanResponseEvent"]),
        _ => Value::Null,
    };
    serde_json::json!({
        "value": value,
        "qualified_name": event.name(),
        "type": short_name(event.name()),
        "types": types,
    })
}

/// Serves `runner`'s workflow from JSON. Its input must be `Deserialize` and `JsonSchema`, its
/// output `Serialize` and `JsonSchema`; its events are encoded when their types are
/// `Serialize` and decoded when they are `Deserialize`.
pub fn served<W>(runner: Runner<W>) -> Arc<dyn ServedWorkflow>
where
    W: Workflow,
    W::Input: DeserializeOwned + schemars::JsonSchema,
    W::Output: Serialize + schemars::JsonSchema,
{
    Arc::new(Served {
        runner,
        extra: Vec::new(),
    })
}

/// [`served`] with events that are not in the graph but can be sent into a run (a response a
/// step waits for inline with `ctx.wait_for::<R>()`).
pub fn served_with<W>(runner: Runner<W>, extra: Vec<EventMeta>) -> Arc<dyn ServedWorkflow>
where
    W: Workflow,
    W::Input: DeserializeOwned + schemars::JsonSchema,
    W::Output: Serialize + schemars::JsonSchema,
{
    Arc::new(Served { runner, extra })
}

/// The [`Registration`] `#[workflow(serve = "name")]` generates. Not public API.
#[doc(hidden)]
pub fn make_default<W>() -> Arc<dyn ServedWorkflow>
where
    W: Workflow + Default,
    W::Input: DeserializeOwned + schemars::JsonSchema,
    W::Output: Serialize + schemars::JsonSchema,
{
    served(Runner::new(W::default()))
}

struct Served<W: Workflow> {
    runner: Runner<W>,
    extra: Vec<EventMeta>,
}

fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// Every event a run of `W` can take from outside: what its steps accept, plus the extras.
fn events_of<W: Workflow>(extra: &[EventMeta]) -> Vec<EventMeta> {
    let mut all: Vec<EventMeta> = Vec::new();
    let graph = W::GRAPH;
    for meta in graph
        .steps
        .iter()
        .flat_map(|s| s.accepts.iter().chain(s.emits.iter()))
        .chain(extra)
    {
        if !all.iter().any(|m| m.id == meta.id) {
            all.push(*meta);
        }
    }
    all
}

impl<W> ServedWorkflow for Served<W>
where
    W: Workflow,
    W::Input: DeserializeOwned + schemars::JsonSchema,
    W::Output: Serialize + schemars::JsonSchema,
{
    fn graph(&self) -> &'static Graph {
        W::GRAPH
    }

    fn start_schema(&self) -> Value {
        schema_of::<W::Input>()
    }

    fn stop_schema(&self) -> Value {
        let mut schema = serde_json::json!({
            "title": "StopEvent",
            "type": "object",
            "properties": { "result": schema_of::<W::Output>() },
            "required": ["result"],
        });
        // Hoist the output's definitions so its `$ref`s resolve from the root.
        if let Some(result) = schema["properties"]["result"].as_object_mut() {
            result.remove("$schema");
            if let Some(defs) = result.remove("$defs") {
                schema["$defs"] = defs;
            }
        }
        schema
    }

    fn event_schemas(&self) -> Vec<(&'static str, Value)> {
        events_of::<W>(&self.extra)
            .into_iter()
            .map(|meta| {
                let schema = match meta.kind {
                    EventKind::Start => self.start_schema(),
                    EventKind::Stop => self.stop_schema(),
                    _ => (meta.schema)()
                        .unwrap_or_else(|| serde_json::json!({ "title": short_name(meta.name) })),
                };
                (meta.name, schema)
            })
            .collect()
    }

    fn start(&self, input: Value) -> Result<ServedRun, InvalidEvent> {
        let input = decode_input::<W>(input)?;
        Ok(self.wrap(self.runner.start(input)))
    }

    fn durable(&self) -> bool {
        W::DURABLE
    }

    fn start_stored(
        &self,
        key: &str,
        input: Value,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, StartError> {
        let input = decode_input::<W>(input)?;
        if !W::DURABLE {
            return Ok(self.wrap(self.runner.start(input)));
        }
        let handler = self.stored(store, evict_after).start_durable(key, input)?;
        Ok(self.wrap(handler))
    }

    fn resume_stored(
        &self,
        key: &str,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, WorkflowError> {
        let handler = self.stored(store, evict_after).resume_stored(key)?;
        Ok(self.wrap(handler))
    }

    fn answer_stored(
        &self,
        key: &str,
        kind: &str,
        value: Value,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
    ) -> Result<ServedRun, StartError> {
        let event = decode_event(&events_of::<W>(&self.extra), kind, value)?;
        match self.stored(store, evict_after).answer_dyn(key, event) {
            Ok(handler) => Ok(self.wrap(handler)),
            Err(WorkflowError::Undeliverable { event, reason }) => Err(InvalidEvent::new(format!(
                "event `{}` cannot be delivered: {reason}",
                short_name(event)
            ))
            .into()),
            Err(error) => Err(error.into()),
        }
    }

    fn work_stored(
        &self,
        store: Arc<dyn Store>,
        evict_after: Option<Duration>,
        max_runs: usize,
    ) -> Result<crate::Worker, WorkflowError> {
        self.stored(store, evict_after).work(max_runs)
    }

    fn enqueue_stored(
        &self,
        key: &str,
        input: Value,
        store: Arc<dyn Store>,
    ) -> Result<(), StartError> {
        let input = decode_input::<W>(input)?;
        self.stored(store, None).enqueue(key, input)?;
        Ok(())
    }

    fn encode_event(
        &self,
        kind: &str,
        value: Value,
    ) -> Result<crate::snapshot::EventRecord, InvalidEvent> {
        let event = decode_event(&events_of::<W>(&self.extra), kind, value)?;
        crate::snapshot::encode_event::<W>(&event).map_err(InvalidEvent::new)
    }
}

impl<W: Workflow> Served<W> {
    /// The runner, journaling in `store`, evicting parked runs after `evict_after`.
    fn stored(&self, store: Arc<dyn Store>, evict_after: Option<Duration>) -> Runner<W> {
        let runner = self.runner.clone().store(store);
        match evict_after {
            Some(idle) => runner.evict_waiting_after(idle),
            None => runner,
        }
    }
}

fn decode_input<W: Workflow>(input: Value) -> Result<W::Input, InvalidEvent>
where
    W::Input: DeserializeOwned,
{
    serde_path_to_error::deserialize(input).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            InvalidEvent::new(inner.to_string())
        } else {
            InvalidEvent::new(format!("{path}: {inner}"))
        }
    })
}

impl<W> Served<W>
where
    W: Workflow,
    W::Output: Serialize,
{
    fn wrap(&self, mut handler: Handler<W>) -> ServedRun {
        let events = handler.events();
        let run_id = handler.run_id();
        let republished = handler
            .shared()
            .journal
            .as_ref()
            .map_or(0, |journal| journal.republished);
        let shared = handler.shared_arc();
        let control = RunControl(Arc::new(Controls::<W> {
            shared,
            accepted: events_of::<W>(&self.extra),
        }));
        let outcome = Box::pin(async move {
            let output = handler.await?;
            serde_json::to_value(&output).map_err(|e| WorkflowError::Durable {
                key: run_id.to_string(),
                reason: format!("the output cannot be serialized: {e}"),
            })
        });
        ServedRun {
            run_id,
            events,
            control,
            outcome,
            republished,
        }
    }
}

struct Controls<W: Workflow> {
    shared: Arc<crate::context::RunShared<W>>,
    accepted: Vec<EventMeta>,
}

impl<W: Workflow> Control for Controls<W> {
    fn send(&self, event: DynEvent, step: Option<&str>) -> Result<bool, InvalidEvent> {
        let target = match step {
            Some(step) => Some(
                crate::context::target_step::<W>(step, event.id(), event.name())
                    .map_err(|e| InvalidEvent::new(e.to_string()))?,
            ),
            None => None,
        };
        let envelope = crate::context::Envelope {
            event,
            target,
            from: crate::context::Sender::Outside,
        };
        Ok(self.shared.post_unless_left(envelope).is_ok())
    }

    fn cancel(&self) {
        self.shared.cancel();
    }

    fn suspend(&self) {
        self.shared.suspend();
    }

    fn decode(&self, kind: &str, value: Value) -> Result<DynEvent, InvalidEvent> {
        decode_event(&self.accepted, kind, value)
    }
}

/// Decodes the event named `kind` (short or full name) among `accepted` from `value`.
fn decode_event(
    accepted: &[EventMeta],
    kind: &str,
    value: Value,
) -> Result<DynEvent, InvalidEvent> {
    let meta = accepted
        .iter()
        .filter(|m| {
            !matches!(
                m.kind,
                EventKind::Start | EventKind::Stop | EventKind::Failure
            )
        })
        .find(|m| m.name == kind || short_name(m.name) == kind)
        .ok_or_else(|| {
            let names: Vec<&str> = accepted
                .iter()
                .filter(|m| {
                    !matches!(
                        m.kind,
                        EventKind::Start | EventKind::Stop | EventKind::Failure
                    )
                })
                .map(|m| short_name(m.name))
                .collect();
            InvalidEvent::new(format!(
                "Invalid event type: {kind}. Expected one of {}",
                names.join(", ")
            ))
        })?;
    match (meta.from_json)(value) {
        Some(Ok(event)) => Ok(event),
        Some(Err(error)) => Err(InvalidEvent::new(format!(
            "Failed to deserialize event `{}`: {error}",
            short_name(meta.name)
        ))),
        None => Err(InvalidEvent::new(format!(
            "event `{}` cannot be sent as JSON: its type does not derive `Deserialize`",
            short_name(meta.name)
        ))),
    }
}
