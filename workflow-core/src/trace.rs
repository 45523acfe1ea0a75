//! Run traces: what one run did, recorded when the runner asks for it
//! ([`Runner::trace`](crate::Runner::trace)) and read afterwards, in process from the handler
//! ([`Handler::recording`](crate::Handler::recording)) or, for a durable run, from its journal
//! ([`Runner::stored_trace`](crate::Runner::stored_trace)), even after its process died.
//!
//! A trace lists, in order and timed from the run's start: the steps started (worker, attempt,
//! input), finished (what they emitted) or failed (and whether they are retried), the events
//! sent with `send_event`, the requests to a human and their answers, resumptions, and the
//! outcome. [`Trace::timeline`] prints it for a terminal; with the `viz` feature,
//! `viz::render_trace` draws it on the graph.
//!
//! When recording is off (the default) the executor pays one untaken branch per step event.
//!
//! ```
//! use tidewater::prelude::*;
//!
//! #[derive(Debug, Clone, Event)]
//! struct Half(u32);
//!
//! struct Halve;
//!
//! #[workflow]
//! impl Halve {
//!     #[step]
//!     async fn begin(&self, ev: StartEvent<u32>) -> Half { Half(ev.0) }
//!     #[step]
//!     async fn halve(&self, ev: Half) -> Either<Half, StopEvent<u32>> {
//!         if ev.0 <= 1 { Either::Right(StopEvent(ev.0)) } else { Either::Left(Half(ev.0 / 2)) }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let run = Halve.runner().trace(true).start(8);
//! let recording = run.recording().expect("the runner records");
//! assert_eq!(run.await.unwrap(), 1);
//! let trace = recording.trace();
//! assert_eq!(trace.invocations("halve"), 4); // 8, 4, 2, 1
//! assert!(trace.timeline().contains("halve#1 started"));
//! # }
//! ```

use std::fmt::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::stream::lock;

/// The most entries a trace keeps; later ones are counted in [`Trace::dropped`] (a runaway
/// loop must not grow memory, nor a durable run's checkpoints, without bound).
pub const MAX_TRACE_ENTRIES: usize = 10_000;

/// What one run did, in order. Plain data: serialize it, keep it, draw it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// The workflow's type name.
    pub workflow: String,
    /// The run's id (the first process's, for a resumed durable run).
    pub run_id: u64,
    /// When the run started: microseconds since the Unix epoch.
    pub started_at_us: u64,
    /// What happened, in order.
    pub entries: Vec<TraceEntry>,
    /// Entries left out past [`MAX_TRACE_ENTRIES`].
    #[serde(default)]
    pub dropped: u64,
}

/// One thing that happened, `at_us` microseconds after the run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// Microseconds since the run started.
    pub at_us: u64,
    /// What happened.
    #[serde(flatten)]
    pub what: TraceEvent,
}

