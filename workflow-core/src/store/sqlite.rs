//! [`SqliteStore`]: durable runs in an embedded SQLite database (the `sqlite` feature).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Claim, Lease, Message, Owner, RunRecord, RunStatus, Store, StoreError, StoreErrorKind, Wakeups,
    Write, check_claim, fenced, has_work, is_child_key,
};
use crate::snapshot::EventRecord;
use crate::stream::lock;

/// How long a connection waits for another process's write lock on the same file before it
/// gives up with an error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    key      TEXT PRIMARY KEY NOT NULL,
    status   TEXT NOT NULL,
    record   TEXT NOT NULL,
    updated  INTEGER NOT NULL,
    owner_id TEXT,
    owner    TEXT,
    epoch    INTEGER NOT NULL DEFAULT 0,
    workflow   TEXT,
    inbox_last INTEGER NOT NULL DEFAULT 0,
    inbox_read INTEGER NOT NULL DEFAULT 0,
    has_work   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, key);
CREATE TABLE IF NOT EXISTS inbox (
    key     TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    id      TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (key, seq),
    UNIQUE (key, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    key   TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
";

/// A [`Store`] in an embedded SQLite database: one file, no server to start. SQLite is
/// compiled into the crate, so no system library is needed.
///
/// Three tables: `runs (key, status, record, updated, owner_id, owner, epoch, workflow,
/// inbox_last, inbox_read, has_work)` holds each run's last checkpoint as JSON, who owns it
/// (see [`Store`]'s ownership rules: every write is conditional on the owner's epoch, in the
/// same statement) and what the run queue needs to know ([`Store::claim`]); `inbox (key, seq,
/// id, message)` the messages posted to it ([`Store::post`]); `events (key, seq, event)` the
/// events it wrote to its stream. A run started and not yet checkpointed has an empty record.
/// A file made by an older version gains the missing columns when it is opened.
///
/// The database runs in WAL mode with `synchronous = NORMAL`, and every write that must be
/// durable syncs the log itself (`fdatasync`) after its commit, outside the connection's lock:
/// when [`Store::save`], [`Store::append_event`], [`Store::write_batch`] or [`Store::post`]
/// returns, the write survives a crash of the process (even `SIGKILL`) or of the machine. One
/// sync covers every transaction committed before it, so [`Store::write_batch`] (the runtime's
/// group commit, one transaction for the checkpoints of every run that completed a step at
/// about the same moment) costs one sync, and [`Store::acquire`], [`Store::claim`] and
/// [`Store::release`] cost none of their own: they are durable with the next synced write.
/// Several processes may open the same file; a writer waits up to 10 s for another's lock.
///
/// Calls block the calling thread for the time of a write and its sync. The runtime makes its
/// checkpoints from the store's writer thread, never from a run's task; the connection is
/// shared behind a mutex, which is free while the log syncs.
///
/// Stream events are keyed by `(run key, seq)`: writing a sequence number again replaces the
/// event (the runtime never does: a resumed run marks what the process that died journaled
/// after its last checkpoint as superseded, [`SUPERSEDED`](crate::store::SUPERSEDED), and
/// numbers its own events after it). Starting a new run under a key that an ended run used
/// clears that run's events.
///
/// ```
/// use tidewater::store::{RunStatus, SqliteStore, Store};
///
/// let store = SqliteStore::in_memory().unwrap();
/// assert!(store.load("nope").unwrap().is_none());
/// assert!(store.keys(RunStatus::Waiting).unwrap().is_empty());
/// ```
pub struct SqliteStore {
    connection: Mutex<Connection>,
    path: Option<PathBuf>,
    /// Opened with [`SqliteStore::open_read_only`]: every write is refused.
    read_only: bool,
    /// What this instance changed, for the waiters of this process (other processes on the
    /// same file poll).
    wakeups: Wakeups,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file and its tables if needed.
    ///
    /// ```
    /// use tidewater::store::SqliteStore;
    ///
    /// let path = std::env::temp_dir().join(format!("doc-{}.db", std::process::id()));
    /// let store = SqliteStore::open(&path).unwrap();
    /// assert_eq!(store.path(), Some(path.as_path()));
    /// # drop(store);
    /// # for suffix in ["", "-wal", "-shm"] {
    /// #     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    /// # }
    /// ```
    ///
    /// # Errors
    /// When the file cannot be opened or created, is not an SQLite database, or its tables
    /// cannot be created.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let connection = Connection::open(path)
            .map_err(|e| StoreError::new(format!("cannot open `{}`: {e}", path.display())))?;
        SqliteStore::setup(connection, Some(path.to_path_buf()))
    }

    /// Opens the database at `path` for reading only: a monitor that lists and reads runs
    /// ([`Store::keys`], [`Store::load`], [`Store::events`]) while their owners write, with
    /// no need to write the file (nor its directory, once a writer has made the `-shm` file
    /// beside it). The file is never created nor changed; every write
    /// ([`Store::acquire`], [`Store::save`], [`Store::append_event`], [`Store::release`]) is
    /// refused.
    ///
    /// ```
    /// use tidewater::store::{RunStatus, SqliteStore, Store};
    ///
    /// let path = std::env::temp_dir().join(format!("doc-ro-{}.db", std::process::id()));
    /// let writer = SqliteStore::open(&path).unwrap();
    /// let monitor = SqliteStore::open_read_only(&path).unwrap();
    /// assert!(monitor.keys(RunStatus::Running).unwrap().is_empty());
    /// assert!(monitor.load("nope").unwrap().is_none());
    /// # drop((writer, monitor));
    /// # for suffix in ["", "-wal", "-shm"] {
    /// #     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    /// # }
    /// ```
    ///
    /// # Errors
    /// When the file does not exist, cannot be read, is not an SQLite database, or has no
    /// table of runs.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        use rusqlite::OpenFlags;
        let path = path.as_ref();
        let at = format!("`{}`", path.display());
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::new(format!("cannot open {at} read-only: {e}")))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| StoreError::new(format!("cannot set the busy timeout of {at}: {e}")))?;
        let tables: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('runs', 'events')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| StoreError::new(format!("cannot read the tables of {at}: {e}")))?;
        if tables != 2 {
            return Err(StoreError::new(format!(
                "{at} holds no durable runs (no `runs` and `events` tables)"
            )));
        }
        Ok(SqliteStore {
            connection: Mutex::new(connection),
            path: Some(path.to_path_buf()),
            read_only: true,
            wakeups: Wakeups::default(),
        })
    }

    /// Refuses a write of a store opened read-only.
    fn writable(&self, what: &str, key: &str) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::new(format!(
                "cannot {what} run `{key}`: the store was opened read-only"
            )));
        }
        Ok(())
    }

    /// A private database in memory, gone when the store is dropped (tests).
    ///
    /// # Errors
    /// When SQLite cannot allocate it.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let connection = Connection::open_in_memory()
            .map_err(|e| StoreError::new(format!("cannot open an in-memory database: {e}")))?;
        SqliteStore::setup(connection, None)
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn setup(connection: Connection, path: Option<PathBuf>) -> Result<SqliteStore, StoreError> {
        let at = match &path {
            Some(path) => format!("`{}`", path.display()),
            None => "the in-memory database".to_string(),
        };
        let fail = |what: &str, e: rusqlite::Error| StoreError::new(format!("{what} {at}: {e}"));
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| fail("cannot set the busy timeout of", e))?;
        // WAL: readers (another process polling the file) never block the writer, and a
        // commit is one append to the log. NORMAL: a commit does not sync the log by itself;
        // every write that must be durable syncs it after its commit, outside the connection's
        // lock (`sync_log`), so that one sync makes a whole batch durable and other runs go on
        // meanwhile.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| fail("cannot switch to WAL mode", e))?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| fail("cannot set `synchronous = NORMAL` on", e))?;
        connection
            .execute_batch(SCHEMA)
            .map_err(|e| fail("cannot create the tables of", e))?;
        // Files made before runs had owners, and before inboxes and the run queue: add the
        // columns they lack.
        let migrations = [
            (
                "epoch",
                "owner",
                "ALTER TABLE runs ADD COLUMN owner_id TEXT;
                 ALTER TABLE runs ADD COLUMN owner TEXT;
                 ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;",
            ),
            (
                "inbox_last",
                "queue",
                "ALTER TABLE runs ADD COLUMN workflow TEXT;
                 ALTER TABLE runs ADD COLUMN inbox_last INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE runs ADD COLUMN inbox_read INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE runs ADD COLUMN has_work INTEGER NOT NULL DEFAULT 0;",
            ),
        ];
        for (probe, what, sql) in migrations {
            let present: bool = connection
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('runs') WHERE name = ?1",
                    [probe],
                    |row| row.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(|e| fail("cannot read the tables of", e))?;
            if !present {
                connection
                    .execute_batch(sql)
                    .map_err(|e| fail(&format!("cannot add the {what} columns to"), e))?;
            }
        }
        connection
            .execute_batch(
                "CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (workflow, status, updated)",
            )
            .map_err(|e| fail("cannot create the queue index of", e))?;
        let store = SqliteStore {
            connection: Mutex::new(connection),
            path,
            read_only: false,
            wakeups: Wakeups::default(),
        };
        if let Some(path) = &store.path {
            // The tables and the log exist for good before the first run writes: the log is
            // synced, and so is the directory that names it (it may have just been created).
            store.sync_log().map_err(StoreError::new)?;
            let directory = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::File::open(directory)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    StoreError::new(format!("cannot sync `{}`: {e}", directory.display()))
                })?;
        }
        Ok(store)
    }
}

