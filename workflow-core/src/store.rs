//! Durable runs: where a journaled run keeps its checkpoints and the events it published.
//!
//! A runner given a [`Store`] (`Runner::store`) journals every run it starts with
//! `start_durable(key, input)`: a checkpoint (a [`Snapshot`]) when the run starts, after each
//! step completion and when it accepts an input (an answer, an event a running step sent),
//! each event written to the stream, and the outcome at the end. A process that
//! dies mid-run (even by `SIGKILL`) loses nothing: `Runner::resume_stored(key)` resumes from the
//! last checkpoint, where completed steps do not run again and the steps that were running run
//! again (at least once).
//!
//! [`MemoryStore`] keeps everything in memory (tests, and the history of every checkpoint); the
//! `sqlite` feature adds `SqliteStore`, an embedded database with no server to start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::snapshot::{EventRecord, Snapshot};
use crate::stream::lock;

pub mod conformance;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// Where a journaled run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RunStatus {
    /// Running (or it was, when its process died): resume it.
    Running,
    /// Parked waiting for an answer from outside, and evicted from memory.
    Waiting,
    /// Ended with its output (`RunRecord::output`).
    Finished,
    /// Ended with an error (`RunRecord::error`).
    Failed,
    /// Ended by `Handler::cancel`: nothing to resume. (A run whose future is dropped, e.g. when
    /// its process shuts down, is not cancelled in the store: it stays `Running`, to resume.)
    Cancelled,
}

impl RunStatus {
    /// The status's name in a store's `status` column: `running`, `waiting`, `finished`,
    /// `failed` or `cancelled`.
    ///
    /// ```
    /// use tidewater::store::RunStatus;
    /// assert_eq!(RunStatus::Cancelled.name(), "cancelled");
    /// assert_eq!(RunStatus::from_name("cancelled"), Some(RunStatus::Cancelled));
    /// assert_eq!(RunStatus::from_name("paused"), None);
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name` ([`RunStatus::name`]), or `None` for a name this build does
    /// not know (a store reports such a row as an error rather than skipping it).
    pub fn from_name(name: &str) -> Option<RunStatus> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.name() == name)
    }

    /// Every status this build knows, in declaration order.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Finished,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];
}

/// The journal entry of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Where the run is.
    pub status: RunStatus,
    /// The last checkpoint.
    pub snapshot: Snapshot,
    /// The output of a finished run.
    pub output: Option<serde_json::Value>,
    /// The error message of a failed run; for a cancelled run, the step attempts that had
    /// failed before the cancel (`cancelled after step `x` attempt 1 failed: ...`), if any.
    pub error: Option<String>,
    /// The run's trace up to this checkpoint, when its runner records (`Runner::trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::Trace>,
}

impl RunRecord {
    /// Reads the record of run `key` from the JSON text a store keeps (stores call this, so
    /// that they all report a bad record alike).
    ///
    /// ```
    /// use tidewater::store::RunRecord;
    ///
    /// // A newer build's record, with fields this build does not know: its format is named.
    /// let text = r#"{"status": "Running", "snapshot": {"format": 99, "shiny": true}}"#;
    /// let error = RunRecord::from_json("k", text).unwrap_err();
    /// assert!(error.message.contains("unsupported format 99"), "{error}");
    /// ```
    ///
    /// # Errors
    /// [`StoreErrorKind::Failed`]: a record of a format newer than this build reads
    /// ("unsupported format N", whatever else is in it), or a corrupt one, naming the path of
    /// the bad field.
    pub fn from_json(key: &str, text: &str) -> Result<RunRecord, StoreError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let newer = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|value| crate::snapshot::newer_format(&value["snapshot"]));
            if let Some(format) = newer {
                return StoreError::new(format!(
                    "the record of run `{key}` is of {}",
                    crate::snapshot::unsupported_format(format)
                ));
            }
            let path = error.path().to_string();
            let inner = error.into_inner();
            if path == "." || path == "?" {
                StoreError::new(format!("corrupt record of run `{key}`: {inner}"))
            } else {
                StoreError::new(format!(
                    "corrupt record of run `{key}` at `{path}`: {inner}"
                ))
            }
        })
    }
}

/// A store refused or failed a call.
#[derive(Debug, thiserror::Error)]
#[error("store: {message}")]
pub struct StoreError {
    /// What went wrong, in words.
    pub message: String,
    /// What kind of refusal or failure it is.
    pub kind: StoreErrorKind,
}

