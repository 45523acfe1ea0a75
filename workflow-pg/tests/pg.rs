//! `PgStore` against a real PostgreSQL server that the tests start themselves: a private
//! instance in a temp dir (`initdb`, `pg_ctl`; as root through `runuser -u postgres`) on a free
//! port of 127.0.0.1, stopped and removed at the end.
//!
//! - the store contract (`tidewater::store::conformance`), as for the built-in stores;
//! - a durable run that survives a crash-restart of PostgreSQL (`pg_ctl stop -m immediate`)
//!   in the middle, with a gapless journal;
//! - a worker paused past its lease is taken over by another, and its late completion is fenced.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, Store, StoreErrorKind};
use tidewater_pg::{PgOptions, PgStore};

mod support;
use support::PgServer;

#[test]
fn pg_store_conforms_to_the_store_contract() {
    let server = PgServer::start("conformance");
    let n = AtomicUsize::new(0);
    tidewater::store::conformance::check(|| {
        let db = format!("conf{}", n.fetch_add(1, Ordering::Relaxed));
        PgStore::connect(&server.create_db(&db)).unwrap()
    });
    assert!(
        n.load(Ordering::Relaxed) >= 13,
        "every rule ran on a fresh database"
    );
}

// ---------------------------------------------------------------------------------------------

/// One hop of the chain.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Hop(u32);

/// Written to the stream at every hop (journaled).
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Tick(u32);

/// Hops `ev.0` times, pausing at each, then stops with the count; `hops` counts invocations.
struct Chain {
    pause: Duration,
    hops: Arc<AtomicUsize>,
    gate: Option<Arc<tokio::sync::Notify>>,
}

#[workflow(durable)]
impl Chain {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> Hop {
        Hop(ev.0)
    }

    #[step]
    async fn hop(&self, ctx: &Context<Self>, ev: Hop) -> Either<Hop, StopEvent<u32>> {
        self.hops.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        tokio::time::sleep(self.pause).await;
        ctx.write_event_to_stream(Tick(ev.0));
        if ev.0 == 0 {
            Either::Right(StopEvent(self.hops.load(Ordering::SeqCst) as u32))
        } else {
            Either::Left(Hop(ev.0 - 1))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_run_survives_a_crash_restart_of_postgres() {
    let server = Arc::new(PgServer::start("crash"));
    let info = server.create_db("runs");
    let store = Arc::new(
        PgStore::open(PgOptions::new(&info).reconnect_for(Duration::from_secs(20))).unwrap(),
    );
    let hops = Arc::new(AtomicUsize::new(0));
    let runner = Chain {
        pause: Duration::from_millis(60),
        hops: hops.clone(),
        gate: None,
    }
    .runner()
    .store(store.clone());
    let run = runner.start_durable("job", 8).unwrap();
    // After a few hops, PostgreSQL dies and comes back 300 ms later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hops.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restarter = {
        let server = server.clone();
        std::thread::spawn(move || {
            server.crash();
            std::thread::sleep(Duration::from_millis(300));
            server.up();
        })
    };
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends in time")
        .expect("the run finishes despite the crash");
    restarter.join().unwrap();
    assert_eq!(output, 9, "9 hops (8 to 0), none repeated in this process");
    let record = store.load("job").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(record.output, Some(serde_json::json!(9)));
    let seqs: Vec<u64> = store
        .events("job")
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "a gapless journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_is_taken_over_and_fenced() {
    let server = PgServer::start("lease");
    let info = server.create_db("runs");
    // Two workers on one database (in real life two machines).
    let a =
        Arc::new(PgStore::open(PgOptions::new(&info).lease_ttl(Duration::from_secs(60))).unwrap());
    let b = Arc::new(PgStore::connect(&info).unwrap());
    let gate = Arc::new(tokio::sync::Notify::new());
    let a_hops = Arc::new(AtomicUsize::new(0));
    let run_a = Chain {
        pause: Duration::ZERO,
        hops: a_hops.clone(),
        gate: Some(gate.clone()),
    }
    .runner()
    .store(a.clone())
    .start_durable("job", 2)
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a_hops.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "worker A never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Worker B is refused while A's lease runs.
    let b_hops = Arc::new(AtomicUsize::new(0));
    let runner_b = Chain {
        pause: Duration::ZERO,
        hops: b_hops.clone(),
        gate: None,
    }
    .runner()
    .store(b.clone());
    let refused = runner_b.resume_stored("job").map(drop).unwrap_err();
    assert!(
        refused.to_string().contains("is owned by process"),
        "{refused}"
    );
    // A worker looking for orphans finds none: A holds its run.
    assert!(runner_b.adopt_orphans().unwrap().is_empty());

    // A stalls past its lease (as a worker frozen by SIGSTOP or a partition would): its lease
    // runs out, and B takes the run over and finishes it.
    server.sql("runs", "UPDATE tidewater_runs SET lease_until = 0");
    // B finds the run by itself, as a worker polling for orphans does.
    let mut adopted = runner_b.adopt_orphans().unwrap();
    let keys: Vec<&str> = adopted.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["job"]);
    let output = tokio::time::timeout(Duration::from_secs(20), adopted.pop().unwrap().1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output, 3, "B ran the three hops (2, 1, 0)");

    // A wakes up and completes its step: the write is fenced, and its run ends with that.
    for _ in 0..3 {
        gate.notify_one();
    }
    let error = tokio::time::timeout(Duration::from_secs(20), run_a)
        .await
        .unwrap()
        .unwrap_err();
    match &error {
        WorkflowError::Store(e) => assert_eq!(e.kind, StoreErrorKind::Fenced, "{e}"),
        other => panic!("expected a fenced write, got {other:?}"),
    }
    let record = b.load("job").unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Finished);
    assert_eq!(
        record.output,
        Some(serde_json::json!(3)),
        "B's result stands"
    );
    let seqs: Vec<u64> = b.events("job").unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3], "one journal, B's");
}

