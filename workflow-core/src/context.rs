//! The per-run context a step may take as `ctx: &Context<Self>`.

use std::any::Any;
use std::collections::VecDeque;
use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::task::AtomicWaker;

use crate::error::{Result, WorkflowError};
use crate::event::{DynEvent, Either, Event, IntoDynEvent};
use crate::snapshot::{MemoRecord, Snapshot, SnapshotError};
use crate::store::{Lease, Store};
use crate::stream::{Publisher, StreamItem, lock};
use crate::workflow::Workflow;

/// The identity of one run, unique within the process.
pub type RunId = u64;

pub(crate) static NEXT_RUN_ID: AtomicU64 = AtomicU64::new(1);

/// An event sent from a step's context or from outside, waiting for the run loop.
pub(crate) struct Envelope {
    pub(crate) event: DynEvent,
    /// `Some(step)`: deliver to this step only.
    pub(crate) target: Option<usize>,
    /// Who sent it: a durable run saves an input from outside, or from a step still running,
    /// before the step that takes it runs.
    pub(crate) from: Sender,
}

/// Who put an event in a run's inbox.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    /// The outside world: `Handler::send_event`, an answer.
    Outside,
    /// The step invocation with this number, with `send_event` while it runs.
    Step(u64),
    /// The run itself (a join handing a complete round back to its step).
    Run,
}

/// What one run shares between its loop, its steps' contexts and its handler.
pub(crate) struct RunShared<W: Workflow> {
    pub(crate) run_id: RunId,
    pub(crate) state: Mutex<W::State>,
    /// Events sent with `send_event`, waiting for the loop.
    pub(crate) inbox: Mutex<Vec<Envelope>>,
    /// Set when `inbox` or `woken` holds something, a snapshot is asked for or the run was
    /// cancelled: one atomic read on the hot path.
    pub(crate) mail: AtomicBool,
    pub(crate) cancelled: AtomicBool,
    /// Asked to stop at its next quiet point (`Handler::suspend`, durable runs).
    pub(crate) suspend: AtomicBool,
    /// The step whose invocation the run is polling, plus one (0: none); kept only for runs
    /// with a time limit, so that a handler that gives up at the deadline can name it.
    pub(crate) holding: std::sync::atomic::AtomicU32,
    /// The handler gave up on the run at its deadline (the run's own thread was held).
    pub(crate) timed_out: AtomicBool,
    /// Set while the run loop is inside its own poll: it looks at `mail` again before it
    /// sleeps, so whoever posts meanwhile (a step sending an event, typically) skips the wake,
    /// which would only make the runtime poll the run a second time for nothing.
    pub(crate) polling: AtomicBool,
    /// Wakes the run loop when something arrives from outside its own poll.
    pub(crate) waker: AtomicWaker,
    /// The step invocations whose wakers fired, by call index, for the loop to poll.
    pub(crate) woken: Mutex<Vec<u32>>,
    pub(crate) stream: Publisher,
    /// Steps waiting inline for an event, in registration order.
    waiters: Mutex<Vec<Waiter>>,
    /// The id of the next waiter (ids wrap around: one in use is skipped).
    next_waiter: std::sync::atomic::AtomicU32,
    /// How many events steps wrote to the stream (the stream position of snapshots).
    pub(crate) stream_seq: AtomicU64,
    /// The run is over: snapshot requests are refused (see `request_snapshot`).
    snapshots_closed: AtomicBool,
    /// The run's first call is queued to be polled: this state is that call's waker (see
    /// `runtime::Call::wake`).
    pub(crate) first_call_queued: AtomicBool,
    /// Durable runs: where the run is journaled.
    /// Boxed: most runs are not durable, and every run pays for the field.
    pub(crate) journal: Option<Box<Journal>>,
    /// What few runs use, made at the first use (`RunShared::rare`): a run that collects
    /// nothing, retries nothing, fails nowhere, records nothing, is never snapshotted, traced
    /// or a parent pays one pointer for all of it.
    rare: std::sync::OnceLock<Box<RareShared>>,
}

/// The parts of a run's shared state that few runs use (see `RunShared::rare`).
#[derive(Default)]
pub(crate) struct RareShared {
    /// Fan-in buffers, per collecting step and collected type (`CollectSet::KEY`).
    pub(crate) collect: Mutex<CollectBuffers>,
    /// Responses that arrived while nobody waited for them, for the next matching waiter.
    pub(crate) unclaimed: Mutex<Vec<DynEvent>>,
    /// What the collects of invocations of steps with retries did, so that a retry sees the
    /// same fan-in: keyed by (step, worker) and the buffer's key.
    pub(crate) held: Mutex<HeldSets>,
    /// The latest failed attempts (`Handler::failures`), oldest first.
    pub(crate) failures: Mutex<std::collections::VecDeque<crate::error::FailedAttempt>>,
    /// Durable runs: stream events written by invocations still running, keyed by
    /// (step, worker); journaled when the invocation ends (see `write_event_to_stream`).
    pub(crate) journal_pending: Mutex<Vec<((usize, u32), crate::snapshot::EventRecord)>>,
    /// What running invocations recorded (`Context::once`, answers of `wait_for`), by
    /// invocation number; kept in snapshots so that a re-run gets them back.
    pub(crate) memos: Mutex<Vec<(u64, Vec<MemoRecord>)>>,
    /// Steps waiting for the loop to checkpoint what they recorded (durable runs).
    pub(crate) flush_requests: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// `Handler::snapshot` calls waiting for the loop (refused once the run is over, so that
    /// a later request fails at once instead of waiting for a loop that is gone).
    snapshot_requests: Mutex<Vec<SnapshotReply>>,
    /// The run's trace recorder, set by the executor when the runner records.
    pub(crate) trace: std::sync::OnceLock<Arc<crate::trace::Recorder>>,
    /// Its parent (a child run) and its children (`Context::run_child`).
    pub(crate) family: crate::child::FamilySlot,
}

/// Where the loop answers a snapshot request.
pub(crate) type SnapshotReply =
    tokio::sync::oneshot::Sender<std::result::Result<Snapshot, SnapshotError>>;

/// A durable run's journal: its store and key.
pub(crate) struct Journal {
    pub(crate) store: Arc<dyn Store>,
    /// The store's writer: every write of the running run goes through it (group commit).
    pub(crate) committer: Arc<crate::commit::Committer>,
    pub(crate) key: String,
    /// This run's claim on the key: every write carries it, and the store refuses it once
    /// another owner took the run over.
    pub(crate) lease: Lease,
    /// Evict the run once it has been parked on requests alone this long.
    pub(crate) evict_waiting_after: Option<std::time::Duration>,
    /// The trace the journal held, continued by a resumed run that records.
    pub(crate) trace: Option<crate::trace::Trace>,
    /// A resumed run: how many requests it had published before, published again first on
    /// its new stream.
    pub(crate) republished: usize,
    /// A resumed run: the number its stream journal goes on from, past what a dead owner
    /// journaled after the last checkpoint (`store::supersede_after`).
    pub(crate) stream_from: Option<u64>,
    /// How far the run read its store inbox (`crate::inbox`).
    pub(crate) inbox: Arc<crate::inbox::InboxCursor>,
    /// The run is leaving memory, parked for a human: set under the mail's lock when it found
    /// no mail, so that an event posted later is refused (`RunShared::post_unless_left`)
    /// instead of lost with the run.
    pub(crate) left: AtomicBool,
}

/// What the collects of invocations did, by (step, worker) and buffer key.
pub(crate) type HeldSets = Vec<((usize, u32), u64, Held)>;

/// What an invocation's collect did, for its retries (steps with a retry policy only).
#[derive(Clone)]
pub(crate) enum Held {
    /// Its event is in the buffer, and no set was complete.
    Buffered,
    /// It was handed this set (erased, in order).
    Set(Vec<DynEvent>),
}

/// The events a collecting step buffered.
pub(crate) enum CollectBuffer {
    /// One queue of erased events per collected type: `collect_each`, and any buffer restored
    /// from a snapshot until its step collects again.
    Erased(Vec<VecDeque<DynEvent>>),
    /// `collect::<E>`: a `VecDeque<E>`, so buffering an event neither boxes nor downcasts it.
    Typed(Box<dyn TypedQueue>),
}

/// A `VecDeque<E>` of collected events, seen without its type.
pub(crate) trait TypedQueue: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The events, erased (for snapshots).
    fn erased(&self) -> VecDeque<DynEvent>;
}

impl<E: Event> TypedQueue for VecDeque<E> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn erased(&self) -> VecDeque<DynEvent> {
        self.iter().cloned().map(DynEvent::new).collect()
    }
}