fn unknown_status(key: &str, status: &str) -> StoreError {
    StoreError::new(format!(
        "run `{key}` has an unknown status `{status}` (written by a newer build?)"
    ))
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn seq_column(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::new(format!("event sequence {seq} is too large")))
}

/// Reads JSON text; on failure, the path of the bad field (when there is one) and the error,
/// as the tail of a message: `` at `snapshot.state`: invalid type ...`` or `: EOF while ...`.
fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || path == "?" {
            format!(": {inner}")
        } else {
            format!(" at `{path}`: {inner}")
        }
    })
}

impl Store for SqliteStore {
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError> {
        self.writable("acquire", key)?;
        let fail = |e: rusqlite::Error| StoreError::new(format!("cannot acquire run `{key}`: {e}"));
        let owner_json = serde_json::to_string(owner)
            .map_err(|e| StoreError::new(format!("cannot serialize the owner: {e}")))?;
        let mut connection = lock(&self.connection);
        // IMMEDIATE: the write lock is taken before the read, so two processes acquiring the
        // same run are serialized and the second sees the first's claim.
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail)?;
        let row: Option<(String, bool, Option<String>)> = tx
            .query_row(
                "SELECT status, record = '', owner FROM runs WHERE key = ?1",
                params![key],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(fail)?;
        let (status, holder) = match &row {
            None => (None, None),
            Some((status, empty, holder)) => {
                let status =
                    RunStatus::from_name(status).ok_or_else(|| unknown_status(key, status))?;
                let holder = holder
                    .as_deref()
                    .map(from_json::<Owner>)
                    .transpose()
                    .map_err(|reason| {
                        StoreError::new(format!("corrupt owner of run `{key}`{reason}"))
                    })?;
                ((!empty).then_some(status), holder)
            }
        };
        check_claim(status, holder.as_ref(), claim)?;
        if claim == Claim::Start {
            tx.execute("DELETE FROM events WHERE key = ?1", params![key])
                .map_err(fail)?;
            tx.execute("DELETE FROM inbox WHERE key = ?1", params![key])
                .map_err(fail)?;
            tx.execute(
                "INSERT INTO runs (key, status, record, updated, owner_id, owner, epoch)
                 VALUES (?1, 'running', '', ?2, ?3, ?4, 1)
                 ON CONFLICT (key) DO UPDATE SET
                     status = 'running', record = '', updated = excluded.updated,
                     owner_id = excluded.owner_id, owner = excluded.owner, epoch = epoch + 1,
                     inbox_last = 0, inbox_read = 0, has_work = 0",
                params![key, now_millis(), owner.id, owner_json],
            )
            .map_err(fail)?;
        } else {
            tx.execute(
                "UPDATE runs SET owner_id = ?2, owner = ?3, epoch = epoch + 1, updated = ?4
                 WHERE key = ?1",
                params![key, owner.id, owner_json, now_millis()],
            )
            .map_err(fail)?;
        }
        let epoch: i64 = tx
            .query_row(
                "SELECT epoch FROM runs WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(Lease {
            owner: owner.clone(),
            epoch: epoch as u64,
        })
    }

    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError> {
        let mut results = self.write_batch(&[Write::Save { key, lease, record }]);
        results.pop().unwrap_or(Ok(()))
    }

    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        self.writable("release", key)?;
        let workflow: Option<Option<String>> = lock(&self.connection)
            .query_row(
                "UPDATE runs SET owner_id = NULL, owner = NULL
                 WHERE key = ?1 AND epoch = ?2 AND owner_id = ?3 RETURNING workflow",
                params![key, lease.epoch as i64, lease.owner.id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| StoreError::new(format!("cannot release run `{key}`: {e}")))?;
        if let Some(workflow) = workflow {
            self.wakeups.changed(workflow.as_deref(), key);
        }
        Ok(())
    }

    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        let row: Option<(String, String)> = lock(&self.connection)
            .query_row(
                "SELECT status, record FROM runs WHERE key = ?1 AND record != ''",
                params![key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| StoreError::new(format!("cannot load run `{key}`: {e}")))?;
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
        let mut results = self.write_batch(&[Write::Event {
            key,
            lease,
            seq,
            event,
        }]);
        results.pop().unwrap_or(Ok(()))
    }

    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        let fail = |e: rusqlite::Error| {
            StoreError::new(format!("cannot read the events of run `{key}`: {e}"))
        };
        let connection = lock(&self.connection);
        let mut statement = connection
            .prepare_cached("SELECT seq, event FROM events WHERE key = ?1 ORDER BY seq")
            .map_err(fail)?;
        let rows = statement
            .query_map(params![key], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(fail)?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, text) = row.map_err(fail)?;
            let event = from_json(&text).map_err(|reason| {
                StoreError::new(format!("corrupt event {seq} of run `{key}`{reason}"))
            })?;
            // Numbers start at 1: anything else is a row this store never wrote.
            let seq = u64::try_from(seq)
                .ok()
                .filter(|&seq| seq > 0)
                .ok_or_else(|| {
                    StoreError::new(format!("run `{key}` has an impossible event number {seq}"))
                })?;
            events.push((seq, event));
        }
        Ok(events)
    }

    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        let fail =
            |e: rusqlite::Error| StoreError::new(format!("cannot list the {status:?} runs: {e}"));
        let connection = lock(&self.connection);
        // A row of a status this build does not know is in no list: say so rather than leave
        // it out unseen.
        let known = RunStatus::ALL.map(RunStatus::name);
        let slots: Vec<String> = (1..=known.len()).map(|i| format!("?{i}")).collect();
        let unknown: Option<(String, String)> = connection
            .query_row(
                &format!(
                    "SELECT key, status FROM runs WHERE status NOT IN ({}) LIMIT 1",
                    slots.join(", ")
                ),
                rusqlite::params_from_iter(known),
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(fail)?;
        if let Some((key, status)) = unknown {
            return Err(unknown_status(&key, &status));
        }
        let mut statement = connection
            .prepare_cached("SELECT key FROM runs WHERE status = ?1 AND record != '' ORDER BY key")
            .map_err(fail)?;
        let keys = statement
            .query_map(params![status.name()], |row| row.get(0))
            .map_err(fail)?
            .collect::<Result<Vec<String>, _>>()
            .map_err(fail)?;
        Ok(keys)
    }

    fn post(&self, key: &str, message: &Message) -> Result<bool, StoreError> {
        self.writable("post to", key)?;
        let json = serde_json::to_string(message).map_err(|e| {
            StoreError::new(format!("cannot serialize a message to run `{key}`: {e}"))
        })?;
        let fail = |e: rusqlite::Error| StoreError::new(format!("cannot post to run `{key}`: {e}"));
        let mut connection = lock(&self.connection);
        // IMMEDIATE: posts to one run are numbered one after the other, without gaps.
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail)?;
        let row: Option<(String, bool, Option<String>)> = tx
            .query_row(
                "SELECT status, record = '', workflow FROM runs WHERE key = ?1",
                params![key],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(fail)?;
        let Some((status, empty, workflow)) = row else {
            return Err(StoreError::of(
                StoreErrorKind::Missing,
                format!("cannot post to run `{key}`: no run with this key in the store"),
            ));
        };
        let status = RunStatus::from_name(&status).ok_or_else(|| unknown_status(key, &status))?;
        if !empty && !matches!(status, RunStatus::Running | RunStatus::Waiting) {
            return Err(StoreError::of(
                StoreErrorKind::Ended,
                format!("cannot post to run `{key}`: it has ended ({status:?})"),
            ));
        }
        let seen: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM inbox WHERE key = ?1 AND id = ?2",
                params![key, message.id],
                |row| row.get(0),
            )
            .map_err(fail)?;
        if seen {
            return Ok(false);
        }
        let seq: i64 = tx
            .query_row(
                "UPDATE runs SET inbox_last = inbox_last + 1 WHERE key = ?1 RETURNING inbox_last",
                params![key],
                |row| row.get(0),
            )
            .map_err(fail)?;
        tx.execute(
            "INSERT INTO inbox (key, seq, id, message) VALUES (?1, ?2, ?3, ?4)",
            params![key, seq, message.id, json],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        drop(connection);
        // Durable before it is acknowledged (the log is synced outside the lock).
        self.sync_log().map_err(StoreError::new)?;
        self.wakeups.changed(workflow.as_deref(), key);
        Ok(true)
    }

    fn inbox(&self, key: &str, after: u64) -> Result<Vec<(u64, Message)>, StoreError> {
        let fail = |e: rusqlite::Error| {
            StoreError::new(format!("cannot read the inbox of run `{key}`: {e}"))
        };
        let connection = lock(&self.connection);
        let mut statement = connection
            .prepare_cached(
                "SELECT seq, message FROM inbox WHERE key = ?1 AND seq > ?2 ORDER BY seq",
            )
            .map_err(fail)?;
        let rows = statement
            .query_map(params![key, seq_column(after)?], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(fail)?;
        let mut messages = Vec::new();
        for row in rows {
            let (seq, text) = row.map_err(fail)?;
            let message = from_json(&text).map_err(|reason| {
                StoreError::new(format!("corrupt message {seq} of run `{key}`{reason}"))
            })?;
            messages.push((seq as u64, message));
        }
        Ok(messages)
    }

    fn claim(&self, workflow: &str, owner: &Owner) -> Result<Option<(String, Lease)>, StoreError> {
        self.writable("claim a run of", workflow)?;
        let fail = |e: rusqlite::Error| {
            StoreError::new(format!("cannot claim a run of `{workflow}`: {e}"))
        };
        let owner_json = serde_json::to_string(owner)
            .map_err(|e| StoreError::new(format!("cannot serialize the owner: {e}")))?;
        let mut connection = lock(&self.connection);
        // IMMEDIATE: the write lock is taken before the read, so two workers (of any process)
        // never claim the same run.
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail)?;
        let candidates: Vec<(String, Option<String>)> = {
            let mut statement = tx
                .prepare_cached(
                    "SELECT key, owner FROM runs
                     WHERE workflow = ?1 AND record != '' AND (status = 'running'
                         OR (status = 'waiting' AND (has_work OR inbox_last > inbox_read)))
                     ORDER BY updated, key",
                )
                .map_err(fail)?;
            statement
                .query_map(params![workflow], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(fail)?
                .collect::<Result<_, _>>()
                .map_err(fail)?
        };
        for (key, holder) in candidates {
            let holder = holder
                .as_deref()
                .map(from_json::<Owner>)
                .transpose()
                .map_err(|reason| {
                    StoreError::new(format!("corrupt owner of run `{key}`{reason}"))
                })?;
            if holder.is_some_and(|holder| !holder.is_gone()) {
                continue;
            }
            let mut exists = tx
                .prepare_cached("SELECT count(*) > 0 FROM runs WHERE key = ?1")
                .map_err(fail)?;
            let child = is_child_key(&key, |parent| {
                exists
                    .query_row(params![parent], |row| row.get::<_, bool>(0))
                    .unwrap_or(false)
            });
            drop(exists);
            if child {
                continue;
            }
            let epoch: i64 = tx
                .query_row(
                    "UPDATE runs SET owner_id = ?2, owner = ?3, epoch = epoch + 1, updated = ?4
                     WHERE key = ?1 RETURNING epoch",
                    params![key, owner.id, owner_json, now_millis()],
                    |row| row.get(0),
                )
                .map_err(fail)?;
            tx.commit().map_err(fail)?;
            let lease = Lease {
                owner: owner.clone(),
                epoch: epoch as u64,
            };
            return Ok(Some((key, lease)));
        }
        Ok(None)
    }

    fn wakeups(&self) -> Option<&Wakeups> {
        Some(&self.wakeups)
    }

    /// One transaction for the whole batch, then one sync of the log: the group commit of
    /// every run that completed a step at about the same moment. Each write is fenced on its
    /// own (a stale lease fails that write only).
    fn write_batch(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(writes.len());
        // Serialized before the lock is taken: a write that does not serialize fails alone.
        let mut rows: Vec<Option<String>> = Vec::with_capacity(writes.len());
        for write in writes {
            let (key, row) = match *write {
                Write::Save { key, record, .. } => (
                    key,
                    seq_column(record.snapshot.inbox).and_then(|_| {
                        serde_json::to_string(record).map_err(|e| {
                            StoreError::new(format!(
                                "cannot serialize the record of run `{key}`: {e}"
                            ))
                        })
                    }),
                ),
                Write::Event {
                    key, seq, event, ..
                } => (
                    key,
                    seq_column(seq).and_then(|_| {
                        serde_json::to_string(event).map_err(|e| {
                            StoreError::new(format!(
                                "cannot serialize event {seq} of run `{key}`: {e}"
                            ))
                        })
                    }),
                ),
            };
            match self.writable("write", key).and(row) {
                Ok(row) => {
                    rows.push(Some(row));
                    results.push(Ok(()));
                }
                Err(error) => {
                    rows.push(None);
                    results.push(Err(error));
                }
            }
        }
        if rows.iter().all(Option::is_none) {
            return results;
        }
        if let Err(error) = self.write_rows(writes, &rows, &mut results) {
            // The transaction failed as a whole: no write of it is known to be durable.
            for (result, row) in results.iter_mut().zip(&rows) {
                if row.is_some() {
                    *result = Err(StoreError::new(error.clone()));
                }
            }
            return results;
        }
        // Parked runs: a message that came meanwhile makes them a worker's to claim.
        for (write, result) in writes.iter().zip(&results) {
            if let (Write::Save { key, record, .. }, Ok(())) = (write, result) {
                if record.status == RunStatus::Waiting {
                    self.wakeups.changed(Some(&record.snapshot.workflow), key);
                }
            }
        }
        results
    }
}

