//! The child process of the wait-inside-a-step kill test: runs [`Checkout`] durably on an
//! SQLite file until it ends or the test kills it.
//!
//! `wait_child <db> <log> <key> start` starts the run; `wait_child <db> <log> <key> answer
//! <name>` resumes it from the store with the answer `Approval { by: name }` in its inbox.
//! Prints `finished: <output>` when the run ends.

use std::sync::Arc;

use integration_tests::checkout::{Approval, Checkout};
use tidewater::prelude::*;
use tidewater::store::SqliteStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, log, key, mode, rest @ ..] = args.as_slice() else {
        eprintln!("usage: wait_child <db> <log> <key> start|answer [<name>]");
        std::process::exit(2);
    };
    let store = SqliteStore::open(db).expect("the store opens");
    let runner = Checkout { log: log.into() }.runner().store(Arc::new(store));
    let run = match (mode.as_str(), rest) {
        ("start", []) => runner.start_durable(key, 1250).expect("the run starts"),
        ("answer", [name]) => runner
            .answer(key, Approval { by: name.clone() })
            .expect("the run resumes"),
        _ => {
            eprintln!("usage: wait_child <db> <log> <key> start|answer [<name>]");
            std::process::exit(2);
        }
    };
    match run.await {
        Ok(output) => println!("finished: {output}"),
        Err(error) => {
            eprintln!("failed: {error}");
            std::process::exit(1);
        }
    }
}