impl CollectBuffer {
    /// The queues, erased: one per collected type.
    pub(crate) fn erased_slots(&self) -> std::borrow::Cow<'_, [VecDeque<DynEvent>]> {
        match self {
            CollectBuffer::Erased(slots) => std::borrow::Cow::Borrowed(slots),
            CollectBuffer::Typed(queue) => std::borrow::Cow::Owned(vec![queue.erased()]),
        }
    }

    /// The buffer as `collect::<E>` keeps it (a restored buffer is typed here, once).
    fn typed<E: Event>(&mut self) -> &mut VecDeque<E> {
        if let CollectBuffer::Erased(slots) = self {
            let queue: VecDeque<E> = slots
                .iter_mut()
                .flat_map(std::mem::take)
                .map(|e| e.downcast::<E>().expect("a collect buffer holds one type"))
                .collect();
            *self = CollectBuffer::Typed(Box::new(queue));
        }
        match self {
            CollectBuffer::Typed(queue) => queue
                .as_any_mut()
                .downcast_mut()
                .expect("a collect buffer holds one type"),
            CollectBuffer::Erased(_) => unreachable!("typed above"),
        }
    }

    /// The buffer as `collect_each` keeps it.
    fn erased(&mut self) -> &mut Vec<VecDeque<DynEvent>> {
        if let CollectBuffer::Typed(queue) = self {
            *self = CollectBuffer::Erased(vec![queue.erased()]);
        }
        match self {
            CollectBuffer::Erased(slots) => slots,
            CollectBuffer::Typed(_) => unreachable!("erased above"),
        }
    }
}

/// The fan-in buffers of a run, by (collecting step, collected type key). A run has one or two
/// of them, so a linear search beats hashing the key.
#[derive(Default)]
pub(crate) struct CollectBuffers {
    entries: Vec<((usize, u64), CollectBuffer)>,
    /// What each collect waits for, by buffer: the types' names (one per position) and how
    /// many make a set at each position. For the stuck diagnostic; recorded at the collect.
    wanted: Vec<((usize, u64), &'static [&'static str], Per)>,
}

/// How many events a collect's set holds at each position.
#[derive(Clone, Copy)]
enum Per {
    /// This many (`collect`: one position; `collect_each`: 1 at each).
    Set(usize),
    /// As many as the count event at the buffer's first position tells (`collect_counted`):
    /// the count of the first one, once one has arrived.
    Told(Option<usize>),
}

impl CollectBuffers {
    /// The buffer of `key`, made with `new` the first time.
    fn entry(
        &mut self,
        key: (usize, u64),
        new: impl FnOnce() -> CollectBuffer,
    ) -> &mut CollectBuffer {
        let i = match self.entries.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.entries.push((key, new()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].1
    }

    /// Records what the collect of `key` waits for (see `wanted`).
    fn want(&mut self, key: (usize, u64), names: &'static [&'static str], per_set: Per) {
        match self.wanted.iter_mut().find(|(k, _, _)| *k == key) {
            Some(entry) => entry.2 = per_set,
            None => self.wanted.push((key, names, per_set)),
        }
    }

    /// The collects that hold some events but not a whole set, in words:
    /// ``step `join` waits in `collect` for 5 `Hit` event(s) and has 3``.
    pub(crate) fn incomplete(&self, step_name: impl Fn(usize) -> &'static str) -> Vec<String> {
        let mut lines = Vec::new();
        for (key, buffer) in &self.entries {
            let slots = buffer.erased_slots();
            if slots.iter().all(VecDeque::is_empty) {
                continue;
            }
            let step = step_name(key.0);
            let Some((_, names, per_set)) = self.wanted.iter().find(|(k, _, _)| k == key) else {
                let held: usize = slots.iter().map(VecDeque::len).sum();
                lines.push(format!("step `{step}` holds {held} collected event(s)"));
                continue;
            };
            if let Per::Told(told_count) = per_set {
                let (told, item) = (names[0], names[1]);
                let have = slots.get(1).map_or(0, VecDeque::len);
                lines.push(match told_count {
                    Some(n) => format!(
                        "step `{step}` waits in `collect_counted` for {n} `{item}` event(s) \
                         (as its `{told}` told) and has {have}"
                    ),
                    None => format!(
                        "step `{step}` waits in `collect_counted` for the `{told}` that tells \
                         how many `{item}` events make its set, and has {have}"
                    ),
                });
            } else if let (Per::Set(per_set), [name]) = (per_set, names) {
                lines.push(format!(
                    "step `{step}` waits in `collect` for {per_set} `{name}` event(s) and has {}",
                    slots.first().map_or(0, VecDeque::len)
                ));
            } else {
                let have: Vec<String> = names
                    .iter()
                    .zip(slots.iter())
                    .map(|(name, slot)| format!("`{name}` {}/1", slot.len().min(1)))
                    .collect();
                let missing: Vec<String> = names
                    .iter()
                    .zip(slots.iter())
                    .filter(|(_, slot)| slot.is_empty())
                    .map(|(name, _)| format!("`{name}`"))
                    .collect();
                lines.push(format!(
                    "step `{step}` waits in `collect_each` for one of each of ({}) and has {} \
                     (missing: {})",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    have.join(", "),
                    missing.join(", ")
                ));
            }
        }
        lines
    }

    pub(crate) fn insert(&mut self, key: (usize, u64), buffer: CollectBuffer) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push((key, buffer));
    }

    /// Every buffer, sorted by key (snapshots list them in a stable order).
    pub(crate) fn sorted(&self) -> Vec<(&(usize, u64), &CollectBuffer)> {
        let mut all: Vec<_> = self.entries.iter().map(|(k, b)| (k, b)).collect();
        all.sort_unstable_by_key(|(k, _)| **k);
        all
    }
}

/// A step waiting inline (`ctx.wait_for`) for an event that matches: its entry in the run's
/// waiter list, which is also where its answer is left (no channel per wait).
struct Waiter {
    id: u32,
    /// Is the event an `R` (and one the wait's predicate accepts)? A closure that captures
    /// nothing when the wait has no predicate, so its box allocates nothing.
    matches: Box<dyn Fn(&DynEvent) -> bool + Send>,
    /// The waker of the waiting step until an answer comes, then the answer, which stays here
    /// until the step takes it (or is dropped with the step).
    slot: Slot,
    /// Durable workflows: the invocation the answer is recorded under (label
    /// `wait_for:<R::NAME>`, the answer's own name; 0: not recorded, invocations are numbered
    /// from 1), by the loop when it hands the answer over, so that the checkpoint after
    /// routing holds it.
    record_as: u64,
}

/// Where a waiter is: waiting (with the waker of its step, once polled), or answered.
enum Slot {
    Waiting(Option<std::task::Waker>),
    Answered(WaitAnswer),
}

/// What a waiter receives: the event, or the panic of its predicate, which the run loop runs
/// (see [`RunShared::offer_to_waiters`]) and which must fail the waiting step, not the run's
/// task.
type WaitAnswer = std::result::Result<DynEvent, Box<dyn Any + Send>>;

impl Waiter {
    fn matches(&self, event: &DynEvent) -> bool {
        (self.matches)(event)
    }

    /// Leaves `answer` for the step and wakes it.
    fn answer(&mut self, answer: WaitAnswer) {
        if let Slot::Waiting(Some(waker)) =
            std::mem::replace(&mut self.slot, Slot::Answered(answer))
        {
            waker.wake();
        }
    }
}

/// The waker of the run's first call (index 0): queues it for the run loop and wakes the run,
/// as `runtime::CallWake` does for the others.
impl<W: Workflow> futures_util::task::ArcWake for RunShared<W> {
    fn wake_by_ref(this: &Arc<Self>) {
        if !this.first_call_queued.swap(true, Ordering::AcqRel) {
            lock(&this.woken).push(0);
            this.notify();
        }
    }
}

