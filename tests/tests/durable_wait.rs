//! A step that does work, waits for a human, does more work and waits again resumes without
//! repeating the work before its waits (issue 10 item 3), in process and across `SIGKILL`:
//! the work is in `ctx.once`, the answers its waits received are recorded and saved before the
//! step sees them, and on resume each wait gets its own answer back, once.
//!
//! The workflow is `integration_tests::checkout`; its child process `src/bin/wait_child.rs`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use integration_tests::checkout::{Approval, AskApproval, Checkout};
use integration_tests::process::{ChildGuard, Scratch, read_log};
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, SqliteStore, Store};

/// No wait in this file lasts longer than this.
const DEADLINE: Duration = Duration::from_secs(20);

const OUTPUT: &str = "charge-1250 by ada and bob";

/// Answers each `AskApproval` on the run's stream (round 1: ada, round 2: bob) and returns the
/// rounds asked, in order, with the output.
async fn answer_all(run: Handler<Checkout>) -> (Vec<u32>, Result<String, WorkflowError>) {
    let mut run = run;
    let mut events = run.events();
    let mut rounds = Vec::new();
    while let Some(item) = events.next().await {
        if let Some(ask) = item.event::<AskApproval>() {
            rounds.push(ask.round);
            let by = if ask.round == 1 { "ada" } else { "bob" };
            run.send_response(Approval { by: by.into() });
        }
    }
    (rounds, run.await)
}

async fn uninterrupted() {
    let scratch = Scratch::new(
        "durable-wait",
        &format!("ref-{:?}", std::thread::current().id()),
    );
    let log = scratch.path("log");
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let runner = Checkout { log: log.clone() }.runner().store(store.clone());
    let run = runner.start_durable("k", 1250).unwrap();
    let (rounds, output) = tokio::time::timeout(DEADLINE, answer_all(run))
        .await
        .unwrap();
    assert_eq!(output.unwrap(), OUTPUT);
    assert_eq!(rounds, [1, 2]);
    assert_eq!(
        read_log(&log),
        ["start", "charge 1250 key k/checkout/1", "email ada"]
    );
    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(record.output, Some(serde_json::json!(OUTPUT)));
}

