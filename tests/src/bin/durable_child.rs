//! The child process of the `SIGKILL` test: runs [`Pipeline`] durably on an SQLite file until
//! it ends or the test kills it.
//!
//! `durable_child <db> <log> <key> <delay-ms> [<hang-on line>]`

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
    let run = pipeline
        .runner()
        .store(Arc::new(store))
        .start_durable(key, PARTS)
        .expect("the run starts");
    println!("started");
    match run.await {
        Ok(output) => println!("finished: {output}"),
        Err(error) => {
            eprintln!("failed: {error}");
            std::process::exit(1);
        }
    }
}
