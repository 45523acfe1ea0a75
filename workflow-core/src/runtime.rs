//! The executor: one run is one future that routes events between steps and polls the step
//! invocations itself.
//!
//! Hot path (an event leaves a step, its consumers run): the event's [`EventId`] is looked up in
//! a sorted table built once per runner (a binary search over a few integers, no strings), the
//! event is cloned only when several steps accept it, and the consumer's invocation future is
//! pushed into the run's own `FuturesUnordered`: no task spawn, no lock held across an await,
//! no allocation beyond the event box and the invocation itself.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context as TaskContext, Poll};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::Instrument;

use crate::context::{CollectBuffer, Context, RunShared};
use crate::error::{Result, SharedError, WorkflowError};
use crate::event::StepFailure;
use crate::event::{DynEvent, EventId, EventKind};
use crate::graph::Graph;
use crate::output::Emitted;
use crate::snapshot::{
    CollectRecord, EventRecord, InFlightRecord, QueuedRecord, SNAPSHOT_FORMAT, Snapshot,
    SnapshotError, decode_event, encode_event,
};
use crate::store::{RunRecord, RunStatus};
use crate::stream::{Outcome, StreamItem, lock};
use crate::workflow::StepConfig;
use crate::workflow::{Runner, Workflow};

/// Event id -> the steps accepting it, built once per runner from the graph.
#[derive(Debug)]
pub(crate) struct RouteTable {
    /// Sorted by id; each entry is a range of `consumers`.
    entries: Vec<(EventId, u32, u32)>,
    consumers: Vec<usize>,
}

impl RouteTable {
    pub(crate) fn new(graph: &Graph) -> RouteTable {
        let mut ids: Vec<EventId> = graph
            .steps
            .iter()
            .flat_map(|s| s.accepts.iter().map(|m| m.id))
            .collect();
        ids.sort();
        ids.dedup();
        let mut entries = Vec::with_capacity(ids.len());
        let mut consumers = Vec::new();
        for id in ids {
            let start = consumers.len() as u32;
            consumers.extend(graph.consumers(id));
            entries.push((id, start, consumers.len() as u32 - start));
        }
        RouteTable { entries, consumers }
    }

    fn consumers(&self, id: EventId) -> &[usize] {
        match self.entries.binary_search_by_key(&id, |e| e.0) {
            Ok(i) => {
                let (_, start, len) = self.entries[i];
                &self.consumers[start as usize..(start + len) as usize]
            }
            Err(_) => &[],
        }
    }
}

/// What one finished step invocation reports to the loop.
struct Done {
    step: usize,
    worker: u32,
    /// Where its input is kept for snapshots (`NOT_TRACKED` when the workflow is not durable).
    input_slot: usize,
    result: std::result::Result<Emitted, Failed>,
}

const NOT_TRACKED: usize = usize::MAX;

/// The input of a running invocation, kept by durable runs so a snapshot can re-run it.
struct Running {
    /// Start order, so a resumed run starts them again in the same order.
    order: u64,
    step: usize,
    event: DynEvent,
    /// The attempt the invocation is on, updated by its retry loop.
    attempt: Arc<AtomicU32>,
}

/// Everything one invocation needs besides the workflow and the run.
struct Job {
    step: usize,
    worker: u32,
    event: DynEvent,
    config: StepConfig,
    /// Keep a copy of the input for the catch-error step.
    keep_input: bool,
    verbose: bool,
    first_attempt: u32,
    /// Durable runs: where the retry loop reports its attempt.
    attempt_cell: Option<Arc<AtomicU32>>,
}

