//! Serve tidewater workflows over HTTP with the protocol of LlamaIndex's `llama-agents-server`,
//! so its clients (the Python `llama-agents-client`, the debugger page, curl) drive them
//! unchanged.
//!
//! Register workflows with `#[workflow(serve = "name")]` (the type must be `Default`) or by
//! hand with [`Server::serve_workflow`], then [`Server::serve`] on an address or mount
//! [`Server::router`] into your own axum app. See `docs/server.md`.
//!
//! ```no_run
//! use tidewater::prelude::*;
//! use tidewater_server::Server;
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
//! # async fn demo() -> std::io::Result<()> {
//! Server::new()
//!     .serve_workflow("greet", Greet.runner())
//!     .serve("127.0.0.1:8080")
//!     .await
//! # }
//! ```
#![recursion_limit = "256"]

mod api;
mod graph;
mod handlers;
mod openapi;
mod persist;
#[cfg(feature = "postgres")]
mod pg;
mod shared;
mod time;

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tidewater::serve::{ServedWorkflow, served};
use tidewater::{Runner, Workflow};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;

pub use schemars;
pub use tidewater::serve::{InvalidEvent, Registration, registered};

/// A workflow server: the workflows it serves and its settings. Build it, then
/// [`serve`](Server::serve) it or take its [`router`](Server::router).
///
/// `Server::new()` starts with every workflow registered with `#[workflow(serve = "name")]`.
pub struct Server {
    workflows: BTreeMap<String, Arc<dyn ServedWorkflow>>,
    token: Option<String>,
    cors: Vec<String>,
    body_limit: usize,
    max_runs: Option<usize>,
    heartbeat: Option<Duration>,
    page: Option<Router>,
    sqlite: Option<std::path::PathBuf>,
    #[cfg(feature = "postgres")]
    postgres: Option<(tidewater_pg::PgOptions, String)>,
    evict_after: Option<Duration>,
    shutdown_grace: Duration,
    run_span: Option<api::RunSpan>,
    api_only: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("workflows", &self.workflows.keys().collect::<Vec<_>>())
            .field("auth", &self.token.is_some())
            .field("cors", &self.cors)
            .field("body_limit", &self.body_limit)
            .field("max_runs", &self.max_runs)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// How long a shutdown waits for in-flight runs by default: ten seconds (see
/// [`Server::shutdown_grace`]).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a durable run parked for a human stays in memory by default before it is evicted
/// to the SQLite file: one minute (see [`Server::evict_idle_after`]).
pub const DEFAULT_EVICT_AFTER: Duration = Duration::from_secs(60);

impl Server {
    /// A server with every workflow registered by `#[workflow(serve = "name")]`, no auth, CORS
    /// closed, a 1 MiB body limit, no run cap and SSE heartbeats every 25 s.
    ///
    /// ```
    /// let server = tidewater_server::Server::new();
    /// assert!(server.workflow_names().iter().all(|n| !n.is_empty()));
    /// ```
    pub fn new() -> Server {
        let mut workflows = BTreeMap::new();
        for registration in registered() {
            workflows.insert(registration.name.to_string(), (registration.make)());
        }
        Server {
            workflows,
            token: None,
            cors: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            max_runs: None,
            heartbeat: Some(Duration::from_secs(25)),
            evict_after: Some(DEFAULT_EVICT_AFTER),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            api_only: false,
            page: None,
            sqlite: None,
            #[cfg(feature = "postgres")]
            postgres: None,
            run_span: None,
        }
    }

    /// Starts every run (`/run`, `/run-nowait`) inside the span `span(workflow, traceparent)`
    /// returns, given the workflow's name and the request's W3C `traceparent` header: the
    /// run's own span is a child of it. With `tidewater-otel`, a span whose remote parent is
    /// the header makes each run join its caller's trace:
    ///
    /// ```ignore
    /// Server::new().run_span(|workflow, traceparent| {
    ///     let span = tracing::info_span!("http.run", workflow);
    ///     if let Some(traceparent) = traceparent {
    ///         tidewater_otel::set_remote_parent(&span, traceparent);
    ///     }
    ///     span
    /// })
    /// ```
    pub fn run_span(
        mut self,
        span: impl Fn(&str, Option<&str>) -> tracing::Span + Send + Sync + 'static,
    ) -> Server {
        self.run_span = Some(Arc::new(span));
        self
    }

