//! A graceful shutdown winds the runs down: a durable run mid-flight finishes its running step,
//! is saved with what it queued and leaves; a durable run parked for a human is saved too; a
//! plain run gets the grace period and is cancelled after it. A new server on the same file
//! finishes the durable runs with no step run twice.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ask, Scratch, get, log_types, post, wait_ended};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidewater::prelude::*;
use tidewater::store::{RunStatus, SqliteStore, Store};

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct Leg {
    n: u32,
}

/// Three legs of 200 ms; each leg is logged when it finishes.
struct Trip {
    legs: Arc<Mutex<Vec<u32>>>,
    started: Arc<tokio::sync::Notify>,
}

#[workflow(durable)]
impl Trip {
    #[step]
    async fn first(&self, _ev: StartEvent<u32>) -> Leg {
        Leg { n: 1 }
    }

    #[step]
    async fn leg(&self, ev: Leg) -> Either<Leg, StopEvent<u32>> {
        self.started.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.legs.lock().unwrap().push(ev.n);
        if ev.n == 3 {
            Either::Right(StopEvent(ev.n))
        } else {
            Either::Left(Leg { n: ev.n + 1 })
        }
    }
}

/// Not durable: sleeps for as many milliseconds as it is told.
struct Nap;

#[workflow]
impl Nap {
    #[step]
    async fn nap(&self, ev: StartEvent<u64>) -> StopEvent<u64> {
        tokio::time::sleep(Duration::from_millis(ev.0)).await;
        StopEvent(ev.0)
    }
}

fn server(
    db: &std::path::Path,
    legs: &Arc<Mutex<Vec<u32>>>,
    started: &Arc<tokio::sync::Notify>,
) -> tidewater_server::Server {
    tidewater_server::Server::new()
        .serve_workflow(
            "trip",
            Trip {
                legs: legs.clone(),
                started: started.clone(),
            }
            .runner(),
        )
        .serve_workflow("ask", Ask::default().runner())
        .serve_workflow("nap", Nap.runner())
        .sqlite(db)
        .shutdown_grace(Duration::from_millis(300))
}

async fn start(addr: std::net::SocketAddr, name: &str, input: serde_json::Value) -> String {
    let reply = post(
        addr,
        &format!("/workflows/{name}/run-nowait"),
        &json!({ "start_event": input }).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["handler_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_saves_durable_runs_and_a_new_server_finishes_them() {
    let scratch = Scratch::new("shutdown");
    let db = scratch.0.join("server.db");
    let legs = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(tokio::sync::Notify::new());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server(&db, &legs, &started).serve_on(listener, async {
        let _ = stopped.await;
    }));

    let trip = start(addr, "trip", json!(0)).await;
    let ask = start(addr, "ask", json!("post")).await;
    let nap = start(addr, "nap", json!(60_000)).await;
    // The trip is in its first leg; the question is asked.
    started.notified().await;
    let path = format!("/events/{ask}?after_sequence=-1");
    let (_, mut sse) = common::Sse::open(addr, &path, &[]).await;
    match sse.next().await {
        Some(common::Frame::Event(_, event)) => assert_eq!(event["type"], "Review"),
        other => panic!("expected the request, got {other:?}"),
    }

    let asked_to_stop = Instant::now();
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    let took = asked_to_stop.elapsed();
    assert!(took < Duration::from_secs(5), "the shutdown took {took:?}");
    // The leg that was running finished; the next one did not start.
    assert_eq!(*legs.lock().unwrap(), [1]);
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(
        store.load(&trip).unwrap().unwrap().status,
        RunStatus::Waiting
    );
    assert_eq!(
        store.load(&ask).unwrap().unwrap().status,
        RunStatus::Waiting
    );
    drop(store);

    // A new server on the file.
    let addr = common::spawn(server(&db, &legs, &started)).await;
    let done = wait_ended(addr, &trip).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["value"]["result"], 3, "{done}");
    assert_eq!(*legs.lock().unwrap(), [1, 2, 3], "no leg ran twice");
    // The parked question is still there to answer, asked once in the log.
    let sent = post(
        addr,
        &format!("/events/{ask}"),
        &json!({ "event": { "type": "Verdict", "value": { "approved": true } } }).to_string(),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let answered = wait_ended(addr, &ask).await;
    assert_eq!(
        answered["result"]["value"]["result"], "published",
        "{answered}"
    );
    assert_eq!(log_types(addr, &ask).await, ["Review", "StopEvent"]);
    // The plain run could not be saved: cancelled at the end of the grace period.
    let plain = get(addr, &format!("/handlers/{nap}")).await.json();
    assert_eq!(plain["status"], "cancelled", "{plain}");
}
