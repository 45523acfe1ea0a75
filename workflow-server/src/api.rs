//! The routes of the llama-agents-server protocol, with its status codes and error bodies
//! (`{"detail": "..."}`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidewater::serve::ServedWorkflow;
use tokio::sync::Semaphore;

use crate::handlers::{Entry, Handlers, Persist};

/// What every route shares.
pub(crate) struct Shared {
    pub(crate) workflows: BTreeMap<String, Arc<dyn ServedWorkflow>>,
    pub(crate) handlers: Handlers,
    pub(crate) run_limit: Option<Arc<Semaphore>>,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) persist: Option<Persist>,
    /// Evict durable runs parked for a human after this long (only with `persist`).
    pub(crate) evict_after: Option<Duration>,
    /// The span each run is started in (`Server::run_span`).
    pub(crate) run_span: Option<RunSpan>,
    /// On a shared persistence: the workers that claim the durable runs needing an owner.
    pub(crate) workers: std::sync::Mutex<Vec<tidewater::Worker>>,
    /// `Server::api_only`: durable starts are enqueued for the workers, none run here.
    pub(crate) api_only: bool,
}

/// Where a started run went.
pub(crate) enum Started {
    /// It runs in this process.
    Here(Arc<Entry>),
    /// It was enqueued in the shared database for a worker (`Server::api_only`): its handler id.
    Queued(String),
}

impl Started {
    fn handler_id(&self) -> &str {
        match self {
            Started::Here(entry) => &entry.handler_id,
            Started::Queued(id) => id,
        }
    }
}

/// Makes the span a run starts in, from the workflow's name and the request's `traceparent`.
pub(crate) type RunSpan = Arc<dyn Fn(&str, Option<&str>) -> tracing::Span + Send + Sync>;

pub(crate) type AppState = Arc<Shared>;

/// An error response: `{"detail": message}` with a status.
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError(status, detail.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "detail": self.1 }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// The persistence when several servers share it.
fn shared_persist(state: &Shared) -> Option<&Persist> {
    state.persist.as_ref().filter(|p| p.shared())
}

fn not_found_handler() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Handler not found")
}

fn workflow(state: &Shared, name: &str) -> Result<Arc<dyn ServedWorkflow>, ApiError> {
    state
        .workflows
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Workflow not found"))
}