/// The kinds of [`StoreError`]: the refusals of the ownership rules, and everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// I/O, a corrupt row, a record that does not serialize: the store itself failed.
    Failed,
    /// Another live owner holds the run ([`Store::acquire`]).
    Owned,
    /// A run with this key exists and has not ended, so it cannot be started again.
    Exists,
    /// No run with this key is in the store (nothing to resume).
    Missing,
    /// The run has ended: there is nothing left to resume.
    Ended,
    /// A write with a lease that is no longer the run's: another owner took the run over (its
    /// epoch is newer), so this owner's writes are refused.
    Fenced,
    /// The store does not implement this call (a store written before inboxes and claims:
    /// [`Store::post`], [`Store::inbox`], [`Store::claim`] have defaults that say so).
    Unsupported,
}

impl StoreError {
    /// A store failure ([`StoreErrorKind::Failed`]) with this message.
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError::of(StoreErrorKind::Failed, message)
    }

    /// An error of this kind with this message.
    pub fn of(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
            kind,
        }
    }
}

/// One claim of a process on a durable run: who it is, so that a live owner is never
/// overtaken and a dead one (a crashed process) is.
///
/// Every call of [`Owner::this_process`] makes a new claim (a new `id`), so two runners of one
/// process are two owners too.
///
/// ```
/// use tidewater::store::Owner;
/// let a = Owner::this_process();
/// let b = Owner::this_process();
/// assert_ne!(a.id, b.id);
/// assert_eq!(a.pid, std::process::id());
/// assert!(!a.is_gone());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Unique per claim: `pid@host#n`.
    pub id: String,
    /// The host the process runs on.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// When the process started (Linux: clock ticks after boot, from `/proc`), to tell a reused
    /// pid from the owner's process; 0 where unknown.
    pub started: u64,
}

impl Owner {
    /// A new claim of this process.
    pub fn this_process() -> Owner {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let host = host_name();
        Owner {
            id: format!("{pid}@{host}#{n}"),
            host,
            pid,
            started: process_started(pid).unwrap_or(0),
        }
    }

    /// Whether the owner's process is known to be gone: it ran on this host and no process with
    /// its pid (and start time) runs now. An owner on another host is never known to be gone
    /// here (a store shared by several hosts decides by lease expiry instead).
    pub fn is_gone(&self) -> bool {
        if self.host != host_name() {
            return false;
        }
        if !cfg!(target_os = "linux") {
            return false;
        }
        match process_started(self.pid) {
            None => true,
            Some(started) => self.started != 0 && started != self.started,
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} on `{}`", self.pid, self.host)?;
        if self.pid == std::process::id() && self.host == host_name() {
            f.write_str(" (this process)")?;
        }
        Ok(())
    }
}

/// This machine's host name (Linux: `/proc/sys/kernel/hostname`), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// When process `pid` started (Linux: field 22 of `/proc/<pid>/stat`), or `None` when there is
/// no such process, it is a zombie (dead, not yet reaped), or there is no `/proc`.
fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The right to write one run's journal: held by one [`Owner`] at a time, numbered by an epoch
/// that grows with every acquisition. A store refuses every write whose lease is not the run's
/// current one ([`StoreErrorKind::Fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it.
    pub owner: Owner,
    /// Which acquisition of the run this is (from 1).
    pub epoch: u64,
}

/// What an owner acquires a run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A new run under the key: refused while a run with this key has not ended. The events of
    /// an ended run under the same key are cleared.
    Start,
    /// The run's last checkpoint: refused when there is none or the run has ended.
    Resume,
}

