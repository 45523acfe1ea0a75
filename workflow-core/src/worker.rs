//! The run queue: [`Runner::enqueue`] records runs for any worker to take,
//! [`Runner::work`] claims and runs them, and `Runner::post_*` reach a stored run
//! wherever it lives.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use crate::error::{Result, WorkflowError};
use crate::event::{DynEvent, Event, EventKind};
use crate::snapshot::{QueuedRecord, SNAPSHOT_FORMAT, Snapshot, encode_event};
use crate::store::{Claim, Message, Owner, RunRecord, RunStatus, Store, StoreErrorKind};
use crate::stream::lock;
use crate::workflow::{Runner, Workflow};

impl<W: Workflow> Runner<W> {
    /// Records a new run of `input` under `key` in the runner's store, for a worker
    /// ([`Runner::work`], in any process sharing the store) to take: its first checkpoint
    /// holds the start event, and no process owns it. Workers of this workflow are woken where
    /// the store can.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tidewater::prelude::*;
    /// # use tidewater::store::MemoryStore;
    /// # #[derive(Default)] struct Double;
    /// # #[workflow(durable)] impl Double {
    /// #     #[step] async fn go(&self, ev: StartEvent<u32>) -> StopEvent<u32> { StopEvent(ev.0 * 2) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = Double.runner().store(Arc::new(MemoryStore::new()));
    /// runner.enqueue("job-1", 21).unwrap();
    /// let worker = runner.work(4).unwrap();
    /// # let mut waited = 0;
    /// while runner.stored_output("job-1").is_err() {
    /// #   waited += 1; assert!(waited < 500);
    ///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    /// }
    /// assert_eq!(runner.stored_output("job-1").unwrap(), 42);
    /// assert_eq!(worker.stop().await.unwrap(), 1);
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Runner::start_durable`]: no store, not durable, a run under `key` that has not
    /// ended, or a store failure; [`WorkflowError::Snapshot`] when the input does not
    /// serialize.
    pub fn enqueue(&self, key: &str, input: W::Input) -> Result<()> {
        let store = self.durable_store(key)?;
        let lease = self.acquire(&*store, key, Claim::Start)?;
        let saved = self
            .first_checkpoint(W::__start_event(input))
            .and_then(|snapshot| {
                let record = RunRecord {
                    status: RunStatus::Running,
                    snapshot,
                    output: None,
                    error: None,
                    trace: None,
                };
                Ok(store.save(key, &lease, &record)?)
            });
        // Given up whatever happened: a saved run is the queue's, an unsaved key is free.
        let released = store.release(key, &lease);
        saved?;
        Ok(released?)
    }

    /// The checkpoint of a run that has not begun: its start event queued for its steps.
    fn first_checkpoint(&self, start: DynEvent) -> Result<Snapshot> {
        let snapshot_error = WorkflowError::Snapshot;
        let state = W::__encode_state(&W::State::default()).map_err(|reason| {
            snapshot_error(crate::snapshot::SnapshotError::new("state", reason))
        })?;
        let mut queued = Vec::new();
        for &step in self.routes.consumers(start.id()) {
            let event = encode_event::<W>(&start).map_err(|reason| {
                snapshot_error(crate::snapshot::SnapshotError::new(
                    "queued[0].event",
                    reason,
                ))
            })?;
            queued.push(QueuedRecord {
                step: W::GRAPH.steps[step].name.to_string(),
                event,
            });
        }
        Ok(Snapshot {
            format: SNAPSHOT_FORMAT,
            workflow: W::GRAPH.workflow.to_string(),
            fingerprint: self.config.fingerprint.to_string(),
            run_id: crate::context::NEXT_RUN_ID.fetch_add(1, Ordering::Relaxed),
            completed: 0,
            state,
            in_flight: Vec::new(),
            queued,
            collect: Vec::new(),
            pending_requests: Vec::new(),
            unclaimed: Vec::new(),
            recoveries: 0,
            stream_seq: 0,
            invocations: 0,
            deadline_ms: None,
            inbox: 0,
        })
    }

    /// Posts `event` to the inbox of the stored run `key` under the message id `id`
    /// ([`Store::post`]): an answer to one of its requests, or an event one of its steps
    /// accepts. The run gets it wherever it lives: a live run (in this process or another
    /// sharing the store) is woken or polls its inbox ([`Runner::poll_interval`]); a parked
    /// run is claimed and resumed by a worker ([`Runner::work`]). `Ok(false)` when a message
    /// with this id was posted to the run before: it is not delivered twice.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use serde::{Deserialize, Serialize};
    /// # use tidewater::prelude::*;
    /// # use tidewater::store::MemoryStore;
    /// #[derive(Debug, Clone, Event, Serialize, Deserialize)]
    /// #[event(request = Verdict)]
    /// struct Ask;
    /// #[derive(Debug, Clone, Event, Serialize, Deserialize)]
    /// #[event(response)]
    /// struct Verdict(bool);
    ///
    /// # #[derive(Default)]
    /// struct Desk;
    /// #[workflow(durable)]
    /// impl Desk {
    ///     #[step] async fn ask(&self, _ev: StartEvent<()>) -> Ask { Ask }
    ///     #[step] async fn decide(&self, ev: Verdict) -> StopEvent<bool> { StopEvent(ev.0) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let runner = Desk.runner().store(Arc::new(MemoryStore::new()));
    /// let run = runner.start_durable("desk-1", ()).unwrap();
    /// // From anywhere that shares the store (here: the same runner).
    /// assert!(runner.post_event("desk-1", "answer-1", Verdict(true)).unwrap());
    /// assert!(!runner.post_event("desk-1", "answer-1", Verdict(false)).unwrap()); // a duplicate
    /// assert!(run.await.unwrap());
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`WorkflowError::Undeliverable`] when the event is not one the run can take (not a
    /// response and accepted by no step, or not of its graph); [`WorkflowError::Durable`]
    /// when there is no such run or it has ended; [`WorkflowError::Store`] when the store
    /// fails.
    pub fn post_event<E: Event>(&self, key: &str, id: &str, event: E) -> Result<bool> {
        let event = DynEvent::new(event);
        if event.kind() != EventKind::Response && !W::GRAPH.is_accepted(event.id()) {
            return Err(WorkflowError::Undeliverable {
                event: event.name(),
                reason: format!("no step of `{}` accepts it", W::GRAPH.workflow),
            });
        }
        let record = encode_event::<W>(&event).map_err(|reason| WorkflowError::Undeliverable {
            event: event.name(),
            reason: format!("a durable run can only take events of its graph ({reason})"),
        })?;
        self.post(key, &Message::event(id, record))
    }

    /// Posts a request to cancel the stored run `key` (message id `id`): a live run, wherever
    /// it lives, is cancelled as `Handler::cancel` does; a parked one is claimed by a worker
    /// and cancelled. `Ok(false)` when this id was posted before.
    ///
    /// # Errors
    /// As [`Runner::post_event`].
    pub fn post_cancel(&self, key: &str, id: &str) -> Result<bool> {
        self.post(key, &Message::cancel(id))
    }

    fn post(&self, key: &str, message: &Message) -> Result<bool> {
        let store = self.durable_store(key)?;
        store.post(key, message).map_err(|error| match error.kind {
            StoreErrorKind::Missing | StoreErrorKind::Ended => WorkflowError::Durable {
                key: key.to_string(),
                reason: error.message,
            },
            _ => WorkflowError::Store(error),
        })
    }

    /// Starts a worker loop in a new task: it claims runnable runs of this workflow from the
    /// runner's store ([`Store::claim`]: enqueued runs, runs whose owner died or whose lease
    /// ran out, parked runs with mail) and runs them, at most `max_runs` at a time. It looks
    /// again when the store announces a change ([`Store::wakeups`]), when one of its runs
    /// ends, and at least every [`Runner::poll_interval`]. Any number of workers, in any
    /// number of processes, may share a store: each run is taken by one of them, and a dead
    /// worker's runs are taken by the others (at once on one host, after its lease on
    /// PostgreSQL) with no operator action.
    ///
    /// [`Worker::stop`] stops it once its runs end, [`Worker::shutdown`] suspends them;
    /// dropping the [`Worker`] leaves it running, detached. A claimed run that cannot be
    /// resumed (its checkpoint does not fit this build) is logged, given back, and claimed
    /// again after the others.
    ///
    /// # Errors
    /// [`WorkflowError::Durable`] when the runner has no store or the workflow is not
    /// durable.
    ///
    /// # Panics
    /// Outside a tokio runtime, or when `max_runs` is 0.
    pub fn work(&self, max_runs: usize) -> Result<Worker> {
        assert!(max_runs > 0, "a worker runs at least one run at a time");
        let store = self.live_store("*")?;
        let control = Arc::new(Control {
            stopping: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            suspend: tokio::sync::watch::Sender::new(false),
            in_hand: Mutex::default(),
        });
        let task = tokio::spawn(work(self.clone(), store, max_runs, control.clone()));
        Ok(Worker { control, task })
    }
}

/// A worker loop started by [`Runner::work`].
#[derive(Debug)]
pub struct Worker {
    control: Arc<Control>,
    task: tokio::task::JoinHandle<u64>,
}

struct Control {
    stopping: AtomicBool,
    wake: tokio::sync::Notify,
    /// Set by `Worker::shutdown`: every run in hand is suspended (a run claimed meanwhile
    /// sees it when its task starts).
    suspend: tokio::sync::watch::Sender<bool>,
    /// How to suspend each run in hand, by a number of the worker's.
    in_hand: Mutex<HashMap<u64, Suspender>>,
}

type Suspender = Box<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Stops claiming runs (at once, when called), lets the runs in hand end, and returns how many runs this worker
    /// ran to an end (finished, failed, cancelled, or parked again). A run in hand that waits
    /// for an answer keeps it waiting: see [`Worker::shutdown`] to stop now.
    ///
    /// # Errors
    /// [`WorkflowError::Cancelled`] when the loop's task was aborted (its runtime shut down).
    pub fn stop(self) -> impl Future<Output = Result<u64>> + Send {
        // Asked now, not when the future is first polled.
        self.control.stopping.store(true, Ordering::Release);
        self.control.wake.notify_one();
        async move { self.task.await.map_err(|_| WorkflowError::Cancelled) }
    }

    /// Stops claiming runs and suspends the runs in hand (`Handler::suspend`: the running
    /// steps finish and are checkpointed, the run is saved with its queues and leaves this
    /// process), for a worker that shuts down: the runs with work left are claimed by the
    /// other workers, the parked ones wait for their mail. Returns how many runs this worker
    /// ran to an end, suspended ones included.
    ///
    /// # Errors
    /// As [`Worker::stop`].
    pub fn shutdown(self) -> impl Future<Output = Result<u64>> + Send {
        self.control.suspend.send_replace(true);
        // Asked now: when this returns, every run in hand has been asked to suspend.
        for suspend in lock(&self.control.in_hand).values() {
            suspend();
        }
        self.stop()
    }

    /// Whether the loop has ended (after [`Worker::stop`], or with its runtime).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

async fn work<W: Workflow>(
    runner: Runner<W>,
    store: Arc<dyn Store>,
    max_runs: usize,
    control: Arc<Control>,
) -> u64 {
    let workflow = W::GRAPH.workflow;
    let signal = store.wakeups().map(|wakeups| wakeups.queue(workflow));
    let every = runner.config.poll_every;
    let mut running: JoinSet<()> = JoinSet::new();
    let mut ended = 0;
    let mut next: u64 = 0;
    while !control.stopping.load(Ordering::Acquire) {
        // A run that could not be resumed was given back, which announces it: wait the poll
        // interval before the next claim rather than take it again at once.
        let mut failed = false;
        while running.len() < max_runs && !control.stopping.load(Ordering::Acquire) {
            let claimed = match store.claim(workflow, &Owner::this_process()) {
                Ok(Some(claimed)) => claimed,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%workflow, %error, "worker: cannot claim a run");
                    failed = true;
                    break;
                }
            };
            let (key, lease) = claimed;
            // Held while the run starts: a `shutdown` that comes once the run's task could have
            // run a step finds the run in hand.
            let mut in_hand = lock(&control.in_hand);
            let resumed = runner.resume_leased(store.clone(), &key, lease, None);
            match resumed {
                Ok(run) => {
                    let mut suspend = control.suspend.subscribe();
                    let number = next;
                    next += 1;
                    in_hand.insert(number, Box::new(run.suspender()));
                    drop(in_hand);
                    let control = control.clone();
                    running.spawn(async move {
                        let mut run = std::pin::pin!(run);
                        let ended = tokio::select! {
                            ended = &mut run => ended,
                            () = async {
                                // The guard it returns is not `Send`: dropped here.
                                let _ = suspend.wait_for(|on| *on).await.map(drop);
                            } => {
                                run.suspend();
                                run.await
                            }
                        };
                        if let Err(error) = ended {
                            tracing::debug!(%key, %error, "worker: run ended with an error");
                        }
                        lock(&control.in_hand).remove(&number);
                    });
                }
                Err(error) => {
                    drop(in_hand);
                    tracing::warn!(%key, %error, "worker: claimed run not resumed, given back");
                    failed = true;
                    break;
                }
            }
        }
        let posted = async {
            match &signal {
                Some(signal) if !failed => signal.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(_) = running.join_next(), if !running.is_empty() => ended += 1,
            () = posted => {}
            () = tokio::time::sleep(every) => {}
            () = control.wake.notified() => {}
        }
    }
    while running.join_next().await.is_some() {
        ended += 1;
    }
    ended
}
