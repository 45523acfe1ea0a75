//! The child process of the journal tests (`tests/durable_journal.rs`): runs a workflow of
//! `integration_tests::relay` durably on an SQLite file until it ends or the test kills it.
//!
//! ```text
//! journal_child relay <db> <log> <key> start|resume <delay-ms> [<hang-on line>...]
//! journal_child poll <db> <log> <key> start|answer <id> [<hang-on line>...]
//! ```
//!
//! Prints `finished: <output>` when the run ends, `suspended` when it parks waiting for
//! answers. With `JOURNAL_CHILD_STALL_AFTER=n` in its environment, the store stalls (a minute)
//! in the first checkpoint after it journaled its n-th stream event: the process is killed
//! between journaling a completion's events and checkpointing that completion.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use integration_tests::relay::{PARTS, Poll, Relay, Verdict};
use tidewater::prelude::*;
use tidewater::snapshot::EventRecord;
use tidewater::store::{Claim, Lease, Owner, RunRecord, RunStatus, SqliteStore, Store, StoreError};

/// An `SqliteStore` that can stall in a checkpoint (see the module's docs).
struct Stalling {
    inner: SqliteStore,
    after: Option<u64>,
    journaled: AtomicU64,
}

impl Store for Stalling {
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError> {
        self.inner.acquire(key, owner, claim)
    }
    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError> {
        if self
            .after
            .is_some_and(|n| self.journaled.load(Ordering::SeqCst) >= n)
        {
            eprintln!("journal_child: stalling in a checkpoint");
            std::thread::sleep(Duration::from_secs(60));
        }
        self.inner.save(key, lease, record)
    }
    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(key, lease)
    }
    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        self.inner.load(key)
    }
    fn append_event(
        &self,
        key: &str,
        lease: &Lease,
        seq: u64,
        event: &EventRecord,
    ) -> Result<(), StoreError> {
        self.inner.append_event(key, lease, seq, event)?;
        self.journaled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.inner.events(key)
    }
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        self.inner.keys(status)
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: journal_child relay <db> <log> <key> start|resume <delay-ms> [<hang-on>...]\n       \
         journal_child poll <db> <log> <key> start|answer <id> [<hang-on>...]"
    );
    std::process::exit(2);
}

/// Prints how the run ended and exits with its status.
async fn report<W: Workflow<Output = String>>(run: Result<Handler<W>, WorkflowError>) -> ! {
    let run = match run {
        Ok(run) => run,
        Err(error) => {
            println!("refused: {error}");
            std::process::exit(3);
        }
    };
    match run.await {
        Ok(output) => {
            println!("finished: {output}");
            std::process::exit(0);
        }
        Err(WorkflowError::Suspended { .. }) => {
            println!("suspended");
            std::process::exit(0);
        }
        Err(error) => {
            eprintln!("failed: {error}");
            std::process::exit(1);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [workflow, db, log, key, mode, arg, hang_on @ ..] = args.as_slice() else {
        usage();
    };
    let store = Arc::new(Stalling {
        inner: SqliteStore::open(db).expect("the store opens"),
        after: std::env::var("JOURNAL_CHILD_STALL_AFTER")
            .ok()
            .map(|n| n.parse().expect("a number of events")),
        journaled: AtomicU64::new(0),
    });
    let hang_on = hang_on.to_vec();
    match workflow.as_str() {
        "relay" => {
            let relay = Relay {
                log: log.into(),
                delay: Duration::from_millis(arg.parse().expect("a delay in milliseconds")),
                hang_on,
            };
            let runner = relay.runner().store(store);
            match mode.as_str() {
                "start" => report(runner.start_durable(key, PARTS)).await,
                "resume" => report(runner.resume_stored(key)).await,
                _ => usage(),
            }
        }
        "poll" => {
            let poll = Poll {
                log: log.into(),
                hang_on,
            };
            let runner = poll.runner().store(store).evict_when_waiting(true);
            match mode.as_str() {
                "start" => report(runner.start_durable(key, ())).await,
                "answer" => {
                    let id = arg.parse().expect("a question id");
                    report(runner.answer(
                        key,
                        Verdict {
                            id,
                            ok: id % 2 == 1,
                        },
                    ))
                    .await
                }
                _ => usage(),
            }
        }
        _ => usage(),
    }
}
