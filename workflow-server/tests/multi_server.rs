//! Several `tidewater-server` processes on one PostgreSQL database (feature `postgres`) serve
//! the same API: a run started on one is listed, streamed (from the database, by sequence
//! number, `after_sequence` honoured), answered and cancelled on another; an answer posted to
//! two servers under one message id is consumed once; and a server killed (SIGKILL), or shut
//! down (SIGTERM), while its run waits for an answer loses nothing: the answer posted to the
//! other server finishes it.
//!
//! The servers are this test binary run again as the ignored test `server_process`, each on a
//! free port of 127.0.0.1; the database is a private PostgreSQL the test starts
//! (`common/pg.rs`).

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Frame, Review, Sse, Ticker, Verdict, get, post};
use serde_json::{Value, json};
use tidewater::prelude::*;

/// Durable: asks two jurors (two requests, each answered by one verdict) and counts the
/// approvals. A verdict consumed twice would answer both and end it with the wrong count.
#[derive(Default)]
pub struct Panel;

#[workflow(durable)]
impl Panel {
    #[step]
    async fn propose(&self, ev: StartEvent<String>) -> Vec<Review> {
        (1..=2)
            .map(|juror| Review {
                text: format!("{} (juror {juror})", ev.0),
            })
            .collect()
    }

    #[step]
    async fn count(&self, ctx: &Context<Self>, ev: Verdict) -> Option<StopEvent<u32>> {
        let votes = ctx.collect(ev, 2)?;
        Some(StopEvent(votes.iter().filter(|v| v.approved).count() as u32))
    }
}

const PG_ENV: &str = "TIDEWATER_TEST_SERVER_PG";
const PORT_ENV: &str = "TIDEWATER_TEST_SERVER_PORT";

/// A server process, run by the tests below (`--ignored --exact server_process`).
#[test]
#[ignore = "a server process the other tests of this file start"]
fn server_process() {
    let conninfo = std::env::var(PG_ENV).expect("the database to serve from");
    let port = std::env::var(PORT_ENV).expect("the port to serve on");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(
            tidewater_server::Server::new()
                .serve_workflow("panel", Panel.runner())
                .serve_workflow("ticker", Ticker.runner())
                .heartbeat(Some(Duration::from_millis(200)))
                .postgres(conninfo)
                .serve(format!("127.0.0.1:{port}")),
        )
        .unwrap();
}

/// A server process on the test's database, killed (SIGKILL) on drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    async fn start(conninfo: &str) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["server_process", "--exact", "--ignored", "--nocapture"])
            .env(PG_ENV, conninfo)
            .env(PORT_ENV, port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(server.addr).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the server process never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(get(server.addr, "/health").await.status, 200);
        server
    }

    /// SIGKILL: the process dies at once, its runs where they were.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn verdict(approved: bool, message_id: &str) -> String {
    json!({
        "event": { "type": "Verdict", "value": { "approved": approved } },
        "message_id": message_id,
    })
    .to_string()
}

async fn start(addr: SocketAddr, workflow: &str, id: &str, input: &str) {
    let reply = post(
        addr,
        &format!("/workflows/{workflow}/run-nowait"),
        &json!({ "handler_id": id, "start_event": input }).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["status"], "running", "{}", reply.body);
}

/// The next event frame (heartbeats skipped), within 20 s.
async fn next_event(sse: &mut Sse) -> (u64, Value) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sse.next().await.expect("the stream goes on") {
                Frame::Event(seq, data) => return (seq, data),
                Frame::Heartbeat => {}
            }
        }
    })
    .await
    .expect("an event within 20 s")
}

