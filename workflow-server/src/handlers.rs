//! The server's handlers: one per started run, with its status, result and event log. The log
//! numbers every event from 0 (the wire's sequence numbers) and always ends with exactly one
//! terminal event (`StopEvent`, `WorkflowFailedEvent`, `WorkflowTimedOutEvent` or
//! `WorkflowCancelledEvent`), written together with the final status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tidewater::serve::{RunControl, ServedRun, envelope};
use tidewater::{StreamItem, WorkflowError};
use tokio::sync::watch;

use crate::persist::{End, NewHandler, Persistence, Row};

/// The server's persistence, shared by its handlers.
pub(crate) type Persist = Arc<dyn Persistence>;

/// A handler's status, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        self != Status::Running
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) status: Status,
    pub(crate) updated_at: Option<String>,
    pub(crate) completed_at: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) result: Option<Value>,
    /// Event envelopes; an event's sequence number is its index.
    pub(crate) events: Vec<Value>,
    /// The run waited for a human past the idle time and left memory: it is in the store, and
    /// an answer brings it back.
    pub(crate) parked: bool,
}

/// One handler: a run and what the server keeps of it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) handler_id: String,
    pub(crate) workflow_name: String,
    pub(crate) run_id: String,
    pub(crate) started_at: String,
    state: Mutex<State>,
    /// Bumped at every append and at the end: readers wait on it.
    changed: watch::Sender<u64>,
    /// `None` for a handler read back from the file after its run ended, and while its run is
    /// parked out of memory.
    control: Mutex<Option<RunControl>>,
    persist: Option<Persist>,
    /// Writes its events to the persistence's log; not for a durable run of a shared
    /// persistence, whose stream every server reads from the store's journal.
    log_events: bool,
    /// Held while a parked run is brought back, so that two answers resume it once.
    pub(crate) revive: tokio::sync::Mutex<()>,
}