/// Rows this build cannot read are errors naming the run, never skipped nor read as something
/// else: an unknown status (in `load`, in every `keys` list and in `acquire`), an event
/// numbered below 1, a record of a newer snapshot format with fields this build does not know.
#[test]
fn pg_store_reports_the_rows_it_cannot_read() {
    use tidewater::store::conformance::{event, record};
    use tidewater::store::{Claim, Owner};
    let server = PgServer::start("rows");
    let store = PgStore::connect(&server.create_db("rows")).unwrap();
    let me = Owner::this_process();
    for key in ["a", "b", "c"] {
        let lease = store.acquire(key, &me, Claim::Start).unwrap();
        store.append_event(key, &lease, 1, &event(1)).unwrap();
        store
            .save(key, &lease, &record(RunStatus::Running, 1, 1))
            .unwrap();
    }
    server.sql(
        "rows",
        "UPDATE tidewater_runs SET status = 'paused' WHERE key = 'b'",
    );
    let unknown = "store: run `b` has an unknown status `paused` (written by a newer build?)";
    assert_eq!(store.load("b").unwrap_err().to_string(), unknown);
    for status in RunStatus::ALL {
        assert_eq!(store.keys(status).unwrap_err().to_string(), unknown);
    }
    assert_eq!(
        store
            .acquire("b", &Owner::this_process(), Claim::Resume)
            .unwrap_err()
            .to_string(),
        unknown
    );
    server.sql("rows", "DELETE FROM tidewater_runs WHERE key = 'b'");

    server.sql(
        "rows",
        "UPDATE tidewater_events SET seq = 0 WHERE key = 'a'",
    );
    assert_eq!(
        store.events("a").unwrap_err().to_string(),
        "store: run `a` has an impossible event number 0"
    );

    let mut newer = serde_json::to_value(record(RunStatus::Running, 1, 1)).unwrap();
    newer["snapshot"]["format"] = serde_json::json!(99);
    newer["snapshot"]["a_field_from_the_future"] = serde_json::json!(true);
    let text = newer.to_string().replace('\'', "''");
    server.sql(
        "rows",
        &format!("UPDATE tidewater_runs SET record = '{text}' WHERE key = 'c'"),
    );
    let error = store.load("c").unwrap_err().to_string();
    assert!(
        error.starts_with("store: the record of run `c` is of unsupported format 99:"),
        "{error}"
    );
    assert_eq!(store.keys(RunStatus::Running).unwrap(), ["a", "c"]);
}
