//! A durable run whose process is killed with `SIGKILL` resumes from its SQLite store in
//! another process: the output equals an uninterrupted run's, no journaled event is lost, no
//! step completion journaled before the kill runs again, and only the steps that were running
//! run twice (at least once).
//!
//! The child process is `src/bin/durable_child.rs`, running `integration_tests::durable`'s
//! `Pipeline`: every step invocation appends `step <name> input <n>` to a side-effect log when
//! it starts, so the log tells which invocations ran and how often.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::durable::{PARTS, Pipeline};
use integration_tests::process::{ChildGuard, Scratch, counts, read_log};
use tidewater::prelude::*;
use tidewater::snapshot::{EventRecord, InFlightRecord, Snapshot};
use tidewater::store::{RunStatus, SqliteStore, Store};

/// No wait in this file lasts longer than this.
const DEADLINE: Duration = Duration::from_secs(15);

/// The child process running `key`, started (or resumed, with `DURABLE_CHILD_RESUME`).
fn spawn(db: &Path, log: &Path, key: &str, delay_ms: u64, hang_on: Option<&str>) -> ChildGuard {
    let mut command = Command::new(env!("CARGO_BIN_EXE_durable_child"));
    command.arg(db).arg(log).arg(key).arg(delay_ms.to_string());
    if let Some(line) = hang_on {
        command.arg(line);
    }
    ChildGuard::spawn(&mut command)
}

/// The log line an in-flight invocation writes when it (re-)starts.
fn line_of(record: &InFlightRecord) -> String {
    let data = &record.event.data;
    let input = match record.step.as_str() {
        "plan" => data
            .as_u64()
            .or_else(|| data.get(0).and_then(|v| v.as_u64())),
        "work" | "gather" => data["index"].as_u64(),
        "report" => data["total"].as_u64(),
        other => panic!("unknown step `{other}`"),
    };
    format!(
        "step {} input {}",
        record.step,
        input.unwrap_or_else(|| panic!("no input in {data}"))
    )
}

