//! The fault matrix of issue 14 on a real PostgreSQL: worker **processes** (this test binary
//! started again with `FAULTS_ROLE=worker`) run a durable workflow from the run queue
//! (`Runner::work`) while the test kills them with `SIGKILL` at named points, replaces them,
//! crash-restarts PostgreSQL, freezes one with `SIGSTOP` past its lease, stops one for good in
//! the middle of a claim, and posts answers twice from two processes. After each fault, everything is checked **from the database**:
//!
//! - every run reaches its end once the faults stop, with the output of an in-memory reference
//!   run of the same input (and the same state, and as many step completions);
//! - every journal is gapless (numbered 1..=n), and its current events (`current_events`:
//!   without what a dead owner journaled after its last checkpoint) are the reference's, none
//!   lost and none doubled;
//! - every step invocation left exactly one row in the idempotent side table (keyed by
//!   `ctx.invocation_key()`), and at least one in the plain one (a killed invocation runs
//!   again: at least once execution, exactly once commit);
//! - no commit carries a stale epoch: audit triggers record every acquisition and every
//!   commit with the writing process (`application_name`), and each commit was made by the
//!   process holding the run's latest epoch, with a checkpoint never older than the one before;
//! - each answer is in the run's inbox once, however many times it was posted.
//!
//! Every wait is bounded (`DEADLINE`), and every child process is killed when the test ends.
//! The whole matrix runs in well under a minute on one private PostgreSQL server (see
//! `support/mod.rs`). `harness = false`: `main` runs the matrix, or a worker when started as one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, Store, current_events};
use tidewater_pg::{PgOptions, PgStore};

mod support;
use support::PgServer;

/// No wait of this test lasts longer than this.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The workflow the workers run.

/// What a run is asked to do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Job {
    /// How many parts `plan` fans out.
    parts: u32,
    /// A seed that makes each run's numbers its own.
    seed: u64,
}

/// One part of the job.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Part {
    index: u32,
    seed: u64,
}

/// A part, worked.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Worked {
    index: u32,
    value: u64,
}

/// All parts, summed.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Summed {
    total: u64,
}

/// Written to the stream by each `work` invocation (journaled).
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Progress {
    index: u32,
    value: u64,
}

/// The question to a human, published when the workflow asks for approval.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Approval)]
struct AskApproval {
    total: u64,
}

/// The human's answer.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Approval {
    factor: u64,
}

/// The run's state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Tally {
    worked: u32,
    gathered: Vec<u32>,
    total: u64,
}

/// The workflow: `plan` fans out parts, `work` (two at a time) does each one with a side
/// effect, `gather` sums them, `review` ends the run or asks a human, `finish` takes the answer.
struct Relay {
    /// Where the side effects go (none in the reference run).
    effects: Option<Effects>,
    /// Where this process stops for good (a named kill point), if anywhere.
    fault: Option<Arc<StepFault>>,
    /// How long each `work` invocation takes.
    pause: Duration,
    /// Whether `review` asks for approval.
    approve: bool,
}

#[workflow(state = Tally, durable)]
impl Relay {
    #[step(emits = [Part])]
    async fn plan(&self, ctx: &Context<Self>, ev: StartEvent<Job>) {
        for index in 0..ev.0.parts {
            ctx.send_event(Part {
                index,
                seed: ev.0.seed,
            });
        }
        ctx.update_state(|t| t.total = u64::from(ev.0.parts));
    }

    #[step(num_workers = 2)]
    async fn work(&self, ctx: &Context<Self>, ev: Part) -> Worked {
        let value = (ev.seed * 31 + u64::from(ev.index) * 7) % 1000;
        self.effect(ctx, u64::from(ev.index)).await;
        ctx.update_state(|t| t.worked += 1);
        ctx.write_event_to_stream(Progress {
            index: ev.index,
            value,
        });
        Worked {
            index: ev.index,
            value,
        }
    }

    #[step]
    async fn gather(&self, ctx: &Context<Self>, ev: Worked) -> Option<Summed> {
        ctx.update_state(|t| t.gathered.push(ev.index));
        let parts = ctx.update_state(|t| t.total) as usize;
        let all = ctx.collect(ev, parts)?;
        let mut gathered: Vec<u32> = all.iter().map(|w| w.index).collect();
        gathered.sort_unstable();
        ctx.update_state(|t| t.gathered = gathered);
        Some(Summed {
            total: all.iter().map(|w| w.value).sum(),
        })
    }

    #[step]
    async fn review(
        &self,
        ctx: &Context<Self>,
        ev: Summed,
    ) -> Either<AskApproval, StopEvent<String>> {
        ctx.update_state(|t| t.total = ev.total);
        if self.approve {
            Either::Left(AskApproval { total: ev.total })
        } else {
            Either::Right(StopEvent(format!("total {}", ev.total)))
        }
    }

    #[step]
    async fn finish(&self, ctx: &Context<Self>, ev: Approval) -> StopEvent<String> {
        let total = ctx.update_state(|t| t.total);
        StopEvent(format!("total {total} approved x{}", ev.factor))
    }
}