/// What happened in a run. Event types are their stable names (`Event::NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TraceEvent {
    /// The run began with its start event.
    Began {
        /// The start event's type.
        event: String,
    },
    /// The run was resumed from its journal or a snapshot (in this process).
    Resumed,
    /// A step invocation (or a retry of it) started.
    StepStarted {
        /// The step.
        step: String,
        /// Which of the step's workers runs it.
        worker: u32,
        /// The attempt, from 1.
        attempt: u32,
        /// The input event's type.
        input: String,
    },
    /// A step invocation returned; what it emitted, in order.
    StepFinished {
        /// The step.
        step: String,
        /// Its worker.
        worker: u32,
        /// The attempt that succeeded.
        attempt: u32,
        /// The event types it returned, in order (empty: it emitted nothing).
        emitted: Vec<String>,
    },
    /// An attempt failed (an error, a panic, a time limit).
    StepFailed {
        /// The step.
        step: String,
        /// Its worker.
        worker: u32,
        /// The attempt that failed.
        attempt: u32,
        /// The error.
        error: String,
        /// `Some(delay)` when the step is retried after `delay` microseconds; `None` when the
        /// failure is final.
        retry_in_us: Option<u64>,
    },
    /// An event sent with `send_event`, by a step or from outside the run.
    EventSent {
        /// The event's type.
        event: String,
        /// The step it was sent to, when targeted.
        target: Option<String>,
        /// The step that sent it; `None` from outside the run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        /// The attempt of that step that sent it (from 1): what a failed attempt sent stays
        /// sent (a retry does not take it back), and this tells it from what the retry sends.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
    },
    /// A request was published for a human (or another system) to answer, or a step began
    /// waiting inline for an answer (`ctx.wait_for`).
    HumanWait {
        /// The request's type; for an inline wait that published no request, the type of the
        /// answer it waits for.
        request: String,
    },
    /// An answer came in from outside.
    HumanAnswer {
        /// The response's type.
        response: String,
    },
    /// The run ended.
    Ended {
        /// `stopped`, `failed: ..`, `timed out: ..`, `cancelled` or `suspended`.
        outcome: String,
    },
    /// A step started a child run (`Context::run_child`).
    ChildStarted {
        /// The calling step.
        step: String,
        /// The child's workflow.
        workflow: String,
        /// The child's run id.
        run_id: u64,
    },
    /// A child run ended, or was stopped with its step.
    ChildEnded {
        /// The calling step.
        step: String,
        /// The child's workflow.
        workflow: String,
        /// The child's run id.
        run_id: u64,
        /// `stopped`, `failed: ..` (timeouts included) or `cancelled` (stopped with its step).
        outcome: String,
    },
}

/// Per-step totals of a trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepStats {
    /// Attempts started.
    pub attempts: u32,
    /// Invocations that returned.
    pub finished: u32,
    /// Attempts that failed and were retried.
    pub retried: u32,
    /// Invocations that failed for good.
    pub failed: u32,
    /// Time spent in attempts that ended, in microseconds.
    pub busy_us: u64,
}

fn short(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

/// A duration in microseconds, for people: `850µs`, `12.5ms`, `1.204s`.
pub(crate) fn human(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.3}s", us as f64 / 1_000_000.0)
    }
}

impl Trace {
    /// How many invocations of `step` started (retries not counted).
    pub fn invocations(&self, step: &str) -> u32 {
        self.entries
            .iter()
            .filter(|e| {
                matches!(&e.what, TraceEvent::StepStarted { step: s, attempt: 1, .. } if s == step)
            })
            .count() as u32
    }

    /// The steps that ran, in the order they first started.
    pub fn steps(&self) -> Vec<&str> {
        let mut steps: Vec<&str> = Vec::new();
        for entry in &self.entries {
            if let TraceEvent::StepStarted { step, .. } = &entry.what {
                if !steps.contains(&step.as_str()) {
                    steps.push(step);
                }
            }
        }
        steps
    }

    /// Totals for `step`.
    pub fn stats(&self, step: &str) -> StepStats {
        let mut stats = StepStats::default();
        // Start times of running attempts, by worker.
        let mut running: Vec<(u32, u64)> = Vec::new();
        let end = |worker: u32, at: u64, running: &mut Vec<(u32, u64)>| {
            if let Some(i) = running.iter().position(|(w, _)| *w == worker) {
                let (_, since) = running.remove(i);
                at.saturating_sub(since)
            } else {
                0
            }
        };
        for entry in &self.entries {
            match &entry.what {
                TraceEvent::StepStarted {
                    step: s, worker, ..
                } if s == step => {
                    stats.attempts += 1;
                    running.push((*worker, entry.at_us));
                }
                TraceEvent::StepFinished {
                    step: s, worker, ..
                } if s == step => {
                    stats.finished += 1;
                    stats.busy_us += end(*worker, entry.at_us, &mut running);
                }
                TraceEvent::StepFailed {
                    step: s,
                    worker,
                    retry_in_us,
                    ..
                } if s == step => {
                    if retry_in_us.is_some() {
                        stats.retried += 1;
                    } else {
                        stats.failed += 1;
                    }
                    stats.busy_us += end(*worker, entry.at_us, &mut running);
                }
                _ => {}
            }
        }
        stats
    }