/// The sequence numbers of the `Progress` events journaled by `work`, in journal order, and
/// their part indexes. `Progress` is written to the stream only, not an event of the graph:
/// the journal keeps its `Debug` text.
fn progress(events: &[(u64, EventRecord)]) -> (Vec<u64>, Vec<u64>) {
    events
        .iter()
        .map(|(seq, record)| {
            assert!(record.event.ends_with("::Progress"), "{record:?}");
            let debug = record.data["debug"].as_str().unwrap();
            let index = debug
                .strip_prefix("Progress { index: ")
                .and_then(|rest| rest.strip_suffix(" }"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("unexpected journal entry {debug}"));
            (*seq, index)
        })
        .unzip()
}

/// The same workflow, uninterrupted, in this process: its output and its log.
async fn reference(scratch: &Scratch) -> (String, Vec<String>) {
    let log = scratch.path("reference.log");
    let pipeline = Pipeline {
        log: log.clone(),
        delay: Duration::ZERO,
        hang_on: None,
    };
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let run = pipeline
        .runner()
        .store(store.clone())
        .start_durable("reference", PARTS)
        .unwrap();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the reference run ends in time")
        .unwrap();
    let lines = read_log(&log);
    assert_eq!(
        lines.len(),
        lines.iter().collect::<BTreeSet<_>>().len(),
        "each invocation logs a distinct line: {lines:?}"
    );
    assert_eq!(lines.len(), 2 + 2 * PARTS as usize);
    (output, lines)
}

/// How the killed run is taken up again.
#[derive(Clone, Copy)]
enum Resume {
    /// `Runner::resume_stored(key)`.
    ByKey,
    /// `Runner::adopt_orphans()`, as a worker polling for a dead worker's runs does.
    Adopt,
}

/// What the parent saw when the child died.
struct AtKill {
    snapshot: Snapshot,
    log: Vec<String>,
    events: Vec<(u64, EventRecord)>,
}

/// Resumes the killed run in this process and checks everything against the reference run.
async fn resume_and_check(
    db: &Path,
    log: &Path,
    key: &str,
    at_kill: &AtKill,
    reference: &(String, Vec<String>),
    how: Resume,
) {
    let store = Arc::new(SqliteStore::open(db).unwrap());
    let runner = Pipeline {
        log: log.to_path_buf(),
        delay: Duration::ZERO,
        hang_on: None,
    }
    .runner()
    .store(store.clone());
    let run = match how {
        Resume::ByKey => runner.resume_stored(key).unwrap(),
        Resume::Adopt => {
            // Found without being named: the only run of the store whose owner is gone.
            let mut adopted = runner.adopt_orphans().unwrap();
            let keys: Vec<&str> = adopted.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, [key]);
            // Taken: a second look finds nothing more to adopt.
            assert!(runner.adopt_orphans().unwrap().is_empty());
            adopted.pop().unwrap().1
        }
    };
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the resumed run ends in time")
        .unwrap();

    // The output equals the uninterrupted run's: nothing was lost, nothing counted twice.
    assert_eq!(output, reference.0);
    assert_eq!(
        store.load(key).unwrap().unwrap().status,
        RunStatus::Finished
    );
    assert_eq!(runner.stored_output(key).unwrap(), output);

    let snapshot = &at_kill.snapshot;
    let in_flight: BTreeSet<String> = snapshot.in_flight.iter().map(line_of).collect();
    let before = &at_kill.log;
    let all = read_log(log);
    assert_eq!(&all[..before.len()], &before[..], "the log only grows");
    let after = &all[before.len()..];

    // The journal's completion count is exactly the side effects that completed: what ran
    // before the kill, less the invocations that were still running.
    let completed: Vec<&String> = before.iter().filter(|l| !in_flight.contains(*l)).collect();
    assert_eq!(
        completed.len() as u64,
        snapshot.completed,
        "log before the kill: {before:?}\nin flight: {in_flight:?}"
    );
    // No completion journaled before the kill ran again.
    for line in &completed {
        assert!(
            !after.contains(line),
            "`{line}` completed before the kill and ran again after it"
        );
    }
    // The invocations that were running ran again, once.
    let after_counts = counts(after);
    for line in &in_flight {
        assert_eq!(
            after_counts.get(line.as_str()),
            Some(&1),
            "in-flight `{line}` re-runs once"
        );
    }
    // Every invocation of the reference ran, and at most twice (only the in-flight ones).
    let all_counts = counts(&all);
    let expected: BTreeSet<&str> = reference.1.iter().map(String::as_str).collect();
    assert_eq!(
        all_counts.keys().copied().collect::<BTreeSet<_>>(),
        expected
    );
    for (line, n) in &all_counts {
        let allowed = if in_flight.contains(*line) { 2 } else { 1 };
        assert!(*n <= allowed, "`{line}` ran {n} times");
    }

    // The stream journal: everything journaled before the kill is still there under its
    // number, unchanged (a client that saw event N never sees another one at N); what was
    // journaled after the last checkpoint (by completions the kill cut off, which ran again)
    // is marked superseded; the true sequence holds one `Progress` per part, in growing
    // numbers, the first `stream_seq` of them as they were at the checkpoint.
    let events = store.events(key).unwrap();
    for (seq, record) in &at_kill.events {
        assert!(
            events.iter().any(|(s, r)| s == seq && r == record),
            "event {seq} was rewritten: {events:?}"
        );
    }
    let current = runner.stored_events(key).unwrap();
    let (seqs, mut parts) = progress(&current);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    parts.sort_unstable();
    assert_eq!(parts, (0..u64::from(PARTS)).collect::<Vec<_>>());
    let kept: Vec<_> = at_kill
        .events
        .iter()
        .filter(|(seq, _)| *seq <= snapshot.stream_seq)
        .cloned()
        .collect();
    assert_eq!(kept.len() as u64, snapshot.stream_seq);
    assert_eq!(&current[..kept.len()], &kept[..]);
}

