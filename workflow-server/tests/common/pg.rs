//! A private PostgreSQL server for a test: `initdb` and `pg_ctl` (Debian's, or on the PATH) in
//! a temp dir, on a free port of 127.0.0.1, as `postgres` through `runuser` when the test runs
//! as root; stopped and removed on drop. Tests use its `postgres` database.

#![allow(unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;

pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl PgServer {
    pub fn start(name: &str) -> PgServer {
        let dir =
            std::env::temp_dir().join(format!("tidewater-server-pg-{name}-{}", std::process::id()));
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
        let data = server.data();
        server.pg(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            server.port,
            server.dir.display()
        );
        let log = server.dir.join("log").display().to_string();
        server.pg(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg(&self, program: &str, args: &[&str]) {
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

    /// The connection string of its `postgres` database.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let stop = ["-D", data.as_str(), "-m", "immediate", "stop"];
        if is_root() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(stop)
                .output();
        } else {
            let _ = Command::new(self.bin.join("pg_ctl")).args(stop).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
