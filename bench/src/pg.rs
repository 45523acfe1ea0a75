//! Durable runs per second on PostgreSQL with N worker processes (issue 14.6), next to what the
//! same server commits for `pgbench` in the same sitting (`bench/pg.sh` runs both).
//!
//! `pg-bench drive <conninfo> --runs M --workers N [--per-worker K]` enqueues M runs of a
//! three-step durable workflow, starts N worker processes (this binary again, `worker` mode,
//! each running `Runner::work(K)`), and times them from the first claim to the last run ended,
//! reading the database: runs/s, the transactions the workers committed (`xact_commit` of
//! `pg_stat_database`: writes and reads alike) and the rows they wrote (`pg_stat_user_tables`).
//! It prints one JSON line. Results are checked: every run must finish with the right output.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, Store};
use tidewater_pg::{PgOptions, PgStore};

/// A step's output.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Checked(u64);

/// The step after it.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Priced(u64);

/// Three steps, each one checkpoint: a small order pipeline.
struct Order;

#[workflow(durable)]
impl Order {
    #[step]
    async fn check(&self, ev: StartEvent<u64>) -> Checked {
        Checked(ev.0)
    }

    #[step]
    async fn price(&self, ev: Checked) -> Priced {
        Priced(ev.0 * 3)
    }

    #[step]
    async fn ship(&self, ev: Priced) -> StopEvent<u64> {
        StopEvent(ev.0 + 1)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn store(conninfo: &str, connections: usize) -> Arc<PgStore> {
    Arc::new(
        PgStore::open(PgOptions::new(conninfo).connections(connections))
            .expect("the database is reachable"),
    )
}

/// A worker process: works the queue until killed.
fn worker(conninfo: &str, per_worker: usize) {
    // The default pool: four connections per process.
    let store = store(conninfo, 4);
    runtime().block_on(async move {
        let runner = Order
            .runner()
            .store(store)
            .poll_interval(Duration::from_millis(50));
        let _worker = runner.work(per_worker).expect("the worker starts");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
}

fn query_i64(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).expect(sql).get(0)
}

/// Enqueues, starts the workers, waits, reports.
fn drive(conninfo: &str, runs: u64, workers: usize, per_worker: usize) {
    let store = store(conninfo, 4);
    let runner = Order.runner().store(store.clone());
    let batch = format!("b{}", std::process::id());
    let keys: Vec<String> = (0..runs).map(|i| format!("{batch}-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        runner.enqueue(key, i as u64).expect("enqueued");
    }
    let mut client = postgres::Client::connect(conninfo, postgres::NoTls).expect("a connection");
    let done_sql = format!(
        "SELECT count(*) FROM tidewater_runs WHERE key LIKE '{batch}-%' AND status = 'finished'"
    );
    let commits_sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    let rows_sql = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
                    FROM pg_stat_user_tables";
    // Statistics are sent at the end of transactions and flushed every second or so: read the
    // counter after the same settling pause each time.
    std::thread::sleep(Duration::from_millis(1100));
    let commits_before = query_i64(&mut client, commits_sql);
    let rows_before = query_i64(&mut client, rows_sql);
    let exe = std::env::current_exe().expect("this binary");
    let start = Instant::now();
    let mut children: Vec<std::process::Child> = (0..workers)
        .map(|_| {
            Command::new(&exe)
                .args(["worker", conninfo, &per_worker.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("a worker starts")
        })
        .collect();
    let limit = Duration::from_secs(600);
    loop {
        let done = query_i64(&mut client, &done_sql);
        if done as u64 >= runs {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "only {done} of {runs} runs ended in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let commits = query_i64(&mut client, commits_sql) - commits_before;
    let rows = query_i64(&mut client, rows_sql) - rows_before;
    for (i, key) in keys.iter().enumerate() {
        let record = store.load(key).expect("readable").expect("stored");
        assert_eq!(record.status, RunStatus::Finished, "{key}");
        assert_eq!(
            record.output,
            Some(serde_json::json!(i as u64 * 3 + 1)),
            "{key}"
        );
    }
    let secs = elapsed.as_secs_f64();
    println!(
        "{{\"workers\": {workers}, \"per_worker\": {per_worker}, \"runs\": {runs}, \"seconds\": {secs:.3}, \"runs_per_s\": {:.1}, \"commits\": {commits}, \"commits_per_s\": {:.1}, \"commits_per_run\": {:.1}, \"rows_written_per_run\": {:.1}}}",
        runs as f64 / secs,
        commits as f64 / secs,
        commits as f64 / runs as f64,
        rows as f64 / runs as f64,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    match args.first().map(String::as_str) {
        Some("worker") => worker(&args[1], args[2].parse().expect("runs per worker")),
        Some("drive") => drive(
            &args[1],
            flag("--runs", 1000),
            flag("--workers", 1) as usize,
            flag("--per-worker", 16) as usize,
        ),
        _ => {
            eprintln!(
                "usage: pg-bench drive <conninfo> [--runs M] [--workers N] [--per-worker K]\n       pg-bench worker <conninfo> <K>"
            );
            std::process::exit(2);
        }
    }
}