/// Where durable runs are journaled. Implement it for a server database; the crate ships
/// [`MemoryStore`] and, with the `sqlite` feature, `SqliteStore`.
///
/// # Ownership
/// A run has at most one owner at a time. [`Store::acquire`] takes the run for an owner
/// atomically and hands back a [`Lease`] with a new epoch; every write ([`Store::save`],
/// [`Store::append_event`]) carries the lease, and the store refuses it
/// ([`StoreErrorKind::Fenced`]) unless it is still the run's current one, in the same
/// transaction as the write. So two processes never run one run: the second starter or resumer
/// is refused ([`StoreErrorKind::Owned`]) while the owner lives, and an owner that was taken
/// over (after it was presumed dead) cannot write again. A record saved with a status other
/// than [`RunStatus::Running`] releases the run, as does [`Store::release`].
///
/// When is an owner dead? [`MemoryStore`] and `SqliteStore` (one machine) take over a run whose
/// owner's process is gone from this host ([`Owner::is_gone`]), at once after a crash. A store
/// shared by several hosts decides by lease expiry (a heartbeat renews it) instead.
///
/// Checkpoints and journaled events come from the store's writer thread (group commit: one
/// [`Store::write_batch`] for the runs that completed a step at about the same moment), never
/// from a run's task; a write returns once it is durable, and the run acts on what it records
/// only then. `tidewater::store::conformance` (a test suite every
/// implementation should pass) states the contract as code.
pub trait Store: Send + Sync + 'static {
    /// Takes the run `key` for `owner`, atomically: refused with [`StoreErrorKind::Owned`]
    /// while another owner that is not gone holds it; for [`Claim::Start`] with
    /// [`StoreErrorKind::Exists`] when a run with this key has not ended; for [`Claim::Resume`]
    /// with [`StoreErrorKind::Missing`] or [`StoreErrorKind::Ended`].
    ///
    /// # Errors
    /// As above, or when the store cannot be read or written.
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError>;

    /// Writes the run's record (insert or replace), if `lease` is still the run's. A status
    /// other than [`RunStatus::Running`] releases the run.
    ///
    /// # Errors
    /// [`StoreErrorKind::Fenced`] when another owner took the run over; otherwise when the
    /// record could not be made durable.
    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError>;

    /// Gives the run up without a new record (its owner stops before the run ended, e.g. its
    /// future was dropped). Nothing happens when `lease` is no longer the run's.
    ///
    /// # Errors
    /// When the store cannot be written.
    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError>;

    /// Reads the run's record.
    ///
    /// # Errors
    /// When the store could not be read or the record is corrupt.
    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError>;

    /// Appends one event the run wrote to its stream, with its sequence number (from 1), if
    /// `lease` is still the run's. The same number written again replaces the first (the
    /// runtime never writes a number twice: a resumed run appends a [`SUPERSEDED`] marker for
    /// what a dead owner journaled after the last checkpoint, and numbers its events after it).
    ///
    /// # Errors
    /// [`StoreErrorKind::Fenced`] when another owner took the run over; otherwise when the
    /// event could not be made durable.
    fn append_event(
        &self,
        key: &str,
        lease: &Lease,
        seq: u64,
        event: &EventRecord,
    ) -> Result<(), StoreError>;

    /// The events the run wrote to its stream (and the requests for a human it published), in
    /// order.
    ///
    /// # Errors
    /// When the store could not be read.
    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError>;

    /// The keys of the runs with this status.
    ///
    /// # Errors
    /// When the store could not be read.
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError>;

    /// Appends `message` to the inbox of run `key`, numbered after the messages already there
    /// (from 1, without gaps, per run), **idempotent by [`Message::id`]**: `Ok(false)` when a
    /// message with this id was posted to the run before (nothing is written twice). Any
    /// process may post; no lease is needed. A run started again under the same key starts
    /// with an empty inbox ([`Claim::Start`]).
    ///
    /// The run's checkpoints record how far it read ([`Snapshot::inbox`]): a message is
    /// consumed exactly when the checkpoint that routed it commits, and a resumed run reads
    /// again what its dead owner had not checkpointed. Posting wakes the run's live owner and
    /// the workers of its workflow ([`Store::wakeups`]) where the store can.
    ///
    /// # Errors
    /// [`StoreErrorKind::Missing`] when no run with this key is in the store,
    /// [`StoreErrorKind::Ended`] when it has ended, [`StoreErrorKind::Unsupported`] for a
    /// store without inboxes; otherwise when the message could not be made durable.
    fn post(&self, key: &str, message: &Message) -> Result<bool, StoreError> {
        let _ = message;
        Err(unsupported(key, "post to"))
    }

    /// The messages of run `key`'s inbox numbered after `after`, in order.
    ///
    /// # Errors
    /// When the store cannot be read; [`StoreErrorKind::Unsupported`] for a store without
    /// inboxes.
    fn inbox(&self, key: &str, after: u64) -> Result<Vec<(u64, Message)>, StoreError> {
        let _ = after;
        Err(unsupported(key, "read the inbox of"))
    }

    /// Takes one runnable run of `workflow` for `owner`, atomically (two workers never take
    /// the same run), and returns its key and the new [`Lease`]: a run that is `Running` with
    /// no live holder (enqueued, released by a shutdown, or its owner gone / its lease
    /// expired), or a `Waiting` run with work queued or with inbox messages it has not
    /// consumed. Child runs (resumed by their parents) are never taken. `None` when there is
    /// nothing to take.
    ///
    /// # Errors
    /// When the store cannot be read or written; [`StoreErrorKind::Unsupported`] for a store
    /// without a queue.
    fn claim(&self, workflow: &str, owner: &Owner) -> Result<Option<(String, Lease)>, StoreError> {
        let _ = owner;
        Err(unsupported(workflow, "claim a run of"))
    }

    /// Where the store announces changes (a post, an enqueued or released run) to the waiters
    /// of this process: a run's inbox watcher, a worker loop. `None` (the default) when the
    /// store cannot tell: waiters poll. `MemoryStore` and `SqliteStore` announce what this
    /// store instance did; a `PgStore` also what every other process did (LISTEN/NOTIFY).
    fn wakeups(&self) -> Option<&Wakeups> {
        None
    }

    /// Makes several writes (of one run or of many) durable together, in order, and returns
    /// one result per write. The runtime's writer calls it with the checkpoints and journaled
    /// events of every run that completed a step at about the same moment (group commit).
    ///
    /// Each write stays fenced on its own: a write whose lease is stale fails alone with
    /// [`StoreErrorKind::Fenced`], and the others are written. A write that cannot be
    /// serialized fails alone too. When the store itself fails (I/O), every write of the batch
    /// may fail with that error.
    ///
    /// The default writes them one by one with [`Store::save`] and [`Store::append_event`]
    /// (one commit each); a database overrides it to write the batch in one transaction and
    /// one sync (`SqliteStore` does).
    ///
    /// ```
    /// use tidewater::store::conformance::{event, record};
    /// use tidewater::store::{Claim, MemoryStore, Owner, RunStatus, Store, Write};
    ///
    /// let store = MemoryStore::new();
    /// let lease = store.acquire("a", &Owner::this_process(), Claim::Start).unwrap();
    /// let checkpoint = record(RunStatus::Running, 1, 1);
    /// let results = store.write_batch(&[
    ///     Write::Event { key: "a", lease: &lease, seq: 1, event: &event(1) },
    ///     Write::Save { key: "a", lease: &lease, record: &checkpoint },
    /// ]);
    /// assert!(results.iter().all(Result::is_ok));
    /// assert_eq!(store.load("a").unwrap().unwrap(), checkpoint);
    /// ```
    fn write_batch(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        writes
            .iter()
            .map(|write| match *write {
                Write::Save { key, lease, record } => self.save(key, lease, record),
                Write::Event {
                    key,
                    lease,
                    seq,
                    event,
                } => self.append_event(key, lease, seq, event),
            })
            .collect()
    }
}