/// The query string's pairs, percent-decoded, repeated keys kept.
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn query_flag(pairs: &[(String, String)], key: &str, default: bool) -> bool {
    query_get(pairs, key).map_or(default, |v| v.eq_ignore_ascii_case("true"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_body(body: &Bytes, what: &str) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
}

pub(crate) async fn health() -> Response {
    Json(json!({ "status": "healthy" })).into_response()
}

pub(crate) async fn list_workflows(State(state): State<AppState>) -> Response {
    let names: Vec<&String> = state.workflows.keys().collect();
    Json(json!({ "workflows": names })).into_response()
}

pub(crate) async fn schema(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let wf = workflow(&state, &name)?;
    Ok(Json(json!({ "start": wf.start_schema(), "stop": wf.stop_schema() })).into_response())
}

pub(crate) async fn workflow_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    let wf = workflow(&state, &name)?;
    let events: Vec<Value> = wf.event_schemas().into_iter().map(|(_, s)| s).collect();
    Ok(Json(json!({ "events": events })).into_response())
}

pub(crate) async fn representation(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    let wf = workflow(&state, &name)?;
    Ok(Json(json!({ "graph": crate::graph::representation(wf.as_ref()) })).into_response())
}

/// Validates the body of `/run` and `/run-nowait` and starts the run; nothing runs when the
/// body is refused.
fn start(
    state: &Shared,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Started, ApiError> {
    let wf = workflow(state, name)?;
    let body = json_body(body, "Invalid JSON body")?;
    let Some(body) = body.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Invalid JSON body: expected an object",
        ));
    };
    if body
        .get("context")
        .is_some_and(|c| !(c.is_null() || c.as_object().is_some_and(|o| o.is_empty())))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Context API is disabled: this server does not restore a context sent by the client",
        ));
    }
    let handler_id = match body.get("handler_id") {
        None | Some(Value::Null) => crate::time::handler_id(),
        Some(Value::String(id)) if !id.is_empty() => {
            if state.handlers.contains(id) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("Handler '{id}' already exists"),
                ));
            }
            id.clone()
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Error processing request body: 'handler_id' must be a string",
            ));
        }
    };
    let input = start_payload(
        body.get("start_event")
            .or_else(|| body.get("kwargs"))
            .cloned(),
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    if state.api_only
        && wf.durable()
        && let Some(p) = shared_persist(state)
    {
        return enqueue(p, &*wf, name, handler_id, input);
    }
    let permit = run_permit(state)?;
    let invalid = |e: tidewater::serve::InvalidEvent| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Validation error for 'start_event': {e}"),
        )
    };
    // The run's span is made when it starts, as a child of the span current then.
    let span = state
        .run_span
        .as_ref()
        .map(|span| span(name, traceparent(headers).as_deref()));
    let _entered = span.as_ref().map(tracing::Span::enter);
    // Recorded first: on a shared persistence, another server may take the id at once.
    let durable = wf.durable() && state.persist.is_some();
    let origin = record_new(state.persist.as_ref(), &handler_id, name, durable)?;
    let started = match &state.persist {
        Some(p) => wf
            .start_stored(&handler_id, input, p.store(), state.evict_after)
            .map_err(|e| match e {
                tidewater::serve::StartError::Invalid(e) => invalid(e),
                e => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Initial persistence failed: {e}"),
                ),
            }),
        None => wf.start(input).map_err(invalid),
    };
    let run = match started {
        Ok(run) => run,
        Err(e) => {
            if let Some(p) = &state.persist {
                p.delete(&handler_id);
            }
            return Err(e);
        }
    };
    Ok(Started::Here(state.handlers.track(
        handler_id,
        name.to_string(),
        run,
        permit,
        traceparent(headers),
        state.persist.clone(),
        origin,
    )))
}

/// Records a new handler (`crate::handlers::record`): a failed write is a 500, an id that
/// exists already a 409.
fn record_new(
    persist: Option<&Persist>,
    handler_id: &str,
    name: &str,
    durable: bool,
) -> Result<crate::handlers::Origin, ApiError> {
    crate::handlers::record(persist, handler_id, name, durable)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Initial persistence failed: {e}"),
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("Handler '{handler_id}' already exists"),
            )
        })
}

/// A start on an API-only server: the handler recorded, the run enqueued for the workers.
fn enqueue(
    p: &Persist,
    wf: &dyn ServedWorkflow,
    name: &str,
    handler_id: String,
    input: Value,
) -> Result<Started, ApiError> {
    record_new(Some(p), &handler_id, name, true)?;
    match wf.enqueue_stored(&handler_id, input, p.store()) {
        Ok(()) => Ok(Started::Queued(handler_id)),
        Err(e) => {
            p.delete(&handler_id);
            Err(match e {
                tidewater::serve::StartError::Invalid(e) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("Validation error for 'start_event': {e}"),
                ),
                e => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Initial persistence failed: {e}"),
                ),
            })
        }
    }
}

/// Python's events keep their free-form fields under `_data` (`StartEvent(topic="x")` dumps
/// as `{"_data": {"topic": "x"}}`): lift them to the top level.
fn lift_dict_like(value: Value) -> Value {
    match value {
        Value::Object(mut obj) if obj.get("_data").is_some_and(Value::is_object) => {
            if let Some(Value::Object(data)) = obj.remove("_data") {
                for (k, v) in data {
                    obj.entry(k).or_insert(v);
                }
            }
            Value::Object(obj)
        }
        other => other,
    }
}