/// A failed invocation: the error, and the input when a catch-error step may want it.
struct Failed {
    error: WorkflowError,
    input: Option<DynEvent>,
    last: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Per-step bookkeeping: waiting events and which workers are busy.
struct StepSlot {
    queue: VecDeque<DynEvent>,
    busy: usize,
    limit: usize,
    free_workers: Vec<u32>,
    next_worker: u32,
}

/// What one attempt of a step ended with.
enum Attempt {
    Emitted(Emitted),
    Failed(crate::error::BoxError),
    Panicked(String),
    TimedOut(std::time::Duration),
}

/// One invocation of one step on one event, with its retries, polled by the run's own loop.
async fn invoke<W: Workflow>(
    workflow: Arc<W>,
    shared: Arc<RunShared<W>>,
    job: Job,
) -> std::result::Result<Emitted, Failed> {
    let Job {
        step,
        worker,
        event,
        config,
        keep_input,
        verbose,
        first_attempt,
        attempt_cell,
    } = job;
    let name = W::GRAPH.steps[step].name;
    let run_id = shared.run_id;
    let mut attempt = first_attempt.max(1);
    let mut last_error: Option<Arc<dyn std::error::Error + Send + Sync>> = None;
    let mut event = Some(event);
    loop {
        let retries_left = config.retry.is_some_and(|p| attempt < p.max_attempts());
        let input = event.take().expect("the input is kept for each attempt");
        if retries_left || keep_input {
            event = Some(input.clone());
        }
        let ctx = Context {
            shared: shared.clone(),
            step,
            attempt,
            worker,
            last_error: last_error.clone(),
        };
        let span = tracing::debug_span!("workflow.step", step = name, run_id, attempt, worker);
        if verbose {
            eprintln!("[run {run_id}] step `{name}` started (worker {worker}, attempt {attempt})");
        }
        let call = AssertUnwindSafe(W::__invoke(workflow.clone(), ctx, input)).catch_unwind();
        // `None`: the attempt ran out of time.
        let outcome = match config.timeout {
            None => Some(call.instrument(span).await),
            Some(limit) => tokio::time::timeout(limit, call)
                .instrument(span)
                .await
                .ok(),
        };
        let attempt_result = match outcome {
            Some(Ok(Ok(emitted))) => Attempt::Emitted(emitted),
            Some(Ok(Err(error))) => Attempt::Failed(error),
            Some(Err(panic)) => Attempt::Panicked(panic_message(panic.as_ref())),
            None => Attempt::TimedOut(config.timeout.unwrap_or_default()),
        };
        let error = match attempt_result {
            Attempt::Emitted(emitted) => {
                if verbose {
                    eprintln!("[run {run_id}] step `{name}` finished (worker {worker})");
                }
                return Ok(emitted);
            }
            Attempt::Failed(error) => error,
            Attempt::Panicked(message) => {
                if verbose {
                    eprintln!("[run {run_id}] step `{name}` panicked: {message}");
                }
                return Err(Failed {
                    error: WorkflowError::StepPanicked {
                        step: name,
                        message,
                    },
                    input: None,
                    last: None,
                });
            }
            Attempt::TimedOut(timeout) => {
                if verbose {
                    eprintln!("[run {run_id}] step `{name}` timed out after {timeout:?}");
                }
                return Err(Failed {
                    error: WorkflowError::StepTimedOut {
                        step: name,
                        timeout,
                    },
                    input: None,
                    last: None,
                });
            }
        };
        if let Some(policy) = config.retry.filter(|p| p.should_retry(attempt, &*error)) {
            let delay = policy.delay(attempt, run_id, step);
            if verbose {
                eprintln!(
                    "[run {run_id}] step `{name}` failed (attempt {attempt}): {error}; retrying in {delay:?}"
                );
            }
            tracing::debug!(step = name, run_id, attempt, %error, ?delay, "retrying step");
            tokio::time::sleep(delay).await;
            last_error = Some(Arc::from(error));
            attempt += 1;
            if let Some(cell) = &attempt_cell {
                cell.store(attempt, Ordering::Relaxed);
            }
            continue;
        }
        if verbose {
            eprintln!("[run {run_id}] step `{name}` failed (attempt {attempt}): {error}");
        }
        let last: Arc<dyn std::error::Error + Send + Sync> = Arc::from(error);
        return Err(Failed {
            error: WorkflowError::StepFailed {
                step: name,
                attempts: attempt,
                source: Box::new(SharedError(last.clone())),
            },
            input: event,
            last: Some(last),
        });
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

type Invocation = Pin<Box<dyn Future<Output = Done> + Send>>;

struct Executor<W: Workflow> {
    runner: Runner<W>,
    shared: Arc<RunShared<W>>,
    slots: Vec<StepSlot>,
    queued: usize,
    in_flight: FuturesUnordered<Invocation>,
    output: Option<W::Output>,
    /// The last step to finish and how many events it emitted, for the stuck diagnostic.
    last: Option<(&'static str, usize)>,
    /// Does a step take `StepFailure`? Then failing invocations keep their input for it.
    catches: bool,
    /// Requests published to the outside and not answered yet: the run waits for them.
    pending_requests: Vec<DynEvent>,
    recoveries: u32,
    /// Durable runs: the inputs of the running invocations, for snapshots.
    running: Vec<Option<Running>>,
    free_running: Vec<usize>,
    /// How many invocations completed.
    completed: u64,
    /// How many invocations started (durable runs).
    started: u64,
    ended: bool,
}

/// How a run begins: with its start event, or from a snapshot.
pub(crate) enum Init {
    Start(DynEvent),
    Resume(Restored),
}

/// A snapshot, decoded and checked against the workflow.
pub(crate) struct Restored {
    pub(crate) in_flight: Vec<(usize, DynEvent, u32)>,
    pub(crate) queued: Vec<(usize, DynEvent)>,
    pub(crate) pending_requests: Vec<DynEvent>,
    pub(crate) recoveries: u32,
    pub(crate) completed: u64,
}

/// Runs one workflow run to its end.
pub(crate) async fn execute<W: Workflow>(
    runner: Runner<W>,
    shared: Arc<RunShared<W>>,
    init: Init,
) -> Result<W::Output> {
    let span = tracing::info_span!(
        "workflow.run",
        workflow = W::GRAPH.workflow,
        run_id = shared.run_id
    );
    let timeout = runner.config.timeout;
    let limit = runner.config.run_limit.clone();
    let mut executor = Executor::new(runner, shared);
    async move {
        // Wait for a turn under `max_concurrent_runs` (the run's timeout starts after).
        let _permit = match &limit {
            Some(semaphore) => Some(
                semaphore
                    .acquire()
                    .await
                    .expect("the semaphore is never closed"),
            ),
            None => None,
        };
        let sleep = timeout.map(tokio::time::sleep);
        let mut sleep = std::pin::pin!(sleep);
        let result = match executor.begin(init) {
            Err(error) => Err(error),
            Ok(()) => {
                poll_fn(|cx| executor.poll_run(cx, sleep.as_mut().as_pin_mut(), timeout)).await
            }
        };
        executor.end(&result);
        result
    }
    .instrument(span)
    .await
}

impl<W: Workflow> Executor<W> {
    fn new(runner: Runner<W>, shared: Arc<RunShared<W>>) -> Executor<W> {
        let slots = W::GRAPH
            .steps
            .iter()
            .map(|s| StepSlot {
                queue: VecDeque::new(),
                busy: 0,
                limit: s.num_workers.max(1),
                free_workers: Vec::new(),
                next_worker: 0,
            })
            .collect();
        Executor {
            runner,
            shared,
            slots,
            queued: 0,
            in_flight: FuturesUnordered::new(),
            output: None,
            last: None,
            catches: W::GRAPH
                .steps
                .iter()
                .any(|s| s.accepts.iter().any(|m| m.kind == EventKind::Failure)),
            recoveries: 0,
            pending_requests: Vec::new(),
            running: Vec::new(),
            free_running: Vec::new(),
            completed: 0,
            started: 0,
            ended: false,
        }
    }

    fn begin(&mut self, init: Init) -> Result<()> {
        match init {
            Init::Start(event) => {
                self.checkpoint_with(Some(&event))?;
                self.route(event, None)
            }
            Init::Resume(restored) => {
                self.recoveries = restored.recoveries;
                self.completed = restored.completed;
                // The steps that were running run again, first, with their attempt counters.
                for (step, event, attempt) in restored.in_flight {
                    let slot = &mut self.slots[step];
                    if slot.busy < slot.limit {
                        self.start(step, event, attempt);
                    } else {
                        slot.queue.push_back(event);
                        self.queued += 1;
                    }
                }
                for (step, event) in restored.queued {
                    self.deliver(step, event);
                }
                // Requests still unanswered are published again for whoever watches now.
                for request in restored.pending_requests {
                    self.shared
                        .stream
                        .publish(StreamItem::Event(request.clone()));
                    self.pending_requests.push(request);
                }
                Ok(())
            }
        }
    }

    fn poll_run(
        &mut self,
        cx: &mut TaskContext<'_>,
        mut sleep: Option<Pin<&mut tokio::time::Sleep>>,
        timeout: Option<std::time::Duration>,
    ) -> Poll<Result<W::Output>> {
        loop {
            if self.shared.mail.load(Ordering::Acquire) {
                if let Err(error) = self.drain_mail() {
                    return Poll::Ready(Err(error));
                }
            }
            if let Some(output) = self.output.take() {
                return Poll::Ready(Ok(output));
            }
            if let Poll::Ready(Some(done)) = self.in_flight.poll_next_unpin(cx) {
                if let Err(error) = self.complete(done) {
                    return Poll::Ready(Err(error));
                }
                continue;
            }
            // Nothing finished just now: sleep until a step, the inbox or the clock wakes us.
            self.shared.waker.register(cx.waker());
            if self.shared.mail.load(Ordering::Acquire) {
                continue;
            }
            if self.in_flight.is_empty() && self.queued == 0 {
                if self.pending_requests.is_empty() {
                    return Poll::Ready(Err(self.stuck()));
                }
                if let Some(journal) = self
                    .shared
                    .journal
                    .as_ref()
                    .filter(|j| j.evict_when_waiting)
                {
                    // Parked for a human: keep the run in the store, not in memory.
                    let key = journal.key.clone();
                    return Poll::Ready(match self.save(RunStatus::Waiting, None, None) {
                        Ok(()) => Err(WorkflowError::Suspended { key }),
                        Err(error) => Err(error),
                    });
                }
            }
            if let (Some(sleep), Some(limit)) = (sleep.as_mut(), timeout) {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(WorkflowError::TimedOut {
                        timeout: limit,
                        active: self.active_steps(),
                    }));
                }
            }
            return Poll::Pending;
        }
    }

    /// Routes the events sent with `send_event` (from steps or from outside), answers snapshot
    /// requests, and notices a cancellation.
    fn drain_mail(&mut self) -> Result<()> {
        self.shared.mail.store(false, Ordering::Release);
        if self.shared.cancelled.load(Ordering::Acquire) {
            return Err(WorkflowError::Cancelled);
        }
        let mail = std::mem::take(&mut *lock(&self.shared.inbox));
        for envelope in mail {
            // A step waiting inline for this event takes it; no other step sees it.
            let Some(event) = self.shared.offer_to_waiters(envelope.event) else {
                continue;
            };
            if envelope.target.is_none()
                && event.kind() == EventKind::Response
                && self.runner.routes.consumers(event.id()).is_empty()
            {
                // An answer no step takes and nobody waits for yet: kept for a later
                // `wait_for`, never lost and never fatal.
                tracing::debug!(event = event.name(), "keeping an unclaimed response");
                lock(&self.shared.unclaimed).push(event);
                continue;
            }
            self.route(event, envelope.target)?;
            if self.output.is_some() {
                break;
            }
        }
        let requests = std::mem::take(&mut *lock(&self.shared.snapshot_requests));
        for reply in requests {
            let _ = reply.send(self.capture());
        }
        Ok(())
    }

    fn complete(&mut self, done: Done) -> Result<()> {
        if done.input_slot != NOT_TRACKED {
            self.running[done.input_slot] = None;
            self.free_running.push(done.input_slot);
        }
        let slot = &mut self.slots[done.step];
        slot.busy -= 1;
        slot.free_workers.push(done.worker);
        self.completed += 1;
        let name = W::GRAPH.steps[done.step].name;
        if self.runner.config.internal_events && self.shared.stream.has_subscribers() {
            self.shared.stream.publish(StreamItem::StepFinished {
                step: name,
                worker: done.worker,
            });
        }
        let emitted = match done.result {
            Ok(emitted) => emitted,
            Err(failed) => {
                self.recover(failed)?;
                return self.checkpoint();
            }
        };
        match emitted {
            Emitted::Nothing => self.last = Some((name, 0)),
            Emitted::One(event) => {
                self.last = Some((name, 1));
                self.route(event, None)?;
            }
            Emitted::Many(events) => {
                self.last = Some((name, events.len()));
                for event in events {
                    self.route(event, None)?;
                    if self.output.is_some() {
                        return Ok(());
                    }
                }
            }
        }
        // A worker of this step is free again: give it the next waiting event.
        if self.output.is_none() {
            if let Some(event) = self.slots[done.step].queue.pop_front() {
                self.queued -= 1;
                self.start(done.step, event, 1);
            }
            // Durable runs: the completion and what it emitted are now in the store, so this
            // step never runs again on this input, whatever happens to the process.
            self.checkpoint()?;
        }
        Ok(())
    }

    /// A step failed for good: hand it to the catch-error step while the budget lasts, or fail
    /// the run. Panics and timeouts are never caught.
    fn recover(&mut self, failed: Failed) -> Result<()> {
        let Failed { error, input, last } = failed;
        let WorkflowError::StepFailed { step, attempts, .. } = &error else {
            return Err(error);
        };
        let (Some(input), Some(last)) = (input, last) else {
            return Err(error);
        };
        if !self.catches || self.recoveries >= self.runner.config.max_recoveries {
            return Err(error);
        }
        self.recoveries += 1;
        let failure = StepFailure {
            step,
            input,
            attempts: *attempts,
            error: last,
        };
        self.route(DynEvent::new(failure), None)
    }

    /// Sends one event to its consumers (or to `target` only): start now where a worker is
    /// free, queue otherwise. The stop event ends the run; the first one wins.
    fn route(&mut self, event: DynEvent, target: Option<usize>) -> Result<()> {
        if self.output.is_some() {
            return Ok(());
        }
        match event.kind() {
            EventKind::Stop => {
                return match W::__output(event) {
                    Ok(output) => {
                        self.output = Some(output);
                        Ok(())
                    }
                    Err(event) => Err(WorkflowError::Undeliverable {
                        event: event.name(),
                        reason: "it is a stop event of another workflow's output type".into(),
                    }),
                };
            }
            EventKind::Request => {
                // Leaves the graph: published for the outside world, which answers later.
                self.shared.stream.publish(StreamItem::Event(event.clone()));
                self.pending_requests.push(event);
                return Ok(());
            }
            EventKind::Response => {
                let id = Some(event.id());
                if let Some(i) = self
                    .pending_requests
                    .iter()
                    .position(|r| r.meta().response == id)
                {
                    self.pending_requests.remove(i);
                }
            }
            _ => {}
        }
        if let Some(step) = target {
            if !W::GRAPH.accepts(step, event.id()) {
                return Err(WorkflowError::Undeliverable {
                    event: event.name(),
                    reason: format!("step `{}` does not accept it", W::GRAPH.steps[step].name),
                });
            }
            self.deliver(step, event);
            return Ok(());
        }
        let routes = self.runner.routes.clone();
        let Some((&last, rest)) = routes.consumers(event.id()).split_last() else {
            return Err(WorkflowError::Undeliverable {
                event: event.name(),
                reason: "no step of the workflow accepts it".into(),
            });
        };
        for &step in rest {
            self.deliver(step, event.clone());
        }
        self.deliver(last, event);
        Ok(())
    }

    fn deliver(&mut self, step: usize, event: DynEvent) {
        let slot = &mut self.slots[step];
        if slot.busy < slot.limit && slot.queue.is_empty() {
            self.start(step, event, 1);
        } else {
            slot.queue.push_back(event);
            self.queued += 1;
        }
    }

    fn start(&mut self, step: usize, event: DynEvent, attempt: u32) {
        let slot = &mut self.slots[step];
        slot.busy += 1;
        let worker = slot.free_workers.pop().unwrap_or_else(|| {
            slot.next_worker += 1;
            slot.next_worker - 1
        });
        if self.runner.config.internal_events && self.shared.stream.has_subscribers() {
            self.shared.stream.publish(StreamItem::StepStarted {
                step: W::GRAPH.steps[step].name,
                worker,
            });
        }
        let (input_slot, attempt_cell) = if W::DURABLE {
            let cell = Arc::new(AtomicU32::new(attempt));
            self.started += 1;
            let running = Some(Running {
                order: self.started,
                step,
                event: event.clone(),
                attempt: cell.clone(),
            });
            let index = match self.free_running.pop() {
                Some(index) => {
                    self.running[index] = running;
                    index
                }
                None => {
                    self.running.push(running);
                    self.running.len() - 1
                }
            };
            (index, Some(cell))
        } else {
            (NOT_TRACKED, None)
        };
        let config = &self.runner.config;
        let invocation = invoke(
            self.runner.workflow.clone(),
            self.shared.clone(),
            Job {
                step,
                worker,
                event,
                config: config.steps[step],
                keep_input: self.catches,
                verbose: config.verbose,
                first_attempt: attempt,
                attempt_cell,
            },
        );
        self.in_flight.push(Box::pin(async move {
            Done {
                step,
                worker,
                input_slot,
                result: invocation.await,
            }
        }));
    }

    fn active_steps(&self) -> Vec<&'static str> {
        W::GRAPH
            .steps
            .iter()
            .zip(&self.slots)
            .filter(|(_, slot)| slot.busy > 0 || !slot.queue.is_empty())
            .map(|(spec, _)| spec.name)
            .collect()
    }

    fn stuck(&self) -> WorkflowError {
        let diagnostic = match self.last {
            Some((step, 0)) => format!(
                "step `{step}` finished without emitting an event, and no step is running, no \
                 event is queued and nothing waits for outside input"
            ),
            Some((step, n)) => format!(
                "step `{step}` emitted {n} event(s) but no step is running, no event is queued \
                 and nothing waits for outside input"
            ),
            None => "no step ever ran".to_string(),
        };
        WorkflowError::Stuck { diagnostic }
    }

    /// Captures the run as it is between two polls of its steps.
    fn capture(&self) -> std::result::Result<Snapshot, SnapshotError> {
        self.capture_with(None)
    }

    fn capture_with(
        &self,
        extra_start: Option<&DynEvent>,
    ) -> std::result::Result<Snapshot, SnapshotError> {
        if !W::DURABLE {
            return Err(SnapshotError::new(
                "",
                format!(
                    "workflow `{}` is not `#[workflow(durable)]`: its runs cannot be snapshotted",
                    W::GRAPH.workflow
                ),
            ));
        }
        let encode = |path: String, event: &DynEvent| {
            encode_event::<W>(event).map_err(|reason| SnapshotError::new(path, reason))
        };
        let state = W::__encode_state(&lock(&self.shared.state))
            .map_err(|reason| SnapshotError::new("state", reason))?;
        let mut in_flight = Vec::new();
        let mut running: Vec<&Running> = self.running.iter().flatten().collect();
        running.sort_by_key(|r| r.order);
        for running in running {
            in_flight.push(InFlightRecord {
                step: W::GRAPH.steps[running.step].name.to_string(),
                attempt: running.attempt.load(Ordering::Relaxed),
                event: encode(
                    format!("in_flight[{}].event", in_flight.len()),
                    &running.event,
                )?,
            });
        }
        let mut queued = Vec::new();
        if let Some(start) = extra_start {
            // The very first checkpoint: the start event has not been routed yet.
            for &step in self.runner.routes.consumers(start.id()) {
                queued.push(QueuedRecord {
                    step: W::GRAPH.steps[step].name.to_string(),
                    event: encode(format!("queued[{}].event", queued.len()), start)?,
                });
            }
        }
        for (step, slot) in self.slots.iter().enumerate() {
            for event in &slot.queue {
                queued.push(QueuedRecord {
                    step: W::GRAPH.steps[step].name.to_string(),
                    event: encode(format!("queued[{}].event", queued.len()), event)?,
                });
            }
        }
        let mut collect = Vec::new();
        let buffers = lock(&self.shared.collect);
        let mut keys: Vec<_> = buffers.keys().copied().collect();
        keys.sort_unstable();
        for (step, key) in keys {
            let n = collect.len();
            let mut slots = Vec::new();
            for (s, events) in buffers[&(step, key)].slots.iter().enumerate() {
                let mut records = Vec::new();
                for (e, event) in events.iter().enumerate() {
                    records.push(encode(format!("collect[{n}].slots[{s}][{e}]"), event)?);
                }
                slots.push(records);
            }
            collect.push(CollectRecord {
                step: W::GRAPH.steps[step].name.to_string(),
                key,
                slots,
            });
        }
        drop(buffers);
        let pending_requests = self
            .pending_requests
            .iter()
            .enumerate()
            .map(|(i, event)| encode(format!("pending_requests[{i}]"), event))
            .collect::<std::result::Result<_, _>>()?;
        let unclaimed = lock(&self.shared.unclaimed)
            .iter()
            .enumerate()
            .map(|(i, event)| encode(format!("unclaimed[{i}]"), event))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Snapshot {
            format: SNAPSHOT_FORMAT,
            workflow: W::GRAPH.workflow.to_string(),
            fingerprint: self.runner.fingerprint.to_string(),
            run_id: self.shared.run_id,
            completed: self.completed,
            state,
            in_flight,
            queued,
            collect,
            pending_requests,
            unclaimed,
            recoveries: self.recoveries,
            stream_seq: self.shared.stream_seq.load(Ordering::Relaxed),
        })
    }