impl Relay {
    /// The step's side effect: a row in `effects` (every execution) and one in
    /// `effects_once` (idempotent by the invocation key), around the named kill points.
    async fn effect(&self, ctx: &Context<Self>, input: u64) {
        let key = ctx.invocation_key();
        if let Some(fault) = &self.fault {
            fault.reached("before_effect", &key).await;
        }
        if let Some(effects) = &self.effects {
            effects.record(key.clone(), input).await;
        }
        if let Some(fault) = &self.fault {
            fault.reached("after_effect", &key).await;
        }
        tokio::time::sleep(self.pause).await;
    }
}

/// A named kill point in a step, armed in one worker by `FAULTS_STEP=<point>:<n>`: the `n`-th
/// time the process gets there, it writes `<point> <invocation key>` to the marker file and
/// stops there (the test kills it).
struct StepFault {
    point: String,
    nth: u64,
    marker: PathBuf,
    seen: std::sync::atomic::AtomicU64,
}

impl StepFault {
    async fn reached(&self, point: &str, key: &str) {
        if point != self.point {
            return;
        }
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n != self.nth {
            return;
        }
        append(&self.marker, &format!("{point} {key}"));
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Appends a line to a file, synced before it returns.
fn append(path: &Path, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the marker file opens");
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
    file.sync_all().unwrap();
}

/// Records side effects in the database, from a blocking thread (the sync client cannot run on
/// the runtime's threads), reconnecting while the server restarts.
#[derive(Clone)]
struct Effects {
    conninfo: String,
}

thread_local! {
    static CLIENT: std::cell::RefCell<Option<postgres::Client>> = const { std::cell::RefCell::new(None) };
}

impl Effects {
    async fn record(&self, invocation: String, input: u64) {
        let conninfo = self.conninfo.clone();
        tokio::task::spawn_blocking(move || {
            let pid = std::process::id() as i32;
            let input = input as i64;
            let start = Instant::now();
            loop {
                let done = CLIENT.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.as_ref().is_none_or(|c| c.is_closed()) {
                        *slot = postgres::Client::connect(&conninfo, postgres::NoTls).ok();
                    }
                    let client = slot.as_mut()?;
                    let written = client.execute(
                        "WITH every AS (
                             INSERT INTO effects (invocation, input, pid) VALUES ($1, $2, $3))
                         INSERT INTO effects_once (invocation, input, pid) VALUES ($1, $2, $3)
                         ON CONFLICT (invocation) DO NOTHING",
                        &[&invocation, &input, &pid],
                    );
                    match written {
                        Ok(_) => Some(()),
                        Err(_) => {
                            *slot = None;
                            None
                        }
                    }
                });
                if done.is_some() {
                    return;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "the side effect cannot be written"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("the side effect is written");
    }
}

// ---------------------------------------------------------------------------------------------
// The worker and poster processes.

/// What a child process reads from its environment.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A worker: runs the queue of `Relay` until it is killed (or for `DEADLINE`).
fn worker_main() {
    let db = env("FAULTS_DB").expect("FAULTS_DB");
    let lease = Duration::from_millis(env("FAULTS_LEASE_MS").map_or(5000, |v| v.parse().unwrap()));
    let multi = env("FAULTS_RUNTIME").as_deref() != Some("current");
    let fault = env("FAULTS_STEP").map(|spec| {
        let (point, nth) = spec.split_once(':').expect("FAULTS_STEP=<point>:<n>");
        Arc::new(StepFault {
            point: point.to_string(),
            nth: nth.parse().unwrap(),
            marker: env("FAULTS_MARKER").expect("FAULTS_MARKER").into(),
            seen: Default::default(),
        })
    });
    let relay = Relay {
        effects: Some(Effects {
            conninfo: db.clone(),
        }),
        fault,
        pause: Duration::from_millis(env("FAULTS_PAUSE_MS").map_or(20, |v| v.parse().unwrap())),
        approve: env("FAULTS_APPROVE").is_some(),
    };
    let store = PgStore::open(
        PgOptions::new(&db)
            .lease_ttl(lease)
            .reconnect_for(Duration::from_secs(40)),
    )
    .expect("the worker's store opens");
    let rt = runtime(multi);
    rt.block_on(async move {
        let runner = relay
            .runner()
            .store(Arc::new(store))
            .poll_interval(Duration::from_millis(100))
            .evict_when_waiting(true);
        let worker = runner.work(4).expect("the worker loop starts");
        println!("ready");
        tokio::time::sleep(DEADLINE * 2).await;
        let _ = worker.stop().await;
    });
}

/// A poster: posts `Approval { factor }` under message id `<FAULTS_ID>-<key>` to each key in
/// `FAULTS_KEYS`, and prints `posted <key> <true|false>` for each.
fn poster_main() {
    let db = env("FAULTS_DB").expect("FAULTS_DB");
    let id = env("FAULTS_ID").expect("FAULTS_ID");
    let factor: u64 = env("FAULTS_FACTOR")
        .expect("FAULTS_FACTOR")
        .parse()
        .unwrap();
    let store = PgStore::connect(&db).expect("the poster's store opens");
    let relay = reference_relay(true);
    let runner = relay.runner().store(Arc::new(store));
    // Both posters start posting at once, when the test creates the go file.
    let go = PathBuf::from(env("FAULTS_GO").expect("FAULTS_GO"));
    let start = Instant::now();
    while !go.exists() {
        assert!(start.elapsed() < DEADLINE, "no go");
        std::thread::sleep(Duration::from_millis(1));
    }
    for key in env("FAULTS_KEYS").expect("FAULTS_KEYS").split(',') {
        match runner.post_event(key, &format!("{id}-{key}"), Approval { factor }) {
            Ok(fresh) => println!("posted {key} {fresh}"),
            // The other poster's answer came first, and the run has finished with it.
            Err(WorkflowError::Durable { reason, .. }) if reason.contains("has ended") => {
                println!("posted {key} ended")
            }
            Err(error) => panic!("the answer is not posted: {error}"),
        }
    }
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
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

fn reference_relay(approve: bool) -> Relay {
    Relay {
        effects: None,
        fault: None,
        pause: Duration::ZERO,
        approve,
    }
}

// ---------------------------------------------------------------------------------------------
// The test side.

/// A child process, killed and reaped on drop.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{} ended before it was killed",
            self.name
        );
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{} killed by SIGKILL", self.name);
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{signal}");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (bounded); its stdout.
    fn output(mut self) -> String {
        let start = Instant::now();
        while self.alive() {
            assert!(start.elapsed() < DEADLINE, "{} did not end", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut out = String::new();
        use std::io::Read;
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "{} failed: {out}",
            self.name
        );
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            self.signal("CONT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scenario's database, workers and expectations.
struct Cluster<'a> {
    server: &'a PgServer,
    name: String,
    db: String,
    dir: PathBuf,
    approve: bool,
    pause_ms: u64,
    lease_ms: u64,
    workers: Vec<Proc>,
    started: usize,
    jobs: BTreeMap<String, Job>,
}

impl<'a> Cluster<'a> {
    /// A fresh database with the side tables and audit triggers, and `runs` runs enqueued.
    fn new(server: &'a PgServer, name: &str, runs: usize, approve: bool) -> Cluster<'a> {
        let db = server.create_db(name);
        let dir =
            std::env::temp_dir().join(format!("tidewater-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The tables exist once a store has opened.
        drop(PgStore::connect(&db).unwrap());
        server.sql(name, AUDIT);
        let jobs: BTreeMap<String, Job> = (0..runs)
            .map(|i| {
                (
                    format!("{name}-{i:02}"),
                    Job {
                        parts: 4 + (i as u32 % 3),
                        seed: i as u64 + 1,
                    },
                )
            })
            .collect();
        let store = Arc::new(PgStore::connect(&db).unwrap());
        let runner = reference_relay(approve).runner().store(store);
        for (key, job) in &jobs {
            runner.enqueue(key, *job).unwrap();
        }
        Cluster {
            server,
            name: name.to_string(),
            db,
            dir,
            approve,
            pause_ms: 20,
            lease_ms: 5000,
            workers: Vec::new(),
            started: 0,
            jobs,
        }
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("marker")
    }

    /// Starts a worker process with these extra environment variables.
    fn spawn(&mut self, extra: &[(&str, String)]) -> usize {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env("FAULTS_ROLE", "worker")
            .env("FAULTS_DB", &self.db)
            .env("FAULTS_PAUSE_MS", self.pause_ms.to_string())
            .env("FAULTS_LEASE_MS", self.lease_ms.to_string())
            .env("FAULTS_MARKER", self.marker())
            // Both runtimes: every other worker runs on the current-thread one.
            .env(
                "FAULTS_RUNTIME",
                if self.started % 2 == 1 {
                    "current"
                } else {
                    "multi"
                },
            )
            .env_remove("TIDEWATER_PG_FAULT")
            .env_remove("FAULTS_STEP")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.approve {
            command.env("FAULTS_APPROVE", "1");
        }
        for (name, value) in extra {
            command.env(name, value);
        }
        self.started += 1;
        let child = command.spawn().expect("a worker starts");
        self.workers.push(Proc {
            child,
            name: format!("worker {}", self.started),
        });
        self.workers.len() - 1
    }

    /// Waits (bounded) until the marker file says a worker stopped at `point`; its line.
    fn wait_marker(&mut self, point: &str) -> String {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(self.marker()) {
                if let Some(line) = text.lines().find(|l| l.starts_with(point)) {
                    return line.to_string();
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{}: no worker reached {point}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn value(&self, sql: &str) -> i64 {
        self.server.value(&self.name, sql).parse().unwrap()
    }

    /// Waits (bounded) for `sql` (a count) to reach `n`.
    fn wait_count(&self, what: &str, sql: &str, n: i64) {
        let start = Instant::now();
        while self.value(sql) < n {
            if start.elapsed() > DEADLINE {
                let runs = self.server.rows(
                    &self.name,
                    "SELECT key, status, owner_id, epoch::text,
                            (lease_until - (extract(epoch from clock_timestamp()) * 1000)::bigint)::text,
                            has_work::text, inbox_last::text, inbox_read::text
                     FROM tidewater_runs ORDER BY key",
                );
                // A session left in a transaction holds the rows it locked: a claim skips them.
                let open = self.server.rows(
                    &self.name,
                    "SELECT application_name, state,
                            (extract(epoch from clock_timestamp() - state_change) * 1000)::bigint::text
                     FROM pg_stat_activity
                     WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                );
                let lines = |rows: &[Vec<Option<String>>]| {
                    rows.iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                panic!(
                    "{}: gave up waiting for {what} ({sql} < {n}); the runs (key, status, owner, epoch, lease left ms, has work, inbox last, read):\n{}\nthe sessions idle in a transaction (application, state, for ms):\n{}",
                    self.name,
                    lines(&runs),
                    lines(&open)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Posts the approvals (once each, id `approve-<key>`) to every run that asked.
    fn answer_all(&self) {
        let store = Arc::new(PgStore::connect(&self.db).unwrap());
        let runner = reference_relay(true).runner().store(store.clone());
        let mut answered = BTreeSet::new();
        let start = Instant::now();
        while answered.len() < self.jobs.len() {
            for key in self.jobs.keys() {
                if answered.contains(key) {
                    continue;
                }
                let record = store.load(key).unwrap();
                let asked = record.is_some_and(|r| {
                    r.snapshot
                        .pending_requests
                        .iter()
                        .any(|p| p.event.ends_with("AskApproval"))
                });
                if asked {
                    runner
                        .post_event(key, &format!("approve-{key}"), Approval { factor: 3 })
                        .unwrap();
                    answered.insert(key.clone());
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{}: not every run asked for approval",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for every run to end, then checks everything from the database.
    fn settle_and_check(&mut self, reference: &References) -> Report {
        let n = self.jobs.len() as i64;
        self.wait_count(
            "every run to end",
            "SELECT count(*)::text FROM tidewater_runs WHERE status <> 'running' AND status <> 'waiting'",
            n,
        );
        for worker in &mut self.workers {
            if worker.alive() {
                worker.signal("CONT");
            }
        }
        let store = PgStore::connect(&self.db).unwrap();
        let mut report = Report::default();
        for (key, job) in &self.jobs {
            let expected = reference.of(*job, self.approve);
            let record = store.load(key).unwrap().expect("the run is stored");
            assert_eq!(
                record.status,
                RunStatus::Finished,
                "{key}: {:?}",
                record.error
            );
            assert_eq!(
                record.output,
                Some(expected.output.clone()),
                "{key}: the reference's output"
            );
            let state: Tally = serde_json::from_value(record.snapshot.state.clone()).unwrap();
            assert_eq!(state, expected.state, "{key}: the reference's state");
            assert_eq!(
                record.snapshot.completed, expected.completed,
                "{key}: as many step completions as the reference, each committed once"
            );
            // Gapless journal, and the reference's events in it, none lost, none doubled.
            let journal = store.events(key).unwrap();
            let seqs: Vec<u64> = journal.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                seqs,
                (1..=journal.len() as u64).collect::<Vec<_>>(),
                "{key}: a gapless journal"
            );
            report.superseded += journal.len() - current_events(journal.clone()).len();
            assert_eq!(
                sorted_events(current_events(journal)),
                expected.events,
                "{key}: the reference's events, each once"
            );
            // Answers: each message once in the inbox.
            if self.approve {
                let inbox = store.inbox(key, 0).unwrap();
                let ids: Vec<&str> = inbox.iter().map(|(_, m)| m.id.as_str()).collect();
                assert_eq!(
                    ids,
                    [format!("approve-{key}")],
                    "{key}: one answer in the inbox"
                );
            }
            // Side effects: each invocation exactly once in the idempotent table, at least
            // once in the plain one.
            let once = self.value(&format!(
                "SELECT count(*)::text FROM effects_once WHERE invocation LIKE '{key}/work/%'"
            ));
            assert_eq!(
                once,
                i64::from(job.parts),
                "{key}: one idempotent effect per part"
            );
            let every = self.value(&format!(
                "SELECT count(*)::text FROM effects WHERE invocation LIKE '{key}/work/%'"
            ));
            assert!(every >= once, "{key}");
            report.doubled_effects += (every - once) as usize;
        }
        let unmatched = self.value(
            "SELECT count(*)::text FROM effects e WHERE NOT EXISTS
                 (SELECT 1 FROM effects_once o WHERE o.invocation = e.invocation)",
        );
        assert_eq!(
            unmatched, 0,
            "every execution of an effect has its idempotent row"
        );
        report.merge_audit(self);
        report
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.workers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The side tables and the audit: every acquisition (a new epoch) and every commit (a new
/// checkpoint, a journaled event), with the writing process (from `application_name`, which
/// `PgStore` sets to `tidewater pid <pid>`).
const AUDIT: &str = "
CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, invocation TEXT NOT NULL, input BIGINT NOT NULL,
                      pid INTEGER NOT NULL);
CREATE TABLE effects_once (invocation TEXT PRIMARY KEY, input BIGINT NOT NULL, pid INTEGER NOT NULL);
CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, what TEXT NOT NULL,
                    epoch BIGINT, holder TEXT, writer TEXT, status TEXT, completed BIGINT, seq BIGINT);
CREATE FUNCTION audit_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.epoch IS DISTINCT FROM OLD.epoch THEN
        INSERT INTO audit (key, what, epoch, holder, writer)
        VALUES (NEW.key, 'acquire', NEW.epoch, NEW.owner_id, current_setting('application_name'));
    END IF;
    IF NEW.record <> '' AND (TG_OP = 'INSERT' OR NEW.record IS DISTINCT FROM OLD.record) THEN
        INSERT INTO audit (key, what, epoch, writer, status, completed)
        VALUES (NEW.key, 'commit', NEW.epoch, current_setting('application_name'), NEW.status,
                (NEW.record::json #>> '{snapshot,completed}')::bigint);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER audit_runs AFTER INSERT OR UPDATE ON tidewater_runs
    FOR EACH ROW EXECUTE FUNCTION audit_runs();
CREATE FUNCTION audit_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit (key, what, epoch, writer, seq)
    SELECT NEW.key, 'event', r.epoch, current_setting('application_name'), NEW.seq
    FROM tidewater_runs r WHERE r.key = NEW.key;
    RETURN NULL;
END $$;
CREATE TRIGGER audit_events AFTER INSERT OR UPDATE ON tidewater_events
    FOR EACH ROW EXECUTE FUNCTION audit_events();
";

/// What a scenario saw, beyond what it asserted.
#[derive(Debug, Default)]
struct Report {
    /// Side effects executed more than once (at least once execution).
    doubled_effects: usize,
    /// Journal entries a dead owner wrote after its last checkpoint (superseded, not lost).
    superseded: usize,
    /// Handoffs: a run acquired by another worker than its last holder (after a kill, a freeze,
    /// or a park).
    handoffs: usize,
    /// The processes that committed, per run.
    writers: BTreeMap<String, BTreeSet<u32>>,
    /// Acquisitions (epochs), the enqueuing one included.
    acquires: usize,
    /// Each handoff: (key, audit id, previous holder's pid, new holder's pid).
    acquisitions: Vec<(String, i64, u32, u32)>,
}

fn pid_of(name: &str) -> u32 {
    name.strip_prefix("tidewater pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a writer that is not a tidewater process: `{name}`"))
}

impl Report {
    /// Replays the audit: each run's epochs grow by one per acquisition; every commit and
    /// journaled event comes from the process holding the latest epoch, and carries it; the
    /// checkpoints' completion counts never go back.
    fn merge_audit(&mut self, cluster: &Cluster<'_>) {
        let rows = cluster.server.rows(
            &cluster.name,
            "SELECT id::text, key, what, epoch::text, holder, writer, completed::text
             FROM audit ORDER BY audit.key, audit.id",
        );
        struct Run {
            epoch: i64,
            holder_pid: Option<u32>,
            completed: i64,
        }
        let mut runs: BTreeMap<String, Run> = BTreeMap::new();
        let dump = |key: &str| -> String {
            rows.iter()
                .filter(|r| r[1].as_deref() == Some(key))
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        for row in &rows {
            let text = |i: usize| row[i].clone().unwrap_or_default();
            let (id, key, what) = (text(0).parse::<i64>().unwrap(), text(1), text(2));
            let epoch: i64 = text(3).parse().unwrap();
            let writer = pid_of(&text(5));
            let run = runs.entry(key.clone()).or_insert(Run {
                epoch: 0,
                holder_pid: None,
                completed: 0,
            });
            match what.as_str() {
                "acquire" => {
                    self.acquires += 1;
                    assert_eq!(
                        epoch,
                        run.epoch + 1,
                        "{key}: epochs grow by one (audit {id})"
                    );
                    let holder = row[4]
                        .as_deref()
                        .map(|h| h.split('@').next().unwrap().parse::<u32>().unwrap());
                    if let (Some(before), Some(now)) = (run.holder_pid, holder) {
                        // Enqueued by this process: a worker's first claim is no handoff.
                        if before != now && before != std::process::id() {
                            self.handoffs += 1;
                            self.acquisitions.push((key.clone(), id, before, now));
                        }
                    }
                    run.epoch = epoch;
                    if holder.is_some() {
                        run.holder_pid = holder;
                    }
                }
                "commit" | "event" => {
                    assert_eq!(
                        epoch,
                        run.epoch,
                        "{key}: a {what} under a stale epoch (audit {id}):\n{}",
                        dump(&key)
                    );
                    if let Some(holder) = run.holder_pid {
                        assert_eq!(
                            writer, holder,
                            "{key}: a {what} by process {writer}, while {holder} held epoch {epoch} (audit {id})"
                        );
                    }
                    if what == "commit" {
                        let completed: i64 = text(6).parse().unwrap();
                        assert!(
                            completed >= run.completed,
                            "{key}: checkpoint of {completed} completions after one of {} (audit {id})",
                            run.completed
                        );
                        run.completed = completed;
                        self.writers.entry(key.clone()).or_default().insert(writer);
                    }
                }
                other => panic!("unknown audit row {other}"),
            }
        }
    }
}

/// A reference run's results.
struct Expected {
    output: serde_json::Value,
    state: Tally,
    completed: u64,
    events: Vec<String>,
}

/// The in-memory reference runs, one per (job, approval).
#[derive(Default)]
struct References(std::sync::Mutex<BTreeMap<(u32, u64, bool), Arc<Expected>>>);

impl References {
    fn of(&self, job: Job, approve: bool) -> Arc<Expected> {
        let mut cache = self.0.lock().unwrap();
        cache
            .entry((job.parts, job.seed, approve))
            .or_insert_with(|| Arc::new(reference(job, approve)))
            .clone()
    }
}

/// Runs `job` durably in memory, uninterrupted, on one worker loop (answering the approval
/// with factor 3).
fn reference(job: Job, approve: bool) -> Expected {
    runtime(false).block_on(async move {
        let store = Arc::new(MemoryStore::new());
        let runner = reference_relay(approve)
            .runner()
            .store(store.clone())
            .evict_when_waiting(true);
        runner.enqueue("ref", job).unwrap();
        let worker = runner.work(1).unwrap();
        let start = Instant::now();
        let mut posted = false;
        loop {
            let record = store.load("ref").unwrap().unwrap();
            if record.status == RunStatus::Finished {
                break;
            }
            assert!(
                !matches!(record.status, RunStatus::Failed | RunStatus::Cancelled),
                "{record:?}"
            );
            if approve && !posted && !record.snapshot.pending_requests.is_empty() {
                assert!(
                    runner
                        .post_event("ref", "approve-ref", Approval { factor: 3 })
                        .unwrap()
                );
                posted = true;
            }
            assert!(start.elapsed() < DEADLINE, "the reference run ends");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worker.stop().await.unwrap();
        let record = store.load("ref").unwrap().unwrap();
        Expected {
            output: record.output.clone().unwrap(),
            state: serde_json::from_value(record.snapshot.state.clone()).unwrap(),
            completed: record.snapshot.completed,
            events: sorted_events(current_events(store.events("ref").unwrap())),
        }
    })
}

/// A journal's events as text, sorted (two `work` invocations may journal in either order).
fn sorted_events(events: Vec<(u64, tidewater::snapshot::EventRecord)>) -> Vec<String> {
    let mut texts: Vec<String> = events
        .into_iter()
        .map(|(_, e)| format!("{} {}", e.event, e.data))
        .collect();
    texts.sort();
    texts
}

// ---------------------------------------------------------------------------------------------
// The matrix.

/// A worker killed with SIGKILL at a named point in a step; a new worker finishes its runs.
fn kill_in_step(server: &PgServer, refs: &References, point: &str) -> Report {
    let mut cluster = Cluster::new(server, &format!("step_{point}"), 5, false);
    let victim = cluster.spawn(&[("FAULTS_STEP", format!("{point}:3"))]);
    let line = cluster.wait_marker(point);
    cluster.workers[victim].kill();
    cluster.spawn(&[]);
    cluster.spawn(&[]);
    let report = cluster.settle_and_check(refs);
    assert!(
        report.handoffs >= 1,
        "{point}: the killed worker's run was taken over"
    );
    // The invocation killed after its effect ran again: its effect is doubled in the plain
    // table, once in the idempotent one.
    let invocation = line.split_once(' ').unwrap().1;
    let runs = cluster.value(&format!(
        "SELECT count(*)::text FROM effects WHERE invocation = '{invocation}'"
    ));
    let expected = if point == "after_effect" { 2 } else { 1 };
    assert_eq!(
        runs, expected,
        "{point}: executions of the killed invocation {invocation}"
    );
    report
}

/// A worker killed between the statement and the COMMIT of a checkpoint (a fault hook in
/// PgStore), or while parking a run that waits for an answer (releasing it).
fn kill_in_store(server: &PgServer, refs: &References, point: &str, approve: bool) -> Report {
    let mut cluster = Cluster::new(server, &format!("store_{point}"), 4, approve);
    let victim = cluster.spawn(&[(
        "TIDEWATER_PG_FAULT",
        format!("{point}:3:{}", cluster.marker().display()),
    )]);
    cluster.wait_marker(point);
    cluster.workers[victim].kill();
    cluster.spawn(&[]);
    cluster.spawn(&[]);
    if approve {
        cluster.answer_all();
    }
    cluster.settle_and_check(refs)
}

/// Every worker killed mid-run, and new ones started.
fn all_workers_replaced(server: &PgServer, refs: &References) -> Report {
    let mut cluster = Cluster::new(server, "replaced", 8, false);
    cluster.pause_ms = 40;
    cluster.spawn(&[]);
    cluster.spawn(&[]);
    cluster.wait_count("some work done", "SELECT count(*)::text FROM effects", 6);
    for worker in &mut cluster.workers {
        worker.kill();
    }
    let finished =
        cluster.value("SELECT count(*)::text FROM tidewater_runs WHERE status = 'finished'");
    assert!(finished < 8, "the workers were killed mid-run");
    cluster.spawn(&[]);
    cluster.spawn(&[]);
    let report = cluster.settle_and_check(refs);
    assert!(report.handoffs >= 1);
    report
}

/// PostgreSQL crash-restarted (`pg_ctl stop -m immediate`, then start) mid-run.
fn postgres_crash(server: &PgServer, refs: &References) -> Report {
    let mut cluster = Cluster::new(server, "crash", 6, false);
    cluster.pause_ms = 40;
    cluster.spawn(&[]);
    cluster.spawn(&[]);
    cluster.wait_count("some work done", "SELECT count(*)::text FROM effects", 5);
    server.crash();
    std::thread::sleep(Duration::from_millis(300));
    server.up();
    let report = cluster.settle_and_check(refs);
    for worker in &mut cluster.workers {
        assert!(worker.alive(), "the workers lived through the restart");
    }
    report
}

/// A worker frozen with SIGSTOP past its lease: another takes its runs over; resumed
/// (SIGCONT), its commits are refused (fenced).
fn zombie(server: &PgServer, refs: &References) -> Report {
    let mut cluster = Cluster::new(server, "zombie", 4, false);
    cluster.pause_ms = 150;
    cluster.lease_ms = 1000;
    let frozen = cluster.spawn(&[]);
    let frozen_pid = cluster.workers[frozen].pid();
    cluster.wait_count(
        "the first worker at work",
        "SELECT count(*)::text FROM effects",
        3,
    );
    cluster.workers[frozen].signal("STOP");
    let stopped_at = cluster.value("SELECT coalesce(max(id), 0)::text FROM audit");
    cluster.spawn(&[]);
    // The runs end with the second worker; then the frozen one wakes and tries to commit.
    cluster.wait_count(
        "every run to end",
        "SELECT count(*)::text FROM tidewater_runs WHERE status = 'finished'",
        4,
    );
    cluster.workers[frozen].signal("CONT");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        cluster.workers[frozen].alive(),
        "the zombie lives on, fenced"
    );
    let report = cluster.settle_and_check(refs);
    // Its runs were taken over while it was frozen, and nothing it wrote after a takeover
    // committed (`merge_audit` checks every commit's writer against the holder; this is the
    // frozen worker's share of that, spelled out).
    let taken: Vec<&(String, i64, u32, u32)> = report
        .acquisitions
        .iter()
        .filter(|(_, id, before, now)| {
            *id > stopped_at && *before == frozen_pid && *now != frozen_pid
        })
        .collect();
    assert!(
        !taken.is_empty(),
        "the frozen worker's runs were taken over"
    );
    for (key, id, _, _) in taken {
        let late = cluster.value(&format!(
            "SELECT count(*)::text FROM audit WHERE key = '{key}' AND id > {id}
             AND what <> 'acquire' AND writer = 'tidewater pid {frozen_pid}'"
        ));
        assert_eq!(
            late, 0,
            "{key}: no commit by the frozen worker after the takeover"
        );
    }
    report
}

/// A worker that stops for good in the middle of a claim, alive (a fault hook in `PgStore`:
/// after the claim's `SELECT … FOR UPDATE SKIP LOCKED` over the free runs and its owner write,
/// before the `COMMIT`), as `zombie_fenced`'s worker does when its `SIGSTOP` lands mid-claim:
/// its open transaction locks every run it looked at, which the other workers' claims skip.
/// The server ends the idle transaction after a lease (`idle_in_transaction_session_timeout`),
/// and another worker takes and finishes every run.
fn frozen_mid_claim(server: &PgServer, refs: &References) -> Report {
    let mut cluster = Cluster::new(server, "frozen_claim", 4, false);
    cluster.lease_ms = 1000;
    let frozen = cluster.spawn(&[(
        "TIDEWATER_PG_FAULT",
        format!("mid_claim:1:{}", cluster.marker().display()),
    )]);
    let frozen_pid = cluster.workers[frozen].pid();
    cluster.wait_marker("mid_claim");
    assert_eq!(
        cluster.value("SELECT count(*)::text FROM tidewater_runs WHERE owner_id IS NOT NULL"),
        0,
        "the frozen claim did not commit"
    );
    cluster.spawn(&[]);
    let report = cluster.settle_and_check(refs);
    assert!(
        cluster.workers[frozen].alive(),
        "the frozen worker lives on, stuck in its claim"
    );
    assert_eq!(
        cluster.value(&format!(
            "SELECT count(*)::text FROM audit WHERE writer = 'tidewater pid {frozen_pid}'"
        )),
        0,
        "nothing the frozen worker wrote committed"
    );
    report
}

/// An answer posted twice to each run, at once, from two processes (as two servers would),
/// and once more from this one: each run's inbox holds it once.
fn answer_twice(server: &PgServer, refs: &References) -> Report {
    let mut cluster = Cluster::new(server, "answers", 4, true);
    cluster.spawn(&[]);
    cluster.spawn(&[]);
    cluster.wait_count(
        "every run asking",
        "SELECT count(*)::text FROM tidewater_runs WHERE record LIKE '%AskApproval%'",
        4,
    );
    let keys: Vec<String> = cluster.jobs.keys().cloned().collect();
    let post = |keys: &[String], id: &str| {
        let child = Command::new(std::env::current_exe().unwrap())
            .env("FAULTS_ROLE", "post")
            .env("FAULTS_DB", &cluster.db)
            .env("FAULTS_ID", id)
            .env("FAULTS_FACTOR", "3")
            .env("FAULTS_KEYS", keys.join(","))
            .env("FAULTS_GO", cluster.dir.join("go"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Proc {
            child,
            name: "poster".into(),
        }
    };
    // Both posters post to every run, under the id `approve-<key>` (one id per run), at once.
    let posters = [post(&keys, "approve"), post(&keys, "approve")];
    std::thread::sleep(Duration::from_millis(300));
    append(&cluster.dir.join("go"), "go");
    let outputs: Vec<String> = posters
        .into_iter()
        .flat_map(|poster| {
            poster
                .output()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    for key in &keys {
        let said: Vec<&str> = outputs
            .iter()
            .filter_map(|o| o.strip_prefix(&format!("posted {key} ")))
            .collect();
        let fresh = said.iter().filter(|s| **s == "true").count();
        assert_eq!(
            (said.len(), fresh),
            (2, 1),
            "{key}: one of the two posts was new: {said:?}"
        );
    }
    let store = Arc::new(PgStore::connect(&cluster.db).unwrap());
    let runner = reference_relay(true).runner().store(store);
    let report = cluster.settle_and_check(refs);
    assert_eq!(
        report.doubled_effects, 0,
        "no step ran twice: nothing failed"
    );
    for key in &keys {
        let again = runner.post_event(key, &format!("approve-{key}"), Approval { factor: 3 });
        assert!(
            again.is_err() || again.is_ok_and(|fresh| !fresh),
            "{key}: not posted again"
        );
    }
    report
}

fn main() {
    match env("FAULTS_ROLE").as_deref() {
        Some("worker") => return worker_main(),
        Some("post") => return poster_main(),
        _ => {}
    }
    // `cargo test -- <filter>` passes a filter; `--list` asks for the tests.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("fault_matrix: test");
        return;
    }
    // The first free argument is a name filter (as libtest's); the values of libtest's own
    // options are not.
    let mut filter = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if [
            "--test-threads",
            "--skip",
            "--format",
            "--logfile",
            "--color",
            "-Z",
        ]
        .contains(&arg.as_str())
        {
            rest.next();
        } else if !arg.starts_with('-') && filter.is_none() {
            filter = Some(arg.clone());
        }
    }
    let started = Instant::now();
    let server = PgServer::start("faults");
    let refs = References::default();
    type Scenario<'s> = (&'s str, Box<dyn Fn() -> Report + 's>);
    let matrix: Vec<Scenario<'_>> = vec![
        (
            "kill_before_effect",
            Box::new(|| kill_in_step(&server, &refs, "before_effect")),
        ),
        (
            "kill_after_effect",
            Box::new(|| kill_in_step(&server, &refs, "after_effect")),
        ),
        (
            "kill_mid_commit",
            Box::new(|| kill_in_store(&server, &refs, "mid_commit", false)),
        ),
        (
            "kill_idle_release",
            Box::new(|| kill_in_store(&server, &refs, "idle_release", true)),
        ),
        (
            "all_workers_replaced",
            Box::new(|| all_workers_replaced(&server, &refs)),
        ),
        (
            "postgres_crash_restart",
            Box::new(|| postgres_crash(&server, &refs)),
        ),
        ("zombie_fenced", Box::new(|| zombie(&server, &refs))),
        (
            "frozen_mid_claim",
            Box::new(|| frozen_mid_claim(&server, &refs)),
        ),
        (
            "answer_posted_twice",
            Box::new(|| answer_twice(&server, &refs)),
        ),
    ];
    let mut ran = 0;
    for (name, scenario) in &matrix {
        if filter
            .as_deref()
            .is_some_and(|f| !name.contains(f) && !"fault_matrix".contains(f))
        {
            continue;
        }
        let at = Instant::now();
        let report = scenario();
        ran += 1;
        println!(
            "fault {name} ... ok ({:.1} s; {} acquisitions, {} handoffs, {} doubled side effects, {} superseded journal entries)",
            at.elapsed().as_secs_f64(),
            report.acquires,
            report.handoffs,
            report.doubled_effects,
            report.superseded
        );
    }
    println!(
        "fault matrix: {ran} scenarios passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
