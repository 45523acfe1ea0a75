//! Several servers on one shared persistence (PostgreSQL, `Server::postgres`): every server
//! answers for every handler, wherever its run executes.
//!
//! - A handler is a row every server reads ([`Persistence::handler`]). Its status is the row's
//!   once it ended; while the row says `running`, a durable run's status is read from its
//!   record in the store (the run may be executing in another server or a worker, or its
//!   server died and another took it over), and the first server to see it ended writes the
//!   end into the row.
//! - A durable run's stream is its **journal** in the store (`Store::events`): every process
//!   that executes the run writes it, under its lease, fenced, so whoever executes the run
//!   (the server that started it, another server that took it over, a worker) is the one that
//!   writes it, and every server reads the same numbered events. The wire's sequence number of
//!   journal event `n` is `n - 1`; the terminal event (from the run's record) comes last,
//!   numbered after the journal. Events a dead owner journaled after its last checkpoint are
//!   left out once the resumed run has marked them superseded (a reader that saw them first
//!   gets the marker, an internal `EventsSuperseded` event, instead).
//! - A run that is not durable lives in the server that started it: that server logs its
//!   events in the persistence ([`Persistence::events_after`]), which the others read.
//! - Answers and cancels of a durable run go to its **inbox** in the store (`Store::post`,
//!   idempotent by message id), which the run reads wherever it lives; a parked or orphaned
//!   run with messages waiting is claimed by a worker, and every server runs workers for the
//!   durable workflows it serves ([`start_workers`]).
//!
//! Readers poll the database with a bounded interval (20 ms growing to
//! [`POLL_MAX`]), and wake at once for the runs executing in their own process.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tidewater::snapshot::EventRecord;
use tidewater::store::{Message, RunRecord, RunStatus, SUPERSEDED, StoreErrorKind};

use crate::api::{ApiError, Shared, format_event};
use crate::handlers::{Entry, Persist, Status, terminal};
use crate::persist::{End, Row};

/// The longest pause between two reads of a stream that has nothing new.
pub(crate) const POLL_MAX: Duration = Duration::from_millis(100);

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// A handler's status and outcome as every server sees it.
pub(crate) struct Seen {
    pub(crate) status: Status,
    error: Option<String>,
    result: Option<Value>,
    updated_at: Option<String>,
    completed_at: Option<String>,
}

fn stop_envelope(output: Value) -> Value {
    json!({
        "value": { "result": output },
        "qualified_name": "workflows.events.StopEvent",
        "type": "StopEvent",
        "types": null,
    })
}

fn status_of(name: &str) -> Status {
    match name {
        "running" => Status::Running,
        "completed" => Status::Completed,
        "cancelled" => Status::Cancelled,
        _ => Status::Failed,
    }
}

/// The handler as seen now: the row once it ended, else (durable) the run's record, whose end
/// is then written into the row.
pub(crate) fn seen(p: &Persist, row: &Row) -> Seen {
    let from_row = || Seen {
        status: status_of(&row.status),
        error: row.error.clone(),
        result: row.result.clone().unwrap_or_default(),
        updated_at: row.updated_at.clone(),
        completed_at: row.completed_at.clone(),
    };
    if row.status != "running" || !row.durable {
        return from_row();
    }
    let (status, error, result) = match p.store().load(&row.handler_id) {
        Ok(Some(RunRecord {
            status,
            output,
            error,
            ..
        })) => match status {
            RunStatus::Finished => (
                Status::Completed,
                None,
                Some(stop_envelope(output.unwrap_or(Value::Null))),
            ),
            RunStatus::Failed => (Status::Failed, error, None),
            RunStatus::Cancelled => (Status::Cancelled, None, None),
            _ => return from_row(),
        },
        Ok(None) => return from_row(),
        Err(e) => {
            // Left running: a record that cannot be read now may be read later (a database
            // that restarts), and the run's owner knows better than a reader.
            tracing::warn!(handler_id = %row.handler_id, error = %e, "cannot read the run's record");
            return from_row();
        }
    };
    let now = crate::time::now();
    p.finish(&End {
        id: &row.handler_id,
        status: status.as_str(),
        error: error.as_deref(),
        result: result.as_ref(),
        at: &now,
        last: None,
    });
    Seen {
        status,
        error,
        result,
        updated_at: Some(now.clone()),
        completed_at: Some(now),
    }
}