impl SqliteStore {
    /// Writes the serialized `rows` of `writes` (a `None` row failed before) in one
    /// transaction, recording each write's fencing in `results`, then makes the transaction
    /// durable (see [`SqliteStore::sync_log`]). An `Err` is a failure of the whole batch.
    fn write_rows(
        &self,
        writes: &[Write<'_>],
        rows: &[Option<String>],
        results: &mut [Result<(), StoreError>],
    ) -> Result<(), String> {
        let now = now_millis();
        {
            let mut connection = lock(&self.connection);
            let tx = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| format!("cannot begin a write: {e}"))?;
            for ((write, row), result) in writes.iter().zip(rows).zip(results.iter_mut()) {
                let Some(row) = row else { continue };
                let refused = match *write {
                    Write::Save { key, lease, record } => {
                        let fail = |e: rusqlite::Error| format!("cannot save run `{key}`: {e}");
                        // One statement: the lease check and the write are atomic.
                        let mut statement = tx
                            .prepare_cached(
                                "UPDATE runs SET status = ?2, record = ?3, updated = ?4,
                                     owner_id = CASE WHEN ?2 = 'running' THEN owner_id END,
                                     owner = CASE WHEN ?2 = 'running' THEN owner END,
                                     workflow = ?7, inbox_read = ?8, has_work = ?9
                                 WHERE key = ?1 AND epoch = ?5 AND owner_id = ?6",
                            )
                            .map_err(fail)?;
                        let changed = statement
                            .execute(params![
                                key,
                                record.status.name(),
                                row,
                                now,
                                lease.epoch as i64,
                                lease.owner.id,
                                record.snapshot.workflow,
                                record.snapshot.inbox as i64,
                                has_work(&record.snapshot),
                            ])
                            .map_err(fail)?;
                        (changed == 0).then(|| fenced(key, lease, "checkpoint"))
                    }
                    Write::Event {
                        key, lease, seq, ..
                    } => {
                        let fail = |e: rusqlite::Error| {
                            format!("cannot journal event {seq} of run `{key}`: {e}")
                        };
                        let mut statement = tx
                            .prepare_cached(
                                "INSERT OR REPLACE INTO events (key, seq, event)
                                 SELECT ?1, ?2, ?3 WHERE EXISTS
                                     (SELECT 1 FROM runs WHERE key = ?1 AND epoch = ?4 AND owner_id = ?5)",
                            )
                            .map_err(fail)?;
                        let changed = statement
                            .execute(params![
                                key,
                                seq as i64,
                                row,
                                lease.epoch as i64,
                                lease.owner.id
                            ])
                            .map_err(fail)?;
                        (changed == 0).then(|| fenced(key, lease, &format!("event {seq}")))
                    }
                };
                if let Some(refused) = refused {
                    *result = Err(refused);
                }
            }
            tx.commit()
                .map_err(|e| format!("cannot commit a write: {e}"))?;
        }
        // The lock is free again (other runs acquire, read and write) while the log syncs.
        self.sync_log()
    }

