//! The child process of the `SIGKILL` test: runs [`Pipeline`] durably on an SQLite file until
//! it ends or the test kills it.
//!
//! `durable_child <db> <log> <key> <delay-ms> [<hang-on line>]`
//!
//! With `DURABLE_CHILD_RESUME=1` in its environment it resumes the run `key` from the store
//! instead of starting it; a resume the store refuses (another owner, an ended run) prints
//! `refused: <error>` and exits with status 3.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::durable::{PARTS, Pipeline};
use tidewater::prelude::*;
use tidewater::store::SqliteStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, log, key, delay, rest @ ..] = args.as_slice() else {
        eprintln!("usage: durable_child <db> <log> <key> <delay-ms> [<hang-on line>]");
        std::process::exit(2);
    };
    let store = SqliteStore::open(db).expect("the store opens");
    let pipeline = Pipeline {
        log: log.into(),
        delay: Duration::from_millis(delay.parse().expect("a delay in milliseconds")),
        hang_on: rest.first().cloned(),
    };
    let runner = pipeline.runner().store(Arc::new(store));
    let run = if std::env::var_os("DURABLE_CHILD_RESUME").is_some() {
        match runner.resume_stored(key) {
            Ok(run) => run,
            Err(error @ WorkflowError::Durable { .. }) => {
                println!("refused: {error}");
                std::process::exit(3);
            }
            Err(error) => panic!("the run cannot be resumed: {error}"),
        }
    } else {
        runner.start_durable(key, PARTS).expect("the run starts")
    };
    println!("started");
    match run.await {
        Ok(output) => println!("finished: {output}"),
        Err(error) => {
            eprintln!("failed: {error}");
            std::process::exit(1);
        }
    }
}