fn state_at_kill(db: &Path, log: &Path, key: &str) -> AtKill {
    let store = SqliteStore::open(db).unwrap();
    let record = store.load(key).unwrap().expect("the run is in the store");
    assert_eq!(record.status, RunStatus::Running);
    AtKill {
        snapshot: record.snapshot,
        log: read_log(log),
        events: store.events(key).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_inside_a_step_resumes_without_repeating_completed_steps() {
    let started = Instant::now();
    let scratch = Scratch::new("durable-kill", "inside");
    let reference = reference(&scratch).await;
    let (db, log, key) = (
        scratch.path("runs.db"),
        scratch.path("effects.log"),
        "job-1",
    );
    // The child sleeps a minute in `work` on part 3: it is killed there, with part 3 in flight.
    let hang = "step work input 3";
    let mut child = spawn(&db, &log, key, 20, Some(hang));
    child.wait_until("part 3 is being worked", || {
        read_log(&log).iter().any(|l| l == hang)
    });
    child.kill();
    let killed_at = started.elapsed();
    let at_kill = state_at_kill(&db, &log, key);
    let in_flight: Vec<String> = at_kill.snapshot.in_flight.iter().map(line_of).collect();
    assert!(
        in_flight.iter().any(|l| l == hang),
        "the hanging invocation is in flight in the last checkpoint: {in_flight:?}"
    );
    // Parts 0 to 2 were worked, so `plan` and at least one `work` completed.
    assert!(
        at_kill.snapshot.completed >= 2,
        "{}",
        at_kill.snapshot.completed
    );
    resume_and_check(&db, &log, key, &at_kill, &reference, Resume::ByKey).await;
    let all = read_log(&log);
    assert_eq!(
        all.iter().filter(|l| *l == hang).count(),
        2,
        "the step killed in flight ran again (at least once): {all:?}"
    );
    eprintln!(
        "killed after {killed_at:?} with {} completions journaled, {:?} in flight; \
         resumed and checked in {:?} total",
        at_kill.snapshot.completed,
        in_flight,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_between_checkpoints_resumes_from_the_last_one() {
    let started = Instant::now();
    let scratch = Scratch::new("durable-kill", "between");
    let reference = reference(&scratch).await;
    let (db, log, key) = (
        scratch.path("runs.db"),
        scratch.path("effects.log"),
        "job-2",
    );
    // 14 invocations of 100 ms each, the gathers one at a time: the run lasts about 0.8 s
    // after the 5th completion, ample time to kill it somewhere in the middle.
    let mut child = spawn(&db, &log, key, 100, None);
    child.wait_until("the run is in the store", || {
        read_log(&log).iter().any(|l| l.starts_with("step plan"))
    });
    let store = SqliteStore::open(&db).unwrap();
    child.wait_until("5 completions are journaled", || {
        store
            .load(key)
            .unwrap()
            .is_some_and(|r| r.snapshot.completed >= 5)
    });
    child.kill();
    let killed_at = started.elapsed();
    drop(store);
    let at_kill = state_at_kill(&db, &log, key);
    assert!(at_kill.snapshot.completed >= 5);
    resume_and_check(&db, &log, key, &at_kill, &reference, Resume::ByKey).await;
    eprintln!(
        "killed after {killed_at:?} with {} completions journaled, {} in flight; \
         resumed and checked in {:?} total",
        at_kill.snapshot.completed,
        at_kill.snapshot.in_flight.len(),
        started.elapsed()
    );
}

#[test]
fn the_store_file_of_a_killed_run_is_readable_by_another_connection_at_once() {
    // The basis of the test above: a checkpoint written by `save` is visible to a second
    // connection on the same file as soon as `save` returns (WAL, FULL sync).
    let scratch = Scratch::new("durable-kill", "visible");
    let db = scratch.path("runs.db");
    let writer = SqliteStore::open(&db).unwrap();
    let reader = SqliteStore::open(&db).unwrap();
    assert!(reader.load("k").unwrap().is_none());
    let snapshot = Snapshot::from_json(
        r#"{"format":1,"workflow":"W","fingerprint":"0","run_id":1,"completed":3,
            "state":null,"in_flight":[],"queued":[],"collect":[],"pending_requests":[],
            "unclaimed":[],"recoveries":0,"stream_seq":0}"#,
    )
    .unwrap();
    let lease = writer
        .acquire(
            "k",
            &tidewater::store::Owner::this_process(),
            tidewater::store::Claim::Start,
        )
        .unwrap();
    writer
        .save(
            "k",
            &lease,
            &tidewater::store::RunRecord {
                status: RunStatus::Running,
                snapshot: snapshot.clone(),
                output: None,
                error: None,
                trace: None,
            },
        )
        .unwrap();
    assert_eq!(reader.load("k").unwrap().unwrap().snapshot, snapshot);
}

// ---------------------------------------------------------------------------------------------
// One owner per run: processes racing for one run on one file.

/// A child that resumes `key` from the store (`DURABLE_CHILD_RESUME`), its stdout captured.
fn spawn_resumer(db: &Path, log: &Path, key: &str, delay_ms: u64) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_durable_child"))
            .arg(db)
            .arg(log)
            .arg(key)
            .arg(delay_ms.to_string())
            .env("DURABLE_CHILD_RESUME", "1"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_resuming_one_crashed_run_run_it_once() {
    let scratch = Scratch::new("durable-kill", "race");
    let reference = reference(&scratch).await;
    let (db, log, key) = (
        scratch.path("runs.db"),
        scratch.path("effects.log"),
        "job-race",
    );
    let hang = "step work input 3";
    let mut child = spawn(&db, &log, key, 20, Some(hang));
    child.wait_until("part 3 is being worked", || {
        read_log(&log).iter().any(|l| l == hang)
    });
    child.kill();
    let at_kill = state_at_kill(&db, &log, key);
    let in_flight: BTreeSet<String> = at_kill.snapshot.in_flight.iter().map(line_of).collect();

    // Two processes resume the crashed run at the same moment.
    let mut first = spawn_resumer(&db, &log, key, 30);
    let mut second = spawn_resumer(&db, &log, key, 30);
    let outcomes = [first.finish(), second.finish()];
    let finished: Vec<_> = outcomes
        .iter()
        .filter(|(code, _)| *code == Some(0))
        .collect();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|(code, _)| *code == Some(3))
        .collect();
    assert_eq!(
        finished.len(),
        1,
        "exactly one resumer runs it: {outcomes:?}"
    );
    assert_eq!(refused.len(), 1, "the other is refused: {outcomes:?}");
    assert_eq!(
        finished[0].1.lines().last(),
        Some(format!("finished: {}", reference.0).as_str())
    );
    let refusal = &refused[0].1;
    assert!(
        refusal.contains("is owned by process") || refusal.contains("has ended (Finished)"),
        "{refusal}"
    );

    // One resumer ran the rest: after the kill no invocation ran twice, none that completed
    // before it ran again, and every invocation of the reference ran.
    let all = read_log(&log);
    let after = &all[at_kill.log.len()..];
    let after_counts = counts(after);
    for (line, n) in &after_counts {
        assert_eq!(*n, 1, "`{line}` ran {n} times after the kill: {all:?}");
        assert!(
            in_flight.contains(*line) || !at_kill.log.contains(&line.to_string()),
            "`{line}` completed before the kill and ran again: {all:?}"
        );
    }
    let expected: BTreeSet<&str> = reference.1.iter().map(String::as_str).collect();
    assert_eq!(
        counts(&all).keys().copied().collect::<BTreeSet<_>>(),
        expected
    );
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(
        store.load(key).unwrap().unwrap().status,
        RunStatus::Finished
    );
    let (seqs, _) = progress(&tidewater::store::current_events(
        store.events(key).unwrap(),
    ));
    assert_eq!(seqs.len(), PARTS as usize);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_keeps_its_run_and_finishes_it_alone() {
    let scratch = Scratch::new("durable-kill", "paused");
    let reference = reference(&scratch).await;
    let (db, log, key) = (
        scratch.path("runs.db"),
        scratch.path("effects.log"),
        "job-paused",
    );
    let mut owner = spawn(&db, &log, key, 60, None);
    owner.wait_until("part 1 is being worked", || {
        read_log(&log).iter().any(|l| l == "step work input 1")
    });
    owner.signal("STOP");
    // The owner is frozen (SIGSTOP), not dead: nobody may take its run over.
    let mut intruder = spawn_resumer(&db, &log, key, 0);
    let (code, out) = intruder.finish();
    let expected = format!("is owned by process {}", owner.0.id());
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains(&expected), "{out}");
    let mut starter = Command::new(env!("CARGO_BIN_EXE_durable_child"))
        .arg(&db)
        .arg(&log)
        .arg(key)
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = starter.wait().unwrap();
    assert!(!status.success(), "starting the owned key again is refused");
    let mut err = String::new();
    use std::io::Read;
    starter
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("is owned by process"), "{err}");

    owner.signal("CONT");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = owner.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the owner did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the owner finishes its run: {status}");
    let all = read_log(&log);
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>().len(),
        all.len(),
        "no invocation ran twice: {all:?}"
    );
    assert_eq!(all.len(), reference.1.len());
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(
        store.load(key).unwrap().unwrap().status,
        RunStatus::Finished
    );
    assert_eq!(
        store.load(key).unwrap().unwrap().output,
        Some(serde_json::json!(reference.0))
    );
}

/// A worker that dies leaves its run to whoever looks for orphans: `adopt_orphans` finds the
/// killed run by itself (and nothing else: not a run that a live owner is running, not a
/// finished one), resumes it, and it ends as the uninterrupted run does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_run_is_adopted_by_another_worker() {
    let scratch = Scratch::new("durable-kill", "adopt");
    let reference = reference(&scratch).await;
    let (db, log, key) = (
        scratch.path("runs.db"),
        scratch.path("effects.log"),
        "job-3",
    );
    // A finished run in the same file: never adopted.
    let quiet_log = scratch.path("finished.log");
    let finished = Pipeline {
        log: quiet_log.clone(),
        delay: Duration::ZERO,
        hang_on: None,
    }
    .runner()
    .store(Arc::new(SqliteStore::open(&db).unwrap()))
    .start_durable("finished", PARTS)
    .unwrap();
    assert_eq!(finished.await.unwrap(), reference.0);
    // A run of this process, alive and running while the orphans are looked for: not adopted.
    let live = Pipeline {
        log: scratch.path("live.log"),
        delay: Duration::from_millis(200),
        hang_on: None,
    }
    .runner()
    .store(Arc::new(SqliteStore::open(&db).unwrap()))
    .start_durable("live", PARTS)
    .unwrap();

    let hang = "step work input 2";
    let mut child = spawn(&db, &log, key, 20, Some(hang));
    child.wait_until("part 2 is being worked", || {
        read_log(&log).iter().any(|l| l == hang)
    });
    child.kill();
    let at_kill = state_at_kill(&db, &log, key);
    resume_and_check(&db, &log, key, &at_kill, &reference, Resume::Adopt).await;
    let live = tokio::time::timeout(DEADLINE, live)
        .await
        .expect("the live run ends in time");
    assert_eq!(live.unwrap(), reference.0);
}