    /// Serves `runner`'s workflow under `name` (replacing one of that name). Its input must be
    /// `Deserialize + JsonSchema`, its output `Serialize + JsonSchema`; its events are sent as
    /// JSON when they are `Serialize` and accepted from clients when they are `Deserialize`.
    pub fn serve_workflow<W>(self, name: &str, runner: Runner<W>) -> Server
    where
        W: Workflow,
        W::Input: DeserializeOwned + schemars::JsonSchema,
        W::Output: Serialize + schemars::JsonSchema,
    {
        self.serve_erased(name, served(runner))
    }

    /// Serves an already type-erased workflow (see [`tidewater::serve::served_with`] for one
    /// that takes extra events, such as a response a step waits for inline).
    pub fn serve_erased(mut self, name: &str, workflow: Arc<dyn ServedWorkflow>) -> Server {
        self.workflows.insert(name.to_string(), workflow);
        self
    }

    /// The names served, sorted.
    pub fn workflow_names(&self) -> Vec<&str> {
        self.workflows.keys().map(String::as_str).collect()
    }

    /// Requires `Authorization: Bearer <token>` on every route but `GET /health` (and the page,
    /// see [`page`](Server::page)); refused requests get 401.
    pub fn auth_token(mut self, token: impl Into<String>) -> Server {
        self.token = Some(token.into());
        self
    }

    /// Allows these browser origins (`https://app.example.com`) cross-origin; none by default.
    pub fn cors_origins<I, S>(mut self, origins: I) -> Server
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cors = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The largest request body accepted, in bytes (413 above it).
    pub fn body_limit(mut self, bytes: usize) -> Server {
        self.body_limit = bytes;
        self
    }

    /// At most `n` runs in flight; a start beyond it gets 503.
    ///
    /// # Panics
    /// When `n` is 0.
    pub fn max_concurrent_runs(mut self, n: usize) -> Server {
        assert!(n > 0, "`max_concurrent_runs` must be at least 1");
        self.max_runs = Some(n);
        self
    }

    /// How often an idle SSE stream gets a `: heartbeat` comment; `None` for never.
    pub fn heartbeat(mut self, every: Option<Duration>) -> Server {
        self.heartbeat = every;
        self
    }

    /// Keeps handlers, their event logs and the runs' checkpoints in the SQLite file at
    /// `path` (made if missing). A restarted server reads them back: finished handlers stay
    /// readable, runs of `#[workflow(durable)]` workflows that were running resume from their
    /// last checkpoint, and a run that cannot be resumed (its workflow is not durable or no
    /// longer served, its record is corrupt) is marked failed with the reason. Without it the
    /// server keeps everything in memory.
    pub fn sqlite(mut self, path: impl Into<std::path::PathBuf>) -> Server {
        self.sqlite = Some(path.into());
        self
    }

    /// Keeps handlers and the runs' checkpoints in the PostgreSQL database at `conninfo` (a
    /// libpq-style string, `host=127.0.0.1 port=5432 user=app dbname=runs`), shared with other
    /// server processes (feature `postgres`). Every server on the database serves the same
    /// handlers: any of them starts a run, answers or cancels any run, lists them all and
    /// streams any run's events (read from the store's journal, by sequence number), wherever
    /// the run executes; each also works the durable runs that need an owner (a run whose
    /// server died, a parked run that was answered). See `docs/server.md`.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// tidewater_server::Server::new()
    ///     .postgres("host=127.0.0.1 port=5432 user=postgres dbname=runs")
    ///     .serve("127.0.0.1:8080")
    ///     .await
    /// # }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(self, conninfo: impl Into<String>) -> Server {
        let conninfo = conninfo.into();
        self.postgres_with(tidewater_pg::PgOptions::new(conninfo.clone()), conninfo)
    }