impl<W: Workflow> RunShared<W> {
    pub(crate) fn new(state: W::State, stream_capacity: usize) -> RunShared<W> {
        RunShared {
            run_id: NEXT_RUN_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(state),
            inbox: Mutex::new(Vec::new()),
            mail: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            suspend: AtomicBool::new(false),
            holding: std::sync::atomic::AtomicU32::new(0),
            timed_out: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            woken: Mutex::new(Vec::new()),
            stream: Publisher::new(stream_capacity),
            waiters: Mutex::new(Vec::new()),
            next_waiter: std::sync::atomic::AtomicU32::new(1),
            stream_seq: AtomicU64::new(0),
            snapshots_closed: AtomicBool::new(false),
            first_call_queued: AtomicBool::new(false),
            journal: None,
            rare: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn with_journal(mut self, journal: Option<Journal>) -> RunShared<W> {
        self.journal = journal.map(Box::new);
        self
    }

    /// The parts few runs use, made now if they are not yet.
    pub(crate) fn rare(&self) -> &RareShared {
        self.rare.get_or_init(Box::default)
    }

    /// The parts few runs use, if something made them.
    pub(crate) fn rare_if_made(&self) -> Option<&RareShared> {
        self.rare.get().map(|r| &**r)
    }

    /// Its parent (a child run) and its children, if it has either.
    pub(crate) fn family(&self) -> Option<&crate::child::Family> {
        self.rare_if_made()?.family.get().map(|f| &**f)
    }

    /// The run's trace recorder, when its runner records.
    pub(crate) fn trace(&self) -> Option<&Arc<crate::trace::Recorder>> {
        self.rare_if_made()?.trace.get()
    }

    /// Keeps a failed attempt for `Handler::failures` (the latest `KEPT_FAILURES`).
    pub(crate) fn failed(&self, failure: crate::error::FailedAttempt) {
        let mut failures = lock(&self.rare().failures);
        if failures.len() == crate::error::KEPT_FAILURES {
            failures.pop_front();
        }
        failures.push_back(failure);
    }

    /// Asks the loop for a snapshot at its next turn.
    ///
    /// A run that is over drops `reply` at once: its handler reads that as `Cancelled`.
    pub(crate) fn request_snapshot(&self, reply: SnapshotReply) {
        let rare = self.rare();
        // Made (above) before the flag is read, with a fence on both sides: either this sees
        // the run closed, or `close_snapshot_requests` sees the part made and drops `reply`.
        std::sync::atomic::fence(Ordering::SeqCst);
        let mut requests = lock(&rare.snapshot_requests);
        if self.snapshots_closed.load(Ordering::Relaxed) {
            return;
        }
        requests.push(reply);
        drop(requests);
        self.notify();
    }

    /// The snapshot requests waiting for the loop, taken.
    pub(crate) fn take_snapshot_requests(&self) -> Vec<SnapshotReply> {
        match self.rare_if_made() {
            Some(rare) => std::mem::take(&mut *lock(&rare.snapshot_requests)),
            None => Vec::new(),
        }
    }

    /// The run is over: drops the snapshot requests nobody will answer (their handlers get
    /// `Cancelled`) and refuses later ones.
    pub(crate) fn close_snapshot_requests(&self) {
        self.snapshots_closed.store(true, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(rare) = self.rare_if_made() {
            // Under the lock: a request that read the flag before it was set is in the list
            // now, and goes; one that reads it after sees it set.
            let mut requests = lock(&rare.snapshot_requests);
            self.snapshots_closed.store(true, Ordering::Relaxed);
            requests.clear();
        }
    }

    pub(crate) fn post(&self, envelope: Envelope) {
        lock(&self.inbox).push(envelope);
        self.notify();
    }

    /// Posts `envelope` unless the run is leaving memory parked (`leave_unless_mail`): then it
    /// is handed back, not delivered, for the caller to answer the run in its store.
    #[cfg(feature = "serve")]
    pub(crate) fn post_unless_left(&self, envelope: Envelope) -> std::result::Result<(), Envelope> {
        let mut inbox = lock(&self.inbox);
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.left.load(Ordering::Relaxed))
        {
            return Err(envelope);
        }
        inbox.push(envelope);
        drop(inbox);
        self.notify();
        Ok(())
    }

    /// A durable run about to be evicted leaves memory only if no mail came since it last
    /// looked (an answer posted as it decided): under the mail's lock, so that an event is
    /// either seen here (the run stays and routes it) or refused by `post_unless_left`.
    pub(crate) fn leave_unless_mail(&self) -> bool {
        let Some(journal) = &self.journal else {
            return false;
        };
        let inbox = lock(&self.inbox);
        if !inbox.is_empty() {
            return false;
        }
        journal.left.store(true, Ordering::Relaxed);
        drop(inbox);
        true
    }

    /// Posts message `n` of the run's store inbox (an event, or `None` for a message that
    /// only moves the cursor: a cancel, or one that cannot be delivered): the cursor moves in
    /// the same lock, so the loop's drain sees both or neither (`crate::inbox`).
    pub(crate) fn post_from_inbox(&self, n: u64, envelope: Option<Envelope>) {
        let Some(journal) = &self.journal else {
            return;
        };
        let mut inbox = lock(&self.inbox);
        if let Some(envelope) = envelope {
            inbox.push(envelope);
        }
        journal.inbox.posted(n);
        drop(inbox);
        self.notify();
    }

    /// Tells the run loop that `mail` has something: wakes it, unless it is polling now and
    /// will see `mail` before it sleeps.
    ///
    /// Both sides use `SeqCst` (a store, then a load of the other's flag): either the loop
    /// sees `mail`, or this sees `polling == false` and wakes it. Never neither.
    pub(crate) fn notify(&self) {
        self.mail.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Are steps waiting inline? Only the run loop calls this, and steps register only while
    /// the loop polls them, so the answer holds while the loop routes its mail.
    pub(crate) fn has_waiters(&self) -> bool {
        !lock(&self.waiters).is_empty()
    }

    /// Gives `event` to the first waiter it matches, or back when none does.
    pub(crate) fn offer_to_waiters(&self, event: DynEvent) -> Option<DynEvent> {
        let mut waiters = lock(&self.waiters);
        if waiters.is_empty() {
            return Some(event);
        }
        loop {
            // A predicate is the step's code, run here by the loop: its panic is caught and
            // handed to its step, which panics with it (before, it unwound through the run
            // loop and the run's task panicked). Its waiter does not take the event.
            let mut panicked = None;
            let found = waiters.iter().position(|w| {
                // An answered waiter takes nothing more (it leaves the list when its step
                // takes its answer).
                if matches!(w.slot, Slot::Answered(_)) {
                    return false;
                }
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.matches(&event))) {
                    Ok(matched) => matched,
                    Err(panic) => {
                        panicked = Some(panic);
                        true
                    }
                }
            });
            let Some(i) = found else {
                return Some(event);
            };
            let waiter = &mut waiters[i];
            if let Some(panic) = panicked {
                waiter.answer(Err(panic));
                continue;
            }
            if waiter.record_as > 0 {
                let invocation = waiter.record_as;
                // Recorded before it is handed over: the checkpoint that follows the routing
                // of an answer from outside holds it, even before the step runs again.
                if let Ok(record) = crate::snapshot::encode_event::<W>(&event) {
                    let value = serde_json::to_value(record).expect("an event record is JSON");
                    let label = format!("wait_for:{}", event.name());
                    self.record(invocation, &label, value);
                }
            }
            waiters[i].answer(Ok(event));
            return None;
        }
    }

    /// The `nth` value recorded under `label` by `invocation`, if any.
    pub(crate) fn recall(
        &self,
        invocation: u64,
        label: &str,
        nth: u32,
    ) -> Option<serde_json::Value> {
        let memos = lock(&self.rare_if_made()?.memos);
        let (_, records) = memos.iter().find(|(i, _)| *i == invocation)?;
        records
            .iter()
            .filter(|r| r.label == label)
            .nth(nth as usize)
            .map(|r| r.value.clone())
    }

    pub(crate) fn record(&self, invocation: u64, label: &str, value: serde_json::Value) {
        let mut memos = lock(&self.rare().memos);
        let record = MemoRecord {
            label: label.to_string(),
            value,
        };
        match memos.iter_mut().find(|(i, _)| *i == invocation) {
            Some((_, records)) => records.push(record),
            None => memos.push((invocation, vec![record])),
        }
    }

    /// Counts the `nth` send under `label` by `invocation` (its record holds how many it sent),
    /// or tells that it was sent already (`true`).
    fn count_send(&self, invocation: u64, label: String, nth: u32) -> bool {
        let mut memos = lock(&self.rare().memos);
        let records = match memos.iter().position(|(i, _)| *i == invocation) {
            Some(at) => &mut memos[at].1,
            None => {
                memos.push((invocation, Vec::new()));
                &mut memos.last_mut().expect("pushed").1
            }
        };
        let sent = u64::from(nth) + 1;
        match records.iter_mut().find(|r| r.label == label) {
            Some(record) if record.value.as_u64().is_some_and(|n| n >= sent) => true,
            Some(record) => {
                record.value = sent.into();
                false
            }
            None => {
                records.push(MemoRecord {
                    label,
                    value: sent.into(),
                });
                false
            }
        }
    }

    /// What `invocation` recorded, for a snapshot.
    pub(crate) fn memo_of(&self, invocation: u64) -> Vec<MemoRecord> {
        let Some(rare) = self.rare_if_made() else {
            return Vec::new();
        };
        let memos = lock(&rare.memos);
        memos
            .iter()
            .find(|(i, _)| *i == invocation)
            .map(|(_, records)| records.clone())
            .unwrap_or_default()
    }

    /// The invocation ended: what it recorded is no longer needed.
    pub(crate) fn forget(&self, invocation: u64) {
        let Some(rare) = self.rare_if_made() else {
            return;
        };
        let mut memos = lock(&rare.memos);
        if !memos.is_empty() {
            memos.retain(|(i, _)| *i != invocation);
        }
    }

    /// A resumed invocation's records, from its snapshot.
    pub(crate) fn restore_memo(&self, invocation: u64, records: Vec<MemoRecord>) {
        if !records.is_empty() {
            lock(&self.rare().memos).push((invocation, records));
        }
    }

    /// Deregisters waiter `id` (its step went away: a time limit, a cancel), with its answer
    /// if one came.
    fn remove_waiter(&self, id: u32) {
        lock(&self.waiters).retain(|w| w.id != id);
    }

    /// Waiter `id`'s answer, taken (the waiter leaves the list), or pending (its step's
    /// waker kept for the answer).
    fn poll_waiter(
        &self,
        id: u32,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WaitAnswer>> {
        let mut waiters = lock(&self.waiters);
        let Some(i) = waiters.iter().position(|w| w.id == id) else {
            // Not registered any more: nothing will answer it.
            return std::task::Poll::Ready(None);
        };
        match &mut waiters[i].slot {
            Slot::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                std::task::Poll::Pending
            }
            Slot::Answered(_) => match waiters.remove(i).slot {
                Slot::Answered(answer) => std::task::Poll::Ready(Some(answer)),
                Slot::Waiting(_) => unreachable!("matched above"),
            },
        }
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.notify();
    }

    pub(crate) fn suspend(&self) {
        self.suspend.store(true, Ordering::Release);
        self.notify();
    }
}

/// A step's view of its run: shared typed state, sending events, writing to the stream.
///
/// A step receives it by declaring a parameter `ctx: &Context<Self>`; the type parameter is the
/// workflow, so `send_event` only accepts events of that workflow's graph.
///
/// ```
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Tick(u32);
///
/// #[derive(Default)]
/// struct Count { ticks: u32 }
///
/// struct Counter;
///
/// #[workflow(state = Count)]
/// impl Counter {
///     #[step]
///     async fn start(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Tick {
///         ctx.update_state(|s| s.ticks = 0);
///         Tick(ev.0)
///     }
///
///     #[step]
///     async fn tick(&self, ctx: &Context<Self>, ev: Tick) -> Either<Tick, StopEvent<u32>> {
///         let ticks = ctx.update_state(|s| { s.ticks += 1; s.ticks });
///         if ev.0 == 0 { Either::Right(StopEvent(ticks)) } else { Either::Left(Tick(ev.0 - 1)) }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(Counter.run(3).await.unwrap(), 4);
/// # }
/// ```
pub struct Context<W: Workflow> {
    pub(crate) shared: Arc<RunShared<W>>,
    pub(crate) step: u32,
    pub(crate) attempt: u32,
    pub(crate) worker: u32,
    /// The step has a retry policy: its collects remember what they did for the retries.
    pub(crate) retries: bool,
    /// The invocation's number in its run (stable across resumes of a durable run).
    pub(crate) invocation: u64,
    /// What few invocations have (made with the context when it has a last error or a
    /// deadline, else at the first ask): a plain step's context is a few words.
    pub(crate) extra: std::sync::OnceLock<Box<ContextExtra>>,
}

/// The rarely used part of a [`Context`].
#[derive(Default)]
pub(crate) struct ContextExtra {
    /// The error of the previous attempt, when this invocation is a retry.
    pub(crate) last_error: Option<Arc<dyn Error + Send + Sync>>,
    /// When the run's time limit passes: the deadline of the children this step starts is
    /// no later.
    pub(crate) deadline: Option<tokio::time::Instant>,
    /// How many times this attempt asked for each label (`once`, `wait_for`): the n-th ask
    /// gets the n-th recorded value.
    asked: Mutex<Vec<(String, u32)>>,
}

impl ContextExtra {
    /// The part of a new context, when it has anything: `OnceLock::new()` otherwise.
    pub(crate) fn slot(
        last_error: Option<Arc<dyn Error + Send + Sync>>,
        deadline: Option<tokio::time::Instant>,
    ) -> std::sync::OnceLock<Box<ContextExtra>> {
        if last_error.is_none() && deadline.is_none() {
            return std::sync::OnceLock::new();
        }
        std::sync::OnceLock::from(Box::new(ContextExtra {
            last_error,
            deadline,
            asked: Mutex::new(Vec::new()),
        }))
    }
}

impl<W: Workflow> Context<W> {
    /// The run's id, unique within the process.
    pub fn run_id(&self) -> RunId {
        self.shared.run_id
    }

