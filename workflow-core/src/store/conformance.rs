//! The [`Store`] contract as code: every store should pass [`check`]. The crate runs it on
//! [`MemoryStore`](super::MemoryStore) and `SqliteStore`; a store in another crate (a server
//! database) calls it from a test of its own:
//!
//! ```
//! use tidewater::store::{MemoryStore, conformance};
//! conformance::check(|| MemoryStore::new());
//! ```
//!
//! `make` must return an empty store each time it is called. A broken rule panics with what
//! was expected.

use super::{Claim, Lease, Owner, RunRecord, RunStatus, Store, StoreErrorKind};
use crate::snapshot::{EventRecord, SNAPSHOT_FORMAT, Snapshot};

/// Runs every rule of the contract on fresh stores from `make`.
///
/// # Panics
/// On the first rule the store breaks, saying which.
pub fn check<S: Store>(make: impl Fn() -> S) {
    records_round_trip(&make());
    keys_by_status(&make());
    events_in_order_and_rewritten(&make());
    one_owner_at_a_time(&make());
    stale_owners_are_fenced(&make());
    ending_releases(&make());
    a_gone_owner_is_taken_over(&make());
    starting_again_clears_the_old_events(&make());
}

/// A record of a run with this status, `completed` steps and stream position.
pub fn record(status: RunStatus, completed: u64, stream_seq: u64) -> RunRecord {
    RunRecord {
        status,
        snapshot: Snapshot {
            format: SNAPSHOT_FORMAT,
            workflow: "Sample".into(),
            fingerprint: "00ff".into(),
            run_id: 7,
            completed,
            state: serde_json::json!({ "n": completed }),
            in_flight: Vec::new(),
            queued: Vec::new(),
            collect: Vec::new(),
            pending_requests: Vec::new(),
            unclaimed: Vec::new(),
            recoveries: 0,
            stream_seq,
            invocations: completed,
            deadline_ms: None,
        },
        output: (status == RunStatus::Finished).then(|| serde_json::json!("done")),
        error: (status == RunStatus::Failed).then(|| "it broke".to_string()),
        trace: None,
    }
}

/// A stream event numbered `n`.
pub fn event(n: u32) -> EventRecord {
    EventRecord {
        event: "tests::Note".into(),
        data: serde_json::json!({ "n": n }),
    }
}

fn start(store: &impl Store, key: &str) -> Lease {
    store
        .acquire(key, &Owner::this_process(), Claim::Start)
        .unwrap_or_else(|e| panic!("a new run `{key}` can be started: {e}"))
}

fn kind(result: Result<Lease, super::StoreError>) -> StoreErrorKind {
    match result {
        Ok(lease) => panic!("expected a refusal, got {lease:?}"),
        Err(error) => error.kind,
    }
}

fn records_round_trip(store: &impl Store) {
    assert_eq!(
        store.load("a").unwrap(),
        None,
        "an unknown run has no record"
    );
    let lease = start(store, "a");
    assert_eq!(
        store.load("a").unwrap(),
        None,
        "no record before the first save"
    );
    store
        .save("a", &lease, &record(RunStatus::Running, 1, 0))
        .unwrap();
    assert_eq!(
        store.load("a").unwrap(),
        Some(record(RunStatus::Running, 1, 0))
    );
    store
        .save("a", &lease, &record(RunStatus::Finished, 3, 0))
        .unwrap();
    assert_eq!(
        store.load("a").unwrap(),
        Some(record(RunStatus::Finished, 3, 0)),
        "a save replaces the record"
    );
    assert_eq!(store.load("b").unwrap(), None);
}

fn keys_by_status(store: &impl Store) {
    for (key, status) in [
        ("c", RunStatus::Waiting),
        ("a", RunStatus::Waiting),
        ("b", RunStatus::Running),
        ("d", RunStatus::Failed),
        ("f", RunStatus::Cancelled),
    ] {
        let lease = start(store, key);
        store.save(key, &lease, &record(status, 1, 0)).unwrap();
    }
    start(store, "e"); // started, never checkpointed: not listed
    assert_eq!(store.keys(RunStatus::Waiting).unwrap(), ["a", "c"]);
    assert_eq!(store.keys(RunStatus::Running).unwrap(), ["b"]);
    assert_eq!(store.keys(RunStatus::Failed).unwrap(), ["d"]);
    assert_eq!(store.keys(RunStatus::Cancelled).unwrap(), ["f"]);
    assert!(store.keys(RunStatus::Finished).unwrap().is_empty());
    assert_eq!(
        store.load("f").unwrap().map(|r| r.status),
        Some(RunStatus::Cancelled)
    );
    // A cancelled run has ended: nothing to resume, and its key can start a new run.
    let me = Owner::this_process();
    assert_eq!(
        kind(store.acquire("f", &me, Claim::Resume)),
        StoreErrorKind::Ended
    );
    assert!(store.acquire("f", &me, Claim::Start).is_ok());
}

fn events_in_order_and_rewritten(store: &impl Store) {
    let a = start(store, "a");
    let b = start(store, "b");
    store.append_event("a", &a, 2, &event(2)).unwrap();
    store.append_event("a", &a, 1, &event(1)).unwrap();
    store.append_event("b", &b, 1, &event(10)).unwrap();
    // A number written again replaces its event (the runtime never does it: a resumed run
    // numbers its events after everything journaled, see `SUPERSEDED`).
    store.append_event("a", &a, 2, &event(20)).unwrap();
    assert_eq!(store.events("a").unwrap(), [(1, event(1)), (2, event(20))]);
    assert_eq!(store.events("b").unwrap(), [(1, event(10))]);
    assert!(store.events("c").unwrap().is_empty());
}

