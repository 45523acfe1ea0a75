//! A server on a SQLite file evicts a durable run that waited for a human past its idle time
//! (the run leaves memory, its record says waiting, its handler stays `running` and
//! readable); the answer posted to `/events/{id}` brings it back, and a stream reader that was
//! there before the eviction sees the rest with no gap and no duplicate. A bad answer is
//! refused with the run left parked; a parked run can be cancelled.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Ask, Scratch, Sse, get, post, wait_ended};
use serde_json::{Value, json};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, SqliteStore, Store};

async fn serve(db: &std::path::Path, proposals: &Arc<AtomicU32>) -> std::net::SocketAddr {
    let server = tidewater_server::Server::new()
        .serve_workflow(
            "ask",
            Ask {
                proposals: proposals.clone(),
            }
            .runner(),
        )
        .sqlite(db)
        .evict_idle_after(Some(Duration::from_millis(150)));
    common::spawn(server).await
}

async fn start(addr: std::net::SocketAddr, topic: &str) -> String {
    let reply = post(
        addr,
        "/workflows/ask/run-nowait",
        &json!({ "start_event": topic }).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["handler_id"].as_str().unwrap().to_string()
}

/// Waits until the run's record in the file says `status` (the run left memory when it says
/// waiting: only the run itself writes that, as it goes).
async fn wait_status(db: &std::path::Path, id: &str, status: RunStatus) {
    let store = SqliteStore::open(db).unwrap();
    for _ in 0..500 {
        if store.load(id).unwrap().is_some_and(|r| r.status == status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {id} never reached {status:?}");
}

fn answer(approved: bool) -> String {
    json!({ "event": { "type": "Verdict", "value": { "approved": approved } } }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_leaves_memory_and_its_answer_brings_it_back() {
    let scratch = Scratch::new("evict-answer");
    let db = scratch.0.join("server.db");
    let proposals = Arc::new(AtomicU32::new(0));
    let addr = serve(&db, &proposals).await;
    let id = start(addr, "tidewater").await;

    // A reader from the start, kept open across the eviction.
    let from_start = format!("/events/{id}?after_sequence=-1");
    let (status, mut sse) = Sse::open(addr, &from_start, &[]).await;
    assert_eq!(status, 200);
    let first = loop {
        match sse.next().await.expect("the request arrives") {
            common::Frame::Event(seq, data) => break (seq, data),
            common::Frame::Heartbeat => {}
        }
    };
    assert_eq!(first.1["type"], "Review", "{first:?}");

    wait_status(&db, &id, RunStatus::Waiting).await;
    // Parked out of memory, the handler is still running and readable.
    let handler = get(addr, &format!("/handlers/{id}")).await;
    assert_eq!(handler.status, 202, "{}", handler.body);
    assert_eq!(handler.json()["status"], "running");

    // A bad answer is refused, naming the field; the run stays parked.
    let bad = post(
        addr,
        &format!("/events/{id}"),
        &json!({ "event": { "type": "Verdict", "value": { "approved": "maybe" } } }).to_string(),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("approved"), "{}", bad.body);
    let unknown = post(
        addr,
        &format!("/events/{id}"),
        &json!({ "event": { "type": "Nope", "value": {} } }).to_string(),
    )
    .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert_eq!(
        SqliteStore::open(&db)
            .unwrap()
            .load(&id)
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Waiting
    );

    let sent = post(addr, &format!("/events/{id}"), &answer(true)).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.json()["status"], "sent");

    let done = wait_ended(addr, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["value"]["result"], "published", "{done}");
    // The reader saw the rest: the stop event next, numbered on from the request.
    let rest: Vec<(u64, Value)> = sse.events().await;
    let types: Vec<&str> = rest
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["StopEvent"], "{rest:?}");
    assert_eq!(rest[0].0, first.0 + 1, "{rest:?}");
    // The whole log, read afresh: no gap, no duplicate.
    let (_, mut again) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    let all = again.events().await;
    let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..all.len() as u64).collect::<Vec<_>>(), "{all:?}");
    let types: Vec<&str> = all
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Review", "StopEvent"], "{all:?}");
    assert_eq!(
        proposals.load(Ordering::SeqCst),
        1,
        "the step before the request ran once"
    );
    wait_status(&db, &id, RunStatus::Finished).await;

    // Once ended, more answers are refused.
    let late = post(addr, &format!("/events/{id}"), &answer(true)).await;
    assert_eq!(late.status, 409, "{}", late.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_run_can_be_cancelled() {
    let scratch = Scratch::new("evict-cancel");
    let db = scratch.0.join("server.db");
    let proposals = Arc::new(AtomicU32::new(0));
    let addr = serve(&db, &proposals).await;
    let id = start(addr, "never").await;
    wait_status(&db, &id, RunStatus::Waiting).await;

    let cancelled = post(addr, &format!("/handlers/{id}/cancel"), "").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    let handler = wait_ended(addr, &id).await;
    assert_eq!(handler["status"], "cancelled", "{handler}");
    let (_, mut sse) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    let types: Vec<String> = sse
        .events()
        .await
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["Review", "WorkflowCancelledEvent"]);
    // The record in the file has ended too: nothing resumes it at the next start.
    let record = SqliteStore::open(&db).unwrap().load(&id).unwrap().unwrap();
    assert!(
        !matches!(record.status, RunStatus::Running | RunStatus::Waiting),
        "{:?}",
        record.status
    );
    assert_eq!(proposals.load(Ordering::SeqCst), 1);
}
