//! Durable runs across `SIGKILL` (issue 18 items 2 to 4), process against process on one
//! SQLite file, each checked from the store afterwards: every step's side effect counted in a
//! log, the output equal to an uninterrupted run's, one completion per invocation, no answer
//! lost.
//!
//! - A step killed between two of its `send_event`s does not send again, on resume, what it
//!   sent before: each send was saved before a step acted on it.
//! - Answering one of several requests of one type clears that request, and the run killed
//!   while acting on the answer still waits for the other ones, not for the one answered.
//! - A run killed after journaling a completion's stream events, before checkpointing the
//!   completion, keeps those events under their numbers, marked superseded, and the re-run's
//!   events follow them: the journal never holds a mix of two attempts.
//! - Three processes answering one parked run at once lose no answer (a process refused
//!   because another owns the run tries again); an owner frozen with `SIGSTOP` between two of
//!   its sends keeps its run and finishes it alone once woken.
//!
//! The child process is `src/bin/journal_child.rs`; the workflows `integration_tests::relay`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use integration_tests::process::{ChildGuard, DEADLINE, Scratch, counts, read_log, runtime, until};
use integration_tests::relay::{PARTS, Poll, QUESTIONS, Relay, Verdict};
use tidewater::prelude::*;
use tidewater::snapshot::EventRecord;
use tidewater::store::{MemoryStore, RunStatus, SUPERSEDED, SqliteStore, Store, current_events};

fn child(workflow: &str, db: &Path, log: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_journal_child"));
    command.arg(workflow).arg(db).arg(log).arg("k").args(args);
    command
}

/// `Relay` uninterrupted, in this process: its output and its log.
fn relay_reference(scratch: &Scratch) -> (String, Vec<String>) {
    let log = scratch.path("reference.log");
    let relay = Relay {
        log: log.clone(),
        delay: std::time::Duration::ZERO,
        hang_on: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let output = runtime.block_on(async {
        let runner = relay.runner().store(Arc::new(MemoryStore::new()));
        tokio::time::timeout(DEADLINE, runner.start_durable("k", PARTS).unwrap())
            .await
            .expect("the reference run ends in time")
            .unwrap()
    });
    (output, read_log(&log))
}

/// `Progress { index, pid }` of a journal entry (a stream-only event: its `Debug` text).
fn progress(record: &EventRecord) -> (u32, u32) {
    assert!(record.event.ends_with("::Progress"), "{record:?}");
    let debug = record.data["debug"].as_str().unwrap();
    let rest = debug
        .strip_prefix("Progress { index: ")
        .and_then(|rest| rest.strip_suffix(" }"))
        .unwrap_or_else(|| panic!("unexpected journal entry {debug}"));
    let (index, pid) = rest.split_once(", pid: ").unwrap();
    (index.parse().unwrap(), pid.parse().unwrap())
}

/// The journal's true sequence holds one `Progress` per part, in growing numbers.
fn one_progress_per_part(events: &[(u64, EventRecord)]) -> BTreeMap<u32, u32> {
    let current = current_events(events.to_vec());
    assert!(
        current.windows(2).all(|w| w[0].0 < w[1].0),
        "numbers grow: {current:?}"
    );
    let parts: BTreeMap<u32, u32> = current.iter().map(|(_, r)| progress(r)).collect();
    assert_eq!(parts.len(), current.len(), "one per part: {current:?}");
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        (0..PARTS).collect::<Vec<_>>()
    );
    parts
}

