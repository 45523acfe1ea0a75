//! What the PostgreSQL tests share: a private server each test binary starts for itself.
//!
//! [`PgServer::start`] runs Debian's `initdb` and `pg_ctl` (on the `PATH`, or under
//! `/usr/lib/postgresql/*/bin`; `.ci/run` installs `postgresql` when they are missing) on a data
//! directory in a temp dir, listening on a free port of 127.0.0.1 only. As root, the server
//! programs run as `postgres` (`runuser -u postgres`), which owns the data directory. Dropping
//! the server stops it (`-m immediate`) and removes its directory.
//!
//! Used by `tests/pg.rs` and `tests/faults.rs` (each includes this module with `mod support;`).

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A private PostgreSQL server.
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// Where `initdb` and `pg_ctl` are: on the PATH, or Debian's versioned directory.
pub fn pg_bin() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|bin| bin.join("initdb").exists())
        .expect("PostgreSQL's server binaries (initdb, pg_ctl): install Debian's `postgresql`")
}

/// Whether this process runs as root (then the server programs run as `postgres`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl PgServer {
    /// Creates and starts a server in `<temp>/tidewater-pg-<name>-<pid>`.
    ///
    /// # Panics
    /// When the server programs are missing or fail.
    pub fn start(name: &str) -> PgServer {
        let dir = std::env::temp_dir().join(format!("tidewater-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PgServer {
            dir,
            bin: pg_bin(),
            port,
        };
        if is_root() {
            let ok = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(ok.success(), "chown the data dir to postgres");
        }
        server.pg(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        server.up();
        server
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's programs (`pgbench` is there too).
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs a server program, as `postgres` when we are root.
    pub fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again, after [`PgServer::crash`]) and waits (at most a minute)
    /// until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-W",
                "start",
            ],
        );
        // Polled here rather than by `pg_ctl -w`, which checks about once a second.
        self.wait_ready("postgres", Duration::from_secs(60));
    }

    /// Kills the server as a power cut would (`-m immediate`: no checkpoint, crash recovery
    /// at the next start).
    pub fn crash(&self) {
        self.pg(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// The libpq connection string of database `db`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// A new empty database; its connection string. (On a thread of its own: the sync client
    /// must not run inside a tokio runtime.)
    pub fn create_db(&self, name: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.conninfo(name)
    }

    /// Runs SQL on `db` (outside tokio, as above).
    pub fn sql(&self, db: &str, sql: &str) {
        let info = self.conninfo(db);
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&info, postgres::NoTls).unwrap();
            client.batch_execute(&sql).unwrap();
        })
        .join()
        .unwrap();
    }

    /// The rows of a query on `db`, every column read as text (cast in the SQL: `x::text`).
    pub fn rows(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let info = self.conninfo(db);
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&info, postgres::NoTls).unwrap();
            client
                .query(&sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
                .collect()
        })
        .join()
        .unwrap()
    }

    /// The one text value of a query on `db`.
    pub fn value(&self, db: &str, sql: &str) -> String {
        let rows = self.rows(db, sql);
        assert_eq!(rows.len(), 1, "{sql}: one row");
        rows[0][0].clone().unwrap_or_default()
    }

    /// Polls until the server accepts connections on `db` (at most `limit`).
    pub fn wait_ready(&self, db: &str, limit: Duration) {
        let start = Instant::now();
        let info = self.conninfo(db);
        loop {
            let info = info.clone();
            let ok = std::thread::spawn(move || {
                postgres::Client::connect(&info, postgres::NoTls).is_ok()
            })
            .join()
            .unwrap();
            if ok {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "the server is not back after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        if is_root() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", &self.data(), "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
