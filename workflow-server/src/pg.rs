//! [`PgPersist`] (feature `postgres`): the server's handlers and event logs in PostgreSQL, in two
//! tables beside `tidewater_pg::PgStore`'s, so that several server processes on one database
//! serve the same handlers. Made by `Server::postgres`.
//!
//! The tables are created (and migrated) at the first start, under an advisory lock so that
//! servers starting together do not race:
//!
//! - `tidewater_server_handlers (handler_id, seq, workflow_name, run_id, status, durable,
//!   started_at, updated_at, completed_at, error, result)`: one row per handler, numbered in
//!   start order (`seq`);
//! - `tidewater_server_events (handler_id, seq, envelope)`: the event log of the handlers of
//!   workflows that are not durable (a durable run's stream is its journal in the store).
//!
//! The SQL runs on a connection of its own, on a thread of its own (the sync client must not
//! run inside the caller's tokio runtime), opened again when it breaks.

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde_json::Value;
use tidewater::snapshot::EventRecord;
use tidewater::store::Store;
use tidewater_pg::{PgOptions, PgStore};

use crate::persist::{End, NewHandler, Persistence, Row, err};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tidewater_server_handlers (
    handler_id    TEXT PRIMARY KEY,
    seq           BIGSERIAL,
    workflow_name TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    status        TEXT NOT NULL,
    durable       BOOLEAN NOT NULL,
    started_at    TEXT NOT NULL,
    updated_at    TEXT,
    completed_at  TEXT,
    error         TEXT,
    result        TEXT
);
CREATE TABLE IF NOT EXISTS tidewater_server_events (
    handler_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    envelope   TEXT NOT NULL,
    PRIMARY KEY (handler_id, seq)
);
";

type Job = Box<dyn FnOnce(&mut Link) + Send>;

/// The server's tables and the durable store, in one PostgreSQL database.
pub(crate) struct PgPersist {
    store: Arc<PgStore>,
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for PgPersist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgPersist")
    }
}

/// The connection, opened again when it breaks.
struct Link {
    config: postgres::Config,
    client: Option<Client>,
}

/// How long a call keeps reconnecting to a database that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(10);

impl Link {
    fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> std::io::Result<T> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let error = match self.client.as_mut().filter(|c| !c.is_closed()) {
                Some(client) => match op(client) {
                    Ok(value) => return Ok(value),
                    Err(error) if error.as_db_error().is_some() => return Err(err(error)),
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
            if start.elapsed() >= RECONNECT_FOR {
                return Err(err(format!("the database cannot be reached ({error})")));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

impl PgPersist {
    /// Connects the durable store with `options`, and the server's own connection, and
    /// creates the server's tables.
    pub(crate) fn open(options: PgOptions, conninfo: &str) -> std::io::Result<PgPersist> {
        let store = PgStore::open(options).map_err(err)?;
        let config: postgres::Config = conninfo
            .parse()
            .map_err(|e| err(format!("bad connection string: {e}")))?;
        let (sender, receiver) = mpsc::channel::<Job>();
        let mut link = Link {
            config,
            client: None,
        };
        std::thread::Builder::new()
            .name("tidewater-server-pg".into())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    job(&mut link);
                }
            })?;
        let persist = PgPersist {
            store: Arc::new(store),
            jobs: Mutex::new(sender),
        };
        persist.call(|link| {
            link.run(|client| {
                let mut tx = client.transaction()?;
                tx.batch_execute("SELECT pg_advisory_xact_lock(7215442)")?;
                tx.batch_execute(SCHEMA)?;
                tx.commit()
            })
        })?;
        Ok(persist)
    }

    /// Runs `job` on the connection's thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Link) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .lock()
            .map_err(|_| err("the connection is poisoned"))?
            .send(Box::new(move |link| {
                let _ = tx.send(job(link));
            }))
            .map_err(|_| err("the connection thread stopped"))?;
        rx.recv()
            .map_err(|_| err("the connection thread stopped during a call"))?
    }

    fn log<T>(what: &str, result: std::io::Result<T>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot persist {what}");
        }
    }

    fn rows(&self, id: Option<String>) -> std::io::Result<Vec<Row>> {
        self.call(move |link| {
            link.run(|client| {
                let sql = "SELECT handler_id, workflow_name, run_id, status, started_at,
                                  updated_at, completed_at, error, result, durable
                           FROM tidewater_server_handlers";
                let rows = match &id {
                    Some(id) => client.query(&format!("{sql} WHERE handler_id = $1"), &[id])?,
                    None => client.query(&format!("{sql} ORDER BY seq"), &[])?,
                };
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        let result: Option<String> = r.get(8);
                        Row {
                            handler_id: r.get(0),
                            workflow_name: r.get(1),
                            run_id: r.get(2),
                            status: r.get(3),
                            started_at: r.get(4),
                            updated_at: r.get(5),
                            completed_at: r.get(6),
                            error: r.get(7),
                            result: match result {
                                None => Ok(None),
                                Some(text) => serde_json::from_str(&text)
                                    .map(Some)
                                    .map_err(|e| format!("the stored result cannot be read: {e}")),
                            },
                            events: Ok(Vec::new()),
                            durable: r.get(9),
                        }
                    })
                    .collect())
            })
        })
    }
}