    /// Durable runs: journals the run as it is now.
    fn checkpoint(&mut self) -> Result<()> {
        self.checkpoint_with(None)
    }

    fn checkpoint_with(&mut self, start: Option<&DynEvent>) -> Result<()> {
        if self.shared.journal.is_none() {
            return Ok(());
        }
        // Events the step sent with `send_event` belong to its completion: route them first,
        // so the checkpoint holds them.
        if self.shared.mail.load(Ordering::Acquire) {
            self.drain_mail()?;
            if self.output.is_some() {
                return Ok(());
            }
        }
        let snapshot = self.capture_with(start).map_err(WorkflowError::Snapshot)?;
        self.save_snapshot(RunStatus::Running, snapshot, None, None)
    }

    fn save(
        &mut self,
        status: RunStatus,
        output: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<()> {
        let snapshot = self.capture().map_err(WorkflowError::Snapshot)?;
        self.save_snapshot(status, snapshot, output, error)
    }

    fn save_snapshot(
        &mut self,
        status: RunStatus,
        snapshot: Snapshot,
        output: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<()> {
        let Some(journal) = &self.shared.journal else {
            return Ok(());
        };
        let record = RunRecord {
            status,
            snapshot,
            output,
            error,
        };
        journal
            .store
            .save(&journal.key, &record)
            .map_err(WorkflowError::Store)
    }

    /// Publishes the terminal item once, and journals the outcome of a durable run.
    fn end(&mut self, result: &Result<W::Output>) {
        self.ended = true;
        if self.shared.journal.is_some() {
            let saved = match result {
                Ok(output) => match W::__encode_output(output) {
                    Ok(value) => self.save(RunStatus::Finished, Some(value), None),
                    Err(reason) => self.save(RunStatus::Failed, None, Some(reason)),
                },
                // Suspended runs were saved as waiting; a run that could not journal cannot
                // journal its end either.
                Err(WorkflowError::Suspended { .. } | WorkflowError::Store(_)) => Ok(()),
                Err(error) => self.save(RunStatus::Failed, None, Some(error.to_string())),
            };
            if let Err(error) = saved {
                tracing::error!(%error, "could not journal the end of a durable run");
            }
        }
        let outcome = match result {
            Ok(_) => Outcome::Stopped,
            Err(WorkflowError::Cancelled) => Outcome::Cancelled,
            Err(WorkflowError::Suspended { .. }) => Outcome::Suspended,
            Err(error @ (WorkflowError::TimedOut { .. } | WorkflowError::StepTimedOut { .. })) => {
                Outcome::TimedOut(error.to_string())
            }
            Err(error) => Outcome::Failed(error.to_string()),
        };
        self.shared.stream.end(outcome);
    }
}

impl<W: Workflow> Drop for Executor<W> {
    fn drop(&mut self) {
        // The run's future was dropped before it ended (the caller dropped `run()`, or the
        // runtime shut down): the run is cancelled, and its stream still ends.
        if !self.ended {
            self.shared.stream.end(Outcome::Cancelled);
        }
        // In-flight invocations are dropped with `in_flight`, after this: no step outlives
        // its run.
    }
}

/// Decodes a snapshot and checks it against workflow `W`.
pub(crate) fn restore<W: Workflow>(
    snapshot: &Snapshot,
    fingerprint: &str,
) -> std::result::Result<(W::State, Restored), SnapshotError> {
    if snapshot.format != SNAPSHOT_FORMAT {
        return Err(SnapshotError::new(
            "format",
            format!(
                "snapshot format {} is not supported; this build reads format {SNAPSHOT_FORMAT}",
                snapshot.format
            ),
        ));
    }
    if snapshot.workflow != W::GRAPH.workflow {
        return Err(SnapshotError::new(
            "workflow",
            format!(
                "the snapshot is of workflow `{}`, not `{}`",
                snapshot.workflow,
                W::GRAPH.workflow
            ),
        ));
    }
    if snapshot.fingerprint != fingerprint {
        return Err(SnapshotError::new(
            "fingerprint",
            format!(
                "the graph of `{}` changed since the snapshot was taken (snapshot {}, this build {fingerprint})",
                W::GRAPH.workflow,
                snapshot.fingerprint
            ),
        ));
    }
    if !W::DURABLE {
        return Err(SnapshotError::new(
            "workflow",
            format!(
                "workflow `{}` is not `#[workflow(durable)]`",
                W::GRAPH.workflow
            ),
        ));
    }
    let state = W::__decode_state(snapshot.state.clone())
        .map_err(|reason| SnapshotError::new("state", reason))?;
    let step_of = |path: String, name: &str| {
        W::GRAPH.step_index(name).ok_or_else(|| {
            SnapshotError::new(
                path,
                format!("workflow `{}` has no step `{name}`", W::GRAPH.workflow),
            )
        })
    };
    let event_of = |path: String, record: &EventRecord| {
        decode_event::<W>(record)
            .map_err(|(field, reason)| SnapshotError::new(format!("{path}.{field}"), reason))
    };
    let accepted = |path: String, step: usize, event: DynEvent| {
        if W::GRAPH.accepts(step, event.id()) {
            Ok(event)
        } else {
            Err(SnapshotError::new(
                path,
                format!(
                    "step `{}` does not accept `{}`",
                    W::GRAPH.steps[step].name,
                    event.name()
                ),
            ))
        }
    };
    let mut in_flight = Vec::new();
    for (i, record) in snapshot.in_flight.iter().enumerate() {
        let step = step_of(format!("in_flight[{i}].step"), &record.step)?;
        let event = event_of(format!("in_flight[{i}].event"), &record.event)?;
        let event = accepted(format!("in_flight[{i}].event"), step, event)?;
        in_flight.push((step, event, record.attempt.max(1)));
    }
    let mut queued = Vec::new();
    for (i, record) in snapshot.queued.iter().enumerate() {
        let step = step_of(format!("queued[{i}].step"), &record.step)?;
        let event = event_of(format!("queued[{i}].event"), &record.event)?;
        queued.push((step, accepted(format!("queued[{i}].event"), step, event)?));
    }
    let mut pending_requests = Vec::new();
    for (i, record) in snapshot.pending_requests.iter().enumerate() {
        pending_requests.push(event_of(format!("pending_requests[{i}]"), record)?);
    }
    Ok((
        state,
        Restored {
            in_flight,
            queued,
            pending_requests,
            recoveries: snapshot.recoveries,
            completed: snapshot.completed,
        },
    ))
}

/// Decodes the fan-in buffers and unclaimed answers of a snapshot into a fresh run.
pub(crate) fn restore_buffers<W: Workflow>(
    snapshot: &Snapshot,
    shared: &RunShared<W>,
) -> std::result::Result<(), SnapshotError> {
    let event_of = |path: String, record: &EventRecord| {
        decode_event::<W>(record)
            .map_err(|(field, reason)| SnapshotError::new(format!("{path}.{field}"), reason))
    };
    let mut buffers = lock(&shared.collect);
    for (i, record) in snapshot.collect.iter().enumerate() {
        let step = W::GRAPH.step_index(&record.step).ok_or_else(|| {
            SnapshotError::new(
                format!("collect[{i}].step"),
                format!(
                    "workflow `{}` has no step `{}`",
                    W::GRAPH.workflow,
                    record.step
                ),
            )
        })?;
        let mut slots = Vec::new();
        for (s, events) in record.slots.iter().enumerate() {
            let mut queue = VecDeque::new();
            for (e, event) in events.iter().enumerate() {
                queue.push_back(event_of(format!("collect[{i}].slots[{s}][{e}]"), event)?);
            }
            slots.push(queue);
        }
        buffers.insert((step, record.key), CollectBuffer { slots });
    }
    drop(buffers);
    let mut unclaimed = lock(&shared.unclaimed);
    for (i, record) in snapshot.unclaimed.iter().enumerate() {
        unclaimed.push(event_of(format!("unclaimed[{i}]"), record)?);
    }
    shared
        .stream_seq
        .store(snapshot.stream_seq, Ordering::Relaxed);
    Ok(())
}