    /// Makes every committed transaction durable: one `fdatasync` of the write-ahead log.
    ///
    /// The connection runs with `synchronous = NORMAL`, so a commit appends to the log without
    /// syncing it; this sync, made after the commit and outside the connection's lock, is what
    /// [`Store::save`], [`Store::append_event`], [`Store::write_batch`] and [`Store::post`]
    /// wait for before they return. It covers every transaction committed before it, of any
    /// run (the log is one file, appended in commit order): that is the group commit, and the
    /// claims of [`Store::acquire`], [`Store::claim`] and [`Store::release`], which do not sync
    /// on their own, become durable with the next synced write. (SQLite syncs the log itself
    /// before it copies it into the database.)
    fn sync_log(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        std::fs::File::open(&wal)
            .and_then(|log| log.sync_data())
            .map_err(|e| format!("cannot sync `{}`: {e}", Path::new(&wal).display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("workflow-sqlite-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    use crate::store::conformance::{event, record};
    use crate::store::{Claim, Owner};

    fn start(store: &SqliteStore, key: &str) -> Lease {
        store
            .acquire(key, &Owner::this_process(), Claim::Start)
            .unwrap()
    }

    #[test]
    fn a_file_database_is_shared_by_connections_and_survives_reopening() {
        let dir = TempDir::new("reopen");
        let path = dir.0.join("runs.db");
        let first = SqliteStore::open(&path).unwrap();
        assert_eq!(first.path(), Some(path.as_path()));
        let lease = start(&first, "a");
        first.append_event("a", &lease, 1, &event(1)).unwrap();
        first
            .save("a", &lease, &record(RunStatus::Waiting, 2, 1))
            .unwrap();
        // Another connection (another process, in real life) sees the writes at once.
        let second = SqliteStore::open(&path).unwrap();
        assert_eq!(
            second.load("a").unwrap(),
            Some(record(RunStatus::Waiting, 2, 1))
        );
        drop(first);
        drop(second);
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.keys(RunStatus::Waiting).unwrap(), ["a"]);
        assert_eq!(reopened.events("a").unwrap(), [(1, event(1))]);
        let mode: String = lock(&reopened.connection)
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let synchronous: i64 = lock(&reopened.connection)
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap();
        // NORMAL: a commit does not sync the log; every durable write syncs it after its
        // commit (`sync_log`), once for a whole batch.
        assert_eq!(synchronous, 1, "NORMAL");
    }

    #[test]
    fn a_file_made_before_owners_and_inboxes_gains_their_columns_and_keeps_its_runs() {
        let dir = TempDir::new("migrate");
        let path = dir.0.join("old.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE runs (key TEXT PRIMARY KEY NOT NULL, status TEXT NOT NULL,
                     record TEXT NOT NULL, updated INTEGER NOT NULL);
                 CREATE TABLE events (key TEXT NOT NULL, seq INTEGER NOT NULL,
                     event TEXT NOT NULL, PRIMARY KEY (key, seq)) WITHOUT ROWID;",
            )
            .unwrap();
            let text = serde_json::to_string(&record(RunStatus::Waiting, 2, 1)).unwrap();
            old.execute(
                "INSERT INTO runs (key, status, record, updated) VALUES ('a', 'waiting', ?1, 0)",
                [text],
            )
            .unwrap();
        }
        for _ in 0..2 {
            // The second open finds the columns there and adds nothing.
            let store = SqliteStore::open(&path).unwrap();
            let columns: Vec<String> = lock(&store.connection)
                .prepare("SELECT name FROM pragma_table_info('runs') ORDER BY cid")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                columns,
                [
                    "key",
                    "status",
                    "record",
                    "updated",
                    "owner_id",
                    "owner",
                    "epoch",
                    "workflow",
                    "inbox_last",
                    "inbox_read",
                    "has_work"
                ]
            );
            assert_eq!(
                store.load("a").unwrap(),
                Some(record(RunStatus::Waiting, 2, 1))
            );
        }
        // The old run can be resumed (taken, epoch 1) like any other.
        let store = SqliteStore::open(&path).unwrap();
        let lease = store
            .acquire("a", &Owner::this_process(), Claim::Resume)
            .unwrap();
        assert_eq!(lease.epoch, 1);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_run_and_the_field() {
        let store = SqliteStore::in_memory().unwrap();
        let lease = start(&store, "a");
        store
            .save("a", &lease, &record(RunStatus::Running, 1, 0))
            .unwrap();
        let mut json: serde_json::Value =
            serde_json::to_value(record(RunStatus::Running, 1, 0)).unwrap();
        json["snapshot"]["completed"] = serde_json::json!("one");
        lock(&store.connection)
            .execute(
                "UPDATE runs SET record = ?1 WHERE key = 'a'",
                params![json.to_string()],
            )
            .unwrap();
        let error = store.load("a").unwrap_err();
        assert_eq!(
            error.to_string(),
            "store: corrupt record of run `a` at `snapshot.completed`: \
             invalid type: string \"one\", expected u64 at line 1 column 70"
        );

        lock(&store.connection)
            .execute("UPDATE runs SET record = '{ not json' WHERE key = 'a'", [])
            .unwrap();
        let error = store.load("a").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("store: corrupt record of run `a`: key must be a string"),
            "{error}"
        );

        lock(&store.connection)
            .execute(
                "INSERT INTO events (key, seq, event) VALUES ('a', 1, '[]')",
                [],
            )
            .unwrap();
        let error = store.events("a").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("store: corrupt event 1 of run `a`: invalid length 0"),
            "{error}"
        );
    }

    #[test]
    fn a_row_of_an_unknown_status_or_an_impossible_number_is_an_error() {
        let store = SqliteStore::in_memory().unwrap();
        for key in ["a", "b"] {
            let lease = start(&store, key);
            store
                .save(key, &lease, &record(RunStatus::Running, 1, 0))
                .unwrap();
        }
        lock(&store.connection)
            .execute("UPDATE runs SET status = 'paused' WHERE key = 'b'", [])
            .unwrap();
        let unknown = "store: run `b` has an unknown status `paused` (written by a newer build?)";
        assert_eq!(store.load("b").unwrap_err().to_string(), unknown);
        // Not left out of the lists unseen: every list says so.
        for status in RunStatus::ALL {
            assert_eq!(store.keys(status).unwrap_err().to_string(), unknown);
        }
        let error = store
            .acquire("b", &Owner::this_process(), Claim::Resume)
            .unwrap_err();
        assert_eq!(error.to_string(), unknown);
        assert!(store.load("a").unwrap().is_some(), "other runs still read");

        for (seq, text) in [(0, "0"), (-3, "-3")] {
            let connection = lock(&store.connection);
            connection.execute("DELETE FROM events", []).unwrap();
            connection
                .execute(
                    "INSERT INTO events (key, seq, event) VALUES ('a', ?1, ?2)",
                    params![seq, serde_json::to_string(&event(1)).unwrap()],
                )
                .unwrap();
            drop(connection);
            assert_eq!(
                store.events("a").unwrap_err().to_string(),
                format!("store: run `a` has an impossible event number {text}"),
            );
        }
    }

    #[test]
    fn a_record_of_a_newer_format_is_named_even_with_new_fields() {
        let store = SqliteStore::in_memory().unwrap();
        let lease = start(&store, "a");
        store
            .save("a", &lease, &record(RunStatus::Running, 1, 0))
            .unwrap();
        let mut json = serde_json::to_value(record(RunStatus::Running, 1, 0)).unwrap();
        json["snapshot"]["format"] = serde_json::json!(crate::snapshot::SNAPSHOT_FORMAT + 1);
        json["snapshot"]["a_field_from_the_future"] = serde_json::json!([1, 2]);
        lock(&store.connection)
            .execute(
                "UPDATE runs SET record = ?1 WHERE key = 'a'",
                params![json.to_string()],
            )
            .unwrap();
        let error = store.load("a").unwrap_err().to_string();
        let newer = crate::snapshot::SNAPSHOT_FORMAT + 1;
        assert_eq!(
            error,
            format!(
                "store: the record of run `a` is of unsupported format {newer}: this build reads \
                 formats 1 to {} (was it written by a newer build?)",
                crate::snapshot::SNAPSHOT_FORMAT
            )
        );
        // The same snapshot given as JSON text.
        let error =
            crate::snapshot::Snapshot::from_json(&json["snapshot"].to_string()).unwrap_err();
        assert_eq!(error.path, "format");
        assert!(
            error
                .reason
                .starts_with(&format!("unsupported format {newer}:")),
            "{error}"
        );
    }

    #[test]
    fn a_monitor_opens_the_file_read_only_and_lists_and_reads_runs() {
        let dir = TempDir::new("read-only");
        let path = dir.0.join("runs.db");
        assert!(
            SqliteStore::open_read_only(&path)
                .unwrap_err()
                .to_string()
                .contains("read-only"),
            "a missing file is not created"
        );
        assert!(!path.exists());
        let writer = SqliteStore::open(&path).unwrap();
        let lease = start(&writer, "a");
        writer.append_event("a", &lease, 1, &event(1)).unwrap();
        writer
            .save("a", &lease, &record(RunStatus::Running, 2, 1))
            .unwrap();
        let monitor = SqliteStore::open_read_only(&path).unwrap();
        assert_eq!(monitor.keys(RunStatus::Running).unwrap(), ["a"]);
        assert_eq!(
            monitor.load("a").unwrap(),
            Some(record(RunStatus::Running, 2, 1))
        );
        assert_eq!(monitor.events("a").unwrap(), [(1, event(1))]);
        // The writer goes on; the monitor sees it.
        writer.append_event("a", &lease, 2, &event(2)).unwrap();
        writer
            .save("a", &lease, &record(RunStatus::Finished, 3, 2))
            .unwrap();
        assert_eq!(monitor.keys(RunStatus::Finished).unwrap(), ["a"]);
        assert_eq!(monitor.events("a").unwrap().len(), 2);
        // Every write is refused, and the run is left as it was.
        let me = Owner::this_process();
        let refused = monitor.acquire("b", &me, Claim::Start).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "store: cannot acquire run `b`: the store was opened read-only"
        );
        assert!(
            monitor
                .save("a", &lease, &record(RunStatus::Running, 1, 0))
                .is_err()
        );
        assert!(monitor.append_event("a", &lease, 3, &event(3)).is_err());
        assert!(monitor.release("a", &lease).is_err());
        assert_eq!(
            writer.load("a").unwrap(),
            Some(record(RunStatus::Finished, 3, 2))
        );
        // A file with no runs table is not a store.
        let other = dir.0.join("other.db");
        let connection = Connection::open(&other).unwrap();
        connection.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(connection);
        let error = SqliteStore::open_read_only(&other).unwrap_err().to_string();
        assert!(error.contains("holds no durable runs"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = TempDir::new("garbage");
        let path = dir.0.join("not-a.db");
        std::fs::write(&path, b"this is not an sqlite database, not at all, no").unwrap();
        let error = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("not a database"), "{error}");

        let error = SqliteStore::open(dir.0.join("missing/dir/x.db"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("store: cannot open `"), "{error}");
    }

    #[test]
    fn the_store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<SqliteStore>();
        let store = std::sync::Arc::new(SqliteStore::in_memory().unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let key = format!("t{t}");
                    let lease = start(&store, &key);
                    for seq in 1..=25 {
                        store.append_event(&key, &lease, seq, &event(t)).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        for t in 0..4 {
            assert_eq!(store.events(&format!("t{t}")).unwrap().len(), 25);
        }
    }
}