    /// The events of the run in the order they went by: the start event, what each step
    /// emitted, events sent, requests and answers (short type names).
    pub fn event_path(&self) -> Vec<&str> {
        let mut path = Vec::new();
        for entry in &self.entries {
            match &entry.what {
                TraceEvent::Began { event } => path.push(short(event)),
                TraceEvent::StepFinished { emitted, .. } => {
                    path.extend(emitted.iter().map(|e| short(e)));
                }
                TraceEvent::EventSent { event, .. } => path.push(short(event)),
                TraceEvent::HumanAnswer { response } => path.push(short(response)),
                _ => {}
            }
        }
        path
    }

    /// How the run ended, if it did (`stopped`, `failed: ..`, ...).
    pub fn outcome(&self) -> Option<&str> {
        self.entries.iter().rev().find_map(|e| match &e.what {
            TraceEvent::Ended { outcome } => Some(outcome.as_str()),
            _ => None,
        })
    }

    /// The run as a plain-text timeline for a terminal: one line per entry (time from the
    /// start, what happened, how long a step took, how long a human took to answer), then a
    /// table of the steps.
    pub fn timeline(&self) -> String {
        let mut out = String::new();
        let end = self.entries.last().map_or(0, |e| e.at_us);
        let _ = writeln!(
            out,
            "run {} of {}: {} after {}",
            self.run_id,
            short(&self.workflow),
            self.outcome().unwrap_or("still running"),
            human(end)
        );
        let mut starts: Vec<(&str, u32, u64)> = Vec::new();
        let mut waits: Vec<u64> = Vec::new();
        let took =
            |starts: &mut Vec<(&str, u32, u64)>, step: &str, worker: u32, at: u64| match starts
                .iter()
                .position(|(s, w, _)| *s == step && *w == worker)
            {
                Some(i) => human(at.saturating_sub(starts.remove(i).2)),
                None => "?".to_string(),
            };
        for entry in &self.entries {
            let line = match &entry.what {
                TraceEvent::Began { event } => format!("> began with {}", short(event)),
                TraceEvent::Resumed => "> resumed".to_string(),
                TraceEvent::StepStarted {
                    step,
                    worker,
                    attempt,
                    input,
                } => {
                    starts.push((step, *worker, entry.at_us));
                    let retry = if *attempt > 1 {
                        format!(" (attempt {attempt})")
                    } else {
                        String::new()
                    };
                    format!(
                        "  {step}#{} started{retry} on {} [worker {worker}]",
                        self.nth(entry, step),
                        short(input)
                    )
                }
                TraceEvent::StepFinished {
                    step,
                    worker,
                    emitted,
                    ..
                } => {
                    let what = if emitted.is_empty() {
                        "nothing".to_string()
                    } else {
                        emitted
                            .iter()
                            .map(|e| short(e))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    format!(
                        "  {step} finished in {} -> {what}",
                        took(&mut starts, step, *worker, entry.at_us)
                    )
                }
                TraceEvent::StepFailed {
                    step,
                    worker,
                    attempt,
                    error,
                    retry_in_us,
                } => {
                    let time = took(&mut starts, step, *worker, entry.at_us);
                    match retry_in_us {
                        Some(delay) => format!(
                            "! {step} attempt {attempt} failed after {time}: {error}; retry in {}",
                            human(*delay)
                        ),
                        None => format!("x {step} failed for good after {time}: {error}"),
                    }
                }
                TraceEvent::EventSent {
                    event,
                    target,
                    step,
                    attempt,
                } => {
                    let sent = match target {
                        Some(target) => format!("  sent {} to {target}", short(event)),
                        None => format!("  sent {}", short(event)),
                    };
                    // A retried step's sends say which attempt made them.
                    match (step, attempt) {
                        (Some(step), Some(attempt)) if *attempt > 1 => {
                            format!("{sent} (by {step}, attempt {attempt})")
                        }
                        _ => sent,
                    }
                }
                TraceEvent::HumanWait { request } => {
                    waits.push(entry.at_us);
                    format!("? waiting for a human: {}", short(request))
                }
                TraceEvent::HumanAnswer { response } => {
                    let waited = if waits.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " after {}",
                            human(entry.at_us.saturating_sub(waits.remove(0)))
                        )
                    };
                    format!("? answered: {}{waited}", short(response))
                }
                TraceEvent::Ended { outcome } => format!("> ended: {outcome}"),
                TraceEvent::ChildStarted {
                    step,
                    workflow,
                    run_id,
                } => format!("  {step} started child {workflow}#{run_id}"),
                TraceEvent::ChildEnded {
                    step,
                    workflow,
                    run_id,
                    outcome,
                } => format!("  {step}'s child {workflow}#{run_id} ended: {outcome}"),
            };
            let _ = writeln!(out, "{:>10}  {line}", human(entry.at_us));
        }
        if self.dropped > 0 {
            let _ = writeln!(out, "  ... {} more entries not kept", self.dropped);
        }
        let steps = self.steps();
        if !steps.is_empty() {
            let width = steps.iter().map(|s| s.len()).max().unwrap_or(4).max(4);
            let _ = writeln!(
                out,
                "\n{:<width$}  {:>5}  {:>7}  {:>6}  {:>10}",
                "step", "runs", "retries", "failed", "busy"
            );
            for step in steps {
                let stats = self.stats(step);
                let _ = writeln!(
                    out,
                    "{step:<width$}  {:>5}  {:>7}  {:>6}  {:>10}",
                    self.invocations(step),
                    stats.retried,
                    stats.failed,
                    human(stats.busy_us)
                );
            }
        }
        out
    }

    /// Which invocation of `step` the start `entry` belongs to (retries keep the number).
    fn nth(&self, entry: &TraceEntry, step: &str) -> u32 {
        let mut n = 0;
        for e in &self.entries {
            if let TraceEvent::StepStarted {
                step: s, attempt, ..
            } = &e.what
            {
                if s == step && *attempt == 1 {
                    n += 1;
                }
            }
            if std::ptr::eq(e, entry) {
                break;
            }
        }
        n.max(1)
    }
}