    /// [`postgres`](Server::postgres) with the store's options (its pool, its lease TTL); the
    /// server's own connection uses `conninfo`.
    #[cfg(feature = "postgres")]
    pub fn postgres_with(
        mut self,
        options: tidewater_pg::PgOptions,
        conninfo: impl Into<String>,
    ) -> Server {
        self.postgres = Some((options, conninfo.into()));
        self
    }

    /// With [`postgres`](Server::postgres): this server runs no durable workflow itself. A
    /// start (`/workflows/{name}/run` or `run-nowait`) of a `#[workflow(durable)]` workflow is
    /// recorded and enqueued for the workers (processes running `Runner::work` on the same
    /// database, or other servers), and no worker runs here; answers and cancels reach the runs
    /// through their inboxes, and streams, results and listings are read from the database as
    /// for any run on a shared database. Runs of workflows that are not durable still run
    /// here. Without a shared database the setting does nothing.
    ///
    /// ```
    /// # #[cfg(feature = "postgres")] {
    /// let api = tidewater_server::Server::new()
    ///     .postgres("host=127.0.0.1 port=5432 user=postgres dbname=runs")
    ///     .api_only(true);
    /// # let _ = api;
    /// # }
    /// ```
    pub fn api_only(mut self, api_only: bool) -> Server {
        self.api_only = api_only;
        self
    }

    /// With [`sqlite`](Server::sqlite): a run of a `#[workflow(durable)]` workflow that has
    /// waited this long for a human (parked on unanswered requests, nothing running) is saved
    /// to the file and leaves memory; the answer posted to `/events/{id}` brings it back, and
    /// its handler stays `running` and readable meanwhile. [`DEFAULT_EVICT_AFTER`] unless set;
    /// `None` keeps parked runs in memory.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let server = tidewater_server::Server::new()
    ///     .sqlite("server.db")
    ///     .evict_idle_after(Some(Duration::from_secs(300)));
    /// # let _ = server;
    /// ```
    pub fn evict_idle_after(mut self, idle: Option<Duration>) -> Server {
        self.evict_after = idle;
        self
    }

    /// How long a graceful shutdown ([`serve`](Server::serve) on Ctrl-C or SIGTERM,
    /// [`serve_on`](Server::serve_on) when its signal fires) waits for in-flight runs:
    /// durable runs stop starting steps, finish the running ones and are saved (queues and
    /// unanswered requests included) for the next start to resume; other runs get this long
    /// to end and are cancelled after it. [`DEFAULT_SHUTDOWN_GRACE`] unless set.
    pub fn shutdown_grace(mut self, grace: Duration) -> Server {
        self.shutdown_grace = grace;
        self
    }

    /// Mounts a web page (the debugger, say) as the fallback of the API: every path that is
    /// not a route of the API (`/`, `/assets/app.js`, ...) goes to `page`. The page is not
    /// behind the bearer token (its API calls are).
    pub fn page(mut self, page: Router) -> Server {
        self.page = Some(page);
        self
    }

    /// The server as an axum [`Router`], to serve or to nest into an app.
    ///
    /// # Panics
    /// When the SQLite file set by [`sqlite`](Server::sqlite) cannot be opened (use
    /// [`try_router`](Server::try_router) to get the error), or when called outside a tokio
    /// runtime while it has runs to resume.
    pub fn router(self) -> Router {
        self.try_router()
            .unwrap_or_else(|e| panic!("tidewater-server: {e}"))
    }

    /// [`router`](Server::router), with the error of opening the SQLite file.
    ///
    /// # Errors
    /// The file cannot be opened or read.
    pub fn try_router(self) -> std::io::Result<Router> {
        self.build().map(|(router, _)| router)
    }

    /// The persistence set: PostgreSQL (which wins), the SQLite file, or none.
    fn open_persist(&self) -> std::io::Result<Option<handlers::Persist>> {
        #[cfg(feature = "postgres")]
        if let Some((options, conninfo)) = &self.postgres {
            return Ok(Some(Arc::new(pg::PgPersist::open(
                options.clone(),
                conninfo,
            )?)));
        }
        Ok(match &self.sqlite {
            Some(path) => Some(Arc::new(persist::SqlitePersist::open(path)?)),
            None => None,
        })
    }

