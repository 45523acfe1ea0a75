//! A server on a SQLite file is SIGKILLed while one run waits for a human and another is
//! mid-flight; a new process on the same file finishes both with the right results, keeps the
//! finished handlers readable, fails the run of a non-durable workflow with the reason, and
//! marks a corrupt record failed without refusing to start.
//!
//! The server runs in a child process: this test binary re-executed with `TW_CHILD_DB` set
//! runs `child_server` as a server.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Ask, Scratch, get, log_types, post, wait_ended};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidewater::prelude::*;

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
struct Leg {
    n: u32,
    total: u64,
}

/// Three legs of 300 ms each: killed in the middle, resumed from the last checkpoint.
struct Trip;

#[workflow(durable)]
impl Trip {
    #[step]
    async fn first(&self, ev: StartEvent<u32>) -> Leg {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Leg {
            n: 1,
            total: u64::from(ev.0),
        }
    }

    #[step]
    async fn leg(&self, ctx: &Context<Self>, ev: Leg) -> Either<Leg, StopEvent<u64>> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ctx.write_event_to_stream(ev.clone());
        if ev.n == 3 {
            Either::Right(StopEvent(ev.total * 10))
        } else {
            Either::Left(Leg {
                n: ev.n + 1,
                total: ev.total + 1,
            })
        }
    }
}

/// Not durable: its in-flight run cannot survive a restart.
struct Plain;

#[workflow]
impl Plain {
    #[step]
    async fn wait(&self, ev: StartEvent<u64>) -> StopEvent<u64> {
        tokio::time::sleep(Duration::from_millis(ev.0)).await;
        StopEvent(ev.0)
    }
}

#[test]
fn child_server() {
    let (Ok(db), Ok(port)) = (std::env::var("TW_CHILD_DB"), std::env::var("TW_CHILD_PORT")) else {
        return; // run as a test: nothing to do
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap()))
            .await
            .unwrap();
        tidewater_server::Server::new()
            .serve_workflow("trip", Trip.runner())
            .serve_workflow("ask", Ask::default().runner())
            .serve_workflow("plain", Plain.runner())
            .sqlite(db)
            .serve_on(listener, std::future::pending())
            .await
            .unwrap();
    });
}

struct ChildServer(Child, SocketAddr);

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_child(db: &std::path::Path) -> ChildServer {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_server", "--exact", "--nocapture"])
        .env("TW_CHILD_DB", db)
        .env("TW_CHILD_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return ChildServer(child, addr);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the child server did not start");
}

fn id(reply: &common::Reply) -> String {
    reply.json()["handler_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_loses_no_run() {
    let scratch = Scratch::new("restart");
    let db = scratch.0.join("server.db");

    let first = start_child(&db).await;
    let addr = first.1;
    let done = post(
        addr,
        "/workflows/ask/run-nowait",
        r#"{"start_event": "kept"}"#,
    )
    .await;
    let done = id(&done);
    post(
        addr,
        &format!("/events/{done}"),
        r#"{"event": {"type": "Verdict", "value": {"approved": false}}}"#,
    )
    .await;
    assert_eq!(wait_ended(addr, &done).await["status"], "completed");
    let corrupt = id(&post(addr, "/workflows/plain/run", r#"{"start_event": 1}"#).await);

    let waiting = id(&post(
        addr,
        "/workflows/ask/run-nowait",
        r#"{"start_event": "post"}"#,
    )
    .await);
    let trip = id(&post(addr, "/workflows/trip/run-nowait", r#"{"start_event": 5}"#).await);
    let plain = id(&post(
        addr,
        "/workflows/plain/run-nowait",
        r#"{"start_event": 60000}"#,
    )
    .await);
    // Kill while `trip` is in its second leg and `waiting` waits for its answer.
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(get(addr, &format!("/handlers/{trip}")).await.status, 202);
    let mut first = first;
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();

    // Corrupt one finished record while the server is down.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n = conn
            .execute(
                "UPDATE server_handlers SET result = '{not json' WHERE handler_id = ?1",
                [&corrupt],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    let second = start_child(&db).await;
    let addr = second.1;
    // The mid-flight run resumes and ends with the right result.
    let trip_data = wait_ended(addr, &trip).await;
    assert_eq!(trip_data["status"], "completed", "{trip_data}");
    assert_eq!(trip_data["result"]["value"]["result"], 70);
    // The parked run is still waiting; its answer finishes it.
    assert_eq!(get(addr, &format!("/handlers/{waiting}")).await.status, 202);
    let sent = post(
        addr,
        &format!("/events/{waiting}"),
        r#"{"event": {"type": "Verdict", "value": {"approved": true}}}"#,
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(
        wait_ended(addr, &waiting).await["result"]["value"]["result"],
        "published"
    );
    // The resumed run published its request again for whoever watches it now; the log keeps
    // it once.
    assert_eq!(log_types(addr, &waiting).await, ["Review", "StopEvent"]);
    // Finished handlers stay readable, with their event logs.
    let kept = get(addr, &format!("/results/{done}")).await;
    assert_eq!(
        (kept.status, kept.json()["result"].clone()),
        (200, json!("dropped"))
    );
    assert_eq!(log_types(addr, &done).await, ["Review", "StopEvent"]);
    // The non-durable run is failed with the reason; the corrupt record too.
    let plain_data = get(addr, &format!("/handlers/{plain}")).await.json();
    assert_eq!(plain_data["status"], "failed");
    assert!(
        plain_data["error"]
            .as_str()
            .unwrap()
            .contains("not `#[workflow(durable)]`"),
        "{plain_data}"
    );
    let corrupt_data = get(addr, &format!("/handlers/{corrupt}")).await.json();
    assert_eq!(corrupt_data["status"], "failed");
    assert!(
        corrupt_data["error"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{corrupt_data}"
    );
    // And a new run works on the same file.
    assert_eq!(
        post(addr, "/workflows/plain/run", r#"{"start_event": 1}"#)
            .await
            .status,
        200
    );
    drop(second);
}