/// The start event's payload: a plain object (`{"topic": "..."}`), or an envelope
/// (`{"type": "StartEvent", "value": {...}}`, what the Python client sends), or a JSON string
/// of either.
fn start_payload(raw: Option<Value>) -> Result<Value, String> {
    let raw = match raw {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Some(v) => v,
    };
    if let Some(obj) = raw.as_object() {
        if let Some(value) = obj.get("value").or_else(|| obj.get("data")) {
            if let Some(kind) = obj.get("type").and_then(Value::as_str) {
                if kind != "StartEvent" {
                    return Err(format!(
                        "Validation error for 'start_event': Start event must be a StartEvent, got {kind}"
                    ));
                }
            }
            return Ok(lift_dict_like(value.clone()));
        }
    }
    Ok(lift_dict_like(raw))
}

pub(crate) async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let started = start(&state, &name, &headers, &body)?;
    let data = match (shared_persist(&state), &started) {
        (Some(p), _) => crate::shared::wait_ended(&state, p, started.handler_id(), None).await?,
        (None, Started::Here(entry)) => {
            entry.ended().await;
            entry.data()
        }
        (None, Started::Queued(_)) => unreachable!("a run is enqueued only on a shared database"),
    };
    let status = if data["status"] == "completed" {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Ok((status, Json(data)).into_response())
}

pub(crate) async fn run_nowait(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let started = start(&state, &name, &headers, &body)?;
    let data = match (shared_persist(&state), &started) {
        (Some(p), _) => {
            let (row, seen) = crate::shared::handler(p, started.handler_id())?;
            crate::shared::data(&row, &seen)
        }
        (None, Started::Here(entry)) => entry.data(),
        (None, Started::Queued(_)) => unreachable!("a run is enqueued only on a shared database"),
    };
    Ok(Json(data).into_response())
}

fn status_code(data: &Value) -> StatusCode {
    match data["status"].as_str() {
        Some("running") => StatusCode::ACCEPTED,
        Some("completed") => StatusCode::OK,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) async fn get_handler(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    let data = handler_data(&state, &id)?;
    Ok((status_code(&data), Json(data)).into_response())
}

/// The wire's `HandlerData` of handler `id`, or 404.
fn handler_data(state: &Shared, id: &str) -> Result<Value, ApiError> {
    match shared_persist(state) {
        Some(p) => {
            let (row, seen) = crate::shared::handler(p, id)?;
            Ok(crate::shared::data(&row, &seen))
        }
        None => Ok(state.handlers.get(id).ok_or_else(not_found_handler)?.data()),
    }
}

/// `GET /results/{id}`: the handler, its `result` the workflow's output itself.
pub(crate) async fn get_result(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let mut data = handler_data(&state, &id)?;
    let status = status_code(&data);
    let result = data["result"]["value"]["result"].take();
    data["result"] = result;
    Ok((status, Json(data)).into_response())
}

pub(crate) async fn list_handlers(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let list = |key: &str| -> Option<Vec<String>> {
        let values: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        (!values.is_empty()).then_some(values)
    };
    let statuses = list("status");
    let names = list("workflow_name");
    let all = match shared_persist(&state) {
        Some(p) => match crate::shared::list(p) {
            Ok(all) => all,
            Err(e) => return e.into_response(),
        },
        None => state.handlers.all().iter().map(|e| e.data()).collect(),
    };
    let handlers: Vec<Value> = all
        .into_iter()
        .filter(|d| {
            statuses
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| d["status"] == s.as_str()))
                && names
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|n| d["workflow_name"] == n.as_str()))
        })
        .collect();
    Json(json!({ "handlers": handlers })).into_response()
}

pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let pairs = query_pairs(query.as_deref());
    let purge = query_flag(&pairs, "purge", false);
    if let Some(p) = shared_persist(&state) {
        return cancel_shared(&state, p, &id, purge).await;
    }
    let entry = state.handlers.get(&id).ok_or_else(not_found_handler)?;
    let terminal = entry.lock().status.is_terminal();
    if terminal && !purge {
        return Err(not_found_handler());
    }
    if !terminal {
        let _reviving = entry.revive.lock().await;
        if !entry.lock().parked {
            if let Some(control) = entry.control() {
                control.cancel();
            }
            // The run ends at its next await point; a step that never yields is not waited
            // for. A run that was leaving memory as the cancel came (its eviction decided, its
            // record being written as waiting, its handler not parked yet) never sees it: it
            // ends parked, and is cancelled in the store below.
            let _ = tokio::time::timeout(Duration::from_secs(5), entry.quiet()).await;
        }
        if entry.lock().parked {
            // Out of memory: brought back only to be cancelled, so that its record ends too.
            if let (Some(wf), Some(p)) = (state.workflows.get(&entry.workflow_name), &state.persist)
            {
                let run = wf
                    .resume_stored(&entry.handler_id, p.store(), None)
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the parked run cannot be cancelled: {e}"),
                        )
                    })?;
                run.control.cancel();
                crate::handlers::revive(&entry, run, None, None);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), entry.ended()).await;
        }
    }
    if purge {
        if !state.handlers.remove(&id) {
            return Err(not_found_handler());
        }
        return Ok(Json(json!({ "status": "deleted" })).into_response());
    }
    Ok(Json(json!({ "status": "cancelled" })).into_response())
}

/// `POST /events/{id}`: `{"event": <envelope>, "step": <optional step>}`.
pub(crate) async fn post_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Error processing request: {e}"),
        )
    })?;
    let event = body.get("event").cloned().unwrap_or(Value::Null);
    let empty = match &event {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if empty {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Event data is required",
        ));
    }
    let step = body.get("step").and_then(Value::as_str);
    let message_id = body
        .get("message_id")
        .and_then(Value::as_str)
        .or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()))
        .map(str::to_string);
    if let Some(p) = shared_persist(&state) {
        let (row, seen) = crate::shared::handler(p, &id)?;
        if seen.status.is_terminal() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Workflow already completed",
            ));
        }
        if row.durable {
            let (kind, value) = event_of(event)?;
            crate::shared::post(&state, p, &row, &kind, value, step, message_id)?;
            tracing::info!(handler_id = %id, event = %kind, "event posted to the run's inbox");
            return Ok(Json(json!({ "status": "sent" })).into_response());
        }
        if !state.handlers.contains(&id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the run executes on another server and is not durable: send it there",
            ));
        }
    }
    let entry = state.handlers.get(&id).ok_or_else(not_found_handler)?;
    if entry.lock().status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Workflow already completed",
        ));
    }
    let (kind, value) = event_of(event)?;
    let kind = kind.as_str();
    let _reviving = entry.revive.lock().await;
    if entry.lock().parked {
        answer_parked(&state, &entry, kind, value, step, traceparent(&headers))?;
        tracing::info!(handler_id = %id, event = kind, "event sent to a parked run: resumed");
        return Ok(Json(json!({ "status": "sent" })).into_response());
    }
    let Some(control) = entry.control() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Workflow already completed",
        ));
    };
    let taken = control
        .offer_json(kind, value.clone(), step)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.message))?;
    if !taken {
        // The run was leaving memory as the event came (its eviction decided, its record
        // being written as waiting, its handler not parked yet): it refused the event, which
        // goes to the run in the store once it has left.
        let _ = tokio::time::timeout(Duration::from_secs(5), entry.quiet()).await;
        if !entry.lock().parked {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Workflow already completed",
            ));
        }
        answer_parked(&state, &entry, kind, value, step, traceparent(&headers))?;
        tracing::info!(handler_id = %id, event = kind, "event sent to a run that had just left memory: resumed");
        return Ok(Json(json!({ "status": "sent" })).into_response());
    }
    tracing::info!(handler_id = %id, event = kind, "event sent");
    Ok(Json(json!({ "status": "sent" })).into_response())
}

