//! Streaming: progress events, internal step events, several subscribers, a slow consumer, and
//! exactly one terminal outcome on every exit path.

use std::time::Duration;

use futures_util::StreamExt;
use tidewater::prelude::*;
use tidewater::{EventStream, Outcome, StepFailure};

#[derive(Debug, Clone, Event, PartialEq)]
struct Progress(u32);

#[derive(Debug, Clone, Event)]
struct Work(u32);

/// What the input asks the run to do.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Stop,
    Fail,
    Panic,
    Hang,
    Stuck,
    Flaky,
    Recover,
}

#[derive(Debug, thiserror::Error)]
#[error("it broke")]
struct Broke;

struct Reporter;

#[workflow]
impl Reporter {
    #[step]
    async fn begin(&self, ctx: &Context<Self>, ev: StartEvent<(Mode, u32)>) -> Option<Work> {
        let (mode, n) = ev.0;
        for i in 0..n {
            ctx.write_event_to_stream(Progress(i));
        }
        match mode {
            Mode::Stuck => None,
            _ => Some(Work(mode as u32)),
        }
    }

    #[step(retry = RetryPolicy::fixed(2, Duration::from_millis(1)), timeout = Duration::from_secs(10))]
    async fn work(&self, ev: Work) -> Result<StopEvent<&'static str>, Broke> {
        match ev.0 {
            0 => Ok(StopEvent("done")),
            1 | 5 | 6 => Err(Broke),
            2 => panic!("kaboom"),
            _ => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(StopEvent("late"))
            }
        }
    }

    #[step]
    async fn recover(&self, failure: StepFailure) -> Result<StopEvent<&'static str>, Broke> {
        match failure.input.downcast_ref::<Work>() {
            Some(Work(6)) => Ok(StopEvent("recovered")),
            _ => Err(Broke),
        }
    }
}

async fn drain(mut events: EventStream) -> (Vec<u32>, Vec<Outcome>) {
    let mut progress = Vec::new();
    let mut ends = Vec::new();
    while let Some(item) = events.next().await {
        match item {
            StreamItem::Event(event) => progress.push(event.downcast::<Progress>().unwrap().0),
            StreamItem::End(outcome) => ends.push(outcome),
            other => panic!("unexpected {other:?}"),
        }
    }
    (progress, ends)
}

async fn outcome_of(mode: Mode, runner: Runner<Reporter>) -> (Vec<u32>, Vec<Outcome>, String) {
    let mut handler = runner.start((mode, 3));
    let events = handler.events();
    let cancel = matches!(mode, Mode::Hang).then(|| handler.subscribe());
    if cancel.is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        handler.cancel();
    }
    let stream = tokio::spawn(drain(events));
    let result = handler.await;
    let (progress, ends) = stream.await.unwrap();
    let result = match result {
        Ok(out) => format!("ok {out}"),
        Err(error) => error.to_string(),
    };
    (progress, ends, result)
}