/// Polls `GET /handlers/{id}` on `addr` until the handler is no longer running (20 s at most).
async fn wait_ended(addr: SocketAddr, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let reply = get(addr, &format!("/handlers/{id}")).await;
        if reply.status != 202 {
            return reply.json();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "handler {id} still running: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids_and_types(events: &[(u64, Value)]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|(seq, e)| (*seq, e["type"].as_str().unwrap_or("?").to_string()))
        .collect()
}

async fn handler_ids(addr: SocketAddr) -> Vec<(String, String)> {
    let reply = get(addr, "/handlers").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["handler_id"].as_str().unwrap().to_string(),
                h["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_serve_every_run() {
    let db = pg::PgServer::start("two-servers");
    let a = ServerProcess::start(&db.conninfo()).await;
    let b = ServerProcess::start(&db.conninfo()).await;

    // Started on A; the id is taken for B too.
    start(a.addr, "panel", "vote-1", "ship it").await;
    let again = post(
        b.addr,
        "/workflows/panel/run-nowait",
        &json!({ "handler_id": "vote-1", "start_event": "again" }).to_string(),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    for server in [&a, &b] {
        assert_eq!(
            handler_ids(server.addr).await,
            [("vote-1".to_string(), "running".to_string())]
        );
    }

    // Streamed from B, from the start: the two questions first, numbered 0 and 1.
    let (status, mut from_b) = Sse::open(b.addr, "/events/vote-1?after_sequence=-1", &[]).await;
    assert_eq!(status, 200);
    for juror in 1..=2 {
        let (seq, review) = next_event(&mut from_b).await;
        assert_eq!(seq, juror - 1);
        assert_eq!(review["type"], "Review", "{review}");
        assert_eq!(
            review["value"]["text"],
            format!("ship it (juror {juror})"),
            "{review}"
        );
        assert_eq!(review["types"], json!(["InputRequiredEvent"]), "{review}");
    }

    // A bad answer is refused by the server it is posted to, before any inbox.
    let bad = post(
        b.addr,
        "/events/vote-1",
        &json!({ "event": { "type": "Verdict", "value": { "approved": "maybe" } } }).to_string(),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("approved"), "{}", bad.body);

    // One verdict posted to both servers under one message id: consumed once. Had it been
    // consumed twice, the panel would have ended with 2 approvals.
    for server in [&b, &a] {
        let sent = post(server.addr, "/events/vote-1", &verdict(true, "juror-1")).await;
        assert_eq!(
            sent.status,
            200,
            "{} {}",
            sent.body,
            get(server.addr, "/handlers/vote-1").await.body
        );
        assert_eq!(sent.json()["status"], "sent");
    }
    let sent = post(a.addr, "/events/vote-1", &verdict(false, "juror-2")).await;
    assert_eq!(
        sent.status,
        200,
        "{} {}",
        sent.body,
        get(a.addr, "/handlers/vote-1").await.body
    );

    // B's reader sees the end, numbered on from the questions: no gap, no duplicate.
    let rest = tokio::time::timeout(Duration::from_secs(20), from_b.events())
        .await
        .expect("the stream ends");
    assert_eq!(
        ids_and_types(&rest),
        [(2, "StopEvent".to_string())],
        "{rest:?}"
    );
    assert_eq!(rest[0].1["value"]["result"], 1, "{:?}", rest);

    for server in [&a, &b] {
        let done = wait_ended(server.addr, "vote-1").await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["result"]["value"]["result"], 1, "{done}");
        let result = get(server.addr, "/results/vote-1").await;
        assert_eq!(result.json()["result"], 1, "{}", result.body);
        // The whole stream, replayed from the database by either server.
        let (status, mut replay) =
            Sse::open(server.addr, "/events/vote-1?after_sequence=-1", &[]).await;
        assert_eq!(status, 200);
        let all = replay.events().await;
        assert_eq!(
            ids_and_types(&all),
            [
                (0, "Review".to_string()),
                (1, "Review".to_string()),
                (2, "StopEvent".to_string())
            ]
        );
        // `after_sequence` is honoured; after the end there is nothing (204).
        let (_, mut tail) = Sse::open(server.addr, "/events/vote-1?after_sequence=0", &[]).await;
        assert_eq!(
            ids_and_types(&tail.events().await),
            [(1, "Review".to_string()), (2, "StopEvent".to_string())]
        );
        let (status, _) = Sse::open(server.addr, "/events/vote-1", &[]).await;
        assert_eq!(status, 204);
        // An answer to an ended run is refused.
        let late = post(server.addr, "/events/vote-1", &verdict(true, "juror-3")).await;
        assert_eq!(late.status, 409, "{}", late.body);
    }

    // Started on B, cancelled on A while it waits.
    start(b.addr, "panel", "vote-2", "scrap it").await;
    let (_, mut from_a) = Sse::open(a.addr, "/events/vote-2?after_sequence=-1", &[]).await;
    for _ in 1..=2 {
        assert_eq!(next_event(&mut from_a).await.1["type"], "Review");
    }
    let cancelled = post(a.addr, "/handlers/vote-2/cancel", "").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    let rest = tokio::time::timeout(Duration::from_secs(20), from_a.events())
        .await
        .expect("the stream ends");
    assert_eq!(
        ids_and_types(&rest),
        [(2, "WorkflowCancelledEvent".to_string())]
    );
    for server in [&a, &b] {
        assert_eq!(
            wait_ended(server.addr, "vote-2").await["status"],
            "cancelled"
        );
        assert_eq!(
            handler_ids(server.addr).await,
            [
                ("vote-1".to_string(), "completed".to_string()),
                ("vote-2".to_string(), "cancelled".to_string())
            ]
        );
    }
    // Purged on B: gone from A too.
    let purged = post(b.addr, "/handlers/vote-2/cancel?purge=true", "").await;
    assert_eq!(purged.json()["status"], "deleted", "{}", purged.body);
    assert_eq!(get(a.addr, "/handlers/vote-2").await.status, 404);

    // A workflow that is not durable runs in the server that started it, which logs its
    // events in the database: B streams it, but cannot reach the run itself.
    let started = post(
        a.addr,
        "/workflows/ticker/run-nowait",
        &json!({ "handler_id": "tick-1", "start_event": 30 }).to_string(),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.body);
    let (_, mut ticks) = Sse::open(b.addr, "/events/tick-1?after_sequence=-1", &[]).await;
    assert_eq!(
        next_event(&mut ticks).await,
        (
            0,
            json!({
                "value": { "n": 0 },
                "qualified_name": "multi_server::common::Tick",
                "type": "Tick",
                "types": null,
            })
        )
    );
    let refused = post(b.addr, "/handlers/tick-1/cancel", "").await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let refused = post(
        b.addr,
        "/events/tick-1",
        &json!({ "event": { "type": "Tick", "value": { "n": 7 } } }).to_string(),
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let all = tokio::time::timeout(Duration::from_secs(20), ticks.events())
        .await
        .expect("the stream ends");
    let expected: Vec<(u64, String)> = (1..30)
        .map(|n| (n, "Tick".to_string()))
        .chain([(30, "StopEvent".to_string())])
        .collect();
    assert_eq!(ids_and_types(&all), expected);
    let done = wait_ended(b.addr, "tick-1").await;
    assert_eq!(done["result"]["value"]["result"], 30, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_server_was_killed_is_finished_by_an_answer_to_another() {
    let db = pg::PgServer::start("killed-server");
    let mut a = ServerProcess::start(&db.conninfo()).await;
    let b = ServerProcess::start(&db.conninfo()).await;

    start(a.addr, "panel", "vote-3", "keep it").await;
    let (_, mut from_b) = Sse::open(b.addr, "/events/vote-3?after_sequence=-1", &[]).await;
    for juror in 0..2 {
        let (seq, review) = next_event(&mut from_b).await;
        assert_eq!((seq, review["type"].as_str()), (juror, Some("Review")));
    }
    let first = post(b.addr, "/events/vote-3", &verdict(true, "juror-1")).await;
    assert_eq!(first.status, 200, "{}", first.body);

    // A dies with the run waiting for its second verdict.
    a.kill();
    let second = post(b.addr, "/events/vote-3", &verdict(true, "juror-2")).await;
    assert_eq!(second.status, 200, "{}", second.body);

    let done = wait_ended(b.addr, "vote-3").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["value"]["result"], 2, "{done}");
    // The reader on B saw the whole run once: the questions, then the end.
    let rest = tokio::time::timeout(Duration::from_secs(20), from_b.events())
        .await
        .expect("the stream ends");
    assert_eq!(ids_and_types(&rest), [(2, "StopEvent".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shut_down_gracefully_hands_its_waiting_run_to_another() {
    let db = pg::PgServer::start("graceful");
    let mut a = ServerProcess::start(&db.conninfo()).await;
    let b = ServerProcess::start(&db.conninfo()).await;

    start(a.addr, "panel", "vote-5", "hand it over").await;
    let (_, mut from_b) = Sse::open(b.addr, "/events/vote-5?after_sequence=-1", &[]).await;
    for juror in 0..2 {
        assert_eq!(next_event(&mut from_b).await.0, juror);
    }
    // SIGTERM: A saves the waiting run (it leaves A, released) and exits.
    let term = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = a.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "A did not shut down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");

    for juror in ["juror-1", "juror-2"] {
        let sent = post(b.addr, "/events/vote-5", &verdict(true, juror)).await;
        assert_eq!(sent.status, 200, "{}", sent.body);
    }
    let done = wait_ended(b.addr, "vote-5").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["value"]["result"], 2, "{done}");
    let rest = tokio::time::timeout(Duration::from_secs(20), from_b.events())
        .await
        .expect("the stream ends");
    assert_eq!(ids_and_types(&rest), [(2, "StopEvent".to_string())]);
}

/// Two servers in one process on one database (each with its own store and connections), on
/// a current-thread runtime: the same protocol as the processes above, every blocking call of
/// the stores on their own threads.
#[test]
fn two_servers_in_one_process_on_a_current_thread_runtime() {
    let db = pg::PgServer::start("one-process");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = || {
            tidewater_server::Server::new()
                .serve_workflow("panel", Panel.runner())
                .postgres(db.conninfo())
        };
        let a = common::spawn(server()).await;
        let b = common::spawn(server()).await;
        start(b, "panel", "vote-4", "merge it").await;
        let (_, mut from_a) = Sse::open(a, "/events/vote-4?after_sequence=-1", &[]).await;
        for juror in 0..2 {
            assert_eq!(next_event(&mut from_a).await.0, juror);
        }
        // One approval posted to both (consumed once), then a rejection.
        for server in [a, b] {
            let sent = post(server, "/events/vote-4", &verdict(true, "juror-1")).await;
            assert_eq!(sent.status, 200, "{}", sent.body);
        }
        let sent = post(b, "/events/vote-4", &verdict(false, "juror-2")).await;
        assert_eq!(sent.status, 200, "{}", sent.body);
        let rest = tokio::time::timeout(Duration::from_secs(20), from_a.events())
            .await
            .expect("the stream ends");
        assert_eq!(ids_and_types(&rest), [(2, "StopEvent".to_string())]);
        assert_eq!(rest[0].1["value"]["result"], 1);
        assert_eq!(
            handler_ids(a).await,
            [("vote-4".to_string(), "completed".to_string())]
        );
    });
}

/// An API-only server (`Server::api_only`) runs nothing itself: a start is recorded and
/// enqueued, and it waits in the database until a worker (`Runner::work` on the same database)
/// takes it; the server streams the run, takes its answers and reports its end, all through
/// the database.
#[test]
fn an_api_only_server_leaves_its_runs_to_the_workers() {
    use tidewater::store::{RunStatus, Store};
    let db = pg::PgServer::start("api-only");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let api = common::spawn(
            tidewater_server::Server::new()
                .serve_workflow("panel", Panel.runner())
                .postgres(db.conninfo())
                .api_only(true),
        )
        .await;
        start(api, "panel", "vote-6", "ship it").await;

        // Nothing runs it yet: the start event is still queued, and no process holds the run.
        let store = std::sync::Arc::new(tidewater_pg::PgStore::connect(&db.conninfo()).unwrap());
        let queued = Instant::now();
        while queued.elapsed() < Duration::from_millis(500) {
            let record = store
                .load("vote-6")
                .unwrap()
                .expect("the run is in the store");
            assert_eq!(record.status, RunStatus::Running);
            assert!(
                record.snapshot.in_flight.is_empty(),
                "{:?}",
                record.snapshot
            );
            assert_eq!(record.snapshot.queued.len(), 1, "{:?}", record.snapshot);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            handler_ids(api).await,
            [("vote-6".to_string(), "running".to_string())]
        );

        // A worker takes it; the API server streams it and takes the answers.
        let worker = Panel.runner().store(store.clone()).work(4).unwrap();
        let (_, mut events) = Sse::open(api, "/events/vote-6?after_sequence=-1", &[]).await;
        for juror in 0..2 {
            let (seq, review) = next_event(&mut events).await;
            assert_eq!((seq, review["type"].as_str()), (juror, Some("Review")));
        }
        for juror in ["juror-1", "juror-2"] {
            let sent = post(api, "/events/vote-6", &verdict(juror == "juror-1", juror)).await;
            assert_eq!(sent.status, 200, "{}", sent.body);
        }
        let rest = tokio::time::timeout(Duration::from_secs(20), events.events())
            .await
            .expect("the stream ends");
        assert_eq!(ids_and_types(&rest), [(2, "StopEvent".to_string())]);
        let done = wait_ended(api, "vote-6").await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["result"]["value"]["result"], 1, "{done}");
        assert_eq!(
            store.load("vote-6").unwrap().unwrap().status,
            RunStatus::Finished
        );

        // A bad start is refused before anything is recorded.
        let bad = post(
            api,
            "/workflows/panel/run-nowait",
            &json!({ "handler_id": "vote-7", "start_event": 7 }).to_string(),
        )
        .await;
        assert_eq!(bad.status, 400, "{}", bad.body);
        assert!(store.load("vote-7").unwrap().is_none());
        assert_eq!(get(api, "/handlers/vote-7").await.status, 404);
        assert_eq!(worker.stop().await.unwrap(), 1);
    });
}
