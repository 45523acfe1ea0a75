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

use super::{Claim, Lease, Message, Owner, RunRecord, RunStatus, Store, StoreErrorKind, Write};
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
    inbox_numbered_and_idempotent(&make());
    inbox_of_ended_and_restarted_runs(&make());
    claim_takes_free_runs_once(&make());
    claim_takes_parked_runs_with_mail(&make());
    claim_leaves_children_and_other_workflows(&make());
    a_batch_is_fenced_write_by_write(&make());
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
            inbox: 0,
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

/// A message carrying event `n`, with this id.
pub fn message(id: &str, n: u32) -> Message {
    Message::event(id, event(n))
}

fn inbox_numbered_and_idempotent(store: &impl Store) {
    let refused = store.post("nope", &message("m", 1)).unwrap_err();
    assert_eq!(
        refused.kind,
        StoreErrorKind::Missing,
        "no post to an unknown run: {refused}"
    );
    let a = start(store, "a");
    store
        .save("a", &a, &record(RunStatus::Running, 1, 0))
        .unwrap();
    let b = start(store, "b");
    store
        .save("b", &b, &record(RunStatus::Waiting, 1, 0))
        .unwrap();
    assert!(store.inbox("a", 0).unwrap().is_empty());
    assert!(
        store.post("a", &message("m1", 1)).unwrap(),
        "a new id is written"
    );
    assert!(
        !store.post("a", &message("m1", 99)).unwrap(),
        "an id posted before is not written again"
    );
    assert!(store.post("a", &Message::cancel("stop")).unwrap());
    assert!(
        store.post("b", &message("m1", 7)).unwrap(),
        "ids are per run: another run takes the same id"
    );
    assert_eq!(
        store.inbox("a", 0).unwrap(),
        [(1, message("m1", 1)), (2, Message::cancel("stop"))],
        "numbered from 1 in the order posted, the duplicate left out"
    );
    assert_eq!(store.inbox("a", 1).unwrap(), [(2, Message::cancel("stop"))]);
    assert!(store.inbox("a", 2).unwrap().is_empty());
    assert_eq!(store.inbox("b", 0).unwrap(), [(1, message("m1", 7))]);
    // Posting needs no lease, and a run that is not checkpointed yet takes mail too.
    start(store, "c");
    assert!(store.post("c", &message("early", 3)).unwrap());
    assert_eq!(store.inbox("c", 0).unwrap(), [(1, message("early", 3))]);
}

fn inbox_of_ended_and_restarted_runs(store: &impl Store) {
    let lease = start(store, "k");
    assert!(store.post("k", &message("m1", 1)).unwrap());
    store
        .save("k", &lease, &record(RunStatus::Finished, 2, 0))
        .unwrap();
    let refused = store.post("k", &message("m2", 2)).unwrap_err();
    assert_eq!(refused.kind, StoreErrorKind::Ended, "{refused}");
    start(store, "k");
    assert!(
        store.inbox("k", 0).unwrap().is_empty(),
        "a new run under an ended run's key starts with an empty inbox"
    );
    assert!(store.post("k", &message("m1", 3)).unwrap());
    assert_eq!(store.inbox("k", 0).unwrap(), [(1, message("m1", 3))]);
}

/// Records a run the way `Runner::enqueue` does: checkpointed, then released.
fn enqueue(store: &impl Store, key: &str, status: RunStatus) {
    let lease = start(store, key);
    store.save(key, &lease, &record(status, 0, 0)).unwrap();
    store.release(key, &lease).unwrap();
}

fn claim_takes_free_runs_once(store: &impl Store) {
    let me = Owner::this_process();
    assert_eq!(
        store.claim("Sample", &me).unwrap(),
        None,
        "nothing to claim"
    );
    enqueue(store, "q", RunStatus::Running);
    let (key, lease) = store
        .claim("Sample", &me)
        .unwrap()
        .expect("a released running run is claimed");
    assert_eq!(key, "q");
    assert_eq!(lease.epoch, 2, "a claim is a new epoch");
    assert_eq!(lease.owner, me);
    assert_eq!(
        store.claim("Sample", &Owner::this_process()).unwrap(),
        None,
        "a claimed run is not claimed again while its owner lives"
    );
    assert_eq!(
        kind(store.acquire("q", &Owner::this_process(), Claim::Resume)),
        StoreErrorKind::Owned
    );
    store
        .save("q", &lease, &record(RunStatus::Running, 1, 0))
        .expect("the claim's lease writes");
    store.release("q", &lease).unwrap();
    let (_, again) = store
        .claim("Sample", &Owner::this_process())
        .unwrap()
        .expect("released again: claimed again");
    assert_eq!(again.epoch, 3);
    let refused = store
        .save("q", &lease, &record(RunStatus::Running, 2, 0))
        .unwrap_err();
    assert_eq!(
        refused.kind,
        StoreErrorKind::Fenced,
        "the earlier claim is fenced"
    );
    store
        .save("q", &again, &record(RunStatus::Finished, 2, 0))
        .unwrap();
    assert_eq!(
        store.claim("Sample", &me).unwrap(),
        None,
        "an ended run is not claimed"
    );
    // A run whose owner's process is gone is claimed.
    let mut dead = Owner::this_process();
    dead.pid = u32::MAX - 7;
    dead.id = format!("{}@{}#dead", dead.pid, dead.host);
    if dead.is_gone() {
        let lease = store.acquire("z", &dead, Claim::Start).unwrap();
        store
            .save("z", &lease, &record(RunStatus::Running, 1, 0))
            .unwrap();
        let (key, heir) = store
            .claim("Sample", &me)
            .unwrap()
            .expect("a dead owner's run is claimed");
        assert_eq!((key.as_str(), heir.epoch), ("z", lease.epoch + 1));
    }
}