/// `fan` sends part 0, pauses, sends part 1 and hangs; `work 1` hangs too. Killed there, the run
/// has `work 0` completed, `work 1` in flight (its input saved when it was sent, before it
/// ran) and `fan` in flight having sent two parts. Resumed in another process: `fan` runs again
/// but does not send parts 0 and 1 again, so `work 0` never runs twice and `work 1` runs once
/// more (it was in flight); the output is the uninterrupted one.
#[test]
fn a_step_killed_between_its_sends_does_not_send_them_again() {
    let scratch = Scratch::new("durable-journal", "sends");
    let (output, reference) = relay_reference(&scratch);
    assert_eq!(output, "total 30 from parts [0, 1, 2, 3]");
    let (db, log) = (scratch.path("runs.db"), scratch.path("effects.log"));
    let store = SqliteStore::open(&db).unwrap();

    let mut first = ChildGuard::spawn(&mut child(
        "relay",
        &db,
        &log,
        &["start", "20", "fan 1", "work 1"],
    ));
    first.wait_until("work 0 done and work 1 saved before it ran", || {
        store.load("k").unwrap().is_some_and(|record| {
            let in_flight: Vec<(String, serde_json::Value)> = record
                .snapshot
                .in_flight
                .iter()
                .map(|c| (c.step.clone(), c.event.data.clone()))
                .collect();
            in_flight.len() == 2
                && in_flight[0].0 == "fan"
                && in_flight[1] == ("work".into(), serde_json::json!({"index": 1}))
                && record.snapshot.queued.is_empty()
        }) && read_log(&log).contains(&"work 1".to_string())
    });
    first.kill();
    let at_kill = store.load("k").unwrap().unwrap();
    assert_eq!(at_kill.status, RunStatus::Running);
    let fan = &at_kill.snapshot.in_flight[0];
    assert_eq!(
        fan.memo
            .iter()
            .map(|m| (m.label.as_str(), m.value.clone()))
            .collect::<Vec<_>>(),
        [(
            "send_event:1:integration_tests::relay::Part",
            serde_json::json!(2)
        )],
        "fan's two sends are counted in its record"
    );
    let before = read_log(&log);
    assert_eq!(counts(&before)["work 0"], 1);

    let mut second = ChildGuard::spawn(&mut child("relay", &db, &log, &["resume", "0"]));
    let out = second.success();
    assert_eq!(
        out.lines().last(),
        Some(format!("finished: {output}").as_str())
    );

    let all = read_log(&log);
    let ran = counts(&all);
    let expected: BTreeMap<&str, usize> = [
        ("fan", 2),
        ("work 0", 1),
        ("work 1", 2),
        ("work 2", 1),
        ("work 3", 1),
    ]
    .into();
    assert_eq!(ran, expected, "{all:?}");
    assert_eq!(
        counts(&reference).keys().collect::<Vec<_>>(),
        ran.keys().collect::<Vec<_>>()
    );
    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished, "{:?}", record.error);
    assert_eq!(record.output, Some(serde_json::json!(output)));
    // One completion per invocation: fan, four works, and the join's five (the count and
    // four parts).
    assert_eq!(record.snapshot.completed, 1 + 4 + 5);
    one_progress_per_part(&store.events("k").unwrap());
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