/// One write of a batch ([`Store::write_batch`]): what [`Store::save`] or
/// [`Store::append_event`] would write, with its lease.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// A run's record: [`Store::save`].
    Save {
        /// The run.
        key: &'a str,
        /// The writer's claim on it.
        lease: &'a Lease,
        /// The record.
        record: &'a RunRecord,
    },
    /// An event of a run's stream: [`Store::append_event`].
    Event {
        /// The run.
        key: &'a str,
        /// The writer's claim on it.
        lease: &'a Lease,
        /// Its number (from 1).
        seq: u64,
        /// The event.
        event: &'a EventRecord,
    },
}

fn unsupported(key: &str, what: &str) -> StoreError {
    StoreError::of(
        StoreErrorKind::Unsupported,
        format!("cannot {what} `{key}`: this store has no inboxes nor run queue"),
    )
}

/// A message to a stored run, posted to its inbox ([`Store::post`]) by any process: an answer
/// or an outside event, or a request to cancel the run.
///
/// ```
/// use tidewater::snapshot::EventRecord;
/// use tidewater::store::{Message, MessageBody};
///
/// let answer = Message::event("answer-17", EventRecord {
///     event: "app::Approval".into(),
///     data: serde_json::json!({ "ok": true }),
/// });
/// assert!(matches!(answer.body, MessageBody::Event(_)));
/// let cancel = Message::cancel("stop-17");
/// let text = serde_json::to_string(&cancel).unwrap();
/// assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), cancel);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Chosen by the sender, unique per run: a message posted again with the same id (a
    /// retried HTTP request, an answer sent to two servers) is written once.
    pub id: String,
    /// What it says.
    pub body: MessageBody,
}

