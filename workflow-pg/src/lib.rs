//! [`PgStore`]: tidewater's durable runs in PostgreSQL, for when one process on one SQLite file
//! is no longer enough: several workers on several machines share one database, and every run
//! has exactly one owner at a time.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tidewater::prelude::*;
//! use tidewater_pg::PgStore;
//!
//! # #[derive(Debug, Clone, Event, serde::Serialize, serde::Deserialize)] struct Go;
//! # struct Flow;
//! # #[workflow(durable)] impl Flow {
//! #     #[step] async fn go(&self, ev: StartEvent<u32>) -> StopEvent<u32> { StopEvent(ev.0) }
//! # }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgStore::connect("host=127.0.0.1 port=5432 user=postgres dbname=runs")?;
//! let runner = Flow.runner().store(Arc::new(store));
//! let output = runner.start_durable("order-7", 7)?.await?;
//! # Ok(()) }
//! ```
//!
//! # What it keeps, and how
//! The same logical schema as `SqliteStore`, created (and migrated) by [`PgStore::connect`]:
//! `tidewater_runs (key, status, record, updated, owner_id, owner, epoch, lease_until, workflow,
//! inbox_last, inbox_read, has_work)` with each run's last checkpoint as JSON text,
//! `tidewater_events (key, seq, event)` and `tidewater_inbox (key, seq, id, message)`. It passes
//! `tidewater::store::conformance` like the built-in stores.
//!
//! # Ownership across machines
//! [`Store::acquire`] locks the run's row (`SELECT … FOR UPDATE`) and writes the new owner,
//! `epoch + 1` and a lease that ends [`PgStore::lease_ttl`] from now (database clock). Every
//! checkpoint and journaled event is one statement conditional on the owner and epoch, so a
//! worker that was paused or partitioned past its lease and taken over can never commit again
//! ([`StoreErrorKind::Fenced`](tidewater::store::StoreErrorKind::Fenced)). While a worker holds
//! runs, a heartbeat thread renews their leases every third of the TTL; a worker that dies stops
//! renewing, and another takes its runs once the lease has run out (at once when the dead
//! worker ran on the same host: its process is gone).
//!
//! # The run queue and the inbox
//! [`Store::claim`] takes one runnable run of a workflow in one transaction,
//! `SELECT … FOR UPDATE SKIP LOCKED` over the free runs (no holder, or a lease run out) oldest
//! first, so workers on many machines (`Runner::work`) never take the same run nor wait for each
//! other. A worker frozen in the middle of a transaction (a claim holds the rows it looked at)
//! cannot keep them from the others for longer than a lease: the store's sessions run with
//! `idle_in_transaction_session_timeout` at the lease TTL (at least a second), after which the
//! server rolls the transaction back and frees the rows.
//!
//! [`Store::post`] appends to a run's inbox (`tidewater_inbox`) under the run's row lock,
//! numbered per run without gaps and idempotent by message id. Each store keeps one more
//! connection doing `LISTEN tidewater` ([`PgOptions::listen`]); a post, an enqueue or a release
//! sends `NOTIFY tidewater, '<workflow>/<key>'` at commit, which wakes the worker loops and the
//! live run's inbox watcher in every process at once (they poll as a fallback).
//!
//! # Connections
//! A small pool of connections, each on its own thread: the [`Store`] calls block the calling
//! thread until PostgreSQL has committed. A connection that breaks (a restarted server) is
//! opened again and the call retried for up to [`PgStore::reconnect_for`]; every write is
//! idempotent under its lease (an upsert, a numbered event, an acquire by the same owner), so
//! a retry after a commit whose answer was lost does no harm.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod read;

use postgres::{Client, Config, NoTls};
use tidewater::snapshot::EventRecord;
use tidewater::store::{
    Claim, Lease, Message, Owner, RunRecord, RunStatus, Store, StoreError, StoreErrorKind, Wakeups,
    check_claim, fenced, has_work,
};

/// The schema, in order: each entry is one migration, applied once (recorded in
/// `tidewater_schema`).
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE IF NOT EXISTS tidewater_runs (
    key         TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    record      TEXT NOT NULL,
    updated     BIGINT NOT NULL,
    owner_id    TEXT,
    owner       TEXT,
    epoch       BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT
);
CREATE INDEX IF NOT EXISTS tidewater_runs_by_status ON tidewater_runs (status, key);
CREATE TABLE IF NOT EXISTS tidewater_events (
    key   TEXT NOT NULL,
    seq   BIGINT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (key, seq)
);
",
    "
