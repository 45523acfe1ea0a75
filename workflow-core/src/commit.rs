//! Group commit: the one writer of a store.
//!
//! A durable run does not write its store itself. It hands each checkpoint (with the stream
//! events journaled before it) to the store's [`Committer`] and awaits the [`Ticket`]: its
//! task is free meanwhile, and no tokio worker ever blocks on a disk write. The committer's
//! thread takes everything queued since its last commit, from every run of the store, and
//! writes it with one [`Store::write_batch`] call: one transaction and one sync for all the
//! runs that completed a step at about the same moment. A run acts on a step's outputs only
//! once the ticket of the checkpoint recording that step's completion is ready.
//!
//! Jobs are written in the order they were handed over, so the writes of one run stay in
//! order (a release after the run's last checkpoint, an end after its last step), and a
//! blocking caller (`Ticket::wait`, for the few writes made outside a run's poll) is ordered
//! with them too.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, Waker};

use crate::snapshot::EventRecord;
use crate::store::{Lease, RunRecord, Store, StoreError, Write};
use crate::stream::lock;

/// At most this many runs' jobs in one commit, so that a burst does not make one huge
/// transaction that every run of it waits for.
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// The writer of one store, shared by every run that journals in it (found by the store's
/// address, [`Committer::for_store`]). Its thread starts with the first job and stops when
/// the last handle is dropped, after writing what was queued.
pub(crate) struct Committer {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Queued>,
    /// The writer thread runs.
    started: bool,
    /// Every handle is gone: write what is queued and stop.
    closed: bool,
}

/// What one run hands over at once: the events it journaled since its last checkpoint, then
/// its record (either may be empty), then, if asked, its release.
pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) lease: Lease,
    pub(crate) events: Vec<(u64, EventRecord)>,
    pub(crate) record: Option<RunRecord>,
    /// Give the run up after the writes ([`Store::release`]).
    pub(crate) release: bool,
}

/// The committers alive, by the address of their store.
type Registry = Vec<(usize, Weak<Committer>)>;

static COMMITTERS: Mutex<Registry> = Mutex::new(Vec::new());

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    /// The committer of `store`: the one every other run of this store uses, or a new one.
    pub(crate) fn for_store(store: &Arc<dyn Store>) -> Arc<Committer> {
        let address = Arc::as_ptr(store) as *const () as usize;
        let mut committers = lock(&COMMITTERS);
        committers.retain(|(_, committer)| committer.strong_count() > 0);
        if let Some(committer) = committers
            .iter()
            .find(|(at, _)| *at == address)
            .and_then(|(_, committer)| committer.upgrade())
        {
            return committer;
        }
        let committer = Arc::new(Committer {
            shared: Arc::new(Shared {
                store: store.clone(),
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
            }),
        });
        committers.push((address, Arc::downgrade(&committer)));
        committer
    }

    /// Whether this is the writer of `store`.
    pub(crate) fn writes(&self, store: &Arc<dyn Store>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.shared.store), Arc::as_ptr(store))
    }

    /// Queues `job` for the next commit; the ticket is ready once it is durable (or failed).
    pub(crate) fn submit(&self, job: Job) -> Ticket {
        let ticket = Ticket(Arc::new(TicketState::default()));
        let mut queue = lock(&self.shared.queue);
        if !queue.started {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("tidewater-commit".into())
                .spawn(move || shared.run());
            if let Err(error) = spawned {
                drop(queue);
                ticket.0.complete(Err(StoreError::new(format!(
                    "cannot start the store's writer thread: {error}"
                ))));
                return ticket;
            }
            queue.started = true;
        }
        queue.jobs.push(Queued {
            job,
            ticket: ticket.0.clone(),
        });
        drop(queue);
        self.shared.wake.notify_one();
        ticket
    }
}

impl Committer {
    /// Writes `job` now and blocks until it is durable, ordered after every job handed over
    /// before (for the few writes made outside a run's poll: a dropped run's release). On the
    /// writer thread itself (a run dropped there, with the last handle on it) it writes
    /// directly: the writer cannot wait for itself.
    pub(crate) fn write_now(&self, job: Job) -> Result<(), StoreError> {
        if ON_WRITER.with(std::cell::Cell::get) {
            let ticket = Arc::new(TicketState::default());
            self.shared.commit(vec![Queued {
                job,
                ticket: ticket.clone(),
            }]);
            return Ticket(ticket).wait();
        }
        self.submit(job).wait()
    }
}

thread_local! {
    /// This thread is a store's writer.
    static ON_WRITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for Committer {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
    }
}

