//! `cargo run --example server`: serves three workflows over HTTP with the protocol of
//! LlamaIndex's `llama-agents-server`, on `127.0.0.1:$PORT` (8080 by default):
//!
//! - `joke`: plain, one event between two steps (registered with `#[workflow(serve = "joke")]`);
//! - `download`: streams progress events while it works (registered by hand, with a timeout);
//! - `approval`: asks a human to approve a post, revises on feedback (`#[workflow(serve = ..)]`).
//!
//! ```sh
//! curl -s localhost:8080/workflows
//! curl -s -XPOST localhost:8080/workflows/joke/run -d '{"start_event": {"topic": "pirates"}}'
//! ```
//! Open `http://127.0.0.1:8080/` for the debugger page (graph, start form, runs, live events,
//! answers, cancel). `AUTH_TOKEN` turns on bearer auth. Ctrl-C stops it gracefully.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater_debugger::Debugger;
use tidewater_server::Server;

// ------------------------------------------------------------------ joke: plain

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct JokeRequest {
    /// What the joke is about.
    topic: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct Joke {
    text: String,
}

#[derive(Default)]
struct JokeFlow;

#[workflow(serve = "joke")]
impl JokeFlow {
    #[step]
    async fn write_joke(&self, ev: StartEvent<JokeRequest>) -> Joke {
        Joke {
            text: format!("Why did the {} cross the road?", ev.0.topic),
        }
    }

    #[step]
    async fn critique(&self, ev: Joke) -> StopEvent<String> {
        StopEvent(format!("{} To get to the other side. Not bad.", ev.text))
    }
}

// ------------------------------------------------------------------ download: streams progress

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct DownloadRequest {
    /// How many chunks to fetch.
    chunks: u32,
    /// Milliseconds per chunk.
    #[serde(default = "default_delay")]
    delay_ms: u64,
}

fn default_delay() -> u64 {
    20
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct Progress {
    done: u32,
    total: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct Downloaded {
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Summary {
    chunks: u32,
    checksum: u64,
}

struct Download;

#[workflow]
impl Download {
    #[step]
    async fn download(&self, ctx: &Context<Self>, ev: StartEvent<DownloadRequest>) -> Downloaded {
        let mut bytes = Vec::new();
        for done in 1..=ev.0.chunks {
            tokio::time::sleep(Duration::from_millis(ev.0.delay_ms)).await;
            bytes.push((done % 251) as u8);
            ctx.write_event_to_stream(Progress {
                done,
                total: ev.0.chunks,
            });
        }
        Downloaded { bytes }
    }

    #[step]
    async fn checksum(&self, ev: Downloaded) -> StopEvent<Summary> {
        StopEvent(Summary {
            chunks: ev.bytes.len() as u32,
            checksum: ev.bytes.iter().map(|b| u64::from(*b)).sum(),
        })
    }
}

// ------------------------------------------------------------------ approval: asks a human

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct PostRequest {
    topic: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
#[event(request = Verdict)]
struct Review {
    /// The draft to approve.
    text: String,
    round: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
#[event(response)]
struct Verdict {
    approved: bool,
    #[serde(default)]
    feedback: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Published {
    text: String,
    rounds: u32,
}

#[derive(Debug, Default, Clone)]
struct Desk {
    text: String,
    round: u32,
}

#[derive(Default)]
struct Approval;

#[workflow(serve = "approval", state = Desk)]
impl Approval {
    #[step]
    async fn draft(&self, ctx: &Context<Self>, ev: StartEvent<PostRequest>) -> Review {
        let text = format!("Big news: {} is here!", ev.0.topic);
        ctx.update_state(|d| {
            d.text = text.clone();
            d.round = 1;
        });
        Review { text, round: 1 }
    }

    #[step]
    async fn decide(
        &self,
        ctx: &Context<Self>,
        ev: Verdict,
    ) -> Either<Review, StopEvent<Published>> {
        let (text, round) = ctx.update_state(|d| {
            if !ev.approved {
                d.text = format!("{} ({})", d.text, ev.feedback.trim());
                d.round += 1;
            }
            (d.text.clone(), d.round)
        });
        if ev.approved {
            Either::Right(StopEvent(Published {
                text,
                rounds: round,
            }))
        } else {
            Either::Left(Review { text, round })
        }
    }
}

/// The pictures of this example's workflows: `cargo run --example server -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[
    ("server_joke", JokeFlow::GRAPH),
    ("server_download", Download::GRAPH),
    ("server_approval", Approval::GRAPH),
];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    examples::graph_flag(PICTURES);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    // `joke` and `approval` are registered by their attributes; served again here with step
    // activity on, so that the debugger page at `/` lights up the steps that run.
    let mut server = Server::new()
        .serve_workflow("joke", JokeFlow.runner().internal_events(true))
        .serve_workflow("approval", Approval.runner().internal_events(true))
        .serve_workflow(
            "download",
            Download
                .timeout(Duration::from_secs(60))
                .internal_events(true),
        )
        .page(
            Debugger::new()
                .graph("download", Download::graph())
                .router(),
        );
    if let Ok(token) = std::env::var("AUTH_TOKEN") {
        server = server.auth_token(token);
    }
    // `POSTGRES=<conninfo>`: handlers (and durable runs) in the PostgreSQL database at this
    // libpq connection string, shared with any other server started on it.
    if let Ok(conninfo) = std::env::var("POSTGRES") {
        server = server.postgres(conninfo);
    }
    println!(
        "serving {:?} on http://127.0.0.1:{port}",
        server.workflow_names()
    );
    server.serve(("127.0.0.1", port)).await
}
