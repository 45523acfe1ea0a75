//! Child runs survive `SIGKILL`: a child process runs a durable planner whose step runs three
//! durable research children at once; it is killed while one child's second step runs (the
//! other two children have finished). Resumed in this process from the SQLite file, the
//! planner's step runs again (it was in flight), takes the finished children's outputs from
//! their records, and continues the third child from its checkpoint: no completed child step
//! runs again, only the one in flight at the kill.

use std::process::Command;
use std::sync::Arc;

use integration_tests::nested::Planner;
use integration_tests::process::{ChildGuard, Scratch, counts, read_log};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, SqliteStore, Store};

#[test]
fn a_durable_parent_killed_while_a_child_runs_resumes_without_running_completed_child_steps() {
    let scratch = Scratch::new("nested_kill", "children");
    let (db, log) = (scratch.path("runs.db"), scratch.path("effects.log"));
    let mut process = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_nested_child"))
            .arg(&db)
            .arg(&log)
            .args(["plan-1", "3", "digest 2"]),
    );
    let keys = [
        "plan-1/plan/1/Research#0",
        "plan-1/plan/1/Research#1",
        "plan-1/plan/1/Research#2",
    ];
    let status =
        |store: &SqliteStore, key: &str| store.load(key).ok().flatten().map(|record| record.status);
    let watcher = SqliteStore::open(&db).unwrap();
    process.wait_until(
        "children 1 and 3 finished, child 2 in its second step",
        || {
            read_log(&log).iter().any(|l| l == "digest 2")
                && status(&watcher, keys[0]) == Some(RunStatus::Finished)
                && status(&watcher, keys[2]) == Some(RunStatus::Finished)
        },
    );
    process.kill();
    drop(watcher);
    let before = read_log(&log);
    assert_eq!(counts(&before)["digest 2"], 1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let output = runtime.block_on(async {
        Planner::new(log.clone(), None)
            .runner()
            .store(store.clone())
            .resume_stored("plan-1")
            .unwrap()
            .await
            .unwrap()
    });
    assert_eq!(output, "[11, 21, 31]", "as an uninterrupted run's");

    let after = read_log(&log);
    let counts = counts(&after);
    assert_eq!(
        counts["plan"], 2,
        "the parent's step was in flight: it ran again"
    );
    for line in ["gather 1", "gather 2", "gather 3", "digest 1", "digest 3"] {
        assert_eq!(
            counts[line], 1,
            "`{line}` completed before the kill: {after:?}"
        );
    }
    assert_eq!(
        counts["digest 2"], 2,
        "in flight at the kill: ran again, once"
    );
    assert_eq!(after.len(), before.len() + 2, "{before:?} then {after:?}");
    for key in keys.iter().copied().chain(["plan-1"]) {
        assert_eq!(status(&store, key), Some(RunStatus::Finished), "{key}");
    }
}