/// What a [`Message`] says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MessageBody {
    /// An event for the run, by its stable name: an answer to one of its requests (a response
    /// type) or an event a step accepts, as `Handler::send_event` would send it.
    Event(EventRecord),
    /// Cancel the run, as `Handler::cancel` does.
    Cancel,
}

impl Message {
    /// A message carrying an event (an answer, or an event for a step).
    pub fn event(id: impl Into<String>, event: EventRecord) -> Message {
        Message {
            id: id.into(),
            body: MessageBody::Event(event),
        }
    }

    /// A request to cancel the run.
    pub fn cancel(id: impl Into<String>) -> Message {
        Message {
            id: id.into(),
            body: MessageBody::Cancel,
        }
    }
}

/// Wake-ups a store gives the waiters of this process ([`Store::wakeups`]): each change names
/// its run and its workflow, and wakes whoever subscribed to either. A wake-up that comes
/// while nobody waits is kept for the next wait (no wake-up is lost between two polls);
/// waiters still poll at a bounded interval, since a store may miss a change made elsewhere.
///
/// ```
/// use tidewater::store::Wakeups;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let wakeups = Wakeups::default();
/// let run = wakeups.run("order-7");
/// let queue = wakeups.queue("Orders");
/// wakeups.changed(Some("Orders"), "order-7");
/// run.notified().await; // returns at once: the wake-up was kept
/// queue.notified().await;
/// // The topics of subscribers that are gone are swept as new ones come.
/// drop((run, queue));
/// for n in 0..1000 {
///     drop(wakeups.run(&format!("run-{n}")));
/// }
/// assert!(wakeups.topics() <= 130, "{}", wakeups.topics());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Wakeups {
    topics: Mutex<Topics>,
}

#[derive(Debug, Default)]
struct Topics {
    subscribers: HashMap<String, Vec<std::sync::Weak<tokio::sync::Notify>>>,
    /// How many topics were left after the last sweep of the dead ones.
    swept: usize,
}

impl Wakeups {
    /// Woken by every change of run `key` (a message posted to it).
    pub fn run(&self, key: &str) -> Arc<tokio::sync::Notify> {
        self.subscribe(format!("run/{key}"))
    }

    /// Woken by every change that may give a worker of `workflow` a run to claim (a run
    /// enqueued, released, or posted to).
    pub fn queue(&self, workflow: &str) -> Arc<tokio::sync::Notify> {
        self.subscribe(format!("queue/{workflow}"))
    }

    fn subscribe(&self, topic: String) -> Arc<tokio::sync::Notify> {
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut topics = lock(&self.topics);
        // Every run subscribes to a topic of its own: the topics of ended runs are swept
        // whenever their number doubled since the last sweep (amortized O(1) per subscribe).
        if topics.subscribers.len() > (2 * topics.swept).max(64) {
            topics
                .subscribers
                .retain(|_, subscribers| subscribers.iter().any(|weak| weak.strong_count() > 0));
            topics.swept = topics.subscribers.len();
        }
        let subscribers = topics.subscribers.entry(topic).or_default();
        subscribers.retain(|weak| weak.strong_count() > 0);
        subscribers.push(Arc::downgrade(&notify));
        notify
    }

    /// How many topics have subscribers, or had them since the last sweep (tests).
    #[doc(hidden)]
    pub fn topics(&self) -> usize {
        lock(&self.topics).subscribers.len()
    }

    /// Announces a change of run `key` of `workflow` (`None` when the store does not know it:
    /// every queue is woken).
    pub fn changed(&self, workflow: Option<&str>, key: &str) {
        let mut guard = lock(&self.topics);
        let topics = &mut guard.subscribers;
        if topics.is_empty() {
            return;
        }
        let mut woken = vec![format!("run/{key}")];
        match workflow {
            Some(workflow) => woken.push(format!("queue/{workflow}")),
            None => woken.extend(
                topics
                    .keys()
                    .filter(|topic| topic.starts_with("queue/"))
                    .cloned(),
            ),
        }
        for topic in woken {
            let Some(subscribers) = topics.get_mut(&topic) else {
                continue;
            };
            subscribers.retain(|weak| match weak.upgrade() {
                Some(notify) => {
                    notify.notify_one();
                    true
                }
                None => false,
            });
            if subscribers.is_empty() {
                topics.remove(&topic);
            }
        }
    }