impl Persistence for PgPersist {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    fn insert_handler(&self, h: &NewHandler<'_>) -> std::io::Result<bool> {
        let (id, workflow, run_id, at, durable) = (
            h.id.to_string(),
            h.workflow.to_string(),
            h.run_id.to_string(),
            h.started_at.to_string(),
            h.durable,
        );
        self.call(move |link| {
            link.run(|client| {
                client.execute(
                    "INSERT INTO tidewater_server_handlers
                         (handler_id, workflow_name, run_id, status, durable, started_at,
                          updated_at)
                     VALUES ($1, $2, $3, 'running', $4, $5, $5)
                     ON CONFLICT (handler_id) DO NOTHING",
                    &[&id, &workflow, &run_id, &durable, &at],
                )
            })
        })
        .map(|inserted| inserted == 1)
    }

    fn append_event(&self, id: &str, seq: usize, envelope: &Value) {
        let (id, seq, text) = (id.to_string(), seq as i64, envelope.to_string());
        Self::log(
            "an event",
            self.call(move |link| {
                link.run(|client| {
                    client.execute(
                        "INSERT INTO tidewater_server_events (handler_id, seq, envelope)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (handler_id, seq) DO UPDATE SET envelope = excluded.envelope",
                        &[&id, &seq, &text],
                    )
                })
            }),
        );
    }

    fn finish(&self, end: &End<'_>) {
        let id = end.id.to_string();
        let status = end.status.to_string();
        let error = end.error.map(str::to_string);
        let result = end.result.map(Value::to_string);
        let at = end.at.to_string();
        let last = end.last.map(|(seq, last)| (seq as i64, last.to_string()));
        Self::log(
            "a handler's end",
            self.call(move |link| {
                link.run(|client| {
                    let mut tx = client.transaction()?;
                    // The first server to see the end records it; the others leave it.
                    let n = tx.execute(
                        "UPDATE tidewater_server_handlers SET status = $2, error = $3,
                             result = $4, updated_at = $5, completed_at = $5
                         WHERE handler_id = $1 AND status = 'running'",
                        &[&id, &status, &error, &result, &at],
                    )?;
                    if let (1, Some((seq, last))) = (n, &last) {
                        tx.execute(
                            "INSERT INTO tidewater_server_events (handler_id, seq, envelope)
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                            &[&id, seq, last],
                        )?;
                    }
                    tx.commit()
                })
            }),
        );
    }

    fn delete(&self, id: &str) {
        let id = id.to_string();
        Self::log(
            "a purge",
            self.call(move |link| {
                link.run(|client| {
                    let mut tx = client.transaction()?;
                    tx.execute(
                        "DELETE FROM tidewater_server_events WHERE handler_id = $1",
                        &[&id],
                    )?;
                    tx.execute(
                        "DELETE FROM tidewater_server_handlers WHERE handler_id = $1",
                        &[&id],
                    )?;
                    tx.commit()
                })
            }),
        );
    }

    fn load(&self) -> std::io::Result<Vec<Row>> {
        self.handlers()
    }

    fn handlers(&self) -> std::io::Result<Vec<Row>> {
        self.rows(None)
    }

    fn handler(&self, id: &str) -> std::io::Result<Option<Row>> {
        Ok(self.rows(Some(id.to_string()))?.pop())
    }

    fn events_after(&self, id: &str, after: i64) -> std::io::Result<Vec<(i64, Value)>> {
        let id = id.to_string();
        let rows: Vec<(i64, String)> = self.call(move |link| {
            link.run(|client| {
                Ok(client
                    .query(
                        "SELECT seq, envelope FROM tidewater_server_events
                         WHERE handler_id = $1 AND seq > $2 ORDER BY seq",
                        &[&id, &after],
                    )?
                    .into_iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect())
            })
        })?;
        rows.into_iter()
            .map(|(seq, text)| {
                serde_json::from_str(&text)
                    .map(|event| (seq, event))
                    .map_err(|e| err(format!("stored event {seq} cannot be read: {e}")))
            })
            .collect()
    }

    fn journal_after(&self, key: &str, after: u64) -> std::io::Result<Vec<(u64, EventRecord)>> {
        self.store.events_after(key, after).map_err(err)
    }
}