/// The posted event's type name and payload (the wire envelope, or a JSON string of it).
fn event_of(event: Value) -> Result<(String, Value), ApiError> {
    let event = match event {
        Value::String(s) => serde_json::from_str(&s).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Failed to deserialize event. Must be a json object, or stringified json object",
            )
        })?,
        other => other,
    };
    let Some(obj) = event.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Failed to deserialize event. Must be a json object, or stringified json object",
        ));
    };
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .or_else(|| obj.get("qualified_name").and_then(Value::as_str))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Invalid client data. Must have a type or a qualified name",
            )
        })?;
    let value = lift_dict_like(
        obj.get("value")
            .or_else(|| obj.get("data"))
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    Ok((kind.to_string(), value))
}

/// `POST /handlers/{id}/cancel` on a shared persistence: a durable run gets a cancel in its
/// inbox (wherever it executes), a run executing here is cancelled at once; a run that is not
/// durable and executes on another server cannot be reached from here (409).
async fn cancel_shared(state: &Shared, p: &Persist, id: &str, purge: bool) -> ApiResult {
    let (row, seen) = crate::shared::handler(p, id)?;
    let terminal = seen.status.is_terminal();
    if terminal && !purge {
        return Err(not_found_handler());
    }
    if !terminal {
        let local = state.handlers.get(id).and_then(|e| e.control());
        if row.durable {
            crate::shared::post_cancel(p, &row)?;
        } else if local.is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the run executes on another server and is not durable: cancel it there",
            ));
        }
        if let Some(control) = local {
            control.cancel();
        }
        // The run ends at its next await point, wherever it is.
        crate::shared::wait_ended(state, p, id, Some(Duration::from_secs(5))).await?;
    }
    if purge {
        p.delete(id);
        state.handlers.remove(id);
        return Ok(Json(json!({ "status": "deleted" })).into_response());
    }
    Ok(Json(json!({ "status": "cancelled" })).into_response())
}

/// Brings a run parked in the store back with the event posted to it (the caller holds the
/// handler's `revive` lock). A payload the run cannot take is a 400 and leaves it parked.
fn answer_parked(
    state: &Shared,
    entry: &Arc<Entry>,
    kind: &str,
    value: Value,
    step: Option<&str>,
    traceparent: Option<String>,
) -> Result<(), ApiError> {
    if step.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the run is parked waiting for an answer: send the answer without a step",
        ));
    }
    let (Some(wf), Some(p)) = (state.workflows.get(&entry.workflow_name), &state.persist) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Workflow already completed",
        ));
    };
    let permit = run_permit(state)?;
    let run = wf
        .answer_stored(&entry.handler_id, kind, value, p.store(), state.evict_after)
        .map_err(|e| match e {
            tidewater::serve::StartError::Invalid(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, e.message)
            }
            e => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the parked run cannot resume: {e}"),
            ),
        })?;
    crate::handlers::revive(entry, run, permit, traceparent);
    Ok(())
}

