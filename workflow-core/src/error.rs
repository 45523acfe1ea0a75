//! Errors of a run.

use std::time::Duration;

use crate::graph::GraphError;

use crate::snapshot::SnapshotError;
use crate::store::StoreError;

/// A step attempt that failed, as [`Handler::failures`](crate::Handler::failures) lists it:
/// readable whatever the run's end, so that a run cancelled (or timed out) after some of its
/// steps failed, were retried or were recovered still tells what went wrong.
///
/// ```
/// use tidewater::prelude::*;
///
/// #[derive(Debug, Clone, Event)]
/// struct Never;
///
/// struct Flaky;
///
/// #[workflow]
/// impl Flaky {
///     #[step(retry = RetryPolicy::fixed(5, std::time::Duration::from_secs(60)))]
///     async fn call(&self, _ev: StartEvent<()>) -> Result<StopEvent<()>, std::io::Error> {
///         Err(std::io::Error::other("connection refused"))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut run = Flaky.runner().start(());
/// while run.failures().is_empty() {
///     tokio::task::yield_now().await;
/// }
/// run.cancel(); // during the retry delay
/// assert!(matches!((&mut run).await, Err(WorkflowError::Cancelled)));
/// let failed = &run.failures()[0];
/// assert_eq!((failed.step, failed.attempt, failed.retried), ("call", 1, true));
/// assert_eq!(failed.error.to_string(), "connection refused");
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FailedAttempt {
    /// The step.
    pub step: &'static str,
    /// Which attempt failed (from 1).
    pub attempt: u32,
    /// The step's worker.
    pub worker: u32,
    /// The error (for a panic or a step's time limit, the `WorkflowError` saying so).
    pub error: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    /// Whether the step was to be retried after it (otherwise the failure was final: handed
    /// to the catch-error step, or the run's end).
    pub retried: bool,
}

/// How many failed attempts a run keeps for [`FailedAttempt`] (the latest ones).
pub(crate) const KEPT_FAILURES: usize = 100;

/// The error type a step may return: any error that is `Send + Sync`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its causes as one line: `step `fetch` failed after 1 attempt(s): connection
/// refused` (what a stream consumer or a store sees of a failure, where the error value itself
/// cannot go).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their source's text: say each thing once.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// The result of a run.
pub type Result<T, E = WorkflowError> = std::result::Result<T, E>;

/// Why a run did not produce its output.
///
/// ```
/// use tidewater::WorkflowError;
/// let err = WorkflowError::Cancelled;
/// assert_eq!(err.to_string(), "the run was cancelled");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// A step returned an error (after its retries, if it has any); the step's error is the source.
    #[error("step `{step}` failed after {attempts} attempt(s)")]
    StepFailed {
        /// The step's name.
        step: &'static str,
        /// How many times the step ran on this event.
        attempts: u32,
        /// The step's own error.
        #[source]
        source: BoxError,
    },
    /// A step panicked; the panic is caught and ends the run like an error.
    #[error("step `{step}` panicked: {message}")]
    StepPanicked {
        /// The step's name.
        step: &'static str,
        /// The panic message, when it was a string.
        message: String,
    },
    /// One invocation of a step ran longer than its `timeout`.
    #[error("step `{step}` timed out after {timeout:?}")]
    StepTimedOut {
        /// The step's name.
        step: &'static str,
        /// The step's time limit.
        timeout: Duration,
    },
    /// The whole run ran longer than the runner's timeout.
    #[error(
        "the run timed out after {timeout:?}; steps still active: {}",
        list(active)
    )]
    TimedOut {
        /// The run's time limit.
        timeout: Duration,
        /// The steps that were running or had queued events when time ran out.
        active: Vec<&'static str>,
    },
    /// An inline wait (`ctx.wait_for`) got no matching event in time.
    #[error("no `{event}` arrived within {timeout:?}")]
    WaitTimedOut {
        /// The awaited event's stable name.
        event: &'static str,
        /// The wait's time limit.
        timeout: Duration,
    },
    /// The run was cancelled through its handler.
    #[error("the run was cancelled")]
    Cancelled,
    /// Nothing is running, nothing is queued and nothing waits for outside input: the run could
    /// never finish.
    #[error("the run is stuck: {diagnostic}")]
    Stuck {
        /// What the executor saw last.
        diagnostic: String,
    },
    /// An event was sent that no step of the workflow (or not the named step) accepts.
    #[error("event `{event}` cannot be delivered: {reason}")]
    Undeliverable {
        /// The event's stable name.
        event: &'static str,
        /// Why not.
        reason: String,
    },
    /// A durable run parked waiting for an answer from outside, and was evicted from memory to
    /// its store; `Runner::answer` resumes it.
    #[error("run `{key}` is waiting for an answer and was moved to its store")]
    Suspended {
        /// The run's key in the store.
        key: String,
    },
    /// A snapshot could not be taken or resumed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A durable run's store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runaway-loop guard ([`Runner::max_loop_invocations`](crate::Runner::max_loop_invocations)):
    /// steps on a loop were invoked more often than the limit allows in one run.
    #[error(
        "the run invoked steps on a loop {count} times without ending ({}): a loop whose exit \
         is never taken? The limit is {limit} per run (`Runner::max_loop_invocations`)",
        cycle.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" -> ")
    )]
    LoopLimit {
        /// The loop through the step that crossed the limit, that step first and last.
        cycle: Vec<&'static str>,
        /// How many invocations of steps on loops the run made.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A durable run cannot be started or resumed as asked.
    #[error("durable run `{key}`: {reason}")]
    Durable {
        /// The run's key.
        key: String,
        /// Why not.
        reason: String,
    },
    /// A child run started with `Context::run_child` failed (or could not start); its error
    /// is the source. With `?` the calling step fails with it, so its retries and the
    /// catch-error step apply.
    #[error("child run {child} failed")]
    ChildFailed {
        /// Which child: the calling step, its workflow, its run id (0 when it never started).
        child: crate::stream::ChildId,
        /// The child's own error.
        #[source]
        source: Box<WorkflowError>,
    },
    /// The workflow's graph breaks the graph rules (only possible for graphs built by hand;
    /// `#[workflow]` rejects these at compile time).
    #[error("the workflow graph is invalid: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidGraph {
        /// Every rule broken.
        errors: Vec<GraphError>,
    },
}

fn list(steps: &[&'static str]) -> String {
    if steps.is_empty() {
        "none".to_string()
    } else {
        steps
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl WorkflowError {
    /// The error a failed step returned, as its own type: `Some` when the run failed with
    /// [`WorkflowError::StepFailed`] and the step's error is an `E`.
    ///
    /// ```
    /// use tidewater::prelude::*;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("quota exceeded")]
    /// struct Quota;
    ///
    /// struct Flow;
    ///
    /// #[workflow]
    /// impl Flow {
    ///     #[step]
    ///     async fn go(&self, _ev: StartEvent<()>) -> Result<StopEvent<()>, Quota> { Err(Quota) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let error = Flow.run(()).await.unwrap_err();
    /// assert!(error.step_error::<Quota>().is_some());
    /// # }
    /// ```
    pub fn step_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let WorkflowError::StepFailed { source, .. } = self else {
            return None;
        };
        match source.downcast_ref::<SharedError>() {
            Some(shared) => shared.0.downcast_ref::<E>(),
            None => source.downcast_ref::<E>(),
        }
    }
}

/// A step's error, shared between the run's error and the catch-error step's event. It shows
/// as the step's error itself (same message, same source chain).
#[derive(Debug)]
pub(crate) struct SharedError(pub(crate) std::sync::Arc<dyn std::error::Error + Send + Sync>);

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