    /// The name of the step this context was given to.
    pub fn step_name(&self) -> &'static str {
        W::GRAPH.steps[self.step as usize].name
    }

    /// The index of the step in the graph (generated code dispatches on it).
    #[doc(hidden)]
    pub fn step_index(&self) -> usize {
        self.step as usize
    }

    /// Which attempt this invocation is: 1 for the first, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The error of the previous attempt, when this invocation is a retry.
    pub fn last_error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.extra.get()?.last_error.as_deref()
    }

    /// A key naming this step invocation, the same on every attempt and, in a durable run,
    /// after any resume in any process: `"<run key>/<step>/<n>"` (`"run-<id>/<step>/<n>"`
    /// for a run that is not durable). Give it to a service that deduplicates requests (a
    /// payment API's idempotency key, an upsert's primary key) so that an effect done again
    /// after a crash is applied once.
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// struct Keyed;
    ///
    /// #[workflow]
    /// impl Keyed {
    ///     #[step]
    ///     async fn only(&self, ctx: &Context<Self>, _ev: StartEvent<()>) -> StopEvent<String> {
    ///         StopEvent(ctx.invocation_key())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let key = Keyed.run(()).await.unwrap();
    /// assert!(key.starts_with("run-") && key.ends_with("/only/1"), "{key}");
    /// # }
    /// ```
    pub fn invocation_key(&self) -> String {
        let step = self.step_name();
        match &self.shared.journal {
            Some(journal) => format!("{}/{step}/{}", journal.key, self.invocation),
            None => format!("run-{}/{step}/{}", self.shared.run_id, self.invocation),
        }
    }

    /// Runs `effect` once per invocation: its value is recorded, and, in a durable run, saved
    /// in the store before `once` returns. When the invocation runs again (a retry, a resume
    /// after a crash or from a snapshot), `once` with the same label returns the recorded
    /// value without running `effect`. Within one invocation the n-th `once` of a label gets
    /// the n-th recorded value, so a loop may use one label.
    ///
    /// This is how a step does work and then waits (`wait_for`) without doing the work again
    /// when the wait is resumed: put the work in `once`. What is not in a `once` runs again.
    /// A crash *during* `effect` (before its value is saved) runs it again: give the effect
    /// [`invocation_key`](Context::invocation_key) as its idempotency key to make that
    /// exact too. A failure the effect returns is a value like any other: return a `Result`
    /// and it comes back on resume; fail the step before `once` records it instead if the
    /// effect should be tried again.
    ///
    /// # Errors
    /// [`WorkflowError::Snapshot`] when the value does not serialize, or the recorded value
    /// does not deserialize as `T`; [`WorkflowError::Cancelled`] when the run ended (its store
    /// failed, typically) before the value was saved.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use tidewater::prelude::*;
    ///
    /// static EMAILS: AtomicU32 = AtomicU32::new(0);
    ///
    /// struct Notify;
    ///
    /// #[workflow]
    /// impl Notify {
    ///     #[step]
    ///     async fn send(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> Result<StopEvent<u32>, WorkflowError> {
    ///         let key = ctx.invocation_key();
    ///         let id = ctx
    ///             .once("email", || async move {
    ///                 // send_email(&ev.0, idempotency_key = key)...
    ///                 let _ = (ev.0, key);
    ///                 EMAILS.fetch_add(1, Ordering::SeqCst) + 1
    ///             })
    ///             .await?;
    ///         Ok(StopEvent(id))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(Notify.run("ada@example.com".into()).await.unwrap(), 1);
    /// # }
    /// ```
    pub async fn once<T, Fut>(&self, label: &str, effect: impl FnOnce() -> Fut) -> Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        Fut: std::future::Future<Output = T>,
    {
        let nth = self.ask(label);
        if let Some(value) = self.shared.recall(self.invocation, label, nth) {
            return serde_json::from_value(value).map_err(|e| {
                SnapshotError::new(
                    format!("in_flight.memo `{label}`"),
                    format!("the recorded value does not read back: {e}"),
                )
                .into()
            });
        }
        let value = effect().await;
        let data = serde_json::to_value(&value).map_err(|e| {
            WorkflowError::from(SnapshotError::new(
                format!("in_flight.memo `{label}`"),
                e.to_string(),
            ))
        })?;
        self.shared.record(self.invocation, label, data);
        self.flush().await?;
        Ok(value)
    }

    /// The number of the next ask of `label` in this attempt (0 for the first).
    pub(crate) fn ask(&self, label: &str) -> u32 {
        let mut asked = lock(&self.extra.get_or_init(Box::default).asked);
        match asked.iter_mut().find(|(l, _)| l == label) {
            Some((_, n)) => {
                *n += 1;
                *n - 1
            }
            None => {
                asked.push((label.to_string(), 1));
                0
            }
        }
    }

    /// How many times this attempt asked for `label` so far.
    fn asked_count(&self, label: &str) -> u32 {
        let Some(extra) = self.extra.get() else {
            return 0;
        };
        lock(&extra.asked)
            .iter()
            .find(|(l, _)| l == label)
            .map_or(0, |(_, n)| *n)
    }

    /// Durable runs: returns once the loop has checkpointed what this invocation recorded.
    async fn flush(&self) -> Result<()> {
        if self.shared.journal.is_none() {
            return Ok(());
        }
        let (done, saved) = tokio::sync::oneshot::channel();
        lock(&self.shared.rare().flush_requests).push(done);
        self.shared.notify();
        saved.await.map_err(|_| WorkflowError::Cancelled)
    }

    /// Which of the step's workers runs this invocation (`0..num_workers`).
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// Reads or changes the run's state atomically: no other step sees it half-changed.
    ///
    /// Returns what the closure returns, so one call can change the state and read what the
    /// step needs from it: `let round = ctx.update_state(|s| { s.round += 1; s.round });`.
    /// The closure runs under the state's lock, so it cannot await; keep it short.
    ///
    /// # Panics
    /// Re-panics nothing itself; if the closure panics, the step fails with that panic.
    pub fn update_state<R>(&self, f: impl FnOnce(&mut W::State) -> R) -> R {
        f(&mut lock(&self.shared.state))
    }

    /// A copy of the run's state.
    pub fn state(&self) -> W::State
    where
        W::State: Clone,
    {
        lock(&self.shared.state).clone()
    }

    /// Sends an event into the run, to every step that accepts it. Only events of this
    /// workflow's graph compile.
    ///
    /// In a `#[workflow(durable)]` workflow each send is counted in the invocation's record
    /// (saved with the checkpoint that routes it, before any step acts on it), so that when
    /// the invocation runs again after a resume, its n-th send of an `E` in the same attempt
    /// is not sent a second time: it was delivered already, and what it caused is in the
    /// store. A retry (a new attempt) sends again, as it does in memory.
    pub fn send_event<E: EventOf<W>>(&self, event: E) {
        if self.sent_before(E::NAME, None) {
            return;
        }
        self.shared.post(Envelope {
            event: DynEvent::new(event),
            target: None,
            from: Sender::Step(self.invocation),
        });
    }

    /// Durable workflows: counts this send in the invocation's record, and tells whether an
    /// earlier run of this attempt already sent it (the invocation runs again after a resume):
    /// then it is not sent again. A send that goes out is recorded in the run's trace, with
    /// the step and the attempt sending it.
    pub(crate) fn sent_before(&self, event: &'static str, target: Option<usize>) -> bool {
        let again = self.sent_before_in_journal(event, target);
        if !again {
            if let Some(trace) = self.shared.trace() {
                trace.record(crate::trace::TraceEvent::EventSent {
                    event: event.to_string(),
                    target: target.map(|t| W::GRAPH.steps[t].name.to_string()),
                    step: Some(W::GRAPH.steps[self.step as usize].name.to_string()),
                    attempt: Some(self.attempt),
                });
            }
        }
        again
    }

    fn sent_before_in_journal(&self, event: &'static str, target: Option<usize>) -> bool {
        if !W::DURABLE {
            return false;
        }
        let label = match target {
            None => format!("send_event:{}:{event}", self.attempt),
            Some(step) => format!(
                "send_event_to:{}:{}:{event}",
                W::GRAPH.steps[step].name,
                self.attempt
            ),
        };
        let nth = self.ask(&label);
        self.shared.count_send(self.invocation, label, nth)
    }

    /// What an earlier attempt of this invocation did with the collect buffer `key` (only for
    /// steps with retries, and only on a retry).
    fn held(&self, key: u64) -> Option<Held> {
        if !self.retries || self.attempt <= 1 {
            return None;
        }
        lock(&self.shared.rare().held)
            .iter()
            .find(|(at, k, _)| *at == ((self.step as usize), self.worker) && *k == key)
            .map(|(_, _, held)| held.clone())
    }

    fn hold(&self, key: u64, held: Held) {
        let mut all = lock(&self.shared.rare().held);
        let at = ((self.step as usize), self.worker);
        match all.iter_mut().find(|(a, k, _)| *a == at && *k == key) {
            Some(entry) => entry.2 = held,
            None => all.push((at, key, held)),
        }
    }

    /// Sends an event to the step named `step` only.
    ///
    /// # Errors
    /// [`WorkflowError::Undeliverable`] at once, and nothing is sent, when the workflow has no
    /// such step or the step does not accept `E`.
    pub fn send_event_to<E: EventOf<W>>(&self, step: &str, event: E) -> Result<()> {
        let index = target_step::<W>(step, E::ID, E::NAME)?;
        if self.sent_before(E::NAME, Some(index)) {
            return Ok(());
        }
        self.shared.post(Envelope {
            event: DynEvent::new(event),
            target: Some(index),
            from: Sender::Step(self.invocation),
        });
        Ok(())
    }

    /// Fan-in: buffers `event` and returns all `n` buffered events, in arrival order, once the
    /// `n`-th has arrived; `None` until then. Each complete set is returned exactly once (to the
    /// invocation whose event completed it), however many workers and producers race. One
    /// buffer per step and event type; cost is linear in `n`. After a complete set the buffer
    /// starts fresh: the next `n` events make the next set.
    ///
    /// # Panics
    /// When `n` is 0 (no set of 0 events can hold `event`): the step fails with that message.
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Part(u64);
    ///
    /// struct Sum;
    ///
    /// #[workflow]
    /// impl Sum {
    ///     #[step(emits = [Part])]
    ///     async fn split(&self, ctx: &Context<Self>, ev: StartEvent<u64>) {
    ///         for i in 1..=ev.0 { ctx.send_event(Part(i)); }
    ///     }
    ///
    ///     #[step]
    ///     async fn join(&self, ctx: &Context<Self>, ev: Part) -> Option<StopEvent<u64>> {
    ///         let parts = ctx.collect(ev, 4)?;
    ///         Some(StopEvent(parts.iter().map(|p| p.0).sum()))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(Sum.run(4).await.unwrap(), 10);
    /// # }
    /// ```
    pub fn collect<E: Event>(&self, event: E, n: usize) -> Option<Vec<E>> {
        assert!(
            n > 0,
            "`collect` of a `{}` with a count of 0: a set of 0 events cannot hold this one \
             (the count must be at least 1)",
            E::NAME
        );
        let key = E::ID.raw();
        let mut buffers = lock(&self.shared.rare().collect);
        buffers.want(
            ((self.step as usize), key),
            std::slice::from_ref(&E::NAME),
            Per::Set(n),
        );
        let held = self.held(key);
        if let Some(Held::Set(set)) = held {
            // A retry of the invocation that was handed this set: the same set again.
            return Some(
                set.into_iter()
                    .map(|e| e.downcast::<E>().expect("a set holds one type"))
                    .collect(),
            );
        }
        let buffer = buffers
            .entry(((self.step as usize), key), || {
                CollectBuffer::Typed(Box::new(VecDeque::<E>::new()))
            })
            .typed::<E>();
        // A retry whose earlier attempt buffered this same event does not buffer it twice.
        if held.is_none() {
            buffer.push_back(event);
        }
        if buffer.len() >= n {
            let set: Vec<E> = buffer.drain(..n).collect();
            if self.retries {
                self.hold(
                    key,
                    Held::Set(set.iter().cloned().map(DynEvent::new).collect()),
                );
            }
            Some(set)
        } else {
            if self.retries {
                self.hold(key, Held::Buffered);
            }
            None
        }
    }

    /// Typed heterogeneous fan-in: buffers `event` (one of the tuple's types, as received by a
    /// step taking an `Either` of them) and returns one of each, in the tuple's declared order,
    /// once every type has arrived; `None` until then. Each complete set is returned exactly
    /// once, whatever the arrival order. A type may stand at several positions
    /// (`(Hit, Miss, Hit)` waits for two `Hit`s); an event of a type the tuple does not hold is
    /// left alone (`None`, not buffered), for the step to handle itself. A tuple holding a type
    /// the step does not accept could never complete: written with a turbofish
    /// (`collect_each::<(A, B)>`), it does not compile.
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// #[derive(Debug, Clone, Event)] struct Weather(String);
    /// #[derive(Debug, Clone, Event)] struct News(String);
    ///
    /// struct Brief;
    ///
    /// #[workflow]
    /// impl Brief {
    ///     #[step(emits = [Weather, News])]
    ///     async fn fetch(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
    ///         ctx.send_event(News("rates up".into()));
    ///         ctx.send_event(Weather("sunny".into()));
    ///     }
    ///
    ///     #[step]
    ///     async fn join(&self, ctx: &Context<Self>, ev: Either<Weather, News>) -> Option<StopEvent<String>> {
    ///         let (weather, news) = ctx.collect_each::<(Weather, News)>(ev)?;
    ///         Some(StopEvent(format!("{}, {}", weather.0, news.0)))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(Brief.run(()).await.unwrap(), "sunny, rates up");
    /// # }
    /// ```
    pub fn collect_each<T: CollectSet>(&self, event: impl IntoDynEvent) -> Option<T> {
        let event = event.into_dyn();
        let positions = T::slots_of(&event);
        if positions == 0 {
            // Not one of the collected types (the step also accepts others): left alone.
            return None;
        }
        let mut buffers = lock(&self.shared.rare().collect);
        buffers.want(((self.step as usize), T::KEY), T::NAMES, Per::Set(1));
        let held = self.held(T::KEY);
        if let Some(Held::Set(set)) = held {
            return Some(T::from_events(&mut set.into_iter()));
        }
        let slots = buffers
            .entry(((self.step as usize), T::KEY), || {
                CollectBuffer::Erased(vec![VecDeque::new(); T::LEN])
            })
            .erased();
        if held.is_none() {
            // A type that stands at several positions fills them in turn: the emptiest first.
            let slot = (0..T::LEN)
                .filter(|i| positions & (1 << i) != 0)
                .min_by_key(|i| slots[*i].len())
                .expect("at least one position");
            slots[slot].push_back(event);
        }
        if slots.iter().all(|s| !s.is_empty()) {
            let taken: Vec<DynEvent> = slots
                .iter_mut()
                .map(|s| s.pop_front().expect("checked non-empty"))
                .collect();
            if self.retries {
                self.hold(T::KEY, Held::Set(taken.clone()));
            }
            Some(T::from_events(&mut taken.into_iter()))
        } else {
            if self.retries {
                self.hold(T::KEY, Held::Buffered);
            }
            None
        }
    }

    /// Fan-in whose size the producer tells up front, so that a fan-out of any size, 0
    /// included, completes its join exactly once.
    ///
    /// The producer sends a count event `C` of its own (`Planned(n)`) besides the `n` items
    /// `E`; the join takes `Either<C, E>` and hands each one here with `count`, which reads
    /// `n` from a `C`. It returns the `n` items (in arrival order) once the count and `n` items
    /// have arrived, whatever their order: at once, and empty, when `n` is 0; `None` until
    /// then. Each count event completes exactly one set. Several rounds complete in the order
    /// their counts arrived, each taking the next items in arrival order.
    ///
    /// A run stuck short of a set says so: ``step `join` waits in `collect_counted` for 5
    /// `app::Job` event(s) (as its `app::Planned` told) and has 3``.
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// #[derive(Debug, Clone, Event)] struct Planned(usize);
    /// #[derive(Debug, Clone, Event)] struct Job(u64);
    ///
    /// struct Jobs;
    ///
    /// #[workflow]
    /// impl Jobs {
    ///     #[step(emits = [Job])]
    ///     async fn plan(&self, ctx: &Context<Self>, ev: StartEvent<u64>) -> Planned {
    ///         for i in 1..=ev.0 { ctx.send_event(Job(i)); }
    ///         Planned(ev.0 as usize) // may be 0
    ///     }
    ///
    ///     #[step]
    ///     async fn join(&self, ctx: &Context<Self>, ev: Either<Planned, Job>) -> Option<StopEvent<u64>> {
    ///         let jobs = ctx.collect_counted(ev, |planned| planned.0)?;
    ///         Some(StopEvent(jobs.iter().map(|j| j.0).sum()))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(Jobs.run(4).await.unwrap(), 10);
    /// assert_eq!(Jobs.run(0).await.unwrap(), 0);
    /// # }
    /// ```
    pub fn collect_counted<C: Event, E: Event>(
        &self,
        event: Either<C, E>,
        count: impl Fn(&C) -> usize,
    ) -> Option<Vec<E>> {
        // Its own key (not `collect_each::<(C, E)>`'s), stable across processes.
        let key = <(C, E) as CollectSet>::KEY ^ 0x636f_756e_7465_6421;
        let told = |slot: &VecDeque<DynEvent>| {
            slot.front()
                .map(|c| count(c.downcast_ref::<C>().expect("counts hold one type")))
        };
        let items = |set: Vec<DynEvent>| -> Vec<E> {
            set.into_iter()
                .map(|e| e.downcast::<E>().expect("items hold one type"))
                .collect()
        };
        let mut buffers = lock(&self.shared.rare().collect);
        let held = self.held(key);
        if let Some(Held::Set(set)) = held {
            // A retry of the invocation that was handed this set: the same set again.
            return Some(items(set));
        }
        let slots = buffers
            .entry(((self.step as usize), key), || {
                CollectBuffer::Erased(vec![VecDeque::new(), VecDeque::new()])
            })
            .erased();
        // A retry whose earlier attempt buffered this same event does not buffer it twice.
        if held.is_none() {
            match event {
                Either::Left(c) => slots[0].push_back(DynEvent::new(c)),
                Either::Right(e) => slots[1].push_back(DynEvent::new(e)),
            }
        }
        let mut set = None;
        let mut again = None;
        if let Some(n) = told(&slots[0]).filter(|n| *n <= slots[1].len()) {
            slots[0].pop_front();
            let taken: Vec<DynEvent> = slots[1].drain(..n).collect();
            if self.retries {
                self.hold(key, Held::Set(taken.clone()));
            }
            set = Some(items(taken));
            // The next round may be complete already (a count of 0, or items that came
            // early): its count goes back to this step, so that an invocation returns it.
            if told(&slots[0]).is_some_and(|n| n <= slots[1].len()) {
                again = slots[0].pop_front();
            }
        } else if self.retries {
            self.hold(key, Held::Buffered);
        }
        let next = told(&slots[0]);
        buffers.want(
            ((self.step as usize), key),
            <(C, E) as CollectSet>::NAMES,
            Per::Told(next),
        );
        drop(buffers);
        if let Some(c) = again {
            self.shared.post(Envelope {
                event: c,
                target: Some(self.step as usize),
                from: Sender::Run,
            });
        }
        set
    }

    /// Waits inside the step for an event of type `R` sent to the run (typically a response
    /// from outside through `Handler::send_event`), optionally publishing a request first,
    /// matching on its fields, and with a time limit.
    ///
    /// The event that satisfies a waiter goes to that waiter only: no step receives it too.
    /// Several waiters each get their own answer (the first registered matching waiter wins).
    ///
    /// In a durable workflow the answer is recorded when it arrives (and, in a durable run,
    /// saved in the store before the step sees it): if the invocation runs again (a resume
    /// after a crash or from a snapshot, a retry), the n-th `wait_for::<R>` of the step
    /// returns the n-th answer it received, at once and without publishing its request again.
    /// The step's code before the wait does run again: put its side effects in
    /// [`Context::once`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewater::prelude::*;
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Question { id: u32, text: String }
    ///
    /// #[derive(Debug, Clone, Event)]
    /// #[event(response)]
    /// struct Answer { id: u32, text: String }
    ///
    /// struct Interview;
    ///
    /// #[workflow]
    /// impl Interview {
    ///     #[step]
    ///     async fn ask(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Result<StopEvent<String>, WorkflowError> {
    ///         let id = ev.0;
    ///         let answer = ctx
    ///             .wait_for::<Answer>()
    ///             .publishing(Question { id, text: "name?".into() })
    ///             .matching(move |a| a.id == id)
    ///             .timeout(Duration::from_secs(60))
    ///             .await?;
    ///         Ok(StopEvent(answer.text))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use futures_util::StreamExt;
    /// let mut run = Interview.start(7);
    /// let mut events = run.events();
    /// while let Some(item) = events.next().await {
    ///     if let Some(q) = item.event::<Question>() {
    ///         run.send_response(Answer { id: q.id, text: "Ada".into() });
    ///         break;
    ///     }
    /// }
    /// assert_eq!(run.await.unwrap(), "Ada");
    /// # }
    /// ```
    pub fn wait_for<R: Event>(&self) -> WaitFor<'_, W, R> {
        WaitFor {
            ctx: self,
            matches: None,
            request: None,
            timeout: None,
        }
    }

    /// Writes an event to the run's stream, for whoever watches the run (progress, tokens, ...).
    /// It does not enter the graph. Costs nothing when nobody subscribed.
    ///
    /// In a durable run every such event is also journaled, in order, in the run's store
    /// (serialized when it is an event of the graph, as its `Debug` text otherwise).
    pub fn write_event_to_stream<E: Event>(&self, event: E) {
        let shared = &self.shared;
        if shared.journal.is_some() {
            // Journaled when this invocation ends, numbered then: an invocation that is cut
            // short (a crash, a cancel) and runs again on resume writes its events once.
            let event = DynEvent::new(event.clone());
            let record = crate::snapshot::encode_event::<W>(&event).unwrap_or_else(|_| {
                crate::snapshot::EventRecord {
                    event: event.name().to_string(),
                    data: serde_json::json!({ "debug": format!("{event:?}") }),
                }
            });
            lock(&shared.rare().journal_pending)
                .push((((self.step as usize), self.worker), record));
        } else {
            shared.stream_seq.fetch_add(1, Ordering::Relaxed);
        }
        if shared.stream.has_subscribers() {
            shared
                .stream
                .publish(StreamItem::Event(DynEvent::new(event)));
        }
    }
}