/// The child stalls in the checkpoint after its second stream event was journaled, and is
/// killed there: that event belongs to a completion no checkpoint recorded. The resumer (another
/// process) runs the invocation again, which writes a different event (its own pid); the
/// journal keeps the dead one under its number, marks it superseded, and numbers the re-run's
/// after it.
#[test]
fn a_dead_attempts_stream_events_are_marked_superseded() {
    let scratch = Scratch::new("durable-journal", "superseded");
    let (output, _) = relay_reference(&scratch);
    let (db, log) = (scratch.path("runs.db"), scratch.path("effects.log"));
    let store = SqliteStore::open(&db).unwrap();

    let mut first = ChildGuard::spawn(
        child("relay", &db, &log, &["start", "5"]).env("JOURNAL_CHILD_STALL_AFTER", "2"),
    );
    first.wait_until("two stream events journaled", || {
        store.events("k").unwrap().len() == 2
    });
    // The stall comes right after the second event; give the child time to be in it (it
    // cannot write anything else meanwhile: its run loop is blocked in the store).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = first.id();
    first.kill();
    let at_kill = store.events("k").unwrap();
    let checkpoint = store.load("k").unwrap().unwrap();
    assert_eq!(at_kill.len(), 2, "{at_kill:?}");
    assert_eq!(
        checkpoint.snapshot.stream_seq, 1,
        "the second completion was not checkpointed"
    );
    let (dead_part, dead_pid) = progress(&at_kill[1].1);
    assert_eq!(dead_pid, pid);

    let mut second = ChildGuard::spawn(&mut child("relay", &db, &log, &["resume", "0"]));
    let resumer = second.id();
    let out = second.success();
    assert_eq!(
        out.lines().last(),
        Some(format!("finished: {output}").as_str())
    );

    let events = store.events("k").unwrap();
    // What was journaled before the kill is still there, unchanged, under its number.
    assert_eq!(&events[..2], &at_kill[..]);
    // Then the marker: event 2 is superseded.
    assert_eq!(events[2].0, 3);
    assert_eq!(events[2].1.event, SUPERSEDED);
    assert_eq!(events[2].1.data["first"], 2);
    assert_eq!(events[2].1.data["last"], 2);
    // The true sequence: one `Progress` per part, the dead part's from the resumer.
    let parts = one_progress_per_part(&events);
    assert_eq!(parts[&dead_part], resumer, "{events:?}");
    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(record.output, Some(serde_json::json!(output)));
    // Every part worked; the one whose completion was lost, twice.
    let all = read_log(&log);
    let ran = counts(&all);
    for index in 0..PARTS {
        let line = format!("work {index}");
        let times = if index == dead_part { 2 } else { 1 };
        assert_eq!(ran[line.as_str()], times, "{all:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The same behaviours in one process, on both runtimes: a crash is the run's runtime dropped
// under it (its task is dropped mid-step, and nothing more is saved).

fn relay(log: &Path, hang_on: &[&str]) -> Relay {
    Relay {
        log: log.to_path_buf(),
        delay: std::time::Duration::from_millis(10),
        hang_on: hang_on.iter().map(ToString::to_string).collect(),
    }
}

fn sends_are_not_repeated_by_a_resumed_sender(multi: bool) {
    let scratch = Scratch::new("durable-journal", &format!("sends-{multi}"));
    let log = scratch.path("log");
    let store = Arc::new(MemoryStore::new());
    let crashed = runtime(multi);
    crashed.block_on(async {
        let runner = relay(&log, &["fan 1", "work 1"])
            .runner()
            .store(store.clone());
        let _run = runner.start_durable("k", PARTS).unwrap();
        // The checkpoint with `work 1` in flight commits before the step starts (its writer
        // may be another thread): wait for both, so that the crash comes while it runs.
        until("work 1 saved and running", DEADLINE, || {
            read_log(&log).iter().any(|line| line == "work 1")
                && store.load("k").unwrap().is_some_and(|record| {
                    let steps: Vec<&str> = record
                        .snapshot
                        .in_flight
                        .iter()
                        .map(|c| c.step.as_str())
                        .collect();
                    steps == ["fan", "work"]
                        && record.snapshot.in_flight[1].event.data["index"] == 1
                })
        })
        .await;
    });
    drop(crashed);
    let output = runtime(multi).block_on(async {
        let runner = relay(&log, &[]).runner().store(store.clone());
        tokio::time::timeout(DEADLINE, runner.resume_stored("k").unwrap())
            .await
            .expect("the resumed run ends in time")
    });
    assert_eq!(output.unwrap(), "total 30 from parts [0, 1, 2, 3]");
    let all = read_log(&log);
    let expected: BTreeMap<&str, usize> = [
        ("fan", 2),
        ("work 0", 1),
        ("work 1", 2),
        ("work 2", 1),
        ("work 3", 1),
    ]
    .into();
    assert_eq!(counts(&all), expected, "{all:?}");
}

#[test]
fn sends_are_not_repeated_by_a_resumed_sender_current_thread() {
    sends_are_not_repeated_by_a_resumed_sender(false);
}

#[test]
fn sends_are_not_repeated_by_a_resumed_sender_multi_thread() {
    sends_are_not_repeated_by_a_resumed_sender(true);
}

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

/// A `MemoryStore` whose checkpoints fail once it journaled `after` stream events: the run
/// ends with a store error between journaling a completion's events and checkpointing it,
/// as a process killed there would.
struct FailingAfter {
    inner: Arc<MemoryStore>,
    after: u64,
    journaled: std::sync::atomic::AtomicU64,
}

impl Store for FailingAfter {
    fn acquire(
        &self,
        key: &str,
        owner: &tidewater::store::Owner,
        claim: tidewater::store::Claim,
    ) -> Result<tidewater::store::Lease, tidewater::store::StoreError> {
        self.inner.acquire(key, owner, claim)
    }
    fn save(
        &self,
        key: &str,
        lease: &tidewater::store::Lease,
        record: &tidewater::store::RunRecord,
    ) -> Result<(), tidewater::store::StoreError> {
        if self.journaled.load(std::sync::atomic::Ordering::SeqCst) >= self.after {
            return Err(tidewater::store::StoreError::new("the disk is gone"));
        }
        self.inner.save(key, lease, record)
    }
    fn release(
        &self,
        key: &str,
        lease: &tidewater::store::Lease,
    ) -> Result<(), tidewater::store::StoreError> {
        self.inner.release(key, lease)
    }
    fn load(
        &self,
        key: &str,
    ) -> Result<Option<tidewater::store::RunRecord>, tidewater::store::StoreError> {
        self.inner.load(key)
    }
    fn append_event(
        &self,
        key: &str,
        lease: &tidewater::store::Lease,
        seq: u64,
        event: &EventRecord,
    ) -> Result<(), tidewater::store::StoreError> {
        self.inner.append_event(key, lease, seq, event)?;
        self.journaled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, tidewater::store::StoreError> {
        self.inner.events(key)
    }
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, tidewater::store::StoreError> {
        self.inner.keys(status)
    }
}

async fn events_after_the_last_checkpoint_are_superseded() {
    let scratch = Scratch::new(
        "durable-journal",
        &format!("superseded-{:?}", std::thread::current().id()),
    );
    let log = scratch.path("log");
    let store = Arc::new(MemoryStore::new());
    let failing = Arc::new(FailingAfter {
        inner: store.clone(),
        after: 2,
        journaled: Default::default(),
    });
    let runner = relay(&log, &[]).runner().store(failing);
    let ended = tokio::time::timeout(DEADLINE, runner.start_durable("k", PARTS).unwrap())
        .await
        .unwrap();
    assert!(matches!(ended, Err(WorkflowError::Store(_))), "{ended:?}");
    let at_crash = store.events("k").unwrap();
    assert_eq!(at_crash.len(), 2);
    assert_eq!(store.load("k").unwrap().unwrap().snapshot.stream_seq, 1);

    let runner = relay(&log, &[]).runner().store(store.clone());
    let output = tokio::time::timeout(DEADLINE, runner.resume_stored("k").unwrap())
        .await
        .unwrap();
    assert_eq!(output.unwrap(), "total 30 from parts [0, 1, 2, 3]");
    let events = store.events("k").unwrap();
    assert_eq!(&events[..2], &at_crash[..], "numbers are never rewritten");
    assert_eq!(events[2].0, 3);
    assert_eq!(events[2].1.event, SUPERSEDED);
    assert_eq!(
        events[2].1.data,
        serde_json::json!({"first": 2, "last": 2, "epoch": 2})
    );
    one_progress_per_part(&events);
    let seqs: Vec<u64> = runner
        .stored_events("k")
        .unwrap()
        .iter()
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(
        seqs,
        [1, 4, 5, 6],
        "the re-run's events come after the marker"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn events_after_the_last_checkpoint_are_superseded_current_thread() {
    events_after_the_last_checkpoint_are_superseded().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_after_the_last_checkpoint_are_superseded_multi_thread() {
    events_after_the_last_checkpoint_are_superseded().await;
}

// ---------------------------------------------------------------------------------------------
// Two actors on one run: processes answering at once, an owner frozen between its sends.

/// All three answers posted at once by three processes on one file: each is taken by exactly
/// one resumption of the run (a process refused because another owns the run tries again),
/// none is lost, each is decided once, and exactly one process finishes the run.
#[test]
fn three_processes_answering_at_once_lose_no_answer() {
    let scratch = Scratch::new("durable-journal", "racing");
    let (db, log) = (scratch.path("runs.db"), scratch.path("effects.log"));
    let store = SqliteStore::open(&db).unwrap();
    let out = ChildGuard::spawn(&mut child("poll", &db, &log, &["start", "0"])).success();
    assert_eq!(out.trim(), "suspended");

    let answer =
        |id: u32| ChildGuard::spawn(&mut child("poll", &db, &log, &["answer", &id.to_string()]));
    let mut outcomes: BTreeMap<u32, String> = BTreeMap::new();
    let mut refusals = 0;
    let mut racing: Vec<(u32, ChildGuard)> = (1..=QUESTIONS).map(|id| (id, answer(id))).collect();
    while !racing.is_empty() {
        let mut again = Vec::new();
        for (id, mut process) in racing {
            match process.finish() {
                (Some(0), out) => {
                    outcomes.insert(id, out.trim().to_string());
                }
                (Some(3), out) => {
                    // Another process owns the run right now: refused, the run untouched.
                    assert!(out.contains("is owned by process"), "{out}");
                    refusals += 1;
                    assert!(refusals < 200, "answers refused again and again");
                    again.push((id, answer(id)));
                }
                other => panic!("answer {id}: {other:?}"),
            }
        }
        racing = again;
    }
    let finished: Vec<&String> = outcomes
        .values()
        .filter(|o| o.starts_with("finished: "))
        .collect();
    assert_eq!(
        finished,
        [&"finished: 1=true 2=false 3=true".to_string()],
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.values().filter(|o| *o == "suspended").count(),
        2,
        "{outcomes:?}"
    );
    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert!(record.snapshot.pending_requests.is_empty());
    let expected: BTreeMap<&str, usize> = [
        ("ask", 1),
        ("decide 1", 1),
        ("decide 2", 1),
        ("decide 3", 1),
    ]
    .into();
    let all = read_log(&log);
    assert_eq!(counts(&all), expected, "{all:?}");
    assert_eq!(record.snapshot.completed, 1 + 3 + 3);
    eprintln!("{refusals} answer(s) refused while another process owned the run");
}

/// The owner is frozen (`SIGSTOP`) between two of its sends: a second process cannot resume
/// the run (it is owned by a live process), and the owner, woken (`SIGCONT`), finishes it
/// alone: each part worked once, `fan` run once, the output the uninterrupted one.
#[test]
fn an_owner_frozen_between_its_sends_finishes_alone() {
    let scratch = Scratch::new("durable-journal", "frozen");
    let (output, _) = relay_reference(&scratch);
    let (db, log) = (scratch.path("runs.db"), scratch.path("effects.log"));
    let store = SqliteStore::open(&db).unwrap();
    let mut owner = ChildGuard::spawn(&mut child("relay", &db, &log, &["start", "150"]));
    owner.wait_until("part 0 worked and fan between its sends", || {
        store.load("k").unwrap().is_some_and(|record| {
            record.snapshot.in_flight.len() == 1 && record.snapshot.in_flight[0].step == "fan"
        }) && read_log(&log).contains(&"work 0".to_string())
    });
    owner.signal("STOP");
    let (code, out) = ChildGuard::spawn(&mut child("relay", &db, &log, &["resume", "0"])).finish();
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains(&format!("is owned by process {}", owner.id())),
        "{out}"
    );
    owner.signal("CONT");
    let out = owner.success();
    assert_eq!(
        out.lines().last(),
        Some(format!("finished: {output}").as_str())
    );
    let expected: BTreeMap<&str, usize> = [
        ("fan", 1),
        ("work 0", 1),
        ("work 1", 1),
        ("work 2", 1),
        ("work 3", 1),
    ]
    .into();
    let all = read_log(&log);
    assert_eq!(counts(&all), expected, "{all:?}");
    let record = store.load("k").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(record.output, Some(serde_json::json!(output)));
    one_progress_per_part(&store.events("k").unwrap());
}
