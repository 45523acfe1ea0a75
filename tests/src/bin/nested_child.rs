//! The child process of the child-run `SIGKILL` test: runs [`Planner`] durably on an SQLite
//! file until it ends or the test kills it.
//!
//! `nested_child <db> <log> <key> <parts> [<hang-on line>]`

use std::sync::Arc;

use integration_tests::nested::Planner;
use tidewater::Workflow;
use tidewater::store::SqliteStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, log, key, parts, rest @ ..] = args.as_slice() else {
        eprintln!("usage: nested_child <db> <log> <key> <parts> [<hang-on line>]");
        std::process::exit(2);
    };
    let store = SqliteStore::open(db).expect("the store opens");
    let runner = Planner::new(log.into(), rest.first().cloned())
        .runner()
        .store(Arc::new(store));
    let run = runner
        .start_durable(key, parts.parse().expect("a number of parts"))
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
