//! Snapshots of a run: everything needed to resume it in another process, as plain serde data.
//!
//! A snapshot holds the run's state, the events queued for each step, the inputs of the steps
//! that were running (they run again on resume: at least once), the fan-in buffers, the requests
//! waiting for an answer, the retry counters and the stream position. It carries a format
//! version and a fingerprint of the graph: resuming a snapshot of another format, another
//! workflow or a changed graph is an error naming the field, never a silent default.
//!
//! Only `#[workflow(durable)]` workflows can be snapshotted: that option makes the macro generate
//! the (de)serialization of every event of the graph, which must be `Serialize` and
//! `Deserialize`, like the state, the input and the output.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{DynEvent, Event, EventKind, StepFailure};
use crate::graph::Graph;
use crate::workflow::Workflow;

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A captured run. Serialize it however you like (`to_json` is there for convenience) and give
/// it to `Runner::resume` in this or another process.
///
/// ```
/// use tidewater::snapshot::Snapshot;
///
/// let err = Snapshot::from_json(r#"{"format": 1, "workflow": 3}"#).unwrap_err();
/// assert_eq!(err.path, "workflow");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`] of the build that wrote it.
    pub format: u32,
    /// The workflow's type name.
    pub workflow: String,
    /// A hash of the graph (steps, their events, their workers), in hex.
    pub fingerprint: String,
    /// The id of the captured run.
    pub run_id: u64,
    /// How many step invocations had completed.
    pub completed: u64,
    /// The run's state.
    pub state: Value,
    /// The inputs of the steps that were running; they run again on resume.
    pub in_flight: Vec<InFlightRecord>,
    /// The events waiting for a worker, per step, in queue order.
    pub queued: Vec<QueuedRecord>,
    /// The fan-in buffers.
    pub collect: Vec<CollectRecord>,
    /// Requests published to the outside and not answered yet.
    pub pending_requests: Vec<EventRecord>,
    /// Answers that arrived before anyone waited for them.
    pub unclaimed: Vec<EventRecord>,
    /// How many times a catch-error step recovered.
    pub recoveries: u32,
    /// How many events the run had written to its stream.
    pub stream_seq: u64,
    /// How many step invocations the run had started: the next invocation's number
    /// ([`Context::invocation_key`](crate::Context::invocation_key)). 0 in snapshots written
    /// before it was kept.
    #[serde(default)]
    pub invocations: u64,
}

/// One serialized event: its stable name and its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    /// The event type's stable name (`Event::NAME`).
    pub event: String,
    /// The event, serialized.
    pub data: Value,
}

/// The input of a step that was running when the snapshot was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlightRecord {
    /// The step's name.
    pub step: String,
    /// Which attempt was running (retries continue from it).
    pub attempt: u32,
    /// The step's input.
    pub event: EventRecord,
    /// The invocation's number in its run, stable across resumes (its
    /// [`Context::invocation_key`](crate::Context::invocation_key)); 0 in snapshots written
    /// before it was kept (a new number is given then).
    #[serde(default)]
    pub invocation: u64,
    /// What the invocation recorded before it was captured, in order: the values of
    /// [`Context::once`](crate::Context::once), the answers its `wait_for`s received and how
    /// many events it sent. The re-run gets them back instead of doing that work again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memo: Vec<MemoRecord>,
    /// The child runs the invocation had running (`Context::run_child`), each captured whole:
    /// when the step runs again on resume, its n-th child of a workflow goes on from here
    /// instead of starting over. Children of a durable run keep their own journal instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildRecord>,
}

/// A child run that was running inside an in-flight invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildRecord {
    /// `Workflow#n`: the invocation's n-th child of that workflow.
    pub label: String,
    /// The child run.
    pub snapshot: Snapshot,
}

/// One value an invocation recorded: what [`Context::once`](crate::Context::once) returned
/// (label as given), the answer a `wait_for` received (label `wait_for:` and the event's
/// name, its data an [`EventRecord`]), or how many events of a type an attempt sent (label
/// `send_event:<attempt>:<event>`, or `send_event_to:<step>:<attempt>:<event>`; its data the
/// count): a re-run of the attempt does not send those again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoRecord {
    /// The label the step gave it.
    pub label: String,
    /// The value, serialized.
    pub value: Value,
}

/// An event waiting in a step's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuedRecord {
    /// The step's name.
    pub step: String,
    /// The event.
    pub event: EventRecord,
}

/// One fan-in buffer of a collecting step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectRecord {
    /// The collecting step's name.
    pub step: String,
    /// Which collection (derived from the collected types' ids).
    pub key: u64,
    /// The buffered events, one list per collected type.
    pub slots: Vec<Vec<EventRecord>>,
}