fn one_owner_at_a_time(store: &impl Store) {
    let lease = start(store, "k");
    assert_eq!(lease.epoch, 1, "the first acquisition is epoch 1");
    store
        .save("k", &lease, &record(RunStatus::Running, 1, 0))
        .unwrap();
    let other = Owner::this_process();
    assert_eq!(
        kind(store.acquire("k", &other, Claim::Start)),
        StoreErrorKind::Owned,
        "a second starter is refused while the owner lives"
    );
    assert_eq!(
        kind(store.acquire("k", &other, Claim::Resume)),
        StoreErrorKind::Owned,
        "a second resumer is refused while the owner lives"
    );
    let error = store.acquire("k", &other, Claim::Resume).unwrap_err();
    assert!(
        error.message.contains("owned by process"),
        "the refusal names the owner: {}",
        error.message
    );
    assert_eq!(
        kind(store.acquire("nope", &other, Claim::Resume)),
        StoreErrorKind::Missing
    );
}

fn stale_owners_are_fenced(store: &impl Store) {
    let first = start(store, "k");
    store
        .save("k", &first, &record(RunStatus::Running, 1, 0))
        .unwrap();
    store.release("k", &first).unwrap();
    let second = store
        .acquire("k", &Owner::this_process(), Claim::Resume)
        .unwrap();
    assert_eq!(
        second.epoch,
        first.epoch + 1,
        "every acquisition is a new epoch"
    );
    let refused = store
        .save("k", &first, &record(RunStatus::Finished, 9, 0))
        .unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Fenced, "{refused}");
    let refused = store.append_event("k", &first, 1, &event(1)).unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Fenced, "{refused}");
    assert!(
        store.events("k").unwrap().is_empty(),
        "a fenced event is not written"
    );
    assert_eq!(
        store.load("k").unwrap(),
        Some(record(RunStatus::Running, 1, 0)),
        "a fenced checkpoint is not written"
    );
    // A stale release does not free the new owner's run.
    store.release("k", &first).unwrap();
    assert_eq!(
        kind(store.acquire("k", &Owner::this_process(), Claim::Resume)),
        StoreErrorKind::Owned
    );
    store
        .save("k", &second, &record(RunStatus::Running, 2, 0))
        .unwrap();
}

fn ending_releases(store: &impl Store) {
    let lease = start(store, "w");
    store
        .save("w", &lease, &record(RunStatus::Waiting, 1, 0))
        .unwrap();
    let answerer = store
        .acquire("w", &Owner::this_process(), Claim::Resume)
        .expect("a parked run is free to be resumed");
    store
        .save("w", &answerer, &record(RunStatus::Finished, 2, 0))
        .unwrap();
    assert_eq!(
        kind(store.acquire("w", &Owner::this_process(), Claim::Resume)),
        StoreErrorKind::Ended
    );
    let again = store
        .acquire("w", &Owner::this_process(), Claim::Start)
        .expect("an ended run's key can be started again");
    assert!(again.epoch > answerer.epoch);
    let running = start(store, "r");
    store
        .save("r", &running, &record(RunStatus::Running, 1, 0))
        .unwrap();
    store.release("r", &running).unwrap();
    assert_eq!(
        kind(store.acquire("r", &Owner::this_process(), Claim::Start)),
        StoreErrorKind::Exists,
        "a released run that has not ended cannot be started over"
    );
}

fn a_gone_owner_is_taken_over(store: &impl Store) {
    // A process of this host that does not exist: the owner of a crashed process.
    let mut dead = Owner::this_process();
    dead.pid = u32::MAX - 7;
    dead.id = format!("{}@{}#dead", dead.pid, dead.host);
    if !dead.is_gone() {
        return; // no way to tell a dead process here (no `/proc`)
    }
    let lease = store.acquire("k", &dead, Claim::Start).unwrap();
    store
        .save("k", &lease, &record(RunStatus::Running, 1, 0))
        .unwrap();
    let heir = store
        .acquire("k", &Owner::this_process(), Claim::Resume)
        .expect("a run whose owner's process is gone is taken over");
    assert_eq!(heir.epoch, lease.epoch + 1);
    assert_eq!(
        store
            .save("k", &lease, &record(RunStatus::Running, 5, 0))
            .unwrap_err()
            .kind,
        StoreErrorKind::Fenced
    );
}

fn starting_again_clears_the_old_events(store: &impl Store) {
    let lease = start(store, "k");
    store.append_event("k", &lease, 1, &event(1)).unwrap();
    store
        .save("k", &lease, &record(RunStatus::Finished, 2, 1))
        .unwrap();
    assert_eq!(store.events("k").unwrap().len(), 1);
    start(store, "k");
    assert!(
        store.events("k").unwrap().is_empty(),
        "a new run under an ended run's key starts with no events"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_conforms() {
        super::check(super::super::MemoryStore::new);
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_store_conforms() {
        super::check(|| super::super::SqliteStore::in_memory().unwrap());
    }
}