ALTER TABLE tidewater_runs ADD COLUMN IF NOT EXISTS workflow TEXT;
ALTER TABLE tidewater_runs ADD COLUMN IF NOT EXISTS inbox_last BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tidewater_runs ADD COLUMN IF NOT EXISTS inbox_read BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tidewater_runs ADD COLUMN IF NOT EXISTS has_work BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS tidewater_runs_queue ON tidewater_runs (workflow, status, updated);
CREATE TABLE IF NOT EXISTS tidewater_inbox (
    key     TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    id      TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (key, seq),
    UNIQUE (key, id)
);
",
];

/// The channel of the notifications a store sends on every post, enqueue and release, with
/// `<workflow>/<key>` as payload.
const CHANNEL: &str = "tidewater";

/// The database's clock in milliseconds: leases are compared with one clock, whatever the
/// workers' clocks say.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A [`Store`] in PostgreSQL. See the [crate docs](crate).
pub struct PgStore {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Leases this store holds, renewed by the heartbeat: key -> (epoch, owner id).
    held: Arc<Mutex<HashMap<String, (i64, String)>>>,
    ttl: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    fault: Option<Arc<Fault>>,
    /// Fed by the LISTEN connection (and by this store's own posts).
    wakeups: Arc<Wakeups>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("lease_ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// How a [`PgStore`] connects: the connection string, the pool size, the lease.
#[derive(Debug, Clone)]
pub struct PgOptions {
    config: String,
    connections: usize,
    lease_ttl: Duration,
    reconnect_for: Duration,
    listen: bool,
}

impl PgOptions {
    /// Options for this libpq-style connection string
    /// (`host=127.0.0.1 port=5432 user=postgres dbname=runs`).
    pub fn new(config: impl Into<String>) -> PgOptions {
        PgOptions {
            config: config.into(),
            connections: 4,
            lease_ttl: Duration::from_secs(10),
            reconnect_for: Duration::from_secs(30),
            listen: true,
        }
    }

    /// Whether the store keeps a connection of its own doing `LISTEN tidewater`, to wake this
    /// process's inbox watchers and worker loops at once when any process posts to a run,
    /// enqueues one or releases one (on by default). Off, they poll
    /// (`Runner::poll_interval`).
    pub fn listen(mut self, on: bool) -> PgOptions {
        self.listen = on;
        self
    }

    /// How many connections (each on its own thread); 4 by default.
    pub fn connections(mut self, n: usize) -> PgOptions {
        self.connections = n.max(1);
        self
    }

    /// How long a lease lasts without a renewal (10 s by default): how long the runs of a
    /// worker that died on another host wait before another worker takes them. It also bounds
    /// (at least a second) how long a session may sit idle in a transaction: the server rolls
    /// back the transaction of a process frozen mid-claim, freeing the runs it had locked.
    pub fn lease_ttl(mut self, ttl: Duration) -> PgOptions {
        self.lease_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How long a call keeps reconnecting to a server that went away before it fails (30 s by
    /// default).
    pub fn reconnect_for(mut self, limit: Duration) -> PgOptions {
        self.reconnect_for = limit;
        self
    }
}

/// One pooled connection, opened again when it breaks.
struct Connection {
    config: Config,
    client: Option<Client>,
    reconnect_for: Duration,
}

impl Connection {
    /// Runs `op`, opening the connection again and retrying while the server cannot be
    /// reached, for up to `reconnect_for`. SQL errors are returned at once.
    fn run<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let error = match self.client.as_mut().filter(|c| !c.is_closed()) {
                Some(client) => match op(client) {
                    Ok(value) => return Ok(value),
                    // A server shutting down or restarting says so with an error of its
                    // own (SQLSTATE class 57P: admin or crash shutdown, cannot connect now)
                    // before it drops the connection: that is a lost connection, retried
                    // like one.
                    Err(error) if error.as_db_error().is_some() && !server_going(&error) => {
                        return Err(StoreError::new(format!("{what}: {error}")));
                    }
                    Err(error) => error.to_string(),
                },
                None => match self.config.connect(NoTls) {
                    Ok(client) => {
                        self.client = Some(client);
                        continue;
                    }
                    Err(error) => error.to_string(),
                },
            };
            self.client = None;
            if start.elapsed() >= self.reconnect_for {
                return Err(StoreError::new(format!(
                    "{what}: the database cannot be reached ({error})"
                )));
            }
            tracing::warn!(%error, "postgres connection lost; reconnecting");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Test-only fault injection, for the process-level fault tests (`tests/faults.rs`): with
/// `TIDEWATER_PG_FAULT=<point>:<n>:<marker file>` in a worker's environment, the `n`-th write
/// of that kind runs in an explicit transaction, and between its statement and its `COMMIT`
/// the connection thread appends `<point> <key>` to the marker file and stops there for good,
/// holding the transaction open, so that the test can kill the process mid-commit. Points:
/// `mid_commit` (a checkpoint of a running or ended run), `idle_release` (a run parked
/// waiting for an answer, or given back with [`Store::release`]) and `mid_claim` (a
/// [`Store::claim`] that has locked the free runs and written itself as the owner of one).
/// Read once, when the store opens; without the variable nothing changes.
struct Fault {
    point: String,
    nth: u64,
    marker: std::path::PathBuf,
    seen: std::sync::atomic::AtomicU64,
}

impl Fault {
    fn from_env() -> Option<Fault> {
        let spec = std::env::var("TIDEWATER_PG_FAULT").ok()?;
        let mut parts = spec.splitn(3, ':');
        let (point, nth, marker) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Fault {
            point: point.to_string(),
            nth: nth.parse().ok()?,
            marker: marker.into(),
            seen: Default::default(),
        })
    }

    /// Whether this write (of kind `point`) is the one to stop in.
    fn armed(fault: &Option<Arc<Fault>>, point: &str) -> Option<Arc<Fault>> {
        let fault = fault.as_ref().filter(|f| f.point == point)?;
        let n = fault.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        (n == fault.nth).then(|| fault.clone())
    }

    /// Says where it stopped, then never returns (the test kills the process).
    fn stop_here(&self, key: &str) -> ! {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.marker)
        {
            let _ = file.write_all(format!("{} {key}\n", self.point).as_bytes());
            let _ = file.sync_all();
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Runs one write statement; when `fault` is armed, in a transaction that stops before its
/// `COMMIT` ([`Fault`]).
fn execute_write(
    client: &mut Client,
    fault: Option<&Fault>,
    key: &str,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<u64, postgres::Error> {
    let Some(fault) = fault else {
        return client.execute(sql, params);
    };
    let mut tx = client.transaction()?;
    tx.execute(sql, params)?;
    fault.stop_here(key)
}

/// Whether `error` says the server is going away or not up yet (SQLSTATE `57P01`
/// admin shutdown, `57P02` crash shutdown, `57P03` cannot connect now), the connection
/// failed (class `08`), or the server ended the session because it sat idle in a transaction
/// for longer than `idle_in_transaction_session_timeout` (`25P03`: this process was frozen
/// mid-transaction): the transaction did not commit, and the call can be retried on a new
/// connection.
fn server_going(error: &postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        let code = code.code();
        code.starts_with("57P") || code.starts_with("08") || code == "25P03"
    })
}

impl PgStore {
    /// Connects with default [`PgOptions`] and creates or migrates the tables.
    ///
    /// # Errors
    /// When the connection string does not parse, the server cannot be reached, or the
    /// tables cannot be created.
    pub fn connect(config: &str) -> Result<PgStore, StoreError> {
        PgStore::open(PgOptions::new(config))
    }

    /// Connects with these options and creates or migrates the tables.
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub fn open(options: PgOptions) -> Result<PgStore, StoreError> {
        let mut config: Config = options
            .config
            .parse()
            .map_err(|e| StoreError::new(format!("bad connection string: {e}")))?;
        // Which process wrote what shows in `pg_stat_activity` and to triggers
        // (`current_setting('application_name')`), unless the connection string names itself.
        if config.get_application_name().is_none() {
            config.application_name(&format!("tidewater pid {}", std::process::id()));
        }
        // A process that stops between two statements of a transaction (frozen, paused, cut
        // off) would keep the rows it locked from every other worker for as long as its
        // connection lives: a claim skips them (`SKIP LOCKED`), an acquire waits for them. The
        // server ends such a session once it has been idle in its transaction for a lease
        // (at least a second), rolling the transaction back; the process reconnects when it
        // wakes, and its call is retried. Options of the connection string's own come after
        // (and win).
        let idle_ms = options.lease_ttl.max(Duration::from_secs(1)).as_millis();
        let startup = match config.get_options() {
            Some(given) => format!("-c idle_in_transaction_session_timeout={idle_ms} {given}"),
            None => format!("-c idle_in_transaction_session_timeout={idle_ms}"),
        };
        config.options(&startup);
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        // Every connection lives on its own thread, opened there: the sync client runs a
        // runtime of its own, which must not be started inside the caller's tokio runtime.
        for i in 0..options.connections {
            let mut connection = Connection {
                config: config.clone(),
                client: None,
                reconnect_for: options.reconnect_for,
            };
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("tidewater-pg-{i}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut connection),
                            Err(_) => return, // the store was dropped
                        }
                    }
                })
                .map_err(|e| StoreError::new(format!("cannot start a connection thread: {e}")))?;
        }
        let store = PgStore {
            jobs: Mutex::new(sender),
            held: Arc::default(),
            ttl: options.lease_ttl,
            stop: Arc::default(),
            fault: Fault::from_env().map(Arc::new),
            wakeups: Arc::default(),
        };
        // The first connection and the tables, failing fast when the server is not there.
        store.call(|connection| {
            let patience = std::mem::replace(&mut connection.reconnect_for, Duration::ZERO);
            let migrated = migrate(connection);
            connection.reconnect_for = patience;
            migrated
        })?;
        store.start_heartbeat()?;
        if options.listen {
            store.start_listener(config)?;
        }
        Ok(store)
    }

    /// How long a lease lasts without renewal.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    /// Runs `op` on a pooled connection and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = self
            .jobs
            .lock()
            .map_err(|_| StoreError::new("the connection pool is poisoned"))?
            .send(Box::new(move |connection| {
                let _ = tx.send(job(connection));
            }));
        if sent.is_err() {
            return Err(StoreError::new("the connection threads have stopped"));
        }
        rx.recv()
            .map_err(|_| StoreError::new("a connection thread stopped during a call"))?
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Renews the leases this store holds, every third of the TTL, on a thread of its own
    /// (with its own connection), until the store is dropped.
    fn start_heartbeat(&self) -> Result<(), StoreError> {
        let held = self.held.clone();
        let stop = self.stop.clone();
        let ttl = self.ttl;
        let ttl_ms = self.ttl_ms();
        // The heartbeat borrows a pool connection per beat: it shares the pool's retry logic.
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| StoreError::new("the connection pool is poisoned"))?
            .clone();
        std::thread::Builder::new()
            .name("tidewater-pg-heartbeat".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(ttl / 3);
                    let leases: Vec<(String, i64, String)> = match held.lock() {
                        Ok(held) => held
                            .iter()
                            .map(|(k, (e, o))| (k.clone(), *e, o.clone()))
                            .collect(),
                        Err(_) => return,
                    };
                    if leases.is_empty() {
                        continue;
                    }
                    let job: Job = Box::new(move |connection| {
                        let renewed = connection.run("renew leases", |client| {
                            let mut tx = client.transaction()?;
                            for (key, epoch, owner) in &leases {
                                tx.execute(
                                    &format!(
                                        "UPDATE tidewater_runs SET lease_until = {NOW} + $4
                                         WHERE key = $1 AND epoch = $2 AND owner_id = $3"
                                    ),
                                    &[key, epoch, owner, &ttl_ms],
                                )?;
                            }
                            tx.commit()
                        });
                        if let Err(error) = renewed {
                            tracing::error!(%error, "could not renew the leases");
                        }
                    });
                    if jobs.send(job).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| StoreError::new(format!("cannot start the heartbeat: {e}")))?;
        Ok(())
    }

    /// Listens for the notifications of every process on a connection of its own, on a
    /// thread of its own, until the store is dropped; after a lost connection (when
    /// notifications may have been missed) every waiter is woken to look for itself.
    fn start_listener(&self, config: Config) -> Result<(), StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        let stop = self.stop.clone();
        let wakeups = self.wakeups.clone();
        let stopped = move || stop.load(std::sync::atomic::Ordering::Relaxed);
        std::thread::Builder::new()
            .name("tidewater-pg-listen".into())
            .spawn(move || {
                let mut pause = Duration::from_millis(20);
                while !stopped() {
                    let mut client = match config.connect(NoTls) {
                        Ok(client) => client,
                        Err(error) => {
                            tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_millis(500));
                            continue;
                        }
                    };
                    if let Err(error) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
                        tracing::warn!(%error, "cannot LISTEN; reconnecting");
                        std::thread::sleep(pause);
                        continue;
                    }
                    pause = Duration::from_millis(20);
                    wakeups.everything();
                    while !stopped() && !client.is_closed() {
                        let mut notifications = client.notifications();
                        let mut waiting = notifications.timeout_iter(Duration::from_millis(200));
                        match waiting.next() {
                            Ok(Some(note)) => {
                                let (workflow, key) = note
                                    .payload()
                                    .split_once('/')
                                    .unwrap_or(("", note.payload()));
                                let workflow = Some(workflow).filter(|w| !w.is_empty());
                                wakeups.changed(workflow, key);
                            }
                            Ok(None) => {}
                            Err(error) => {
                                tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::new(format!("cannot start the LISTEN thread: {e}")))?;
        Ok(())
    }

    fn hold(&self, key: &str, lease: &Lease) {
        if let Ok(mut held) = self.held.lock() {
            held.insert(
                key.to_string(),
                (lease.epoch as i64, lease.owner.id.clone()),
            );
        }
    }

    fn drop_hold(&self, key: &str, lease: &Lease) {
        if let Ok(mut held) = self.held.lock() {
            if held.get(key).is_some_and(|(e, _)| *e == lease.epoch as i64) {
                held.remove(key);
            }
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    connection.run("create the tables", |client| {
        let mut tx = client.transaction()?;
        // One migrator at a time, whichever worker starts first.
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(7215441);
             CREATE TABLE IF NOT EXISTS tidewater_schema (version INTEGER NOT NULL)",
        )?;
        let done: i64 = tx
            .query_one("SELECT count(*) FROM tidewater_schema", &[])?
            .get(0);
        for migration in MIGRATIONS.iter().skip(done as usize) {
            tx.batch_execute(migration)?;
            tx.execute(
                "INSERT INTO tidewater_schema (version) VALUES ($1)",
                &[&(done as i32 + 1)],
            )?;
        }
        tx.commit()
    })
}

fn unknown_status(key: &str, status: &str) -> StoreError {
    StoreError::new(format!(
        "run `{key}` has an unknown status `{status}` (written by a newer build?)"
    ))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::new(format!("corrupt {what}: {e}")))
}

/// What `acquire` decided, computed inside its transaction.
enum Acquired {
    Lease(i64),
    Refused(StoreError),
    /// Another worker inserted the row first: look again.
    Raced,
}

impl Store for PgStore {
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError> {
        let owner_json = serde_json::to_string(owner)
            .map_err(|e| StoreError::new(format!("cannot serialize the owner: {e}")))?;
        let (k, o, ttl) = (key.to_string(), owner.clone(), self.ttl_ms());
        let epoch = self.call(move |connection| {
            for _ in 0..3 {
                let decided = connection.run(&format!("cannot acquire run `{k}`"), |client| {
                    let mut tx = client.transaction()?;
                    let row = tx.query_opt(
                        &format!(
                            "SELECT status, record = '', owner, epoch, lease_until < {NOW}
                             FROM tidewater_runs WHERE key = $1 FOR UPDATE"
                        ),
                        &[&k],
                    )?;
                    let (status, holder) = match &row {
                        None => (None, None),
                        Some(row) => {
                            let name: String = row.get(0);
                            let Some(status) = RunStatus::from_name(&name) else {
                                return Ok(Acquired::Refused(unknown_status(&k, &name)));
                            };
                            let empty: bool = row.get(1);
                            let holder: Option<String> = row.get(2);
                            let expired: Option<bool> = row.get(4);
                            let holder = match holder
                                .as_deref()
                                .map(|h| from_json::<Owner>(h, &format!("owner of run `{k}`")))
                            {
                                Some(Err(error)) => return Ok(Acquired::Refused(error)),
                                Some(Ok(holder)) => Some(holder),
                                None => None,
                            };
                            if holder.as_ref().is_some_and(|h| h.id == o.id) {
                                // The same owner again (a retried acquire): it already has it.
                                return Ok(Acquired::Lease(row.get(3)));
                            }
                            let holder = holder.filter(|_| expired != Some(true));
                            ((!empty).then_some(status), holder)
                        }
                    };
                    if let Err(refusal) = check_claim(status, holder.as_ref(), claim) {
                        return Ok(Acquired::Refused(refusal));
                    }
                    let epoch: i64 = if row.is_none() {
                        let inserted = tx.query_opt(
                            &format!(
                                "INSERT INTO tidewater_runs
                                     (key, status, record, updated, owner_id, owner, epoch,
                                      lease_until)
                                 VALUES ($1, 'running', '', {NOW}, $2, $3, 1, {NOW} + $4)
                                 ON CONFLICT (key) DO NOTHING RETURNING epoch"
                            ),
                            &[&k, &o.id, &owner_json, &ttl],
                        )?;
                        match inserted {
                            Some(row) => row.get(0),
                            None => return Ok(Acquired::Raced),
                        }
                    } else {
                        let fresh = claim == Claim::Start;
                        if fresh {
                            tx.execute("DELETE FROM tidewater_events WHERE key = $1", &[&k])?;
                            tx.execute("DELETE FROM tidewater_inbox WHERE key = $1", &[&k])?;
                        }
                        tx.query_one(
                            &format!(
                                "UPDATE tidewater_runs SET
                                     status = CASE WHEN $5 THEN 'running' ELSE status END,
                                     record = CASE WHEN $5 THEN '' ELSE record END,
                                     inbox_last = CASE WHEN $5 THEN 0 ELSE inbox_last END,
                                     inbox_read = CASE WHEN $5 THEN 0 ELSE inbox_read END,
                                     updated = {NOW}, owner_id = $2, owner = $3,
                                     epoch = epoch + 1, lease_until = {NOW} + $4
                                 WHERE key = $1 RETURNING epoch"
                            ),
                            &[&k, &o.id, &owner_json, &ttl, &fresh],
                        )?
                        .get(0)
                    };
                    tx.commit()?;
                    Ok(Acquired::Lease(epoch))
                })?;
                match decided {
                    Acquired::Lease(epoch) => return Ok(epoch),
                    Acquired::Refused(error) => return Err(error),
                    Acquired::Raced => continue,
                }
            }
            Err(StoreError::new(format!(
                "cannot acquire run `{k}`: it was contended three times"
            )))
        })?;
        let lease = Lease {
            owner: owner.clone(),
            epoch: epoch as u64,
        };
        self.hold(key, &lease);
        Ok(lease)
    }

    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| {
            StoreError::new(format!("cannot serialize the record of run `{key}`: {e}"))
        })?;
        let status = record.status.name();
        let (k, epoch, owner, ttl) = (
            key.to_string(),
            lease.epoch as i64,
            lease.owner.id.clone(),
            self.ttl_ms(),
        );
        let point = match record.status {
            RunStatus::Waiting => "idle_release",
            _ => "mid_commit",
        };
        let fault = Fault::armed(&self.fault, point);
        let workflow = record.snapshot.workflow.clone();
        let read = i64::try_from(record.snapshot.inbox).map_err(|_| {
            StoreError::new(format!(
                "inbox number {} is too large",
                record.snapshot.inbox
            ))
        })?;
        let work = has_work(&record.snapshot);
        let parked = record.status == RunStatus::Waiting;
        let changed = self.call(move |connection| {
            connection.run(&format!("cannot save run `{k}`"), |client| {
                let changed = execute_write(
                    client,
                    fault.as_deref(),
                    &k,
                    &format!(
                        "UPDATE tidewater_runs SET status = $2, record = $3, updated = {NOW},
                             owner_id = CASE WHEN $2 = 'running' THEN owner_id END,
                             owner = CASE WHEN $2 = 'running' THEN owner END,
                             lease_until = CASE WHEN $2 = 'running' THEN {NOW} + $6 END,
                             workflow = $7, inbox_read = $8, has_work = $9
                         WHERE key = $1 AND epoch = $4 AND owner_id = $5"
                    ),
                    &[
                        &k, &status, &json, &epoch, &owner, &ttl, &workflow, &read, &work,
                    ],
                )?;
                if parked && changed > 0 {
                    // Parked with work, or with mail that came meanwhile: a worker's to claim.
                    client.execute(
                        &format!(
                            "SELECT pg_notify('{CHANNEL}', workflow || '/' || key)
                             FROM tidewater_runs
                             WHERE key = $1 AND status = 'waiting'
                               AND (has_work OR inbox_last > inbox_read)"
                        ),
                        &[&k],
                    )?;
                }
                Ok(changed)
            })
        })?;
        if changed == 0 {
            self.drop_hold(key, lease);
            return Err(fenced(key, lease, "checkpoint"));
        }
        if record.status != RunStatus::Running {
            self.drop_hold(key, lease);
        }
        Ok(())
    }

    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        self.drop_hold(key, lease);
        let (k, epoch, owner) = (key.to_string(), lease.epoch as i64, lease.owner.id.clone());
        let fault = Fault::armed(&self.fault, "idle_release");
        self.call(move |connection| {
            connection.run(&format!("cannot release run `{k}`"), |client| {
                // Announced at commit: a worker takes the run if it has work left.
                execute_write(
                    client,
                    fault.as_deref(),
                    &k,
                    &format!(
                        "WITH freed AS (
                             UPDATE tidewater_runs SET owner_id = NULL, owner = NULL,
                                 lease_until = NULL
                             WHERE key = $1 AND epoch = $2 AND owner_id = $3
                             RETURNING key, workflow)
                         SELECT pg_notify('{CHANNEL}', coalesce(workflow, '') || '/' || key)
                         FROM freed"
                    ),
                    &[&k, &epoch, &owner],
                )
            })
        })?;
        Ok(())
    }

    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        let k = key.to_string();
        let row: Option<(String, String)> = self.call(move |connection| {
            connection.run(&format!("cannot load run `{k}`"), |client| {
                Ok(client
                    .query_opt(
                        "SELECT status, record FROM tidewater_runs WHERE key = $1 AND record != ''",
                        &[&k],
                    )?
                    .map(|row| (row.get(0), row.get(1))))
            })
        })?;
        let Some((status, text)) = row else {
            return Ok(None);
        };
        if RunStatus::from_name(&status).is_none() {
            return Err(unknown_status(key, &status));
        }
        RunRecord::from_json(key, &text).map(Some)
    }

    fn append_event(
        &self,
        key: &str,
        lease: &Lease,
        seq: u64,
        event: &EventRecord,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(event).map_err(|e| {
            StoreError::new(format!("cannot serialize event {seq} of run `{key}`: {e}"))
        })?;
        let seq_column = i64::try_from(seq)
            .map_err(|_| StoreError::new(format!("event sequence {seq} is too large")))?;
        let (k, epoch, owner) = (key.to_string(), lease.epoch as i64, lease.owner.id.clone());
        let changed = self.call(move |connection| {
            connection.run(
                &format!("cannot journal event {seq} of run `{k}`"),
                |client| {
                    client.execute(
                        "INSERT INTO tidewater_events (key, seq, event)
                     SELECT $1, $2, $3 WHERE EXISTS (
                         SELECT 1 FROM tidewater_runs
                         WHERE key = $1 AND epoch = $4 AND owner_id = $5 FOR SHARE)
                     ON CONFLICT (key, seq) DO UPDATE SET event = excluded.event",
                        &[&k, &seq_column, &json, &epoch, &owner],
                    )
                },
            )
        })?;
        if changed == 0 {
            return Err(fenced(key, lease, &format!("event {seq}")));
        }
        Ok(())
    }

    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.events_from(key, i64::MIN)
    }

    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        let name = status.name();
        let (keys, unknown) = self.call(move |connection| {
            connection.run(&format!("cannot list the {name} runs"), |client| {
                // A row of a status this build does not know is in no list: say so rather
                // than leave it out unseen.
                let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.name()).collect();
                let unknown: Option<(String, String)> = client
                    .query_opt(
                        "SELECT key, status FROM tidewater_runs WHERE status <> ALL($1) LIMIT 1",
                        &[&known],
                    )?
                    .map(|row| (row.get(0), row.get(1)));
                let keys: Vec<String> = client
                    .query(
                        "SELECT key FROM tidewater_runs WHERE status = $1 AND record != ''
                         ORDER BY key",
                        &[&name],
                    )?
                    .into_iter()
                    .map(|row| row.get(0))
                    .collect();
                Ok((keys, unknown))
            })
        })?;
        match unknown {
            Some((key, status)) => Err(unknown_status(&key, &status)),
            None => Ok(keys),
        }
    }
    fn post(&self, key: &str, message: &Message) -> Result<bool, StoreError> {
        let json = serde_json::to_string(message).map_err(|e| {
            StoreError::new(format!("cannot serialize a message to run `{key}`: {e}"))
        })?;
        let (k, id) = (key.to_string(), message.id.clone());
        let posted = self.call(move |connection| {
            connection.run(&format!("cannot post to run `{k}`"), |client| {
                let mut tx = client.transaction()?;
                // The run's row lock numbers the posts to one run one after the other, in
                // commit order, without gaps: a reader never sees message n+1 before n.
                let row = tx.query_opt(
                    "SELECT status, record = '', workflow FROM tidewater_runs
                     WHERE key = $1 FOR UPDATE",
                    &[&k],
                )?;
                let Some(row) = row else {
                    return Ok(Err(StoreError::of(
                        StoreErrorKind::Missing,
                        format!("cannot post to run `{k}`: no run with this key in the store"),
                    )));
                };
                let name: String = row.get(0);
                let empty: bool = row.get(1);
                let workflow: Option<String> = row.get(2);
                let Some(status) = RunStatus::from_name(&name) else {
                    return Ok(Err(unknown_status(&k, &name)));
                };
                if !empty && !matches!(status, RunStatus::Running | RunStatus::Waiting) {
                    return Ok(Err(StoreError::of(
                        StoreErrorKind::Ended,
                        format!("cannot post to run `{k}`: it has ended ({status:?})"),
                    )));
                }
                let seen = tx
                    .query_opt(
                        "SELECT 1 FROM tidewater_inbox WHERE key = $1 AND id = $2",
                        &[&k, &id],
                    )?
                    .is_some();
                if seen {
                    return Ok(Ok((false, workflow)));
                }
                let seq: i64 = tx
                    .query_one(
                        "UPDATE tidewater_runs SET inbox_last = inbox_last + 1 WHERE key = $1
                         RETURNING inbox_last",
                        &[&k],
                    )?
                    .get(0);
                tx.execute(
                    "INSERT INTO tidewater_inbox (key, seq, id, message) VALUES ($1, $2, $3, $4)",
                    &[&k, &seq, &id, &json],
                )?;
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[
                        &CHANNEL,
                        &format!("{}/{k}", workflow.as_deref().unwrap_or("")),
                    ],
                )?;
                tx.commit()?;
                Ok(Ok((true, workflow)))
            })
        })??;
        let (new, workflow) = posted;
        if new {
            self.wakeups.changed(workflow.as_deref(), key);
        }
        Ok(new)
    }

    fn inbox(&self, key: &str, after: u64) -> Result<Vec<(u64, Message)>, StoreError> {
        let rows = self.rows_after(
            "SELECT seq, message FROM tidewater_inbox WHERE key = $1 AND seq > $2 ORDER BY seq",
            "message",
            key,
            i64::try_from(after).unwrap_or(i64::MAX),
        )?;
        rows.into_iter()
            .map(|(seq, text)| {
                Ok((
                    seq,
                    from_json(&text, &format!("message {seq} of run `{key}`"))?,
                ))
            })
            .collect()
    }

    fn claim(&self, workflow: &str, owner: &Owner) -> Result<Option<(String, Lease)>, StoreError> {
        let owner_json = serde_json::to_string(owner)
            .map_err(|e| StoreError::new(format!("cannot serialize the owner: {e}")))?;
        let (w, o, ttl) = (workflow.to_string(), owner.clone(), self.ttl_ms());
        let fault = self.fault.clone();
        let (claimed, orphans) = self.call(move |connection| {
            connection.run(&format!("cannot claim a run of `{w}`"), |client| {
                let mut tx = client.transaction()?;
                // Free runs (no holder, or its lease ran out), oldest first, keys without a
                // `/` (never a child's) before the others, so that orphaned child runs (left
                // to their parents) do not fill the window; rows another worker is claiming
                // right now are skipped, not waited for.
                let candidates: Vec<String> = tx
                    .query(
                        &format!(
                            "SELECT key FROM tidewater_runs
                             WHERE workflow = $1 AND record != ''
                               AND (status = 'running' OR (status = 'waiting'
                                    AND (has_work OR inbox_last > inbox_read)))
                               AND (owner_id IS NULL OR lease_until < {NOW})
                             ORDER BY strpos(key, '/') > 0, updated LIMIT 16
                             FOR UPDATE SKIP LOCKED"
                        ),
                        &[&w],
                    )?
                    .into_iter()
                    .map(|row| row.get(0))
                    .collect();
                for key in candidates {
                    let prefixes: Vec<&str> =
                        key.match_indices('/').map(|(at, _)| &key[..at]).collect();
                    if !prefixes.is_empty() {
                        let parent = tx
                            .query_opt(
                                "SELECT 1 FROM tidewater_runs WHERE key = ANY($1) LIMIT 1",
                                &[&prefixes],
                            )?
                            .is_some();
                        if parent {
                            continue; // a child run: its parent resumes it
                        }
                    }
                    let epoch: i64 = tx
                        .query_one(
                            &format!(
                                "UPDATE tidewater_runs SET owner_id = $2, owner = $3,
                                     epoch = epoch + 1, lease_until = {NOW} + $4,
                                     updated = {NOW}
                                 WHERE key = $1 RETURNING epoch"
                            ),
                            &[&key, &o.id, &owner_json, &ttl],
                        )?
                        .get(0);
                    if let Some(fault) = Fault::armed(&fault, "mid_claim") {
                        fault.stop_here(&key);
                    }
                    tx.commit()?;
                    return Ok((Some((key, epoch)), Vec::new()));
                }
                tx.commit()?;
                // Runs held by a process of this host that is gone (killed): taken at once,
                // not after their lease, as on SQLite.
                let orphans: Vec<(String, String)> = client
                    .query(
                        &format!(
                            "SELECT key, owner FROM tidewater_runs
                             WHERE workflow = $1 AND record != '' AND owner_id IS NOT NULL
                               AND lease_until >= {NOW} AND owner::jsonb ->> 'host' = $2
                               AND (status = 'running' OR (status = 'waiting'
                                    AND (has_work OR inbox_last > inbox_read)))
                             ORDER BY updated LIMIT 16"
                        ),
                        &[&w, &o.host],
                    )?
                    .into_iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect();
                Ok((None, orphans))
            })
        })?;
        if let Some((key, epoch)) = claimed {
            let lease = Lease {
                owner: owner.clone(),
                epoch: epoch as u64,
            };
            self.hold(&key, &lease);
            return Ok(Some((key, lease)));
        }
        for (key, holder) in orphans {
            let gone = serde_json::from_str::<Owner>(&holder).is_ok_and(|h| h.is_gone());
            if !gone
                || tidewater::store::is_child_key(&key, |p| matches!(self.load(p), Ok(Some(_))))
            {
                continue;
            }
            match self.acquire(&key, owner, Claim::Resume) {
                Ok(lease) => return Ok(Some((key, lease))),
                Err(error) if error.kind == StoreErrorKind::Failed => return Err(error),
                Err(_) => {} // taken by another worker meanwhile, or ended
            }
        }
        Ok(None)
    }

    fn wakeups(&self) -> Option<&Wakeups> {
        Some(&self.wakeups)
    }
}