/// Marks the event types that belong to workflow `W`'s graph; `#[workflow]` implements it for
/// every event a step of `W` accepts or emits.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event of workflow `{W}`",
    label = "no step of `{W}` accepts or emits this event",
    note = "only events of the workflow's graph can be sent; add a step that accepts `{Self}`"
)]
pub trait EventOf<W: Workflow>: Event {}

/// Resolves a step name for targeted delivery.
pub(crate) fn target_step<W: Workflow>(
    step: &str,
    id: crate::EventId,
    event: &'static str,
) -> Result<usize> {
    let index = W::GRAPH
        .step_index(step)
        .ok_or_else(|| WorkflowError::Undeliverable {
            event,
            reason: format!("workflow `{}` has no step `{step}`", W::GRAPH.workflow),
        })?;
    if !W::GRAPH.accepts(index, id) {
        return Err(WorkflowError::Undeliverable {
            event,
            reason: format!("step `{step}` does not accept it"),
        });
    }
    Ok(index)
}

/// A tuple of event types collected one of each by [`Context::collect_each`].
pub trait CollectSet: Sized + 'static {
    /// How many types.
    #[doc(hidden)]
    const LEN: usize;
    /// The buffer's key: a mix of the types' ids, stable across processes.
    #[doc(hidden)]
    const KEY: u64;
    /// The types' stable names, in the tuple's order.
    #[doc(hidden)]
    const NAMES: &'static [&'static str];
    /// The positions of the tuple that `event`'s type stands at, as a bit mask (0: none).
    #[doc(hidden)]
    fn slots_of(event: &DynEvent) -> u32;
    /// Builds the tuple from one event per position, in order.
    #[doc(hidden)]
    fn from_events(events: &mut dyn Iterator<Item = DynEvent>) -> Self;
}