    /// The router and the state its routes share.
    fn build(self) -> std::io::Result<(Router, api::AppState)> {
        let persist = self.open_persist()?;
        let state = Arc::new(api::Shared {
            workflows: self.workflows,
            handlers: handlers::Handlers::default(),
            run_limit: self.max_runs.map(|n| Arc::new(Semaphore::new(n))),
            heartbeat: self.heartbeat,
            evict_after: persist.as_ref().and(self.evict_after),
            persist,
            run_span: self.run_span,
            workers: std::sync::Mutex::default(),
            api_only: self.api_only,
        });
        match &state.persist {
            Some(p) if p.shared() && state.api_only => {}
            Some(p) if p.shared() => {
                let workers = shared::start_workers(&state, p);
                *state.workers.lock().unwrap_or_else(|p| p.into_inner()) = workers;
            }
            Some(p) => restore(&state, p)?,
            None => {}
        }
        let mut api = Router::new()
            .route("/workflows", get(api::list_workflows))
            .route("/workflows/{name}/run", post(api::run))
            .route("/workflows/{name}/run-nowait", post(api::run_nowait))
            .route("/workflows/{name}/schema", get(api::schema))
            .route("/workflows/{name}/events", get(api::workflow_events))
            .route("/workflows/{name}/representation", get(api::representation))
            .route("/handlers", get(api::list_handlers))
            .route("/handlers/{handler_id}", get(api::get_handler))
            .route("/handlers/{handler_id}/cancel", post(api::cancel))
            .route("/results/{handler_id}", get(api::get_result))
            .route(
                "/events/{handler_id}",
                get(api::stream_events).post(api::post_event),
            )
            .route("/openapi.json", get(api::openapi));
        if let Some(token) = self.token {
            let expected: Arc<str> = format!("Bearer {token}").into();
            api = api.route_layer(middleware::from_fn_with_state(expected, require_token));
        }
        let mut router = api
            .route("/health", get(api::health))
            .with_state(state.clone())
            .layer(DefaultBodyLimit::max(self.body_limit));
        router = match self.page {
            Some(page) => router.fallback_service(page),
            None => router.fallback(|| async {
                api::ApiError::new(StatusCode::NOT_FOUND, "Not Found").into_response()
            }),
        };
        if !self.cors.is_empty() {
            let origins: Vec<HeaderValue> = self
                .cors
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            router = router.layer(
                tower_http::cors::CorsLayer::new()
                    .allow_origin(origins)
                    .allow_methods([Method::GET, Method::POST])
                    .allow_headers([
                        header::AUTHORIZATION,
                        header::CONTENT_TYPE,
                        header::HeaderName::from_static("last-event-id"),
                        header::HeaderName::from_static("traceparent"),
                    ]),
            );
        }
        Ok((router, state))
    }

    /// Serves on `addr` until Ctrl-C (or SIGTERM), then shuts down gracefully: stops taking
    /// requests and winds the runs down (see [`shutdown_grace`](Server::shutdown_grace)).
    ///
    /// # Errors
    /// Binding or accepting fails.
    pub async fn serve(self, addr: impl ToSocketAddrs) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        self.serve_on(listener, shutdown_signal()).await
    }

    /// Serves on `listener` until `shutdown` completes, then shuts down gracefully: stops
    /// taking requests, stops the durable runs at their next quiet point and saves them for
    /// the next start, gives the other runs [`shutdown_grace`](Server::shutdown_grace) to end
    /// and cancels what is left, then returns (open event streams are cut).
    ///
    /// # Errors
    /// Accepting fails.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, workflows = ?self.workflow_names(), "serving");
        }
        let grace = self.shutdown_grace;
        let (router, state) = self.build()?;
        let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = signalled.send(true);
        };
        let mut serving = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .into_future(),
        );
        tokio::select! {
            served = &mut serving => return served.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            _ = on_signal.wait_for(|s| *s) => {}
        }
        wind_down(&state, grace).await;
        // Requests still open (event streams of runs that were left) get a moment, then are cut.
        if tokio::time::timeout(Duration::from_millis(500), &mut serving)
            .await
            .is_err()
        {
            serving.abort();
        }
        Ok(())
    }
}

