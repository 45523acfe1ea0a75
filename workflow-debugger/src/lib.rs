//! A debugger page for `tidewater-server`, embedded in the binary (no CDN, nothing fetched
//! from the internet): the workflows served, the graph of the chosen one (drawn by
//! `tidewater::viz`), a start form generated from its start event's JSON schema, the runs
//! with their status, a live event log over SSE with the running steps highlighted on the
//! graph, a form to answer a waiting human request, and cancel.
//!
//! Mount it as the server's page; it talks to the server's own routes:
//!
//! ```no_run
//! use tidewater::prelude::*;
//! use tidewater_debugger::Debugger;
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
//!     .serve_workflow("greet", Greet.runner().internal_events(true))
//!     .page(Debugger::new().graph("greet", Greet::graph()).router())
//!     .serve("127.0.0.1:8080")
//!     .await
//! # }
//! ```
//!
//! Steps light up while they run when the served runner publishes step activity
//! (`Runner::internal_events(true)`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tidewater::Graph;

const INDEX: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// The debugger page: the graphs it can draw, by served name.
///
/// ```
/// let page = tidewater_debugger::Debugger::new();
/// let _router: axum::Router = page.router();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Debugger {
    graphs: BTreeMap<String, &'static Graph>,
}

impl Debugger {
    /// A page that draws every workflow registered with `#[workflow(serve = "name")]`.
    pub fn new() -> Debugger {
        let mut graphs = BTreeMap::new();
        for registration in tidewater::serve::registered() {
            graphs.insert(registration.name.to_string(), (registration.make)().graph());
        }
        Debugger { graphs }
    }

    /// Draws `graph` for the workflow served as `name` (one served by hand).
    pub fn graph(mut self, name: &str, graph: &'static Graph) -> Debugger {
        self.graphs.insert(name.to_string(), graph);
        self
    }

    /// The page as a router: `GET /` and its assets under `/debugger/`, with the graphs as
    /// SVG at `/debugger/graphs/{name}`. Give it to `Server::page`.
    pub fn router(self) -> Router {
        let svgs: BTreeMap<String, String> = self
            .graphs
            .into_iter()
            .map(|(name, graph)| (name, tidewater::viz::svg(graph)))
            .collect();
        Router::new()
            .route(
                "/",
                get(|| async { asset("text/html; charset=utf-8", INDEX) }),
            )
            .route(
                "/debugger/app.js",
                get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
            )
            .route(
                "/debugger/app.css",
                get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
            )
            .route("/debugger/graphs/{name}", get(graph))
            .with_state(Arc::new(svgs))
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn graph(
    State(svgs): State<Arc<BTreeMap<String, String>>>,
    Path(name): Path<String>,
) -> Response {
    match svgs.get(&name) {
        Some(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no graph for this workflow").into_response(),
    }
}