/// A slot under the concurrent-run cap, or 503.
fn run_permit(state: &Shared) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    match &state.run_limit {
        Some(limit) => Ok(Some(limit.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many runs in flight: try again later",
            )
        })?)),
        None => Ok(None),
    }
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `GET /events/{id}`: the handler's events after a cursor, as server-sent events (`id:` is
/// the sequence number) or NDJSON (`sse=false`), ending after the terminal event; 204 when
/// nothing is left.
pub(crate) async fn stream_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let pairs = query_pairs(query.as_deref());
    let sse = query_flag(&pairs, "sse", true);
    let include_internal = query_flag(&pairs, "include_internal", false);
    let include_qualified_name = query_flag(&pairs, "include_qualified_name", true);
    let after = query_get(&pairs, "after_sequence").unwrap_or("now");
    let mut after: Option<i64> = if after.eq_ignore_ascii_case("now") {
        None
    } else {
        Some(after.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Invalid after_sequence: '{after}'"),
            )
        })?)
    };
    if sse {
        if let Some(last) = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            after = Some(last);
        }
    }
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    if let Some(p) = shared_persist(&state) {
        let (row, seen) = crate::shared::handler(p, &id)?;
        let Some((next, journal)) = crate::shared::cursor(p, &row, &seen, after)? else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let reader = crate::shared::SharedReader {
            state: state.clone(),
            p: p.clone(),
            id: row.handler_id,
            workflow: row.workflow_name,
            durable: row.durable,
            next,
            journal,
            sse,
            include_internal,
            include_qualified_name,
            heartbeat: if sse { state.heartbeat } else { None },
            done: false,
        };
        let stream = futures_util::stream::unfold(reader, |mut r| async move {
            let chunk = r.next_chunk().await?;
            Some((Ok::<Bytes, Infallible>(chunk), r))
        });
        return Ok((headers, Body::from_stream(stream)).into_response());
    }
    let entry = state.handlers.get(&id).ok_or_else(not_found_handler)?;
    let cursor = {
        let log = entry.lock();
        let cursor = after.unwrap_or(log.events.len() as i64 - 1);
        let remaining = (log.events.len() as i64 - 1) > cursor;
        if !remaining && log.status.is_terminal() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        cursor
    };
    let reader = Reader {
        entry,
        next: (cursor + 1).max(0) as usize,
        sse,
        include_internal,
        include_qualified_name,
        heartbeat: if sse { state.heartbeat } else { None },
        done: false,
    };
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), r))
    });
    Ok((headers, Body::from_stream(stream)).into_response())
}

struct Reader {
    entry: Arc<Entry>,
    next: usize,
    sse: bool,
    include_internal: bool,
    include_qualified_name: bool,
    heartbeat: Option<Duration>,
    done: bool,
}

impl Reader {
    /// The next chunk: every event past the cursor, or a heartbeat; `None` once the terminal
    /// event was sent.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut rx = self.entry.watch();
        loop {
            let (batch, ended, total) = {
                let log = self.entry.lock();
                let batch: Vec<Value> = log.events.get(self.next..).unwrap_or(&[]).to_vec();
                (batch, log.status.is_terminal(), log.events.len())
            };
            if !batch.is_empty() {
                let mut out = String::new();
                for (i, event) in batch.into_iter().enumerate() {
                    let seq = (self.next + i) as i64;
                    if let Some(text) = format_event(
                        seq,
                        event,
                        self.sse,
                        self.include_internal,
                        self.include_qualified_name,
                    ) {
                        out.push_str(&text);
                    }
                }
                self.next = total;
                if ended {
                    self.done = true;
                }
                if out.is_empty() {
                    if self.done {
                        return None;
                    }
                    continue;
                }
                return Some(Bytes::from(out));
            }
            if ended {
                return None;
            }
            let changed = match self.heartbeat {
                Some(every) => match tokio::time::timeout(every, rx.changed()).await {
                    Ok(changed) => changed,
                    Err(_) => return Some(Bytes::from_static(b": heartbeat\n\n")),
                },
                None => rx.changed().await,
            };
            if changed.is_err() {
                return None;
            }
        }
    }
}

/// One event as the stream sends it (`id: <seq>` and `data:` for SSE, a line of NDJSON
/// otherwise); `None` for an internal event the reader did not ask for.
pub(crate) fn format_event(
    seq: i64,
    mut event: Value,
    sse: bool,
    include_internal: bool,
    include_qualified_name: bool,
) -> Option<String> {
    let internal = event["types"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t == "InternalDispatchEvent"));
    if internal && !include_internal {
        return None;
    }
    if !include_qualified_name {
        event["qualified_name"] = Value::Null;
    }
    Some(if sse {
        format!("id: {seq}\ndata: {event}\n\n")
    } else {
        format!("{event}\n")
    })
}

/// The OpenAPI document of this API.
pub(crate) async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}