#[tokio::test(start_paused = true)]
async fn every_exit_path_ends_the_stream_with_exactly_one_terminal_outcome() {
    let runner = Reporter.runner();
    let cases = [
        (Mode::Stop, Outcome::Stopped, "ok done"),
        (
            Mode::Fail,
            Outcome::Failed("step `recover` failed after 1 attempt(s): it broke".into()),
            "step `recover` failed after 1 attempt(s)",
        ),
        (
            Mode::Panic,
            Outcome::Failed("step `work` panicked: kaboom".into()),
            "step `work` panicked: kaboom",
        ),
        (Mode::Hang, Outcome::Cancelled, "the run was cancelled"),
        (
            Mode::Stuck,
            Outcome::Failed(
                "the run is stuck: step `begin` finished without emitting an event, and no step \
                 is running, no event is queued and nothing waits for outside input"
                    .into(),
            ),
            "the run is stuck: step `begin` finished without emitting an event, and no step is \
             running, no event is queued and nothing waits for outside input",
        ),
        (
            Mode::Flaky,
            Outcome::Failed("step `recover` failed after 1 attempt(s): it broke".into()),
            "step `recover` failed after 1 attempt(s)",
        ),
        (Mode::Recover, Outcome::Stopped, "ok recovered"),
    ];
    for (mode, want_outcome, want_result) in cases {
        let (progress, ends, result) = outcome_of(mode, runner.clone()).await;
        assert_eq!(progress, [0, 1, 2], "{mode:?}");
        assert_eq!(ends, [want_outcome], "{mode:?}");
        assert_eq!(result, want_result, "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn run_and_step_timeouts_end_the_stream_as_timed_out() {
    // The run's own timeout.
    let runner = Reporter.timeout(Duration::from_millis(30));
    let (_, ends, result) = outcome_of(Mode::Hang, runner.clone()).await;
    // `Hang` cancels after 5 ms, before the 30 ms timeout: cancelled.
    assert_eq!(ends, [Outcome::Cancelled]);
    assert_eq!(result, "the run was cancelled");

    let mut handler = runner.start((Mode::Hang, 0));
    let stream = tokio::spawn(drain(handler.events()));
    let error = handler.await.unwrap_err();
    let (_, ends) = stream.await.unwrap();
    assert_eq!(ends, [Outcome::TimedOut(error.to_string())]);
    assert_eq!(
        error.to_string(),
        "the run timed out after 30ms; steps still active: `work`"
    );

    // The step's timeout (10 s) without a run timeout.
    let mut handler = Reporter.start((Mode::Hang, 0));
    let stream = tokio::spawn(drain(handler.events()));
    let error = handler.await.unwrap_err();
    let (_, ends) = stream.await.unwrap();
    assert_eq!(error.to_string(), "step `work` timed out after 10s");
    assert_eq!(ends, [Outcome::TimedOut(error.to_string())]);
}

#[test]
fn a_run_whose_task_is_dropped_still_ends_its_stream_as_cancelled() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (events, handler) = runtime.block_on(async {
        let mut handler = Reporter.start((Mode::Hang, 2));
        let events = handler.events();
        tokio::time::sleep(Duration::from_millis(5)).await;
        (events, handler)
    });
    // Shutting the runtime down drops the run's task mid-run.
    drop(runtime);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (progress, ends) = runtime.block_on(drain(events));
    assert_eq!(progress, [0, 1]);
    assert_eq!(ends, [Outcome::Cancelled]);
    let error = runtime.block_on(handler).unwrap_err();
    assert!(matches!(error, WorkflowError::Cancelled), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn a_detached_run_goes_on_and_ends_its_stream() {
    let runner = Reporter.runner();
    let mut handler = runner.start((Mode::Hang, 1));
    let mut events = handler.events();
    assert_eq!(
        events.next().await.unwrap().event::<Progress>(),
        Some(&Progress(0))
    );
    drop(handler); // detaches: the run goes on
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rest = tokio::time::timeout(Duration::from_secs(20), drain(events)).await;
    // The step times out after 10 s: the run ended on its own, with one terminal item.
    let (progress, ends) = rest.unwrap();
    assert!(progress.is_empty());
    assert_eq!(ends.len(), 1);
}

#[tokio::test]
async fn several_subscribers_each_see_the_events_and_the_end() {
    let mut handler = Reporter.start((Mode::Stop, 50));
    let first = handler.events();
    let second = handler.subscribe();
    let (a, b) = tokio::join!(drain(first), drain(second));
    handler.await.unwrap();
    assert_eq!(a.0, (0..50).collect::<Vec<_>>());
    assert_eq!(a.1, [Outcome::Stopped]);
    // The second subscribed right after start: it may miss none or some of the first events,
    // never the end, and what it saw is in order.
    assert!(b.0.windows(2).all(|w| w[0] + 1 == w[1]));
    assert_eq!(b.1, [Outcome::Stopped]);
}

#[tokio::test]
async fn a_slow_consumer_costs_bounded_memory_and_still_gets_the_end() {
    let runner = Reporter.runner().stream_capacity(4);
    let mut handler = runner.start((Mode::Stop, 100));
    let mut events = handler.events();
    handler.await.unwrap();
    // Nobody read while the run went: the buffer kept the last 4 items (3 progress + end).
    let mut items = Vec::new();
    while let Some(item) = events.next().await {
        items.push(item);
    }
    assert_eq!(events.lagged(), 97);
    assert_eq!(items.len(), 4);
    assert_eq!(items[0].event::<Progress>(), Some(&Progress(97)));
    assert!(matches!(items[3], StreamItem::End(Outcome::Stopped)));
}

#[tokio::test]
async fn a_consumer_that_goes_away_never_stops_the_run() {
    let mut handler = Reporter.start((Mode::Stop, 10));
    drop(handler.events());
    assert_eq!(handler.await.unwrap(), "done");
}

#[tokio::test]
async fn internal_events_show_each_step_start_and_finish_with_its_worker() {
    let mut handler = Reporter
        .runner()
        .internal_events(true)
        .start((Mode::Stop, 1));
    let mut seen = Vec::new();
    let mut events = handler.events();
    while let Some(item) = events.next().await {
        seen.push(match item {
            StreamItem::StepStarted { step, worker } => format!("start {step} {worker}"),
            StreamItem::StepFinished { step, worker } => format!("finish {step} {worker}"),
            StreamItem::Event(_) => "progress".to_string(),
            StreamItem::End(outcome) => format!("end {outcome:?}"),
            _ => "other".to_string(),
        });
    }
    handler.await.unwrap();
    assert_eq!(
        seen,
        [
            "start begin 0",
            "progress",
            "finish begin 0",
            "start work 0",
            "finish work 0",
            "end Stopped"
        ]
    );
}

#[tokio::test]
async fn subscribing_after_the_end_yields_the_end() {
    let handler = Reporter.start((Mode::Stop, 1));
    while !handler.is_finished() {
        tokio::task::yield_now().await;
    }
    let (progress, ends) = drain(handler.subscribe()).await;
    assert!(progress.is_empty());
    assert_eq!(ends, [Outcome::Stopped]);
    assert_eq!(handler.await.unwrap(), "done");
}