#[tokio::test(flavor = "current_thread")]
async fn uninterrupted_current_thread() {
    uninterrupted().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninterrupted_multi_thread() {
    uninterrupted().await;
}

/// Every checkpoint the run saved while the step waited, resumed in turn in a fresh runner:
/// whatever the step recorded before the checkpoint is not done again, each wait still
/// unanswered asks again, and the output is the uninterrupted one.
async fn resumed_from_every_checkpoint() {
    let scratch = Scratch::new(
        "durable-wait",
        &format!("every-{:?}", std::thread::current().id()),
    );
    let log = scratch.path("log");
    let store = Arc::new(MemoryStore::new());
    let runner = Checkout { log: log.clone() }.runner().store(store.clone());
    let (_, output) = answer_all(runner.start_durable("k", 1250).unwrap()).await;
    assert_eq!(output.unwrap(), OUTPUT);
    let history = store.history("k");
    // Every checkpoint with something left to do (the last one is the finished run's).
    let waiting: Vec<_> = history
        .iter()
        .filter(|s| !s.in_flight.is_empty() || !s.queued.is_empty())
        .collect();
    // Started, charged, first answer recorded, emailed, second answer recorded.
    let labels: Vec<Vec<&str>> = waiting
        .iter()
        .map(|s| {
            s.in_flight
                .first()
                .map(|c| c.memo.iter().map(|m| m.label.as_str()).collect())
                .unwrap_or_default()
        })
        .collect();
    let wait = "wait_for:integration_tests::checkout::Approval";
    assert_eq!(
        labels,
        [
            vec![],
            vec!["charge"],
            vec!["charge", wait],
            vec!["charge", wait, "email"],
            vec!["charge", wait, "email", wait],
        ]
    );
    for (i, record) in waiting.into_iter().enumerate() {
        let log = scratch.path(&format!("log-{i}"));
        let replay = Arc::new(MemoryStore::new());
        let runner = Checkout { log: log.clone() }.runner().store(replay.clone());
        let handler = runner.resume(record).unwrap();
        let (rounds, output) = tokio::time::timeout(DEADLINE, answer_all(handler))
            .await
            .unwrap();
        assert_eq!(output.unwrap(), OUTPUT, "resumed from checkpoint {i}");
        let expected_rounds: &[u32] = match labels[i].iter().filter(|l| **l == wait).count() {
            0 => &[1, 2],
            1 => &[2],
            _ => &[],
        };
        assert_eq!(rounds, expected_rounds, "resumed from checkpoint {i}");
        let mut expected = vec!["start".to_string()];
        if !labels[i].contains(&"charge") {
            // A snapshot resumed without a store is a new run: its key is `run-<id>/..`.
            expected.push(format!("charge 1250 key {}", handler_key(&log)));
        }
        if !labels[i].contains(&"email") {
            expected.push("email ada".into());
        }
        assert_eq!(read_log(&log), expected, "resumed from checkpoint {i}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_checkpoint_resumes_current_thread() {
    resumed_from_every_checkpoint().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_checkpoint_resumes_multi_thread() {
    resumed_from_every_checkpoint().await;
}

/// The invocation key the resumed run logged with its charge (`run-<id>/checkout/1`).
fn handler_key(log: &Path) -> String {
    let lines = read_log(log);
    let charge = lines
        .iter()
        .find_map(|l| l.strip_prefix("charge 1250 key "))
        .expect("a charge line");
    assert!(
        charge.starts_with("run-") && charge.ends_with("/checkout/1"),
        "{charge}"
    );
    charge.to_string()
}

/// The child process running the run `k`: `wait_child <db> <log> k <args>`.
fn spawn(db: &Path, log: &Path, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_wait_child"))
            .arg(db)
            .arg(log)
            .arg("k")
            .args(args),
    )
}

/// Polls until the run's checkpoint shows its step having recorded `labels`.
fn wait_for_memo(store: &SqliteStore, child: &mut ChildGuard, labels: &[&str]) {
    child.wait_until(&format!("the step to record {labels:?}"), || {
        store.load("k").unwrap().is_some_and(|record| {
            let memo: Vec<&str> = record
                .snapshot
                .in_flight
                .first()
                .map(|c| c.memo.iter().map(|m| m.label.as_str()).collect())
                .unwrap_or_default();
            memo == labels
        })
    });
}

/// `SIGKILL` while the step waits for its first answer, then again while it waits for its
/// second: the charge and the email happen once each, the first answer (delivered with
/// `answer` to the restarted process, before the re-run step waits again) reaches the waiting
/// step rather than the step that takes stray approvals, and the stored output equals the
/// uninterrupted run's.
#[test]
fn sigkill_while_the_step_waits_does_not_repeat_the_work_before_the_wait() {
    let scratch = Scratch::new("durable-wait", "kill");
    let (db, log) = (scratch.path("runs.db"), scratch.path("log"));
    let store = SqliteStore::open(&db).unwrap();
    let wait = "wait_for:integration_tests::checkout::Approval";

    let mut first = spawn(&db, &log, &["start"]);
    wait_for_memo(&store, &mut first, &["charge"]);
    first.kill();

    let mut second = spawn(&db, &log, &["answer", "ada"]);
    wait_for_memo(&store, &mut second, &["charge", wait, "email"]);
    second.kill();

    let mut third = spawn(&db, &log, &["answer", "bob"]);
    third.success();

    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished, "{:?}", record.error);
    assert_eq!(record.output, Some(serde_json::json!(OUTPUT)));
    assert_eq!(
        read_log(&log),
        [
            "start",
            "charge 1250 key k/checkout/1",
            "start",
            "email ada",
            "start"
        ],
        "each side effect once, the step started three times"
    );
}
