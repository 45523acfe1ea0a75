//! Persistence in one SQLite file: the server's handlers and their event logs in two tables
//! beside the durable store's (`SqliteStore`), which keeps the runs' checkpoints. A restarted
//! server reads every handler back: finished ones stay readable, running ones of a durable
//! workflow resume from their last checkpoint, and a record that cannot be read marks its
//! handler failed with the reason, without stopping the server.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use serde_json::Value;
use tidewater::store::{SqliteStore, Store};

/// The SQLite file: the durable store and the server's tables.
pub(crate) struct Persist {
    pub(crate) store: Arc<dyn Store>,
    db: Mutex<Connection>,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Persist")
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
    /// The event log, or why it cannot be read.
    pub(crate) events: Result<Vec<Value>, String>,
}

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Persist {
    pub(crate) fn open(path: &Path) -> std::io::Result<Persist> {
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
        Ok(Persist {
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

    pub(crate) fn insert_handler(&self, id: &str, workflow: &str, run_id: &str, started_at: &str) {
        let db = self.db();
        let r = db.execute(
            "INSERT OR REPLACE INTO server_handlers
                 (handler_id, seq, workflow_name, run_id, status, started_at, updated_at)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM server_handlers), ?2, ?3, 'running', ?4, ?4)",
            params![id, workflow, run_id, started_at],
        );
        self.log("a handler", r);
    }

    pub(crate) fn append_event(&self, id: &str, seq: usize, envelope: &Value) {
        let r = self.db().execute(
            "INSERT OR REPLACE INTO server_events (handler_id, seq, envelope) VALUES (?1, ?2, ?3)",
            params![id, seq as i64, envelope.to_string()],
        );
        self.log("an event", r);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the columns of one row, written in one transaction"
    )]
    pub(crate) fn finish(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
        result: Option<&Value>,
        at: &str,
        seq: usize,
        last: &Value,
    ) {
        let mut db = self.db();
        let r = (|| {
            let tx = db.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO server_events (handler_id, seq, envelope) VALUES (?1, ?2, ?3)",
                params![id, seq as i64, last.to_string()],
            )?;
            let n = tx.execute(
                "UPDATE server_handlers SET status = ?2, error = ?3, result = ?4, updated_at = ?5,
                     completed_at = ?5 WHERE handler_id = ?1",
                params![id, status, error, result.map(Value::to_string), at],
            )?;
            tx.commit()?;
            Ok(n)
        })();
        self.log("a handler's end", r);
    }

    pub(crate) fn delete(&self, id: &str) {
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
    pub(crate) fn load(&self) -> std::io::Result<Vec<Row>> {
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
            });
        }
        Ok(out)
    }
}
