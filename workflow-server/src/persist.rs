//! Where the server keeps its handlers and their event logs, behind one trait,
//! [`Persistence`], with two implementations:
//!
//! - [`SqlitePersist`]: one SQLite file, the server's two tables beside the durable store's
//!   (`SqliteStore`, which keeps the runs' checkpoints). One server process owns it. A
//!   restarted server reads every handler back: finished ones stay readable, running ones of a
//!   durable workflow resume from their last checkpoint, and a record that cannot be read
//!   marks its handler failed with the reason, without stopping the server.
//! - `PgPersist` (feature `postgres`, `crate::pg`): one PostgreSQL database shared by several
//!   server processes (and workers), the durable store being `tidewater_pg::PgStore`. Every
//!   server reads the handlers from the database ([`Persistence::shared`]); see
//!   `crate::shared` for how a handler and its stream are derived from it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use serde_json::Value;
use tidewater::store::{SqliteStore, Store};

/// The server's persistence: its handler rows and event logs, and the durable store its runs
/// are journaled in. Writes log their failure (a server keeps serving when its database
/// hiccups); reads return it.
pub(crate) trait Persistence: Send + Sync + std::fmt::Debug + 'static {
    /// The durable store the runs are journaled in.
    fn store(&self) -> Arc<dyn Store>;

    /// Several server processes share this persistence: handlers are read from it rather
    /// than from memory, and durable runs are answered and cancelled through the store's
    /// inbox, wherever they execute.
    fn shared(&self) -> bool {
        false
    }

    /// Records a new running handler; `false` when a handler with this id exists.
    fn insert_handler(&self, handler: &NewHandler<'_>) -> std::io::Result<bool>;

    /// Logs event `seq` of the handler.
    fn append_event(&self, id: &str, seq: usize, envelope: &Value);

    /// Records the handler's end, with its terminal event `last` numbered `seq` when given, in
    /// one transaction. A shared persistence writes it only over a running handler (the first
    /// server to see the end records it).
    fn finish(&self, end: &End<'_>);

    /// Deletes the handler and its log.
    fn delete(&self, id: &str);

    /// Every stored handler with its log, in start order (a restarted single server reads
    /// them back).
    fn load(&self) -> std::io::Result<Vec<Row>>;

    /// Every stored handler, without its log, in start order (shared persistence).
    fn handlers(&self) -> std::io::Result<Vec<Row>> {
        Err(not_shared())
    }

    /// One stored handler, without its log (shared persistence).
    fn handler(&self, id: &str) -> std::io::Result<Option<Row>> {
        let _ = id;
        Err(not_shared())
    }

    /// The handler's logged events numbered after `after` (shared persistence).
    fn events_after(&self, id: &str, after: i64) -> std::io::Result<Vec<(i64, Value)>> {
        let _ = (id, after);
        Err(not_shared())
    }

    /// Run `key`'s stream journal after journal number `after` (`Store::events`, read
    /// incrementally where the database allows).
    fn journal_after(
        &self,
        key: &str,
        after: u64,
    ) -> std::io::Result<Vec<(u64, tidewater::snapshot::EventRecord)>> {
        let events = self.store().events(key).map_err(err)?;
        Ok(events.into_iter().filter(|(seq, _)| *seq > after).collect())
    }
}

fn not_shared() -> std::io::Error {
    std::io::Error::other("this persistence is not shared by several servers")
}

/// A handler to record.
pub(crate) struct NewHandler<'a> {
    pub(crate) id: &'a str,
    pub(crate) workflow: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) started_at: &'a str,
    /// Its run is journaled in the store (its stream and outcome are read from there, by a
    /// shared persistence; a single server's SQLite file has no use for it).
    #[cfg_attr(
        not(feature = "postgres"),
        expect(dead_code, reason = "only a shared persistence reads it")
    )]
    pub(crate) durable: bool,
}

/// A handler's end, to record.
pub(crate) struct End<'a> {
    pub(crate) id: &'a str,
    pub(crate) status: &'a str,
    pub(crate) error: Option<&'a str>,
    pub(crate) result: Option<&'a Value>,
    pub(crate) at: &'a str,
    /// The terminal event and its number, when the server logs it.
    pub(crate) last: Option<(usize, &'a Value)>,
}

/// The SQLite file: the durable store and the server's tables.
pub(crate) struct SqlitePersist {
    store: Arc<dyn Store>,
    db: Mutex<Connection>,
}

impl std::fmt::Debug for SqlitePersist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlitePersist")
    }
}

/// A handler as stored.
pub(crate) struct Row {
    pub(crate) handler_id: String,
    pub(crate) workflow_name: String,
    pub(crate) run_id: String,
    pub(crate) status: String,
    pub(crate) started_at: String,
    pub(crate) updated_at: Option<String>,
    pub(crate) completed_at: Option<String>,
    pub(crate) error: Option<String>,
    /// The result envelope, or why it cannot be read.
    pub(crate) result: Result<Option<Value>, String>,
    /// The event log, or why it cannot be read (empty when read without it).
    pub(crate) events: Result<Vec<Value>, String>,
    /// Its run is journaled in the store.
    pub(crate) durable: bool,
}