macro_rules! collect_set {
    ($len:literal: $($ty:ident $index:tt),+) => {
        impl<$($ty: Event),+> CollectSet for ($($ty,)+) {
            const LEN: usize = $len;
            const KEY: u64 = {
                let mut key: u64 = 0x51_7C_C1_B7_27_22_0A_95;
                $(key = (key ^ $ty::ID.raw()).rotate_left(17).wrapping_mul(0x0100_0000_01b3);)+
                key
            };
            const NAMES: &'static [&'static str] = &[$($ty::NAME),+];
            fn slots_of(event: &DynEvent) -> u32 {
                let mut mask = 0;
                $(if event.is::<$ty>() { mask |= 1 << $index; })+
                mask
            }
            fn from_events(events: &mut dyn Iterator<Item = DynEvent>) -> Self {
                ($(
                    events
                        .next()
                        .and_then(|e| e.downcast::<$ty>().ok())
                        .expect("one event per slot, in slot order"),
                )+)
            }
        }
    };
}

collect_set!(2: A 0, B 1);
collect_set!(3: A 0, B 1, C 2);
collect_set!(4: A 0, B 1, C 2, D 3);
collect_set!(5: A 0, B 1, C 2, D 3, E 4);
collect_set!(6: A 0, B 1, C 2, D 3, E 4, F 5);

