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
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::Instrument;

use crate::context::{Context, RunShared};
use crate::error::{Result, WorkflowError};
use crate::event::StepFailure;
use crate::event::{DynEvent, EventId, EventKind};
use crate::graph::Graph;
use crate::output::Emitted;
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
    result: std::result::Result<Emitted, Failed>,
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
#[expect(
    clippy::too_many_arguments,
    reason = "a private function called from one place, with plain values"
)]
async fn invoke<W: Workflow>(
    workflow: Arc<W>,
    shared: Arc<RunShared<W>>,
    step: usize,
    worker: u32,
    event: DynEvent,
    config: StepConfig,
    keep_input: bool,
    verbose: bool,
) -> std::result::Result<Emitted, Failed> {
    let name = W::GRAPH.steps[step].name;
    let run_id = shared.run_id;
    let mut attempt = 1;
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

/// A step's error, shared between the run's error and the catch-error step's event.
#[derive(Debug)]
struct SharedError(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
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
    ended: bool,
}

/// Runs one workflow run to its end.
pub(crate) async fn execute<W: Workflow>(
    runner: Runner<W>,
    shared: Arc<RunShared<W>>,
    start: DynEvent,
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
        let result = match executor.route(start, None) {
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
            ended: false,
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
            if self.in_flight.is_empty() && self.queued == 0 && self.pending_requests.is_empty() {
                return Poll::Ready(Err(self.stuck()));
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

    /// Routes the events sent with `send_event` (from steps or from outside) and notices a
    /// cancellation.
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
        Ok(())
    }

    fn complete(&mut self, done: Done) -> Result<()> {
        let slot = &mut self.slots[done.step];
        slot.busy -= 1;
        slot.free_workers.push(done.worker);
        let name = W::GRAPH.steps[done.step].name;
        if self.runner.config.internal_events && self.shared.stream.has_subscribers() {
            self.shared.stream.publish(StreamItem::StepFinished {
                step: name,
                worker: done.worker,
            });
        }
        let emitted = match done.result {
            Ok(emitted) => emitted,
            Err(failed) => return self.recover(failed),
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
                self.start(done.step, event);
            }
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
        if event.kind() == EventKind::Stop {
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
        match event.kind() {
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
        let routes = self.runner.routes.clone();
        let single;
        let consumers = match target {
            Some(step) => {
                if !W::GRAPH.accepts(step, event.id()) {
                    return Err(WorkflowError::Undeliverable {
                        event: event.name(),
                        reason: format!("step `{}` does not accept it", W::GRAPH.steps[step].name),
                    });
                }
                single = [step];
                &single[..]
            }
            None => routes.consumers(event.id()),
        };
        let Some((&last, rest)) = consumers.split_last() else {
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
            self.start(step, event);
        } else {
            slot.queue.push_back(event);
            self.queued += 1;
        }
    }

    fn start(&mut self, step: usize, event: DynEvent) {
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
        let config = &self.runner.config;
        let invocation = invoke(
            self.runner.workflow.clone(),
            self.shared.clone(),
            step,
            worker,
            event,
            config.steps[step],
            self.catches,
            config.verbose,
        );
        self.in_flight.push(Box::pin(async move {
            Done {
                step,
                worker,
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

    /// Publishes the terminal item once.
    fn end(&mut self, result: &Result<W::Output>) {
        self.ended = true;
        let outcome = match result {
            Ok(_) => Outcome::Stopped,
            Err(WorkflowError::Cancelled) => Outcome::Cancelled,
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
