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

/// The snapshot format this build writes; it reads every format from 1 up to this one.
///
/// Format 2 added the run's deadline (`Snapshot::deadline_ms`) and the end of a retry delay
/// (`InFlightRecord::retry_at_ms`); a format-1 snapshot has neither (a resumed run gets a
/// fresh time limit, and a step waiting out a delay retries at once).
pub const SNAPSHOT_FORMAT: u32 = 2;

/// The `format` of a snapshot given as JSON, when it is newer than this build reads.
pub(crate) fn newer_format(snapshot: &Value) -> Option<u64> {
    snapshot["format"]
        .as_u64()
        .filter(|&format| format > u64::from(SNAPSHOT_FORMAT))
}

/// Why a snapshot of `format` cannot be read.
pub(crate) fn unsupported_format(format: u64) -> String {
    format!(
        "unsupported format {format}: this build reads formats 1 to {SNAPSHOT_FORMAT} (was it \
         written by a newer build?)"
    )
}

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
    /// When the run's time limit (`Runner::timeout`) passes, in milliseconds since the Unix
    /// epoch: a resumed run keeps it rather than starting a fresh limit. `None` for a run with
    /// no limit, and in format-1 snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Durable runs: the number of the last message of the run's inbox this checkpoint routed
    /// (`Store::inbox`); a resumed run reads the messages after it. 0 when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inbox: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// The attempt `attempt` is due after a retry delay that ends at this time, in milliseconds
    /// since the Unix epoch: the invocation was waiting out its backoff, and a resumed run
    /// waits out the rest of it. `None` when the attempt was running (or in format-1
    /// snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
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
            // A newer build's snapshot may have fields this one does not know: its format is
            // what to report, not the first unknown field.
            let value = serde_json::from_str::<Value>(text).unwrap_or_default();
            if let Some(format) = newer_format(&value) {
                return SnapshotError::new("format", unsupported_format(format));
            }
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

/// Now, in milliseconds since the Unix epoch (the clock of `deadline_ms` and `retry_at_ms`,
/// which must mean the same in another process).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A tokio instant as a wall-clock time in milliseconds since the Unix epoch (rounded up, so
/// that a resumed run never acts before it).
pub(crate) fn instant_to_unix_millis(at: tokio::time::Instant) -> u64 {
    let now = tokio::time::Instant::now();
    if at < now {
        let ago = u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX);
        return unix_millis().saturating_sub(ago);
    }
    let micros = u64::try_from((at - now).as_micros()).unwrap_or(u64::MAX);
    unix_millis().saturating_add(micros.div_ceil(1000))
}

/// A wall-clock time in milliseconds since the Unix epoch as a tokio instant.
pub(crate) fn unix_millis_to_instant(at: u64) -> tokio::time::Instant {
    let wall = unix_millis();
    let now = tokio::time::Instant::now();
    if at < wall {
        // Passed: as long ago as it was (or now, before the clock's start).
        let ago = std::time::Duration::from_millis(wall - at);
        return now.checked_sub(ago).unwrap_or(now);
    }
    let left = std::time::Duration::from_millis(at - wall);
    // As `tokio::time::sleep` does with a delay too long to represent: thirty years.
    now.checked_add(left)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400 * 365 * 30))
}

/// Serializes a durable workflow's state or output (generated code calls this).
///
/// A NaN or an infinity is refused with the path of its field: JSON cannot hold it
/// (`serde_json` writes `null`, which then does not read back as a number, and the run could
/// not be resumed).
#[doc(hidden)]
pub fn to_value<T: Serialize>(value: &T) -> Result<Value, String> {
    let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
    // Only a value holding a null can hold a non-finite number: the common case pays a walk.
    if has_null(&json) {
        if let Err(error) = serde_path_to_error::serialize(value, finite::Finite) {
            let path = error.path().to_string();
            let inner = error.into_inner();
            return Err(if path == "." || path == "?" {
                inner.to_string()
            } else {
                format!("`{path}` {inner}")
            });
        }
    }
    Ok(json)
}

fn has_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(has_null),
        Value::Object(fields) => fields.values().any(has_null),
        _ => false,
    }
}