pub(crate) fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl SqlitePersist {
    pub(crate) fn open(path: &Path) -> std::io::Result<SqlitePersist> {
        let store = SqliteStore::open(path).map_err(err)?;
        let db = Connection::open(path).map_err(err)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS server_handlers (
                 handler_id TEXT PRIMARY KEY,
                 seq INTEGER NOT NULL,
                 workflow_name TEXT NOT NULL,
                 run_id TEXT NOT NULL,
                 status TEXT NOT NULL,
                 started_at TEXT NOT NULL,
                 updated_at TEXT,
                 completed_at TEXT,
                 error TEXT,
                 result TEXT
             );
             CREATE TABLE IF NOT EXISTS server_events (
                 handler_id TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 envelope TEXT NOT NULL,
                 PRIMARY KEY (handler_id, seq)
             );",
        )
        .map_err(err)?;
        Ok(SqlitePersist {
            store: Arc::new(store),
            db: Mutex::new(db),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self, what: &str, result: rusqlite::Result<usize>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot persist {what}");
        }
    }
}

impl Persistence for SqlitePersist {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn insert_handler(&self, h: &NewHandler<'_>) -> std::io::Result<bool> {
        let db = self.db();
        let r = db.execute(
            "INSERT OR REPLACE INTO server_handlers
                 (handler_id, seq, workflow_name, run_id, status, started_at, updated_at)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM server_handlers), ?2, ?3, 'running', ?4, ?4)",
            params![h.id, h.workflow, h.run_id, h.started_at],
        );
        self.log("a handler", r);
        Ok(true)
    }

    fn append_event(&self, id: &str, seq: usize, envelope: &Value) {
        let r = self.db().execute(
            "INSERT OR REPLACE INTO server_events (handler_id, seq, envelope) VALUES (?1, ?2, ?3)",
            params![id, seq as i64, envelope.to_string()],
        );
        self.log("an event", r);
    }

    fn finish(&self, end: &End<'_>) {
        let mut db = self.db();
        let r = (|| {
            let tx = db.transaction()?;
            if let Some((seq, last)) = end.last {
                tx.execute(
                    "INSERT OR REPLACE INTO server_events (handler_id, seq, envelope) VALUES (?1, ?2, ?3)",
                    params![end.id, seq as i64, last.to_string()],
                )?;
            }
            let n = tx.execute(
                "UPDATE server_handlers SET status = ?2, error = ?3, result = ?4, updated_at = ?5,
                     completed_at = ?5 WHERE handler_id = ?1",
                params![
                    end.id,
                    end.status,
                    end.error,
                    end.result.map(Value::to_string),
                    end.at
                ],
            )?;
            tx.commit()?;
            Ok(n)
        })();
        self.log("a handler's end", r);
    }

    fn delete(&self, id: &str) {
        let mut db = self.db();
        let r = (|| {
            let tx = db.transaction()?;
            tx.execute(
                "DELETE FROM server_events WHERE handler_id = ?1",
                params![id],
            )?;
            let n = tx.execute(
                "DELETE FROM server_handlers WHERE handler_id = ?1",
                params![id],
            )?;
            tx.commit()?;
            Ok(n)
        })();
        self.log("a purge", r);
    }

    /// Every stored handler, in start order.
    fn load(&self) -> std::io::Result<Vec<Row>> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT handler_id, workflow_name, run_id, status, started_at, updated_at,
                        completed_at, error, result FROM server_handlers ORDER BY seq",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let mut out = Vec::new();
        for (
            handler_id,
            workflow_name,
            run_id,
            status,
            started_at,
            updated_at,
            completed_at,
            error,
            result,
        ) in rows
        {
            let result = match result {
                None => Ok(None),
                Some(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| format!("the stored result cannot be read: {e}")),
            };
            let events = (|| -> Result<Vec<Value>, String> {
                let mut stmt = db
                    .prepare("SELECT seq, envelope FROM server_events WHERE handler_id = ?1 ORDER BY seq")
                    .map_err(|e| e.to_string())?;
                let rows = stmt
                    .query_map(params![handler_id], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(|e| e.to_string())?;
                let mut events = Vec::new();
                for row in rows {
                    let (seq, text) = row.map_err(|e| e.to_string())?;
                    if seq != events.len() as i64 {
                        return Err(format!("the stored event log has a gap before event {seq}"));
                    }
                    events.push(
                        serde_json::from_str(&text)
                            .map_err(|e| format!("stored event {seq} cannot be read: {e}"))?,
                    );
                }
                Ok(events)
            })();
            out.push(Row {
                handler_id,
                workflow_name,
                run_id,
                status,
                started_at,
                updated_at,
                completed_at,
                error,
                result,
                events,
                durable: false,
            });
        }
        Ok(out)
    }
}
