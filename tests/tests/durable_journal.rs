//! Durable runs across `SIGKILL` (issue 18), process against process on one SQLite file, each
//! checked from the store afterwards: every step's side effect counted in a log, the output
//! equal to an uninterrupted run's, one completion per invocation, no answer lost.
//!
//! - Answering one of several requests of one type clears that request, and the run killed
//!   while acting on the answer still waits for the other ones, not for the one answered.
//!
//! The child process is `src/bin/journal_child.rs`; the workflows `integration_tests::relay`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use integration_tests::process::{ChildGuard, DEADLINE, Scratch, counts, read_log};
use integration_tests::relay::{Poll, QUESTIONS, Verdict};
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, SqliteStore, Store};

fn child(workflow: &str, db: &Path, log: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_journal_child"));
    command.arg(workflow).arg(db).arg(log).arg("k").args(args);
    command
}

/// The ids of the requests the run waits for, as stored.
fn pending(store: &SqliteStore) -> Vec<u64> {
    store
        .load("k")
        .unwrap()
        .unwrap()
        .snapshot
        .pending_requests
        .iter()
        .map(|r| r.data["id"].as_u64().unwrap())
        .collect()
}

/// The run asks three questions and parks. Question 2 is answered first, by a process killed
/// while `decide` acts on it: the store has the answer (as `decide`'s input) and still waits
/// for questions 1 and 3, not for 2. Questions 3 and 1 are answered by two more processes; the
/// output is the uninterrupted one, each answer decided once (2 twice: it was in flight).
#[test]
fn answering_one_of_several_requests_clears_that_one_across_a_kill() {
    let scratch = Scratch::new("durable-journal", "answers");
    let reference_log = scratch.path("reference.log");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reference = runtime.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let runner = Poll {
            log: reference_log.clone(),
            hang_on: Vec::new(),
        }
        .runner()
        .store(store)
        .evict_when_waiting(true);
        let parked = runner.start_durable("k", ()).unwrap().await;
        assert!(matches!(parked, Err(WorkflowError::Suspended { .. })));
        let mut output = None;
        for id in 1..=QUESTIONS {
            let run = runner
                .answer(
                    "k",
                    Verdict {
                        id,
                        ok: id % 2 == 1,
                    },
                )
                .unwrap();
            output = Some(tokio::time::timeout(DEADLINE, run).await.unwrap());
        }
        output.unwrap().unwrap()
    });
    assert_eq!(reference, "1=true 2=false 3=true");
    let (db, log) = (scratch.path("runs.db"), scratch.path("effects.log"));
    let store = SqliteStore::open(&db).unwrap();

    let out = ChildGuard::spawn(&mut child("poll", &db, &log, &["start", "0"])).success();
    assert_eq!(out.trim(), "suspended");
    assert_eq!(pending(&store), [1, 2, 3]);

    let mut answering =
        ChildGuard::spawn(&mut child("poll", &db, &log, &["answer", "2", "decide 2"]));
    answering.wait_until("the answer saved and acted on", || {
        read_log(&log).contains(&"decide 2".to_string())
            && store.load("k").unwrap().is_some_and(|r| {
                r.status == RunStatus::Running
                    && r.snapshot.in_flight.len() == 1
                    && r.snapshot.in_flight[0].event.data
                        == serde_json::json!({"id": 2, "ok": false})
            })
    });
    answering.kill();
    assert_eq!(
        pending(&store),
        [1, 3],
        "the answered request is the one cleared"
    );

    let out = ChildGuard::spawn(&mut child("poll", &db, &log, &["answer", "3"])).success();
    assert_eq!(out.trim(), "suspended");
    assert_eq!(pending(&store), [1]);
    let out = ChildGuard::spawn(&mut child("poll", &db, &log, &["answer", "1"])).success();
    assert_eq!(out.trim(), format!("finished: {reference}"));

    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(record.output, Some(serde_json::json!(reference)));
    assert!(record.snapshot.pending_requests.is_empty());
    let expected: BTreeMap<&str, usize> = [
        ("ask", 1),
        ("decide 1", 1),
        ("decide 2", 2),
        ("decide 3", 1),
    ]
    .into();
    let all = read_log(&log);
    assert_eq!(counts(&all), expected, "{all:?}");
    // One completion per invocation: ask, three decides, three tallies.
    assert_eq!(record.snapshot.completed, 1 + 3 + 3);
}

// ---------------------------------------------------------------------------------------------
// The same behaviours in one process, on both runtimes.

/// A live run: answering question 2 first clears request 2 (a snapshot says what the run
/// still waits for), and the run ends once all three are answered.
async fn an_answer_clears_the_request_it_answers() {
    use futures_util::StreamExt;
    let scratch = Scratch::new(
        "durable-journal",
        &format!("clears-{:?}", std::thread::current().id()),
    );
    let runner = Poll {
        log: scratch.path("log"),
        hang_on: Vec::new(),
    }
    .runner()
    .store(Arc::new(MemoryStore::new()));
    let mut run = runner.start_durable("k", ()).unwrap();
    let mut events = run.events();
    let mut asked = Vec::new();
    while asked.len() < QUESTIONS as usize {
        let item = tokio::time::timeout(DEADLINE, events.next())
            .await
            .unwrap()
            .unwrap();
        if let Some(review) = item.event::<integration_tests::relay::Review>() {
            asked.push(review.id);
        }
    }
    assert_eq!(asked, [1, 2, 3]);
    run.send_response(Verdict { id: 2, ok: false });
    let start = std::time::Instant::now();
    let waits_for = loop {
        let snapshot = tokio::time::timeout(DEADLINE, run.snapshot())
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<u64> = snapshot
            .pending_requests
            .iter()
            .map(|r| r.data["id"].as_u64().unwrap())
            .collect();
        if ids.len() < 3 {
            break ids;
        }
        assert!(start.elapsed() < DEADLINE, "the answer was never routed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(waits_for, [1, 3]);
    run.send_response(Verdict { id: 3, ok: true });
    run.send_response(Verdict { id: 1, ok: true });
    let output = tokio::time::timeout(DEADLINE, run).await.unwrap();
    assert_eq!(output.unwrap(), "1=true 2=false 3=true");
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_clears_the_request_it_answers_current_thread() {
    an_answer_clears_the_request_it_answers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_clears_the_request_it_answers_multi_thread() {
    an_answer_clears_the_request_it_answers().await;
}