/// A user's filter on awaited events.
type Predicate<R> = Box<dyn Fn(&R) -> bool + Send>;

/// A pending inline wait, built by [`Context::wait_for`]; `.await` it.
#[must_use = "a wait does nothing until it is awaited"]
pub struct WaitFor<'a, W: Workflow, R: Event> {
    ctx: &'a Context<W>,
    matches: Option<Predicate<R>>,
    request: Option<DynEvent>,
    timeout: Option<std::time::Duration>,
}

impl<'a, W: Workflow, R: Event> WaitFor<'a, W, R> {
    /// Accept only events for which `predicate` is true (e.g. the answer to *this* request).
    pub fn matching(mut self, predicate: impl Fn(&R) -> bool + Send + 'static) -> Self {
        self.matches = Some(Box::new(predicate));
        self
    }

    /// Publish `request` on the run's stream once the wait is registered, so that an answer
    /// cannot arrive before anyone waits for it.
    pub fn publishing<E: Event>(mut self, request: E) -> Self {
        self.request = Some(DynEvent::new(request));
        self
    }

    /// Give up after `limit` with [`WorkflowError::WaitTimedOut`].
    pub fn timeout(mut self, limit: std::time::Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
}

impl<'a, W: Workflow, R: Event> std::future::IntoFuture for WaitFor<'a, W, R> {
    type Output = Result<R>;
    type IntoFuture = Waiting<'a, W, R>;

    fn into_future(self) -> Waiting<'a, W, R> {
        let options = (self.matches.is_some() || self.request.is_some() || self.timeout.is_some())
            .then(|| {
                Box::new(WaitOptions {
                    matches: self.matches,
                    request: self.request,
                    timeout: self.timeout,
                })
            });
        Waiting {
            ctx: self.ctx,
            state: WaitState::Start(options),
        }
    }
}

/// An inline wait in progress: what awaiting a [`WaitFor`] (from [`Context::wait_for`])
/// polls. A named type rather than a boxed future, so that a step parked on it (a run waiting
/// for a human) carries its few words inline.
///
/// ```
/// use tidewater::prelude::*;
/// use tidewater::Waiting;
///
/// #[derive(Debug, Clone, Event)]
/// #[event(response)]
/// struct Approval(bool);
///
/// struct Gate;
///
/// #[workflow]
/// impl Gate {
///     #[step]
///     async fn ask(&self, ctx: &Context<Self>, _ev: StartEvent<()>) -> Result<StopEvent<bool>, WorkflowError> {
///         let wait: Waiting<'_, Self, Approval> = std::future::IntoFuture::into_future(ctx.wait_for());
///         Ok(StopEvent(wait.await?.0))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let run = Gate.start(());
/// run.send_response(Approval(true));
/// assert!(run.await.unwrap());
/// # }
/// ```
#[must_use = "a wait does nothing until it is awaited"]
pub struct Waiting<'a, W: Workflow, R: Event> {
    ctx: &'a Context<W>,
    state: WaitState<'a, R>,
}

/// What a wait was built with, when it was built with anything (boxed: a plain
/// `wait_for::<R>()` carries none).
struct WaitOptions<R: Event> {
    matches: Option<Predicate<R>>,
    request: Option<DynEvent>,
    timeout: Option<std::time::Duration>,
}