/// A job and where its outcome goes.
struct Queued {
    job: Job,
    ticket: Arc<TicketState>,
}

impl Shared {
    /// The writer thread: commits whatever is queued, until every handle is gone.
    fn run(self: Arc<Self>) {
        ON_WRITER.with(|on| on.set(true));
        loop {
            let batch: Vec<Queued> = {
                let mut queue = lock(&self.queue);
                while queue.jobs.is_empty() && !queue.closed {
                    queue = self
                        .wake
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if queue.jobs.is_empty() {
                    return;
                }
                let n = queue.jobs.len().min(MAX_JOBS_PER_COMMIT);
                queue.jobs.drain(..n).collect()
            };
            self.commit(batch);
        }
    }

    /// Writes the jobs of `batch` in one [`Store::write_batch`] call and completes their
    /// tickets: a job fails with the first error among its writes.
    fn commit(&self, batch: Vec<Queued>) {
        let mut outcomes: Vec<Result<(), StoreError>> = {
            let mut writes = Vec::new();
            let mut spans = Vec::with_capacity(batch.len());
            for Queued { job, .. } in &batch {
                let start = writes.len();
                for (seq, event) in &job.events {
                    writes.push(Write::Event {
                        key: &job.key,
                        lease: &job.lease,
                        seq: *seq,
                        event,
                    });
                }
                if let Some(record) = &job.record {
                    writes.push(Write::Save {
                        key: &job.key,
                        lease: &job.lease,
                        record,
                    });
                }
                spans.push(start..writes.len());
            }
            let results = if writes.is_empty() {
                Ok(Vec::new())
            } else {
                // A store that panics fails the batch; the writer goes on with the next one.
                std::panic::catch_unwind(AssertUnwindSafe(|| self.store.write_batch(&writes)))
            };
            match results {
                Ok(results) if results.len() == writes.len() => {
                    let mut results = results.into_iter();
                    spans
                        .iter()
                        .map(|span| {
                            let mut outcome = Ok(());
                            for result in results.by_ref().take(span.len()) {
                                if outcome.is_ok() {
                                    outcome = result;
                                }
                            }
                            outcome
                        })
                        .collect()
                }
                Ok(results) => {
                    let message = format!(
                        "the store answered {} results for a batch of {} writes",
                        results.len(),
                        writes.len()
                    );
                    batch
                        .iter()
                        .map(|_| Err(StoreError::new(&message)))
                        .collect()
                }
                Err(panic) => {
                    let message = format!(
                        "the store panicked while writing: {}",
                        crate::runtime::panic_message(&*panic)
                    );
                    batch
                        .iter()
                        .map(|_| Err(StoreError::new(&message)))
                        .collect()
                }
            }
        };
        // Releases come after the writes they follow (a run releases once, at its end).
        for (Queued { job, .. }, outcome) in batch.iter().zip(outcomes.iter_mut()) {
            if job.release && outcome.is_ok() {
                *outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.store.release(&job.key, &job.lease)
                }))
                .unwrap_or_else(|_| Err(StoreError::new("the store panicked in a release")));
            }
        }
        for (Queued { ticket, .. }, outcome) in batch.into_iter().zip(outcomes) {
            ticket.complete(outcome);
        }
    }
}

/// A write handed to a [`Committer`]: ready once it is durable, with its outcome.
pub(crate) struct Ticket(Arc<TicketState>);

#[derive(Default)]
struct TicketState {
    slot: Mutex<Slot>,
    ready: Condvar,
}

#[derive(Default)]
struct Slot {
    outcome: Option<Result<(), StoreError>>,
    waker: Option<Waker>,
}

impl TicketState {
    fn complete(&self, outcome: Result<(), StoreError>) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.outcome = Some(outcome);
            slot.waker.take()
        };
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Ticket {
    /// Ready with the outcome once the write is durable or failed; until then the task is
    /// woken by the writer.
    pub(crate) fn poll(&self, cx: &mut TaskContext<'_>) -> Poll<Result<(), StoreError>> {
        let mut slot = lock(&self.0.slot);
        match slot.outcome.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                match &slot.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Blocks the calling thread until the write is durable or failed (for the few writes
    /// made outside a run's poll: a child stopped by its parent's end, a dropped run's
    /// release).
    pub(crate) fn wait(self) -> Result<(), StoreError> {
        let mut slot = lock(&self.0.slot);
        loop {
            if let Some(outcome) = slot.outcome.take() {
                return outcome;
            }
            slot = self
                .0
                .ready
                .wait(slot)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}