/// The terminal event of a durable run that ended as `seen` says.
fn terminal_event(seen: &Seen) -> Value {
    match seen.status {
        Status::Completed => seen
            .result
            .clone()
            .unwrap_or_else(|| stop_envelope(Value::Null)),
        Status::Cancelled => terminal("WorkflowCancelledEvent", json!({})),
        _ => terminal(
            "WorkflowFailedEvent",
            json!({
                "step_name": null,
                "exception": { "type": "WorkflowError", "message": seen.error },
                "attempts": 0,
            }),
        ),
    }
}

/// The wire's `HandlerData`.
pub(crate) fn data(row: &Row, seen: &Seen) -> Value {
    json!({
        "handler_id": row.handler_id,
        "workflow_name": row.workflow_name,
        "run_id": row.run_id,
        "error": seen.error,
        "result": seen.result,
        "result_unreadable": row.result.is_err(),
        "status": seen.status.as_str(),
        "started_at": row.started_at,
        "updated_at": seen.updated_at,
        "completed_at": seen.completed_at,
    })
}

/// The handler `id` and how it is now, or 404.
pub(crate) fn handler(p: &Persist, id: &str) -> Result<(Row, Seen), ApiError> {
    let row = p
        .handler(id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Handler not found"))?;
    let seen = seen(p, &row);
    Ok((row, seen))
}

/// Every handler, in start order, as `HandlerData`.
pub(crate) fn list(p: &Persist) -> Result<Vec<Value>, ApiError> {
    Ok(p.handlers()
        .map_err(internal)?
        .iter()
        .map(|row| data(row, &seen(p, row)))
        .collect())
}

/// Waits until handler `id` has ended (at most `limit`), and returns its data then (or as it
/// is at the limit). Wakes on the local run's changes, polls the database otherwise.
pub(crate) async fn wait_ended(
    state: &Shared,
    p: &Persist,
    id: &str,
    limit: Option<Duration>,
) -> Result<Value, ApiError> {
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let mut pause = Duration::from_millis(10);
    loop {
        let (row, seen) = handler(p, id)?;
        if seen.status.is_terminal() || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(data(&row, &seen));
        }
        wait_change(state.handlers.get(id).as_deref(), pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Sleeps `pause`, or less when the run executing here changes.
async fn wait_change(local: Option<&Entry>, pause: Duration) {
    match local {
        Some(entry) => {
            let mut rx = entry.watch();
            let _ = tokio::time::timeout(pause, rx.changed()).await;
        }
        None => tokio::time::sleep(pause).await,
    }
}

/// The wire envelope of a journaled event, typed by the workflow's graph when it is served
/// here (a request for a human is an `InputRequiredEvent`).
fn journal_envelope(state: &Shared, workflow: &str, record: &EventRecord) -> Value {
    let meta = state.workflows.get(workflow).and_then(|wf| {
        wf.graph()
            .steps
            .iter()
            .flat_map(|s| s.accepts.iter().chain(s.emits.iter()))
            .find(|m| m.name == record.event)
            .copied()
    });
    let types = match meta.map(|m| m.kind) {
        Some(tidewater::EventKind::Request) => json!(["InputRequiredEvent"]),
        Some(tidewater::EventKind::Response) => json!(["HumanResponseEvent"]),
        _ => Value::Null,
    };
    json!({
        "value": record.data,
        "qualified_name": record.event,
        "type": tidewater::serve::short_name(&record.event),
        "types": types,
    })
}

/// One handler's stream read from the shared persistence, after a cursor.
pub(crate) struct SharedReader {
    pub(crate) state: Arc<Shared>,
    pub(crate) p: Persist,
    pub(crate) id: String,
    pub(crate) workflow: String,
    pub(crate) durable: bool,
    /// The next wire sequence number to send.
    pub(crate) next: i64,
    /// Durable runs: the journal number read up to.
    pub(crate) journal: u64,
    pub(crate) sse: bool,
    pub(crate) include_internal: bool,
    pub(crate) include_qualified_name: bool,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) done: bool,
}

/// Where a stream starts for `after_sequence` (`None`: now, after what is there): the next
/// wire number and journal number, or `None` when the handler ended and nothing is left.
pub(crate) fn cursor(
    p: &Persist,
    row: &Row,
    seen: &Seen,
    after: Option<i64>,
) -> Result<Option<(i64, u64)>, ApiError> {
    // The last wire number there is now, terminal event included.
    let last = if row.durable {
        let journal = p.journal_after(&row.handler_id, 0).map_err(internal)?;
        let top = journal.last().map_or(0, |(seq, _)| *seq as i64);
        if seen.status.is_terminal() {
            top
        } else {
            top - 1
        }
    } else {
        p.events_after(&row.handler_id, -1)
            .map_err(internal)?
            .last()
            .map_or(-1, |(seq, _)| *seq)
    };
    let from = after.unwrap_or(last);
    if from >= last && seen.status.is_terminal() {
        return Ok(None);
    }
    let next = (from + 1).max(0);
    Ok(Some((next, next as u64)))
}

impl SharedReader {
    /// The next chunk: every event past the cursor, or a heartbeat; `None` once the terminal
    /// event was sent (or the handler is gone).
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut pause = Duration::from_millis(20);
        let mut quiet = Duration::ZERO;
        loop {
            // The status first: once it says ended, the journal read next is complete.
            let row = match self.p.handler(&self.id) {
                Ok(Some(row)) => row,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(handler_id = %self.id, error = %e, "cannot read the handler");
                    tokio::time::sleep(POLL_MAX).await;
                    continue;
                }
            };
            let seen = seen(&self.p, &row);
            let ended = seen.status.is_terminal();
            // A durable run's terminal event is numbered after everything it journaled.
            let top = if self.durable && ended {
                match self.p.journal_after(&self.id, 0) {
                    Ok(journal) => Some(journal.last().map_or(0, |(seq, _)| *seq as i64)),
                    Err(e) => {
                        tracing::warn!(handler_id = %self.id, error = %e, "cannot read the stream");
                        tokio::time::sleep(POLL_MAX).await;
                        continue;
                    }
                }
            } else {
                None
            };
            let batch = match self.batch() {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(handler_id = %self.id, error = %e, "cannot read the stream");
                    tokio::time::sleep(POLL_MAX).await;
                    continue;
                }
            };
            let mut out = String::new();
            let mut emit = |seq: i64, event: Value| {
                if let Some(text) = format_event(
                    seq,
                    event,
                    self.sse,
                    self.include_internal,
                    self.include_qualified_name,
                ) {
                    out.push_str(&text);
                }
            };
            let empty = batch.is_empty();
            for (seq, event) in batch {
                emit(seq, event);
            }
            if let Some(top) = top {
                if top >= self.next {
                    emit(top, terminal_event(&seen));
                }
                self.done = true;
            } else if ended && empty {
                // The log ends with the terminal event, written with the status.
                self.done = true;
            }
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
            if self.done {
                return None;
            }
            if let Some(every) = self.heartbeat {
                if quiet >= every {
                    return Some(Bytes::from_static(b": heartbeat\n\n"));
                }
            }
            wait_change(self.state.handlers.get(&self.id).as_deref(), pause).await;
            quiet += pause;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// The events past the cursor, numbered; moves the cursor.
    fn batch(&mut self) -> std::io::Result<Vec<(i64, Value)>> {
        if !self.durable {
            let events = self.p.events_after(&self.id, self.next - 1)?;
            if let Some((seq, _)) = events.last() {
                self.next = seq + 1;
            }
            return Ok(events);
        }
        let journal = self.p.journal_after(&self.id, self.journal)?;
        // What a resumed run marked superseded in this batch is left out; a marker for events
        // already sent goes out as an internal event.
        let dead: Vec<(u64, u64)> = journal
            .iter()
            .filter(|(_, r)| r.event == SUPERSEDED)
            .filter_map(|(_, r)| Some((r.data["first"].as_u64()?, r.data["last"].as_u64()?)))
            .collect();
        let mut out = Vec::new();
        for (seq, record) in journal {
            self.journal = seq;
            let wire = seq as i64 - 1;
            self.next = wire + 1;
            if record.event == SUPERSEDED {
                let (first, last) = (
                    record.data["first"].as_u64().unwrap_or(0),
                    record.data["last"].as_u64().unwrap_or(0),
                );
                out.push((
                    wire,
                    json!({
                        "value": { "first": first as i64 - 1, "last": last as i64 - 1 },
                        "qualified_name": "tidewater.EventsSuperseded",
                        "type": "EventsSuperseded",
                        "types": ["InternalDispatchEvent"],
                    }),
                ));
            } else if !dead.iter().any(|(a, b)| (*a..=*b).contains(&seq)) {
                out.push((wire, journal_envelope(&self.state, &self.workflow, &record)));
            }
        }
        Ok(out)
    }
}

/// Posts the event `kind` with `value` to the inbox of the durable run `row`, wherever it
/// executes: written once per `message_id` (an answer posted twice, to one server or two, is
/// consumed once); a fresh id when the client gave none.
pub(crate) fn post(
    state: &Shared,
    p: &Persist,
    row: &Row,
    kind: &str,
    value: Value,
    step: Option<&str>,
    message_id: Option<String>,
) -> Result<bool, ApiError> {
    if step.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a durable run on a shared database takes events through its inbox: send it \
             without a step",
        ));
    }
    let wf = state.workflows.get(&row.workflow_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this server does not serve workflow `{}`: post to a server that does",
                row.workflow_name
            ),
        )
    })?;
    let record = wf
        .encode_event(kind, value)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.message))?;
    let id = message_id.unwrap_or_else(|| format!("http-{}", crate::time::handler_id()));
    deliver(p, row, &Message::event(id, record))
}