/// A wait's time limit and its timer.
type WaitLimit = Box<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>;

enum WaitState<'a, R: Event> {
    /// Not polled yet: the wait as built.
    Start(Option<Box<WaitOptions<R>>>),
    /// Registered as waiter `id` (deregistered when the future is dropped), with its time
    /// limit and timer (boxed: a wait without a time limit, a parked run, carries none).
    Registered {
        id: u32,
        limit: Option<WaitLimit>,
    },
    /// Durable workflows: the answer is being recorded and saved before the step sees it.
    Saving(Pin<Box<dyn Future<Output = Result<R>> + Send + 'a>>),
    Done,
}

use std::future::Future;
use std::pin::Pin;

impl<W: Workflow, R: Event> Unpin for Waiting<'_, W, R> {}

impl<'a, W: Workflow, R: Event> Waiting<'a, W, R> {
    /// The wait got `event` (label: durable workflows record it first).
    fn got(&mut self, label: Option<String>, event: DynEvent) -> std::task::Poll<Result<R>> {
        match label {
            None => {
                self.state = WaitState::Done;
                std::task::Poll::Ready(Ok(event
                    .downcast::<R>()
                    .unwrap_or_else(|_| unreachable!("the matcher checked the type"))))
            }
            Some(label) => {
                let ctx = self.ctx;
                self.state = WaitState::Saving(Box::pin(ctx.received::<R>(Some(label), event)));
                std::task::Poll::Pending
            }
        }
    }

    /// The first poll: an answer recorded before (durable), an unclaimed answer, or
    /// registered as a waiter.
    fn start(&mut self, options: Option<Box<WaitOptions<R>>>) -> std::task::Poll<Result<R>> {
        let (matches, request, timeout) = match options {
            Some(options) => {
                let WaitOptions {
                    matches,
                    request,
                    timeout,
                } = *options;
                (matches, request, timeout)
            }
            None => (None, None, None),
        };
        let ctx = self.ctx;
        let shared = &ctx.shared;
        // Durable workflows: the n-th wait for an `R` of this invocation is answered by the
        // n-th `R` it received, recorded when it came.
        let recorded = if W::DURABLE {
            let label = format!("wait_for:{}", R::NAME);
            let nth = ctx.ask(&label);
            if let Some(value) = shared.recall(ctx.invocation, &label, nth) {
                self.state = WaitState::Done;
                return std::task::Poll::Ready(replay::<W, R>(&label, value));
            }
            Some(label)
        } else {
            None
        };
        let mut waiter = Waiter {
            id: 0,
            matches: match matches {
                None => Box::new(|event: &DynEvent| event.is::<R>()),
                Some(predicate) => Box::new(move |event: &DynEvent| {
                    event.downcast_ref::<R>().is_some_and(&predicate)
                }),
            },
            slot: Slot::Waiting(None),
            record_as: if recorded.is_some() {
                ctx.invocation
            } else {
                0
            },
        };
        let registered = {
            let mut waiters = lock(&shared.waiters);
            // An answer that came before anyone waited is taken at once.
            let mut unclaimed = shared.rare_if_made().map(|r| lock(&r.unclaimed));
            if let Some((unclaimed, i)) = unclaimed.as_mut().and_then(|unclaimed| {
                let i = unclaimed.iter().position(|e| waiter.matches(e))?;
                Some((unclaimed, i))
            }) {
                Err(unclaimed.remove(i))
            } else {
                // Grown from one: most runs have one waiter, and a parked run pays for the
                // rest.
                if waiters.len() == waiters.capacity() {
                    let more = waiters.len().max(1);
                    waiters.reserve_exact(more);
                }
                // A 32-bit id, unique among the waiters registered: one still in use after
                // the ids wrapped around is skipped.
                let id = loop {
                    let id = shared.next_waiter.fetch_add(1, Ordering::Relaxed);
                    if !waiters.iter().any(|w| w.id == id) {
                        break id;
                    }
                };
                waiter.id = id;
                waiters.push(waiter);
                Ok(id)
            }
        };
        let id = match registered {
            Ok(id) => id,
            Err(event) => return self.got(recorded, event),
        };
        // Deregistered on every exit from now on: answered, timed out, or the step dropped.
        self.state = WaitState::Registered {
            id,
            limit: timeout.map(|limit| Box::new((limit, Box::pin(tokio::time::sleep(limit))))),
        };
        if let Some(trace) = shared.trace() {
            // An inline wait is a wait for a human too: drawn as the request it
            // published, or as the answer it waits for when it published none.
            let request = request.as_ref().map_or(R::NAME, |r| r.name());
            trace.record(crate::trace::TraceEvent::HumanWait {
                request: request.to_string(),
            });
        }
        if let Some(request) = request {
            shared.stream.publish(StreamItem::Event(request));
        }
        std::task::Poll::Pending
    }
}

impl<W: Workflow, R: Event> Future for Waiting<'_, W, R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<R>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, WaitState::Done) {
                WaitState::Start(options) => {
                    if let Poll::Ready(result) = this.start(options) {
                        return Poll::Ready(result);
                    }
                    // Registered (polled below, so that the answer finds the waker), or
                    // saving an early answer.
                }
                WaitState::Registered { id, mut limit } => {
                    // The answer first, then the time limit, as `tokio::time::timeout` does:
                    // an answer that is there in time is never cut off.
                    let answer = match this.ctx.shared.poll_waiter(id, cx) {
                        Poll::Ready(answer) => answer,
                        Poll::Pending => {
                            if let Some((timeout, sleep)) = limit.as_deref_mut() {
                                if sleep.as_mut().poll(cx).is_ready() {
                                    this.ctx.shared.remove_waiter(id);
                                    return Poll::Ready(Err(WorkflowError::WaitTimedOut {
                                        event: R::NAME,
                                        timeout: *timeout,
                                    }));
                                }
                            }
                            this.state = WaitState::Registered { id, limit };
                            return Poll::Pending;
                        }
                    };
                    let Some(answer) = answer else {
                        return Poll::Ready(Err(WorkflowError::Cancelled));
                    };
                    // The predicate panicked in the run loop: the panic is this step's.
                    let event = answer.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    let label = W::DURABLE.then(|| format!("wait_for:{}", R::NAME));
                    if let Poll::Ready(result) = this.got(label, event) {
                        return Poll::Ready(result);
                    }
                }
                WaitState::Saving(mut saving) => {
                    let polled = saving.as_mut().poll(cx);
                    if polled.is_pending() {
                        this.state = WaitState::Saving(saving);
                    }
                    return polled;
                }
                WaitState::Done => panic!("a wait polled after it was answered"),
            }
        }
    }
}

impl<W: Workflow, R: Event> Drop for Waiting<'_, W, R> {
    fn drop(&mut self) {
        // The step went away while it waited (a cancel, its time limit, the run's end).
        if let WaitState::Registered { id, .. } = self.state {
            self.ctx.shared.remove_waiter(id);
        }
    }
}

impl<W: Workflow> Context<W> {
    /// A wait got `event`: recorded under `label` (durable workflows) and saved (durable
    /// runs) before the step sees it. An answer of a type outside the graph cannot be
    /// serialized: it is handed over unrecorded, and a re-run waits for it again.
    async fn received<R: Event>(&self, label: Option<String>, event: DynEvent) -> Result<R> {
        if let Some(label) = label {
            let nth = self.asked_count(&label).saturating_sub(1);
            if self.shared.recall(self.invocation, &label, nth).is_some() {
                // Recorded by the loop when it handed the answer over.
                self.flush().await?;
            } else if let Ok(record) = crate::snapshot::encode_event::<W>(&event) {
                let value = serde_json::to_value(record).expect("an event record is JSON");
                self.shared.record(self.invocation, &label, value);
                self.flush().await?;
            }
        }
        Ok(event
            .downcast::<R>()
            .unwrap_or_else(|_| unreachable!("the matcher checked the type")))
    }
}

/// The answer a wait received before, read back from its record.
fn replay<W: Workflow, R: Event>(label: &str, value: serde_json::Value) -> Result<R> {
    let bad = |reason: String| -> WorkflowError {
        SnapshotError::new(format!("in_flight.memo `{label}`"), reason).into()
    };
    let record: crate::snapshot::EventRecord =
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    let event = crate::snapshot::decode_event::<W>(&record).map_err(|(_, reason)| bad(reason))?;
    event
        .downcast::<R>()
        .map_err(|e| bad(format!("recorded a `{}`, not a `{}`", e.name(), R::NAME)))
}