impl Entry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn control(&self) -> Option<RunControl> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The run left memory waiting for a human (`WorkflowError::Suspended`).
    fn park(&self) {
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut state = self.lock();
        state.parked = true;
        state.updated_at = Some(crate::time::now());
        drop(state);
        self.changed.send_modify(|n| *n += 1);
        tracing::info!("run parked for a human: evicted to the store until answered");
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn push(&self, event: Value) {
        let mut state = self.lock();
        if let Some(p) = self.persist.as_ref().filter(|_| self.log_events) {
            p.append_event(&self.handler_id, state.events.len(), &event);
        }
        state.events.push(event);
        state.updated_at = Some(crate::time::now());
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    fn finish(&self, status: Status, error: Option<String>, result: Option<Value>, last: Value) {
        let mut state = self.lock();
        let now = crate::time::now();
        state.status = status;
        state.error = error;
        state.result = result;
        if let Some(p) = &self.persist {
            p.finish(&End {
                id: &self.handler_id,
                status: status.as_str(),
                error: state.error.as_deref(),
                result: state.result.as_ref(),
                at: &now,
                last: self.log_events.then_some((state.events.len(), &last)),
            });
        }
        state.updated_at = Some(now.clone());
        state.completed_at = Some(now);
        state.events.push(last);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until the run has ended or left memory parked.
    pub(crate) async fn quiet(&self) {
        self.wait_for(|state| state.status.is_terminal() || state.parked)
            .await;
    }

    /// Waits until the run has ended.
    pub(crate) async fn ended(&self) {
        self.wait_for(|state| state.status.is_terminal()).await;
    }

    /// Waits until `done` holds of the handler's state (checked at every change).
    async fn wait_for(&self, done: impl Fn(&State) -> bool) {
        let mut rx = self.watch();
        while !done(&self.lock()) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The wire's `HandlerData`.
    pub(crate) fn data(&self) -> Value {
        let state = self.lock();
        json!({
            "handler_id": self.handler_id,
            "workflow_name": self.workflow_name,
            "run_id": self.run_id,
            "error": state.error,
            "result": state.result,
            "result_unreadable": false,
            "status": state.status.as_str(),
            "started_at": self.started_at,
            "updated_at": state.updated_at,
            "completed_at": state.completed_at,
        })
    }
}

/// Every handler the server knows.
#[derive(Debug, Default)]
pub(crate) struct Handlers {
    map: Mutex<HashMap<String, Arc<Entry>>>,
    /// Handler ids in start order, for stable listings.
    order: Mutex<Vec<String>>,
}

impl Handlers {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn remove(&self, id: &str) -> bool {
        if let Some(p) = self.get(id).and_then(|e| e.persist.clone()) {
            p.delete(id);
        }
        let removed = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some();
        if removed {
            self.order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|h| h != id);
        }
        removed
    }

    pub(crate) fn all(&self) -> Vec<Arc<Entry>> {
        let order = self.order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        order.iter().filter_map(|id| map.get(id).cloned()).collect()
    }

    fn insert(&self, entry: Arc<Entry>) {
        let id = entry.handler_id.clone();
        let old = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), entry);
        if old.is_none() {
            self.order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(id);
        }
    }

    /// A handler read back from the file whose run is not running here (it ended, or it
    /// cannot be resumed: then it is marked failed with `failure`).
    pub(crate) fn restore_ended(
        &self,
        row: Row,
        failure: Option<String>,
        persist: Option<Persist>,
    ) {
        let status = match row.status.as_str() {
            "completed" => Status::Completed,
            "cancelled" => Status::Cancelled,
            _ => Status::Failed,
        };
        let (status, error, result, events) = match (failure, row.result, row.events) {
            (None, Ok(result), Ok(events)) => (status, row.error, result, events),
            (failure, result, events) => {
                let reason = failure
                    .or_else(|| result.as_ref().err().cloned())
                    .or_else(|| events.as_ref().err().cloned())
                    .unwrap_or_default();
                let mut events = events.unwrap_or_default();
                let last = terminal(
                    "WorkflowFailedEvent",
                    json!({ "step_name": null, "exception": { "type": "ServerRestart", "message": reason }, "attempts": 0 }),
                );
                let now = crate::time::now();
                if let Some(p) = &persist {
                    p.finish(&End {
                        id: &row.handler_id,
                        status: "failed",
                        error: Some(&reason),
                        result: None,
                        at: &now,
                        last: Some((events.len(), &last)),
                    });
                }
                events.push(last);
                tracing::error!(handler_id = %row.handler_id, %reason, "handler marked failed");
                (Status::Failed, Some(reason), None, events)
            }
        };
        let completed_at = row.completed_at.or_else(|| Some(crate::time::now()));
        self.insert(Arc::new(Entry {
            handler_id: row.handler_id,
            workflow_name: row.workflow_name,
            run_id: row.run_id,
            started_at: row.started_at,
            state: Mutex::new(State {
                status,
                updated_at: row.updated_at.or_else(|| completed_at.clone()),
                completed_at,
                error,
                result,
                events,
                parked: false,
            }),
            changed: watch::channel(0).0,
            control: Mutex::new(None),
            persist,
            log_events: true,
            revive: tokio::sync::Mutex::new(()),
        }));
    }

    /// Records a started run and spawns the task that logs its stream and its outcome.
    /// `permit` (the concurrent-run cap) is held until the run ends.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per origin (a new run, a resumed one); a struct would only rename them"
    )]
    pub(crate) fn track(
        &self,
        handler_id: String,
        workflow_name: String,
        run: ServedRun,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        traceparent: Option<String>,
        persist: Option<Persist>,
        origin: Origin,
    ) -> Arc<Entry> {
        let now = crate::time::now();
        let (run_id, started_at, events, log_events) = match origin {
            Origin::Resumed(row) => (
                row.run_id,
                row.started_at,
                row.events.unwrap_or_default(),
                true,
            ),
            Origin::Started {
                run_id,
                started_at,
                log_events,
            } => (run_id, started_at, Vec::new(), log_events),
        };
        let entry = Arc::new(Entry {
            handler_id: handler_id.clone(),
            workflow_name,
            run_id,
            started_at,
            state: Mutex::new(State {
                status: Status::Running,
                updated_at: Some(now),
                completed_at: None,
                error: None,
                result: None,
                events,
                parked: false,
            }),
            changed: watch::channel(0).0,
            control: Mutex::new(None),
            persist,
            log_events,
            revive: tokio::sync::Mutex::new(()),
        });
        self.insert(entry.clone());
        drive(entry.clone(), run, permit, traceparent);
        entry
    }
}

/// Where a tracked run comes from.
pub(crate) enum Origin {
    /// Started now, its handler already recorded (see [`record`]).
    Started {
        run_id: String,
        started_at: String,
        log_events: bool,
    },
    /// Read back from the persistence and resumed.
    Resumed(Box<Row>),
}

/// Records a new handler in the persistence (when there is one) before its run starts, and
/// says how it is to be tracked; `None` when a handler with this id exists in the
/// persistence (another server of a shared one made it).
pub(crate) fn record(
    persist: Option<&Persist>,
    handler_id: &str,
    workflow_name: &str,
    durable: bool,
) -> std::io::Result<Option<Origin>> {
    let run_id = crate::time::handler_id();
    let started_at = crate::time::now();
    if let Some(p) = persist {
        let fresh = p.insert_handler(&NewHandler {
            id: handler_id,
            workflow: workflow_name,
            run_id: &run_id,
            started_at: &started_at,
            durable,
        })?;
        if !fresh {
            return Ok(None);
        }
    }
    let log_events = !(durable && persist.is_some_and(|p| p.shared()));
    Ok(Some(Origin::Started {
        run_id,
        started_at,
        log_events,
    }))
}