/// Posts a request to cancel the durable run `row` to its inbox (one per handler: cancelling
/// twice asks once).
pub(crate) fn post_cancel(p: &Persist, row: &Row) -> Result<bool, ApiError> {
    deliver(
        p,
        row,
        &Message::cancel(format!("cancel-{}", row.handler_id)),
    )
}

fn deliver(p: &Persist, row: &Row, message: &Message) -> Result<bool, ApiError> {
    match p.store().post(&row.handler_id, message) {
        Ok(fresh) => Ok(fresh),
        Err(e) if e.kind == StoreErrorKind::Ended => Err(ApiError::new(
            StatusCode::CONFLICT,
            "Workflow already completed",
        )),
        Err(e) => Err(internal(e)),
    }
}

/// Starts, in the background, a worker for each durable workflow served: it claims the runs
/// that need an owner (a run whose process died or shut down, a parked run with an answer
/// waiting) and runs them here.
pub(crate) fn start_workers(state: &Shared, p: &Persist) -> Vec<tidewater::Worker> {
    let mut workers = Vec::new();
    for (name, wf) in state.workflows.iter().filter(|(_, wf)| wf.durable()) {
        match wf.work_stored(p.store(), state.evict_after, WORKER_RUNS) {
            Ok(worker) => workers.push(worker),
            Err(error) => tracing::error!(workflow = %name, %error, "cannot start a worker"),
        }
    }
    workers
}

/// How many claimed runs a server's worker runs at a time, per workflow.
const WORKER_RUNS: usize = 64;