/// A serializer that produces nothing and fails on a NaN or an infinity.
mod finite {
    use serde::Serialize;
    use serde::ser;

    pub(super) struct Finite;

    #[derive(Debug)]
    pub(super) struct NotFinite(String);

    impl std::fmt::Display for NotFinite {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for NotFinite {}

    impl ser::Error for NotFinite {
        fn custom<T: std::fmt::Display>(message: T) -> NotFinite {
            NotFinite(message.to_string())
        }
    }

    fn check(value: f64) -> Result<(), NotFinite> {
        if value.is_finite() {
            return Ok(());
        }
        Err(NotFinite(format!(
            "is {value}, which JSON cannot hold (it would be saved as null and the run could \
             not be resumed)"
        )))
    }

    macro_rules! accept {
        ($($method:ident($($ty:ty)?)),* $(,)?) => {
            $(fn $method(self $(, _: $ty)?) -> Result<(), NotFinite> { Ok(()) })*
        };
    }

    impl ser::Serializer for Finite {
        type Ok = ();
        type Error = NotFinite;
        type SerializeSeq = Finite;
        type SerializeTuple = Finite;
        type SerializeTupleStruct = Finite;
        type SerializeTupleVariant = Finite;
        type SerializeMap = Finite;
        type SerializeStruct = Finite;
        type SerializeStructVariant = Finite;

        accept!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_i128(i128),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_u128(u128),
            serialize_char(char),
            serialize_str(&str),
            serialize_bytes(&[u8]),
            serialize_none(),
            serialize_unit(),
            serialize_unit_struct(&'static str),
        );

        fn serialize_f32(self, value: f32) -> Result<(), NotFinite> {
            check(value.into())
        }
        fn serialize_f64(self, value: f64) -> Result<(), NotFinite> {
            check(value)
        }
        fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), NotFinite> {
            value.serialize(Finite)
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<(), NotFinite> {
            Ok(())
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<(), NotFinite> {
            value.serialize(Finite)
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            value: &T,
        ) -> Result<(), NotFinite> {
            value.serialize(Finite)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Finite, NotFinite> {
            Ok(Finite)
        }
        fn serialize_tuple(self, _: usize) -> Result<Finite, NotFinite> {
            Ok(Finite)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Finite, NotFinite> {
            Ok(Finite)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Finite, NotFinite> {
            Ok(Finite)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Finite, NotFinite> {
            Ok(Finite)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Finite, NotFinite> {
            Ok(Finite)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Finite, NotFinite> {
            Ok(Finite)
        }
    }

    macro_rules! compound {
        ($($trait:ident :: $method:ident),* $(,)?) => {
            $(impl ser::$trait for Finite {
                type Ok = ();
                type Error = NotFinite;
                fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), NotFinite> {
                    value.serialize(Finite)
                }
                fn end(self) -> Result<(), NotFinite> {
                    Ok(())
                }
            })*
        };
    }

    compound!(
        SerializeSeq::serialize_element,
        SerializeTuple::serialize_element,
        SerializeTupleStruct::serialize_field,
        SerializeTupleVariant::serialize_field,
    );

    impl ser::SerializeMap for Finite {
        type Ok = ();
        type Error = NotFinite;
        fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), NotFinite> {
            key.serialize(Finite)
        }
        fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), NotFinite> {
            value.serialize(Finite)
        }
        fn end(self) -> Result<(), NotFinite> {
            Ok(())
        }
    }

    impl ser::SerializeStruct for Finite {
        type Ok = ();
        type Error = NotFinite;
        fn serialize_field<T: ?Sized + Serialize>(
            &mut self,
            _: &'static str,
            value: &T,
        ) -> Result<(), NotFinite> {
            value.serialize(Finite)
        }
        fn end(self) -> Result<(), NotFinite> {
            Ok(())
        }
    }

    impl ser::SerializeStructVariant for Finite {
        type Ok = ();
        type Error = NotFinite;
        fn serialize_field<T: ?Sized + Serialize>(
            &mut self,
            _: &'static str,
            value: &T,
        ) -> Result<(), NotFinite> {
            value.serialize(Finite)
        }
        fn end(self) -> Result<(), NotFinite> {
            Ok(())
        }
    }
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