fn claim_takes_parked_runs_with_mail(store: &impl Store) {
    let me = Owner::this_process();
    enqueue(store, "w", RunStatus::Waiting);
    assert_eq!(
        store.claim("Sample", &me).unwrap(),
        None,
        "a parked run with no mail and no work is left alone"
    );
    assert!(store.post("w", &message("answer", 1)).unwrap());
    let (key, lease) = store
        .claim("Sample", &me)
        .unwrap()
        .expect("a parked run with mail is claimed");
    assert_eq!(key, "w");
    assert_eq!(store.claim("Sample", &me).unwrap(), None, "once");
    // It routed message 1 and parked again: nothing left to claim it for.
    let mut parked = record(RunStatus::Waiting, 1, 0);
    parked.snapshot.inbox = 1;
    store.save("w", &lease, &parked).unwrap();
    assert_eq!(store.load("w").unwrap().unwrap().snapshot.inbox, 1);
    assert_eq!(store.claim("Sample", &me).unwrap(), None);
    assert!(store.post("w", &message("another", 2)).unwrap());
    assert!(store.claim("Sample", &me).unwrap().is_some());
    // A run parked with steps queued (a shutdown suspended it) is claimed too.
    let lease = start(store, "s");
    let mut suspended = record(RunStatus::Waiting, 1, 0);
    suspended
        .snapshot
        .queued
        .push(crate::snapshot::QueuedRecord {
            step: "go".into(),
            event: event(1),
        });
    store.save("s", &lease, &suspended).unwrap();
    let (key, _) = store.claim("Sample", &me).unwrap().expect("work to do");
    assert_eq!(key, "s");
}

fn claim_leaves_children_and_other_workflows(store: &impl Store) {
    let me = Owner::this_process();
    let parent = start(store, "p");
    store
        .save("p", &parent, &record(RunStatus::Running, 1, 0))
        .unwrap();
    enqueue(store, "p/research/1/child", RunStatus::Running);
    let mut other = record(RunStatus::Running, 0, 0);
    other.snapshot.workflow = "Other".into();
    let lease = start(store, "o");
    store.save("o", &lease, &other).unwrap();
    store.release("o", &lease).unwrap();
    assert_eq!(
        store.claim("Sample", &me).unwrap(),
        None,
        "a child run is its parent's to resume, and `o` is another workflow's"
    );
    let (key, _) = store
        .claim("Other", &me)
        .unwrap()
        .expect("its own workflow");
    assert_eq!(key, "o");
    // A key with a slash whose prefix is no run is no child.
    enqueue(store, "a/b", RunStatus::Running);
    let (key, _) = store.claim("Sample", &me).unwrap().expect("not a child");
    assert_eq!(key, "a/b");
}

/// [`Store::write_batch`] writes every write of a batch in order, for several runs at once,
/// and a stale lease fails its own writes only.
fn a_batch_is_fenced_write_by_write(store: &impl Store) {
    let a = start(store, "a");
    let stale = start(store, "b");
    let c = start(store, "c");
    // `b` is taken over: its first owner's writes are refused from now on.
    store.release("b", &stale).unwrap();
    let b = store
        .acquire("b", &Owner::this_process(), Claim::Start)
        .unwrap();
    let (ra, rb, rc) = (
        record(RunStatus::Running, 1, 1),
        record(RunStatus::Running, 5, 0),
        record(RunStatus::Finished, 2, 0),
    );
    let results = store.write_batch(&[
        Write::Event {
            key: "a",
            lease: &a,
            seq: 1,
            event: &event(1),
        },
        Write::Save {
            key: "a",
            lease: &a,
            record: &ra,
        },
        Write::Save {
            key: "b",
            lease: &stale,
            record: &rb,
        },
        Write::Event {
            key: "b",
            lease: &stale,
            seq: 1,
            event: &event(9),
        },
        Write::Save {
            key: "c",
            lease: &c,
            record: &rc,
        },
    ]);
    assert_eq!(results.len(), 5, "one result per write");
    assert!(
        results[0].is_ok() && results[1].is_ok(),
        "run a: {results:?}"
    );
    for stale_write in &results[2..4] {
        let kind = stale_write.as_ref().err().map(|e| e.kind);
        assert_eq!(
            kind,
            Some(StoreErrorKind::Fenced),
            "a stale write: {results:?}"
        );
    }
    assert!(
        results[4].is_ok(),
        "run c, after a stale write in the batch: {results:?}"
    );
    assert_eq!(store.load("a").unwrap(), Some(ra));
    assert_eq!(store.events("a").unwrap(), [(1, event(1))]);
    assert_eq!(
        store.load("b").unwrap(),
        None,
        "nothing of the stale owner is written"
    );
    assert!(store.events("b").unwrap().is_empty());
    assert_eq!(store.load("c").unwrap(), Some(rc));
    // `c` was released by its end, and `b`'s new owner still writes.
    assert_eq!(
        kind(store.acquire("c", &Owner::this_process(), Claim::Resume)),
        StoreErrorKind::Ended
    );
    let rb = record(RunStatus::Running, 1, 0);
    assert!(
        store.write_batch(&[Write::Save {
            key: "b",
            lease: &b,
            record: &rb
        }])[0]
            .is_ok()
    );
    assert!(store.write_batch(&[]).is_empty());
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