    /// Wakes every waiter (a store that may have missed changes: a lost connection).
    pub fn everything(&self) {
        for subscribers in lock(&self.topics).subscribers.values() {
            for notify in subscribers.iter().filter_map(std::sync::Weak::upgrade) {
                notify.notify_one();
            }
        }
    }
}

/// Is `key` a child run's key (`{parent}/...` where `{parent}` is a stored run)? `exists`
/// says whether a run with a given key is stored. For implementations of [`Store::claim`],
/// which never take child runs (their parents resume them).
pub fn is_child_key(key: &str, mut exists: impl FnMut(&str) -> bool) -> bool {
    key.match_indices('/').any(|(at, _)| exists(&key[..at]))
}

/// Can a stored run be claimed by a worker ([`Store::claim`]), holders aside? `Running`, or
/// `Waiting` with work queued or inbox messages after the ones its checkpoint consumed
/// (`inbox_last`: the number of the run's last message). For implementations.
pub fn claimable(record: &RunRecord, inbox_last: u64) -> bool {
    match record.status {
        RunStatus::Running => true,
        RunStatus::Waiting => has_work(&record.snapshot) || inbox_last > record.snapshot.inbox,
        _ => false,
    }
}

/// Does the snapshot hold steps to run (in flight or queued)?
pub fn has_work(snapshot: &Snapshot) -> bool {
    !snapshot.in_flight.is_empty() || !snapshot.queued.is_empty()
}

/// The ownership rules of [`Store::acquire`], for implementations: given the run as stored (its
/// status, or `None` when absent or started with no checkpoint yet, and its holder, `None` when
/// released or when the store knows the holder's lease expired), may `claim` take it? A
/// holder that [`Owner::is_gone`] does not count. The refusals' messages leave the key to the
/// caller.
///
/// ```
/// use tidewater::store::{Claim, Owner, RunStatus, StoreErrorKind, check_claim};
/// assert!(check_claim(None, None, Claim::Start).is_ok());
/// let me = Owner::this_process();
/// let refused = check_claim(Some(RunStatus::Running), Some(&me), Claim::Resume).unwrap_err();
/// assert_eq!(refused.kind, StoreErrorKind::Owned);
/// ```
///
/// # Errors
/// The refusal, by kind: [`StoreErrorKind::Owned`], [`StoreErrorKind::Exists`],
/// [`StoreErrorKind::Missing`] or [`StoreErrorKind::Ended`].
pub fn check_claim(
    status: Option<RunStatus>,
    holder: Option<&Owner>,
    claim: Claim,
) -> Result<(), StoreError> {
    if let Some(holder) = holder.filter(|holder| !holder.is_gone()) {
        return Err(StoreError::of(
            StoreErrorKind::Owned,
            format!("the run is owned by {holder}"),
        ));
    }
    let live = matches!(status, Some(RunStatus::Running | RunStatus::Waiting));
    match (claim, status) {
        (Claim::Start, Some(status)) if live => Err(StoreError::of(
            StoreErrorKind::Exists,
            format!("a run with this key is {status:?} in the store: resume it instead"),
        )),
        (Claim::Start, _) => Ok(()),
        (Claim::Resume, None) => Err(StoreError::of(
            StoreErrorKind::Missing,
            "no run with this key in the store",
        )),
        (Claim::Resume, Some(status)) if !live => Err(StoreError::of(
            StoreErrorKind::Ended,
            format!("the run has ended ({status:?})"),
        )),
        (Claim::Resume, Some(_)) => Ok(()),
    }
}

/// The error of a write whose lease is not the run's any more ([`StoreErrorKind::Fenced`]), for
/// implementations; `what` names the write (`checkpoint`, `event 3`).
pub fn fenced(key: &str, lease: &Lease, what: &str) -> StoreError {
    StoreError::of(
        StoreErrorKind::Fenced,
        format!(
            "{what} of run `{key}` refused: {} (epoch {}) no longer owns the run",
            lease.owner, lease.epoch
        ),
    )
}

/// The name of the marker a resumed durable run appends to its stream journal when the journal
/// holds events written after its last checkpoint: events of invocations whose completion was
/// never checkpointed (the process died in between), which run again and write their events
/// anew. Its data is `{"first": a, "last": b, "epoch": e}`: the events numbered `a..=b` are
/// superseded (the owner of epoch `e` found them). Numbers are never reused: the re-run's
/// events come after the marker.
pub const SUPERSEDED: &str = "tidewater::Superseded";