/// The runs at a shutdown: durable runs on the SQLite file stop at their next quiet point and
/// are saved; the others get `grace` to end and are cancelled after it.
async fn wind_down(state: &api::Shared, grace: Duration) {
    // A shared database's workers stop claiming and suspend the runs they took (saved for the
    // other servers to take), within the grace; a run still in hand after it is given back
    // when the process ends (its lease released, or run out).
    let workers = std::mem::take(&mut *state.workers.lock().unwrap_or_else(|p| p.into_inner()));
    let workers = async move {
        let stopping = futures_util::future::join_all(workers.into_iter().map(|w| w.shutdown()));
        if tokio::time::timeout(grace, stopping).await.is_err() {
            tracing::warn!("workers still running runs after the grace: given back");
        }
    };
    let handlers = wind_down_handlers(state, grace);
    futures_util::future::join(workers, handlers).await;
}

/// [`wind_down`] for the runs of the server's handlers.
async fn wind_down_handlers(state: &api::Shared, grace: Duration) {
    let running: Vec<_> = state
        .handlers
        .all()
        .into_iter()
        .filter(|e| {
            let s = e.lock();
            !s.status.is_terminal() && !s.parked
        })
        .collect();
    tracing::info!(
        runs = running.len(),
        ?grace,
        "shutting down: winding the runs down"
    );
    let saved = |entry: &handlers::Entry| {
        state.persist.is_some()
            && state
                .workflows
                .get(&entry.workflow_name)
                .is_some_and(|wf| wf.durable())
    };
    for entry in running.iter().filter(|e| saved(e)) {
        if let Some(control) = entry.control() {
            control.suspend();
        }
    }
    let all_quiet = futures_util::future::join_all(running.iter().map(|e| e.quiet()));
    if tokio::time::timeout(grace, all_quiet).await.is_err() {
        for entry in &running {
            let s = entry.lock();
            let left = !s.status.is_terminal() && !s.parked;
            drop(s);
            if left && saved(entry) {
                // A step still busy (or waiting inline): the run resumes at the next start
                // from its last checkpoint, that step again.
                tracing::warn!(handler_id = %entry.handler_id, "still running after the grace: resumes at the next start");
            } else if left {
                tracing::warn!(handler_id = %entry.handler_id, "still running after the grace: cancelled");
                if let Some(control) = entry.control() {
                    control.cancel();
                }
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            futures_util::future::join_all(running.iter().map(|e| e.quiet())),
        )
        .await;
    }
}

/// Reads every stored handler back; resumes the running ones that can be.
fn restore(state: &api::Shared, p: &handlers::Persist) -> std::io::Result<()> {
    let mut resumed = 0;
    let mut ended = 0;
    for row in p.load()? {
        if row.status != "running" {
            ended += 1;
            state.handlers.restore_ended(row, None, Some(p.clone()));
            continue;
        }
        let failure = match state.workflows.get(&row.workflow_name) {
            None => Some(format!(
                "the server restarted and no longer serves workflow `{}`",
                row.workflow_name
            )),
            Some(wf) if !wf.durable() => Some(format!(
                "the server restarted while the run was in flight, and workflow `{}` is not \
                 `#[workflow(durable)]`, so it cannot resume",
                row.workflow_name
            )),
            Some(_) if row.events.is_err() => row.events.as_ref().err().cloned(),
            Some(wf) => match wf.resume_stored(&row.handler_id, p.store(), state.evict_after) {
                Ok(run) => {
                    resumed += 1;
                    let id = row.handler_id.clone();
                    let name = row.workflow_name.clone();
                    state.handlers.track(
                        id,
                        name,
                        run,
                        None,
                        None,
                        Some(p.clone()),
                        handlers::Origin::Resumed(Box::new(row)),
                    );
                    continue;
                }
                Err(e) => Some(format!("the run cannot resume: {e}")),
            },
        };
        state.handlers.restore_ended(row, failure, Some(p.clone()));
    }
    tracing::info!(resumed, ended, "handlers read back from the SQLite file");
    Ok(())
}

async fn require_token(State(expected): State<Arc<str>>, request: Request, next: Next) -> Response {
    let ok = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == &*expected);
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "detail": "Unauthorized" })),
        )
            .into_response();
    }
    next.run(request).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