/// Brings a parked handler's run back (resumed from the store with its answer): its events
/// go on in the same log, with the next sequence numbers.
pub(crate) fn revive(
    entry: &Arc<Entry>,
    run: ServedRun,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    traceparent: Option<String>,
) {
    entry.lock().parked = false;
    drive(entry.clone(), run, permit, traceparent);
}

/// Hands the run's control to its handler and spawns the task that logs its stream and its
/// outcome.
fn drive(
    entry: Arc<Entry>,
    run: ServedRun,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    traceparent: Option<String>,
) {
    *entry.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.control.clone());
    let span = tracing::info_span!(
        "handler",
        handler_id = %entry.handler_id,
        workflow = %entry.workflow_name,
        run_id = %entry.run_id,
        traceparent = traceparent.as_deref().unwrap_or(""),
    );
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            tracing::info!("run started");
            pump(&entry, run, permit).await;
            let state = entry.lock();
            let status = if state.parked {
                "parked"
            } else {
                state.status.as_str()
            };
            drop(state);
            tracing::info!(status, "run left memory");
        },
        span,
    ));
}

/// Logs the run's stream, then its outcome as the terminal event.
async fn pump(
    entry: &Entry,
    mut run: ServedRun,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    // A resumed run publishes its unanswered requests again first: the log has them already
    // unless the server stopped before it logged them.
    let mut republished = run.republished;
    while let Some(item) = run.events.next().await {
        match item {
            StreamItem::Event(event) if republished > 0 => {
                republished -= 1;
                let event = envelope(&event);
                if !entry.lock().events.contains(&event) {
                    entry.push(event);
                }
            }
            StreamItem::Event(event) => entry.push(envelope(&event)),
            StreamItem::StepStarted { step, worker } => {
                entry.push(step_state("running", step, worker));
            }
            StreamItem::StepFinished { step, worker } => {
                entry.push(step_state("not_running", step, worker));
            }
            StreamItem::End(_) => break,
            StreamItem::Child { path, item } => {
                // A child run's events (its progress, its requests for a human) are logged
                // with the path of the child that published them; its steps and its end
                // are its own business.
                if let StreamItem::Event(event) = &*item {
                    let mut event = envelope(event);
                    event["child"] = path
                        .iter()
                        .map(|c| json!({ "step": c.step, "workflow": c.workflow, "run_id": c.run_id }))
                        .collect();
                    entry.push(event);
                }
            }
            _ => {}
        }
    }
    let outcome = run.outcome.await;
    // The run is over: its slot under the cap is free before anyone can see it ended.
    drop(permit);
    match outcome {
        Ok(output) => {
            let stop = json!({
                "value": { "result": output },
                "qualified_name": "workflows.events.StopEvent",
                "type": "StopEvent",
                "types": null,
            });
            entry.finish(Status::Completed, None, Some(stop.clone()), stop);
        }
        Err(WorkflowError::Suspended { .. }) => entry.park(),
        Err(WorkflowError::Cancelled) => {
            let last = terminal("WorkflowCancelledEvent", json!({}));
            entry.finish(Status::Cancelled, None, None, last);
        }
        Err(error @ WorkflowError::TimedOut { .. }) => {
            let message = error.to_string();
            tracing::error!(error = %message, "run timed out");
            let last = terminal(
                "WorkflowTimedOutEvent",
                json!({ "timeout": null, "active_steps": [], "message": message }),
            );
            entry.finish(Status::Failed, Some(message), None, last);
        }
        Err(error) => {
            let message = error_chain(&error);
            tracing::error!(error = %message, "run failed");
            let (step, attempts) = match &error {
                WorkflowError::StepFailed { step, attempts, .. } => (Some(*step), *attempts),
                WorkflowError::StepPanicked { step, .. } => (Some(*step), 1),
                WorkflowError::StepTimedOut { step, .. } => (Some(*step), 1),
                _ => (None, 0),
            };
            let last = terminal(
                "WorkflowFailedEvent",
                json!({
                    "step_name": step,
                    "exception": { "type": "WorkflowError", "message": message },
                    "attempts": attempts,
                }),
            );
            entry.finish(Status::Failed, Some(message), None, last);
        }
    }
}

/// The error and its sources, joined: "step `x` failed after 1 attempt(s): boom".
fn error_chain(error: &WorkflowError) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

pub(crate) fn terminal(kind: &str, value: Value) -> Value {
    json!({
        "value": value,
        "qualified_name": format!("workflows.events.{kind}"),
        "type": kind,
        "types": ["StopEvent"],
    })
}

fn step_state(state: &str, step: &str, worker: u32) -> Value {
    json!({
        "value": { "name": step, "step_state": state, "worker_id": worker.to_string() },
        "qualified_name": "workflows.events.StepStateChanged",
        "type": "StepStateChanged",
        "types": ["InternalDispatchEvent"],
    })
}
