//! What the process-level tests share: a scratch directory, a child process that is killed
//! and reaped whatever happens, polling with a deadline, and the side-effect logs the child
//! processes write (one line per effect, synced to disk).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// No wait of these helpers lasts longer than this.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A scratch directory, removed on drop.
///
/// ```
/// let scratch = integration_tests::process::Scratch::new("doc", "example");
/// std::fs::write(scratch.path("a"), "x").unwrap();
/// assert!(scratch.path("a").exists());
/// ```
pub struct Scratch(PathBuf);

impl Scratch {
    /// `<temp>/tidewater-<test>-<name>-<pid>`, empty.
    pub fn new(test: &str, name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("tidewater-{test}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the scratch directory is made");
        Scratch(dir)
    }

    /// A file in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process; killed (`SIGKILL` on Unix) and reaped on drop, whatever happens.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Starts `command` with no stdin, its stdout captured (read by [`ChildGuard::finish`])
    /// and its stderr inherited.
    pub fn spawn(command: &mut Command) -> ChildGuard {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the child process starts");
        ChildGuard(child)
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kills the child with `SIGKILL` and waits for it to be gone; panics if it had ended.
    pub fn kill(&mut self) {
        if let Some(status) = self.0.try_wait().expect("the child can be polled") {
            panic!("the child process ended ({status}) before it could be killed");
        }
        self.0.kill().expect("the child can be killed");
        let status = self.0.wait().expect("the child can be reaped");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
        }
        #[cfg(not(unix))]
        assert!(!status.success());
    }

    /// Sends `signal` (`STOP`, `CONT`) to the child with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (at most [`DEADLINE`]) for the child to exit: its status code and stdout.
    pub fn finish(&mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.0.try_wait().expect("the child can be polled") {
                break status;
            }
            assert!(start.elapsed() < DEADLINE, "the child did not end in time");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .expect("the child's stdout reads");
        }
        (status.code(), out)
    }

    /// Waits for the child to exit with success; its stdout.
    pub fn success(&mut self) -> String {
        let (code, out) = self.finish();
        assert_eq!(code, Some(0), "the child failed: {out}");
        out
    }

    /// Polls `condition` every 10 ms until it holds; panics after [`DEADLINE`] or when the
    /// child ends first.
    pub fn wait_until(&mut self, what: &str, mut condition: impl FnMut() -> bool) {
        let start = Instant::now();
        while !condition() {
            if let Some(status) = self.0.try_wait().expect("the child can be polled") {
                panic!("the child process ended ({status}) before {what}");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "gave up after {DEADLINE:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Appends `line` to the side-effect log, synced to disk before it returns. One write per
/// line: appends from concurrent workers never interleave.
pub fn append(log: &Path, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the side-effect log opens");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("the side-effect log is written");
    file.sync_all().expect("the side-effect log is synced");
}

/// The lines of a side-effect log (none when it does not exist yet).
pub fn read_log(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("cannot read {}: {error}", path.display()),
    }
}

/// How many times each line occurs.
///
/// ```
/// let lines = ["a".to_string(), "b".to_string(), "a".to_string()];
/// let counts = integration_tests::process::counts(&lines);
/// assert_eq!(counts["a"], 2);
/// assert_eq!(counts["b"], 1);
/// ```
pub fn counts(lines: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        *counts.entry(line.as_str()).or_default() += 1;
    }
    counts
}

/// A tokio runtime for a test that runs on both: multi-threaded with two workers, or
/// current-thread.
pub fn runtime(multi: bool) -> tokio::runtime::Runtime {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

/// Polls `condition` every 5 ms; panics naming `what` once `limit` has passed.
pub async fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