/// The true sequence of a run's stream journal ([`Store::events`]): without the events a
/// [`SUPERSEDED`] marker names, nor the markers. Sequence numbers are kept (they grow, with
/// gaps where events were superseded).
///
/// ```
/// use tidewater::snapshot::EventRecord;
/// use tidewater::store::{SUPERSEDED, current_events};
/// let note = |text: &str| EventRecord { event: "app::Note".into(), data: text.into() };
/// let journal = vec![
///     (1, note("kept")),
///     (2, note("a dead attempt's")),
///     (3, EventRecord { event: SUPERSEDED.into(), data: serde_json::json!({"first": 2, "last": 2, "epoch": 2}) }),
///     (4, note("the re-run's")),
/// ];
/// let seqs: Vec<u64> = current_events(journal).into_iter().map(|(seq, _)| seq).collect();
/// assert_eq!(seqs, [1, 4]);
/// ```
pub fn current_events(events: Vec<(u64, EventRecord)>) -> Vec<(u64, EventRecord)> {
    let dead: Vec<(u64, u64)> = events
        .iter()
        .filter(|(_, record)| record.event == SUPERSEDED)
        .filter_map(|(_, record)| {
            Some((
                record.data["first"].as_u64()?,
                record.data["last"].as_u64()?,
            ))
        })
        .collect();
    events
        .into_iter()
        .filter(|(seq, record)| {
            record.event != SUPERSEDED && !dead.iter().any(|(a, b)| (*a..=*b).contains(seq))
        })
        .collect()
}

/// Resuming a durable run: marks what its journal holds after the checkpoint it resumes from
/// (`checkpointed`, the checkpoint's `stream_seq`) as superseded, with a marker appended under
/// the lease. Returns the number the run's stream goes on from: `checkpointed`, or the
/// marker's.
pub(crate) fn supersede_after(
    store: &dyn Store,
    key: &str,
    lease: &Lease,
    checkpointed: u64,
) -> Result<u64, StoreError> {
    let events = store.events(key)?;
    let dead: Vec<u64> = events
        .iter()
        .map(|(seq, _)| *seq)
        .filter(|seq| *seq > checkpointed)
        .collect();
    let (Some(first), Some(last)) = (dead.iter().min(), dead.iter().max()) else {
        return Ok(checkpointed);
    };
    let marker = EventRecord {
        event: SUPERSEDED.to_string(),
        data: serde_json::json!({ "first": first, "last": last, "epoch": lease.epoch }),
    };
    store.append_event(key, lease, last + 1, &marker)?;
    Ok(last + 1)
}

/// A [`Store`] in memory, which also keeps every checkpoint ever saved
/// ([`MemoryStore::history`]).
///
/// ```
/// use tidewater::store::{MemoryStore, RunStatus, Store};
/// let store = MemoryStore::new();
/// assert!(store.load("nope").unwrap().is_none());
/// assert!(store.keys(RunStatus::Running).unwrap().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<String, MemoryRun>>,
    wakeups: Wakeups,
}

#[derive(Debug, Default)]
struct MemoryRun {
    record: Option<RunRecord>,
    history: Vec<Snapshot>,
    events: Vec<(u64, EventRecord)>,
    inbox: Vec<(u64, Message)>,
    holder: Option<Owner>,
    epoch: u64,
}