/// The recorder of one run (shared by the executor and its handler).
#[derive(Debug)]
pub(crate) struct Recorder {
    origin: tokio::time::Instant,
    /// Added to the time since `origin`: the time between the run's first start and this
    /// process's resumption of it.
    base_us: u64,
    trace: std::sync::Mutex<Trace>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Recorder {
    /// A recorder for a new run, or one continuing the `prior` trace of a resumed run.
    pub(crate) fn new(workflow: &str, run_id: u64, prior: Option<Trace>) -> Recorder {
        let now = now_us();
        let (trace, base_us) = match prior {
            Some(trace) => {
                let last = trace.entries.last().map_or(0, |e| e.at_us);
                let base = now.saturating_sub(trace.started_at_us).max(last);
                (trace, base)
            }
            None => (
                Trace {
                    workflow: workflow.to_string(),
                    run_id,
                    started_at_us: now,
                    entries: Vec::new(),
                    dropped: 0,
                },
                0,
            ),
        };
        Recorder {
            origin: tokio::time::Instant::now(),
            base_us,
            trace: std::sync::Mutex::new(trace),
        }
    }

    pub(crate) fn record(&self, what: TraceEvent) {
        let at_us = self.base_us + self.origin.elapsed().as_micros() as u64;
        let mut trace = lock(&self.trace);
        if trace.entries.len() >= MAX_TRACE_ENTRIES {
            trace.dropped += 1;
        } else {
            trace.entries.push(TraceEntry { at_us, what });
        }
    }

    pub(crate) fn trace(&self) -> Trace {
        lock(&self.trace).clone()
    }
}

/// A run's recording, from [`Handler::recording`](crate::Handler::recording): read the trace
/// while the run goes on or after it ended.
#[derive(Debug, Clone)]
pub struct Recording(pub(crate) Arc<Recorder>);

impl Recording {
    /// The trace so far.
    pub fn trace(&self) -> Trace {
        self.0.trace()
    }
}