/// A snapshot that cannot be read or resumed: which field, and why.
///
/// ```
/// use tidewater::snapshot::SnapshotError;
/// let err = SnapshotError::new("queued[2].event", "unknown event type `x::Y`");
/// assert_eq!(err.to_string(), "bad snapshot field `queued[2].event`: unknown event type `x::Y`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad snapshot field `{path}`: {reason}")]
pub struct SnapshotError {
    /// The path of the bad field (`queued[2].event.data`, `fingerprint`, ...).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SnapshotError {
    /// An error about the field at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> SnapshotError {
        SnapshotError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl Snapshot {
    /// The snapshot as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a snapshot is plain JSON data")
    }

    /// Reads a snapshot from JSON text.
    ///
    /// # Errors
    /// The path of the first bad field and what is wrong with it (bad JSON, a missing or unknown
    /// field, a wrong type). Events and state are only checked against the workflow on resume.
    pub fn from_json(text: &str) -> Result<Snapshot, SnapshotError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let path = if path == "." || path == "?" {
                String::new()
            } else {
                path
            };
            SnapshotError::new(path, error.into_inner().to_string())
        })
    }
}

/// A hash of what a snapshot depends on: the workflow, its steps in order, what each accepts
/// and emits, and its workers. Renaming, adding or re-typing a step changes it.
pub fn fingerprint(graph: &Graph) -> String {
    let mut text = String::from(graph.workflow);
    for step in graph.steps {
        text.push('|');
        text.push_str(step.name);
        for meta in step.accepts {
            text.push_str(";a:");
            text.push_str(meta.name);
        }
        for meta in step.emits {
            text.push_str(";e:");
            text.push_str(meta.name);
        }
        text.push_str(&format!(";w{}", step.num_workers));
    }
    format!("{:016x}", crate::EventId::of(&text).raw())
}

/// Serializes a durable workflow's state or output (generated code calls this).
#[doc(hidden)]
pub fn to_value<T: Serialize>(value: &T) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

/// Deserializes a durable workflow's state or output (generated code calls this).
#[doc(hidden)]
pub fn from_value<T: for<'de> Deserialize<'de>>(data: Value) -> Result<T, String> {
    serde_json::from_value(data).map_err(|e| e.to_string())
}

/// Encodes one event of a durable workflow (generated code calls this per event type).
#[doc(hidden)]
pub fn encode<E: Event + Serialize>(event: &E) -> Result<Value, String> {
    to_value(event)
}

/// Decodes one event of a durable workflow (generated code calls this per event type).
#[doc(hidden)]
pub fn decode<E: Event + for<'de> Deserialize<'de>>(data: Value) -> Result<DynEvent, String> {
    from_value::<E>(data).map(DynEvent::new)
}

pub(crate) fn encode_event<W: Workflow>(event: &DynEvent) -> Result<EventRecord, String> {
    let data = if event.kind() == EventKind::Failure {
        let failure = event
            .downcast_ref::<StepFailure>()
            .expect("the failure kind is StepFailure");
        let input = encode_event::<W>(&failure.input)?;
        serde_json::json!({
            "step": failure.step,
            "attempts": failure.attempts,
            "error": failure.error.to_string(),
            "input": input,
        })
    } else {
        W::__encode_event(event)?
    };
    Ok(EventRecord {
        event: event.name().to_string(),
        data,
    })
}

pub(crate) fn decode_event<W: Workflow>(
    record: &EventRecord,
) -> Result<DynEvent, (String, String)> {
    if record.event == StepFailure::NAME {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Failure {
            step: String,
            attempts: u32,
            error: String,
            input: EventRecord,
        }
        let failure: Failure = serde_json::from_value(record.data.clone())
            .map_err(|e| ("data".to_string(), e.to_string()))?;
        let step = W::GRAPH
            .steps
            .iter()
            .find(|s| s.name == failure.step)
            .ok_or_else(|| {
                (
                    "data.step".to_string(),
                    format!("no step `{}`", failure.step),
                )
            })?
            .name;
        let input = decode_event::<W>(&failure.input)
            .map_err(|(path, reason)| (format!("data.input.{path}"), reason))?;
        let error: crate::BoxError = failure.error.into();
        return Ok(DynEvent::new(StepFailure {
            step,
            input,
            attempts: failure.attempts,
            error: error.into(),
        }));
    }
    W::__decode_event(&record.event, record.data.clone()).map_err(|reason| {
        let path = if reason.starts_with("unknown event type") {
            "event"
        } else {
            "data"
        };
        (path.to_string(), reason)
    })
}