impl MemoryRun {
    /// Whether `lease` is the run's current one.
    fn holds(&self, lease: &Lease) -> bool {
        self.epoch == lease.epoch && self.holder.as_ref() == Some(&lease.owner)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every checkpoint saved for `key`, oldest first.
    pub fn history(&self, key: &str) -> Vec<Snapshot> {
        lock(&self.runs)
            .get(key)
            .map(|run| run.history.clone())
            .unwrap_or_default()
    }
}

impl Store for MemoryStore {
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError> {
        let mut runs = lock(&self.runs);
        let run = runs.entry(key.to_string()).or_default();
        let status = run.record.as_ref().map(|r| r.status);
        check_claim(status, run.holder.as_ref(), claim)?;
        if claim == Claim::Start {
            run.record = None;
            run.events.clear();
            run.inbox.clear();
        }
        run.epoch += 1;
        run.holder = Some(owner.clone());
        Ok(Lease {
            owner: owner.clone(),
            epoch: run.epoch,
        })
    }

    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError> {
        let mut runs = lock(&self.runs);
        let run = runs.entry(key.to_string()).or_default();
        if !run.holds(lease) {
            return Err(fenced(key, lease, "checkpoint"));
        }
        if run.history.last() != Some(&record.snapshot) {
            run.history.push(record.snapshot.clone());
        }
        run.record = Some(record.clone());
        if record.status != RunStatus::Running {
            run.holder = None;
        }
        Ok(())
    }

    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        let mut runs = lock(&self.runs);
        let Some(run) = runs.get_mut(key).filter(|run| run.holds(lease)) else {
            return Ok(());
        };
        run.holder = None;
        let workflow = run.record.as_ref().map(|r| r.snapshot.workflow.clone());
        drop(runs);
        self.wakeups.changed(workflow.as_deref(), key);
        Ok(())
    }

    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(lock(&self.runs).get(key).and_then(|run| run.record.clone()))
    }

    fn append_event(
        &self,
        key: &str,
        lease: &Lease,
        seq: u64,
        event: &EventRecord,
    ) -> Result<(), StoreError> {
        let mut runs = lock(&self.runs);
        let run = runs.entry(key.to_string()).or_default();
        if !run.holds(lease) {
            return Err(fenced(key, lease, &format!("event {seq}")));
        }
        let events = &mut run.events;
        // Like a database keyed by (run, seq): in order, and the same number written again
        // replaces it.
        match events.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(at) => events[at].1 = event.clone(),
            Err(at) => events.insert(at, (seq, event.clone())),
        }
        Ok(())
    }

    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        Ok(lock(&self.runs)
            .get(key)
            .map(|run| run.events.clone())
            .unwrap_or_default())
    }

    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = lock(&self.runs)
            .iter()
            .filter(|(_, run)| run.record.as_ref().is_some_and(|r| r.status == status))
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn post(&self, key: &str, message: &Message) -> Result<bool, StoreError> {
        let mut runs = lock(&self.runs);
        let Some(run) = runs
            .get_mut(key)
            .filter(|run| run.record.is_some() || run.holder.is_some())
        else {
            return Err(StoreError::of(
                StoreErrorKind::Missing,
                format!("cannot post to run `{key}`: no run with this key in the store"),
            ));
        };
        if let Some(status) = run.record.as_ref().map(|r| r.status) {
            if !matches!(status, RunStatus::Running | RunStatus::Waiting) {
                return Err(StoreError::of(
                    StoreErrorKind::Ended,
                    format!("cannot post to run `{key}`: it has ended ({status:?})"),
                ));
            }
        }
        if run.inbox.iter().any(|(_, m)| m.id == message.id) {
            return Ok(false);
        }
        let n = run.inbox.len() as u64 + 1;
        run.inbox.push((n, message.clone()));
        let workflow = run.record.as_ref().map(|r| r.snapshot.workflow.clone());
        drop(runs);
        self.wakeups.changed(workflow.as_deref(), key);
        Ok(true)
    }

    fn inbox(&self, key: &str, after: u64) -> Result<Vec<(u64, Message)>, StoreError> {
        Ok(lock(&self.runs)
            .get(key)
            .map(|run| {
                run.inbox
                    .iter()
                    .filter(|(n, _)| *n > after)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn claim(&self, workflow: &str, owner: &Owner) -> Result<Option<(String, Lease)>, StoreError> {
        let mut runs = lock(&self.runs);
        let mut candidates: Vec<&String> = runs
            .iter()
            .filter(|(_, run)| {
                run.record.as_ref().is_some_and(|record| {
                    record.snapshot.workflow == workflow
                        && claimable(record, run.inbox.len() as u64)
                }) && run.holder.as_ref().is_none_or(Owner::is_gone)
            })
            .map(|(key, _)| key)
            .filter(|key| !is_child_key(key, |parent| runs.contains_key(parent)))
            .collect();
        candidates.sort();
        let Some(key) = candidates.first().map(|key| (*key).clone()) else {
            return Ok(None);
        };
        let run = runs.get_mut(&key).expect("a candidate is stored");
        run.epoch += 1;
        run.holder = Some(owner.clone());
        let lease = Lease {
            owner: owner.clone(),
            epoch: run.epoch,
        };
        Ok(Some((key, lease)))
    }

    fn wakeups(&self) -> Option<&Wakeups> {
        Some(&self.wakeups)
    }
}
