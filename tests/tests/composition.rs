//! Child runs (`ctx.run_child`, `ctx.run_children`): typed calls from a step to another
//! workflow, and what the parent sees of them: the child's stream on its own stream, marked
//! with the child's path, the child's end not ending it; deadlines (the earlier of both);
//! cancel and timeout stopping the children first; a child's failure as the step's error
//! (retries, the catch-error step); a human request in a child answered through the parent;
//! snapshots and durable runs that go on with a running child without re-running its
//! completed steps. Each on both tokio runtimes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use integration_tests::Live;
use serde::{Deserialize, Serialize};
use tidewater::ChildId;
use tidewater::prelude::*;
use tidewater::store::{MemoryStore, RunStatus, Store};

macro_rules! on_both_runtimes {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn current_thread() {
                super::$name().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_thread() {
                super::$name().await
            }
        }
    };
}

/// The child's progress, written to its stream.
#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
struct Found {
    question: String,
}

/// The parent's own progress.
#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
struct Note(String);

struct Research {
    delay: Duration,
}

#[workflow]
impl Research {
    #[step]
    async fn search(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> StopEvent<String> {
        tokio::time::sleep(self.delay).await;
        ctx.write_event_to_stream(Found {
            question: ev.0.clone(),
        });
        StopEvent(format!("notes on {}", ev.0))
    }
}

struct Planner {
    research: Runner<Research>,
}

#[workflow]
impl Planner {
    #[step]
    async fn plan(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<Vec<String>>,
    ) -> Result<StopEvent<Vec<String>>, WorkflowError> {
        ctx.write_event_to_stream(Note("planning".into()));
        let notes = ctx.run_children(&self.research, ev.0).await?;
        ctx.write_event_to_stream(Note("done".into()));
        Ok(StopEvent(notes))
    }
}

fn planner(delay_ms: u64) -> Planner {
    Planner {
        research: Research {
            delay: Duration::from_millis(delay_ms),
        }
        .runner(),
    }
}

fn questions(list: &[&str]) -> Vec<String> {
    list.iter().map(|q| q.to_string()).collect()
}

/// Everything a stream holds, to its end.
async fn drain(mut events: tidewater::EventStream) -> Vec<StreamItem> {
    let mut items = Vec::new();
    while let Some(item) = events.next().await {
        items.push(item);
    }
    items
}

/// A readable line per item: `parent Note(..)`, `plan/Research: Found(..)`, `end Stopped`.
fn describe(item: &StreamItem) -> String {
    match item {
        StreamItem::Event(event) => {
            if let Some(Note(n)) = item.event::<Note>() {
                format!("note {n}")
            } else {
                format!("event {}", event.name())
            }
        }
        StreamItem::End(outcome) => format!("end {outcome:?}"),
        StreamItem::Child { path, item } => {
            let path: Vec<String> = path
                .iter()
                .map(|c| format!("{}/{}", c.step, c.workflow))
                .collect();
            let inner = match &**item {
                StreamItem::Event(_) => match (item.event::<Found>(), item.event::<Question>()) {
                    (Some(found), _) => format!("found {}", found.question),
                    (_, Some(question)) => format!("question {}", question.topic),
                    _ => describe(item),
                },
                other => describe(other),
            };
            format!("[{}] {inner}", path.join(" > "))
        }
        other => format!("{other:?}"),
    }
}

async fn a_child_returns_its_output_and_its_stream_reaches_the_parent_marked_as_its_own() {
    let mut run = planner(1).runner().start(questions(&["tides"]));
    let events = run.events();
    let output = (&mut run).await.unwrap();
    assert_eq!(output, ["notes on tides"]);
    let items = drain(events).await;
    let lines: Vec<String> = items.iter().map(describe).collect();
    assert_eq!(
        lines,
        [
            "note planning",
            "[plan/Research] found tides",
            "[plan/Research] end Stopped",
            "note done",
            "end Stopped",
        ],
        "the child's end does not end the parent's stream"
    );
    // The child's items carry its run id, not the parent's.
    let (path, _) = items[1].child().unwrap();
    assert_eq!(path.len(), 1);
    assert_ne!(path[0].run_id, run.run_id());
    assert_eq!(items[2].child().unwrap().0, path);
    assert!(items[2].child().unwrap().1.is_terminal() && !items[2].is_terminal());
}
on_both_runtimes!(a_child_returns_its_output_and_its_stream_reaches_the_parent_marked_as_its_own);

async fn children_fan_out_at_once_and_each_ends_before_the_parent_goes_on() {
    let list = questions(&["a", "bb", "ccc", "dddd"]);
    // Each child sleeps 200 ms: one after the other they would take 800 ms, at once 200.
    let started = tokio::time::Instant::now();
    let mut run = planner(200).runner().start(list.clone());
    let events = run.events();
    let output = (&mut run).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        output,
        list.iter()
            .map(|q| format!("notes on {q}"))
            .collect::<Vec<_>>(),
        "outputs in input order"
    );
    assert!(
        elapsed < Duration::from_millis(700),
        "the children ran at once ({elapsed:?})"
    );
    let items = drain(events).await;
    let lines: Vec<String> = items.iter().map(describe).collect();
    assert_eq!(lines.first().unwrap(), "note planning");
    assert_eq!(&lines[lines.len() - 2..], ["note done", "end Stopped"]);
    // Four children, each with its own run id: its `Found` comes before its end.
    let mut ids: Vec<ChildId> = items
        .iter()
        .filter_map(|i| i.child().map(|(path, _)| path[0]))
        .collect();
    ids.dedup();
    let mut distinct = ids.clone();
    distinct.sort_by_key(|c| c.run_id);
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{lines:#?}");
    for id in &distinct {
        let own: Vec<String> = items
            .iter()
            .filter(|i| i.child().is_some_and(|(p, _)| p[0] == *id))
            .map(describe)
            .collect();
        assert_eq!(own.len(), 2, "{own:?}");
        assert!(own[0].starts_with("[plan/Research] found "), "{own:?}");
        assert_eq!(own[1], "[plan/Research] end Stopped");
    }
}
on_both_runtimes!(children_fan_out_at_once_and_each_ends_before_the_parent_goes_on);

/// A grandchild: the path leads through the child.
struct Chain {
    planner: Runner<Planner>,
}

#[workflow]
impl Chain {
    #[step]
    async fn delegate(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<String>,
    ) -> Result<StopEvent<usize>, WorkflowError> {
        let notes = ctx.run_child(&self.planner, vec![ev.0]).await?;
        Ok(StopEvent(notes.len()))
    }
}

async fn a_grandchilds_items_carry_the_whole_path() {
    let mut run = Chain {
        planner: planner(1).runner(),
    }
    .runner()
    .start("deep".into());
    let events = run.events();
    assert_eq!((&mut run).await.unwrap(), 1);
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(
        lines,
        [
            "[delegate/Planner] note planning",
            "[delegate/Planner > plan/Research] found deep",
            "[delegate/Planner > plan/Research] end Stopped",
            "[delegate/Planner] note done",
            "[delegate/Planner] end Stopped",
            "end Stopped",
        ]
    );
}
on_both_runtimes!(a_grandchilds_items_carry_the_whole_path);

// ---- failures: the step's error, retries, the catch-error step ----

#[derive(Debug, thiserror::Error)]
#[error("the index is down")]
struct IndexDown;

/// Fails its first `fail_first` runs.
struct Flaky {
    runs: Arc<AtomicU32>,
    fail_first: u32,
}

#[workflow]
impl Flaky {
    #[step]
    async fn lookup(&self, ev: StartEvent<u32>) -> Result<StopEvent<u32>, IndexDown> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if run <= self.fail_first {
            return Err(IndexDown);
        }
        Ok(StopEvent(ev.0 + 1))
    }
}

fn flaky(fail_first: u32) -> (Runner<Flaky>, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let runner = Flaky {
        runs: runs.clone(),
        fail_first,
    }
    .runner();
    (runner, runs)
}

struct Retrying {
    flaky: Runner<Flaky>,
}

#[workflow]
impl Retrying {
    #[step(retry = RetryPolicy::fixed(3, Duration::from_millis(1)))]
    async fn call(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        Ok(StopEvent(ctx.run_child(&self.flaky, ev.0).await?))
    }
}

async fn a_failed_child_is_the_steps_error_with_the_childs_as_source_and_retries_apply() {
    // Fails twice, the third attempt of `call` runs a third child, which succeeds.
    let (child, runs) = flaky(2);
    let mut run = Retrying { flaky: child }.runner().start(41);
    let events = run.events();
    assert_eq!((&mut run).await.unwrap(), 42);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let items = drain(events).await;
    let lines: Vec<String> = items.iter().map(describe).collect();
    assert_eq!(
        lines,
        [
            "[call/Flaky] end Failed(\"step `lookup` failed after 1 attempt(s): the index is down\")",
            "[call/Flaky] end Failed(\"step `lookup` failed after 1 attempt(s): the index is down\")",
            "[call/Flaky] end Stopped",
            "end Stopped",
        ]
    );
    let ids: Vec<u64> = items
        .iter()
        .filter_map(|i| i.child().map(|(p, _)| p[0].run_id))
        .collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2],
        "each attempt runs a new child"
    );

    // Failing for good: the step's error is the child's failure, the child's error its source.
    let (child, _) = flaky(u32::MAX);
    let error = Retrying { flaky: child }.runner().run(1).await.unwrap_err();
    let WorkflowError::StepFailed {
        step,
        attempts,
        source,
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!((*step, *attempts), ("call", 3));
    let _ = source;
    let child_error = error
        .step_error::<WorkflowError>()
        .expect("the step's error is the child's failure");
    assert!(
        matches!(child_error, WorkflowError::ChildFailed { child, .. } if child.workflow == "Flaky" && child.step == "call"),
        "{child_error:?}"
    );
    let chain = chain(&error);
    assert!(
        chain.starts_with("step `call` failed after 3 attempt(s): child run call/Flaky#")
            && chain
                .ends_with(" failed: step `lookup` failed after 1 attempt(s): the index is down"),
        "{chain}"
    );
}
on_both_runtimes!(a_failed_child_is_the_steps_error_with_the_childs_as_source_and_retries_apply);

/// An error and its sources, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

struct Catching {
    flaky: Runner<Flaky>,
}

#[workflow]
impl Catching {
    #[step]
    async fn call(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        let n = ctx.run_child(&self.flaky, ev.0).await?;
        Ok(StopEvent(format!("got {n}")))
    }

    #[step]
    async fn recover(&self, failure: StepFailure) -> StopEvent<String> {
        let child = failure
            .error
            .downcast_ref::<WorkflowError>()
            .expect("the step's error is the child's failure");
        StopEvent(format!("`{}` recovered: {}", failure.step, chain(child)))
    }
}

async fn the_catch_error_step_receives_a_childs_failure() {
    let (child, _) = flaky(u32::MAX);
    let mut run = Catching { flaky: child }.runner().start(1);
    let events = run.events();
    let out = (&mut run).await.unwrap();
    assert!(
        out.starts_with("`call` recovered: child run call/Flaky#")
            && out.ends_with(" failed: step `lookup` failed after 1 attempt(s): the index is down"),
        "{out}"
    );
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(
        lines,
        [
            "[call/Flaky] end Failed(\"step `lookup` failed after 1 attempt(s): the index is down\")",
            "end Stopped",
        ]
    );
}
on_both_runtimes!(the_catch_error_step_receives_a_childs_failure);

// ---- deadlines, cancel ----

/// Sleeps its input in milliseconds, holding a guard while it runs.
struct Sleeper {
    live: Live,
}

#[workflow]
impl Sleeper {
    #[step]
    async fn nap(&self, ev: StartEvent<u64>) -> StopEvent<u64> {
        let _running = self.live.guard();
        tokio::time::sleep(Duration::from_millis(ev.0)).await;
        StopEvent(ev.0)
    }
}

struct Waits {
    sleeper: Runner<Sleeper>,
}

#[workflow]
impl Waits {
    #[step]
    async fn delegate(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u64>,
    ) -> Result<StopEvent<u64>, WorkflowError> {
        Ok(StopEvent(ctx.run_child(&self.sleeper, ev.0).await?))
    }
}

async fn a_parent_that_times_out_first_stops_its_child_with_its_timeout() {
    let live = Live::default();
    let sleeper = Sleeper { live: live.clone() }
        .runner()
        .timeout(Duration::from_secs(60));
    let mut run = Waits { sleeper }
        .runner()
        .timeout(Duration::from_millis(50))
        .start(60_000);
    let events = run.events();
    let error = (&mut run).await.unwrap_err();
    assert!(
        matches!(&error, WorkflowError::TimedOut { active, .. } if active == &["delegate"]),
        "{error:?}"
    );
    assert_eq!(live.count(), 0, "nothing of the child outlives its parent");
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("[delegate/Sleeper] end TimedOut(\"the run timed out after 50ms"),
        "the child ends first, with its parent's timeout: {lines:?}"
    );
    assert!(lines[1].starts_with("end TimedOut("), "{lines:?}");
}
on_both_runtimes!(a_parent_that_times_out_first_stops_its_child_with_its_timeout);

async fn a_child_whose_own_deadline_comes_first_fails_the_calling_step() {
    let live = Live::default();
    let sleeper = Sleeper { live: live.clone() }
        .runner()
        .timeout(Duration::from_millis(30));
    let mut run = Waits { sleeper }
        .runner()
        .timeout(Duration::from_secs(60))
        .start(60_000);
    let events = run.events();
    let error = (&mut run).await.unwrap_err();
    let Some(WorkflowError::ChildFailed { child, source }) = error.step_error::<WorkflowError>()
    else {
        panic!("{error:?}")
    };
    assert_eq!((child.step, child.workflow), ("delegate", "Sleeper"));
    assert!(
        matches!(&**source, WorkflowError::TimedOut { timeout, active } if *timeout == Duration::from_millis(30) && active == &["nap"]),
        "{source:?}"
    );
    assert_eq!(live.count(), 0);
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(
        lines,
        [
            "[delegate/Sleeper] end TimedOut(\"the run timed out after 30ms; steps still active: `nap`\")".to_string(),
            format!("end Failed({:?})", chain(&error)),
        ]
    );
}
on_both_runtimes!(a_child_whose_own_deadline_comes_first_fails_the_calling_step);

/// Holds its thread (a blocking call) past its parent's deadline.
struct Blocker;

#[workflow]
impl Blocker {
    #[step]
    async fn hold(&self, _ev: StartEvent<()>) -> StopEvent<()> {
        std::thread::sleep(Duration::from_millis(150));
        StopEvent(())
    }
}

struct Holds {
    blocker: Runner<Blocker>,
}

#[workflow]
impl Holds {
    #[step]
    async fn delegate(
        &self,
        ctx: &Context<Self>,
        _ev: StartEvent<()>,
    ) -> Result<StopEvent<()>, WorkflowError> {
        ctx.run_child(&self.blocker, ()).await?;
        Ok(StopEvent(()))
    }
}

async fn a_childs_deadline_is_its_parents_when_that_is_earlier() {
    // The child has no time limit of its own; its step holds the thread past the parent's.
    // The child's deadline is its parent's: it times out itself, naming the step that held
    // it, instead of finishing as if it had all the time in the world.
    let mut run = Holds {
        blocker: Blocker.runner(),
    }
    .runner()
    .timeout(Duration::from_millis(60))
    .start(());
    let events = run.events();
    let error = (&mut run).await.unwrap_err();
    assert!(
        matches!(&error, WorkflowError::TimedOut { active, .. } if active == &["delegate"]),
        "{error:?}"
    );
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("[delegate/Blocker] end TimedOut(\"the run timed out after ")
            && lines[0].ends_with("steps still active: `hold`\")"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("end TimedOut("), "{lines:?}");
}
on_both_runtimes!(a_childs_deadline_is_its_parents_when_that_is_earlier);

async fn cancelling_the_parent_stops_its_children_first() {
    let live = Live::default();
    let mut run = Waits {
        sleeper: Sleeper { live: live.clone() }.runner(),
    }
    .runner()
    .start(60_000);
    let events = run.events();
    while live.count() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    run.cancel();
    assert!(matches!((&mut run).await, Err(WorkflowError::Cancelled)));
    assert_eq!(live.count(), 0, "nothing of the child outlives its parent");
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(lines, ["[delegate/Sleeper] end Cancelled", "end Cancelled"]);
}
on_both_runtimes!(cancelling_the_parent_stops_its_children_first);

async fn a_child_future_dropped_by_its_step_is_stopped() {
    // `select!`-style: the step gives up on the child after 20 ms; the child ends cancelled.
    struct Impatient {
        sleeper: Runner<Sleeper>,
    }
    #[workflow]
    impl Impatient {
        #[step]
        async fn delegate(&self, ctx: &Context<Self>, ev: StartEvent<u64>) -> StopEvent<bool> {
            let child = ctx.run_child(&self.sleeper, ev.0);
            let finished = tokio::time::timeout(Duration::from_millis(20), child)
                .await
                .is_ok();
            StopEvent(finished)
        }
    }
    let live = Live::default();
    let mut run = Impatient {
        sleeper: Sleeper { live: live.clone() }.runner(),
    }
    .runner()
    .start(60_000);
    let events = run.events();
    assert!(!(&mut run).await.unwrap());
    assert_eq!(live.count(), 0);
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(lines, ["[delegate/Sleeper] end Cancelled", "end Stopped"]);
}
on_both_runtimes!(a_child_future_dropped_by_its_step_is_stopped);

// ---- a human asked inside a child; snapshots and durable runs with a running child ----

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Reply)]
struct Question {
    topic: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Reply {
    text: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Draft(String);

/// Drafts (counted), asks a human about the draft, and stops with the answer.
struct Asker {
    drafts: Arc<AtomicU32>,
}

#[workflow(durable)]
impl Asker {
    #[step]
    async fn draft(&self, ev: StartEvent<String>) -> Draft {
        self.drafts.fetch_add(1, Ordering::SeqCst);
        Draft(ev.0)
    }

    #[step]
    async fn ask(&self, ev: Draft) -> Question {
        Question { topic: ev.0 }
    }

    #[step]
    async fn answer(&self, ev: Reply) -> StopEvent<String> {
        StopEvent(ev.text)
    }
}

struct Desk {
    asker: Runner<Asker>,
    handled: Arc<AtomicU32>,
}

#[workflow(durable)]
impl Desk {
    #[step]
    async fn handle(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<String>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let answer = ctx.run_child(&self.asker, ev.0).await?;
        Ok(StopEvent(format!("desk: {answer}")))
    }
}

struct Counters {
    drafts: Arc<AtomicU32>,
    handled: Arc<AtomicU32>,
}

fn desk() -> (Desk, Counters) {
    let drafts = Arc::new(AtomicU32::new(0));
    let handled = Arc::new(AtomicU32::new(0));
    let desk = Desk {
        asker: Asker {
            drafts: drafts.clone(),
        }
        .runner(),
        handled: handled.clone(),
    };
    (desk, Counters { drafts, handled })
}

/// Reads the stream until a child asks its question; returns the question's path and topic.
async fn next_question(events: &mut tidewater::EventStream) -> (Vec<ChildId>, String) {
    while let Some(item) = events.next().await {
        if let Some((path, inner)) = item.child() {
            if let Some(question) = inner.event::<Question>() {
                return (path.to_vec(), question.topic.clone());
            }
        }
        assert!(!item.is_terminal(), "the run ended before asking: {item:?}");
    }
    panic!("the stream ended before the question")
}

async fn a_human_request_in_a_child_is_answered_through_the_parents_handler() {
    let (desk, counters) = desk();
    let mut run = desk.runner().start("tides".into());
    let mut events = run.events();
    let (path, topic) = next_question(&mut events).await;
    assert_eq!(topic, "tides");
    assert_eq!((path[0].step, path[0].workflow), ("handle", "Asker"));
    // `Reply` is no event of `Desk`'s graph: the parent hands it to the child that asked.
    run.send_response(Reply {
        text: format!("yes to {topic}"),
    });
    assert_eq!((&mut run).await.unwrap(), "desk: yes to tides");
    let rest: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(rest, ["[handle/Asker] end Stopped", "end Stopped"]);
    assert_eq!(counters.drafts.load(Ordering::SeqCst), 1);
}
on_both_runtimes!(a_human_request_in_a_child_is_answered_through_the_parents_handler);

/// Asks inline (`wait_for`) rather than through the graph.
struct InlineAsker;

#[workflow]
impl InlineAsker {
    #[step]
    async fn ask(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<String>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        let reply = ctx
            .wait_for::<Reply>()
            .publishing(Question { topic: ev.0 })
            .await?;
        Ok(StopEvent(reply.text))
    }
}

struct TwoDesks {
    inline: Runner<InlineAsker>,
}

#[workflow]
impl TwoDesks {
    #[step]
    async fn handle(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<Vec<String>>,
    ) -> Result<StopEvent<Vec<String>>, WorkflowError> {
        Ok(StopEvent(ctx.run_children(&self.inline, ev.0).await?))
    }
}

async fn answers_reach_each_waiting_child_once() {
    let mut run = TwoDesks {
        inline: InlineAsker.runner(),
    }
    .runner()
    .start(questions(&["a", "b"]));
    let mut events = run.events();
    let mut asked = Vec::new();
    while asked.len() < 2 {
        let (path, topic) = next_question(&mut events).await;
        asked.push((path[0].run_id, topic));
    }
    for (_, topic) in &asked {
        run.send_response(Reply {
            text: format!("answer {topic}"),
        });
    }
    let mut out = (&mut run).await.unwrap();
    out.sort();
    // Each child took one answer (the first registered waiter first): two answers, two
    // children, none answered twice.
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| o.starts_with("answer ")), "{out:?}");
    assert_ne!(out[0], out[1]);
}
on_both_runtimes!(answers_reach_each_waiting_child_once);

async fn a_snapshot_of_the_parent_holds_its_running_child_and_resume_goes_on_with_it() {
    let (desk, counters) = desk();
    let runner = desk.runner();
    let mut run = runner.start("tides".into());
    let mut events = run.events();
    next_question(&mut events).await;
    let snapshot = run.snapshot().await.unwrap();
    run.cancel();
    assert!(matches!(run.await, Err(WorkflowError::Cancelled)));

    // The parent's step is in flight, with its child inside: the child's completed steps,
    // its pending question.
    assert_eq!(snapshot.in_flight.len(), 1);
    assert_eq!(snapshot.in_flight[0].step, "handle");
    let children = &snapshot.in_flight[0].children;
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].label, "Asker#0");
    let child = &children[0].snapshot;
    assert_eq!(child.workflow, "Asker");
    assert_eq!(child.completed, 2, "draft and ask completed");
    assert_eq!(child.pending_requests.len(), 1);
    assert!(child.in_flight.is_empty());

    // Through JSON, as another process would.
    let snapshot = tidewater::snapshot::Snapshot::from_json(&snapshot.to_json()).unwrap();
    let mut resumed = runner.resume(&snapshot).unwrap();
    let mut events = resumed.events();
    let (path, topic) = next_question(&mut events).await;
    assert_eq!((path[0].workflow, topic.as_str()), ("Asker", "tides"));
    resumed.send_response(Reply {
        text: "resumed".into(),
    });
    assert_eq!((&mut resumed).await.unwrap(), "desk: resumed");
    assert_eq!(
        counters.drafts.load(Ordering::SeqCst),
        1,
        "the child's completed step did not run again"
    );
    assert_eq!(
        counters.handled.load(Ordering::SeqCst),
        2,
        "the parent's in-flight step ran again (at least once)"
    );
    let rest: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(rest, ["[handle/Asker] end Stopped", "end Stopped"]);
}
on_both_runtimes!(a_snapshot_of_the_parent_holds_its_running_child_and_resume_goes_on_with_it);

async fn a_child_that_finished_before_the_snapshot_is_not_run_again() {
    // The parent's step runs two children one after the other; the snapshot is taken while
    // the second asks: the first's output is in the step's record.
    let drafts = Arc::new(AtomicU32::new(0));
    let runner = Twice {
        asker: Asker {
            drafts: drafts.clone(),
        }
        .runner(),
    }
    .runner();
    let mut run = runner.start("q".into());
    let mut events = run.events();
    next_question(&mut events).await;
    run.send_response(Reply { text: "one".into() });
    let (_, topic) = next_question(&mut events).await;
    assert_eq!(topic, "q 2");
    let snapshot = run.snapshot().await.unwrap();
    run.cancel();
    let _ = run.await;
    let memo = &snapshot.in_flight[0].memo;
    assert_eq!(memo.len(), 1);
    assert_eq!(memo[0].label, "child:Asker#0");
    assert_eq!(snapshot.in_flight[0].children[0].label, "Asker#1");

    let mut resumed = runner.resume(&snapshot).unwrap();
    let mut events = resumed.events();
    let (_, topic) = next_question(&mut events).await;
    assert_eq!(topic, "q 2", "the first child is not asked again");
    resumed.send_response(Reply { text: "two".into() });
    assert_eq!(resumed.await.unwrap(), "one, two");
    assert_eq!(drafts.load(Ordering::SeqCst), 2, "each child drafted once");
}
on_both_runtimes!(a_child_that_finished_before_the_snapshot_is_not_run_again);

/// Runs the first half of a durable run in a runtime of its own and drops that runtime while
/// the child waits for its answer: the process "dies" without saving anything more.
fn crash_while_the_child_asks(store: Arc<MemoryStore>, key: &'static str) -> Counters {
    let (desk, counters) = desk();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let runner = desk.runner().store(store);
            let mut run = runner.start_durable(key, "tides".into()).unwrap();
            let mut events = run.events();
            next_question(&mut events).await;
            // Detached: the run goes down with the runtime.
            drop(run);
        });
        drop(runtime);
    })
    .join()
    .unwrap();
    counters
}

async fn a_durable_parent_journals_its_child_under_its_key_and_resume_goes_on_with_it() {
    let store = Arc::new(MemoryStore::new());
    let before = crash_while_the_child_asks(store.clone(), "desk-1");
    assert_eq!(before.drafts.load(Ordering::SeqCst), 1);
    let child_key = "desk-1/handle/1/Asker#0";
    let running = store.keys(RunStatus::Running).unwrap();
    assert_eq!(
        running,
        ["desk-1", child_key],
        "the child is a durable run of its own"
    );
    let child = store.load(child_key).unwrap().unwrap();
    assert_eq!(child.snapshot.pending_requests.len(), 1);

    // Restarted: the parent's step runs again, its child goes on from its own checkpoint.
    let (desk, after) = desk();
    let runner = desk.runner().store(store.clone());
    let mut resumed = runner.resume_stored("desk-1").unwrap();
    let mut events = resumed.events();
    let (path, topic) = next_question(&mut events).await;
    assert_eq!((path[0].workflow, topic.as_str()), ("Asker", "tides"));
    resumed.send_response(Reply {
        text: "later".into(),
    });
    assert_eq!((&mut resumed).await.unwrap(), "desk: later");
    assert_eq!(
        after.drafts.load(Ordering::SeqCst),
        0,
        "no child step ran again"
    );
    assert_eq!(after.handled.load(Ordering::SeqCst), 1);
    assert_eq!(
        store.load(child_key).unwrap().unwrap().status,
        RunStatus::Finished
    );
    assert_eq!(
        store.load("desk-1").unwrap().unwrap().status,
        RunStatus::Finished
    );
    assert_eq!(runner.stored_output("desk-1").unwrap(), "desk: later");
}
on_both_runtimes!(a_durable_parent_journals_its_child_under_its_key_and_resume_goes_on_with_it);

async fn an_answer_for_a_child_resumes_a_crashed_durable_parent() {
    let store = Arc::new(MemoryStore::new());
    crash_while_the_child_asks(store.clone(), "desk-2");
    let (desk, after) = desk();
    let runner = desk.runner().store(store.clone());
    // `Reply` is no event of `Desk`: `answer` takes it because a child of the run is running.
    let resumed = runner
        .answer(
            "desk-2",
            Reply {
                text: "by mail".into(),
            },
        )
        .unwrap();
    assert_eq!(resumed.await.unwrap(), "desk: by mail");
    assert_eq!(after.drafts.load(Ordering::SeqCst), 0);
    // With no child running, such an answer is still refused, the run left as it was.
    let error = runner
        .answer(
            "desk-2",
            Reply {
                text: "again".into(),
            },
        )
        .unwrap_err();
    assert!(
        matches!(error, WorkflowError::Undeliverable { .. }),
        "{error:?}"
    );
}
on_both_runtimes!(an_answer_for_a_child_resumes_a_crashed_durable_parent);

async fn a_child_that_is_not_durable_is_left_out_of_its_durable_parents_snapshot() {
    // It cannot be captured: the snapshot leaves it out (it runs again with its step on
    // resume) rather than failing, and a journaled parent's checkpoints do the same.
    struct Keeps {
        sleeper: Runner<Sleeper>,
    }
    #[workflow(durable)]
    impl Keeps {
        #[step]
        async fn delegate(
            &self,
            ctx: &Context<Self>,
            ev: StartEvent<u64>,
        ) -> Result<StopEvent<u64>, WorkflowError> {
            Ok(StopEvent(ctx.run_child(&self.sleeper, ev.0).await?))
        }
    }
    let live = Live::default();
    let keeps = || Keeps {
        sleeper: Sleeper { live: live.clone() }.runner(),
    };
    let run = keeps().runner().start(60_000);
    while live.count() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let snapshot = run.snapshot().await.unwrap();
    assert_eq!(snapshot.in_flight.len(), 1);
    assert!(snapshot.in_flight[0].children.is_empty());
    run.cancel();
    let _ = run.await;

    let store = Arc::new(MemoryStore::new());
    let runner = keeps().runner().store(store.clone());
    let out = runner.start_durable("keeps", 5).unwrap().await.unwrap();
    assert_eq!(out, 5);
    assert_eq!(store.keys(RunStatus::Finished).unwrap(), ["keeps"]);
}
on_both_runtimes!(a_child_that_is_not_durable_is_left_out_of_its_durable_parents_snapshot);

async fn a_durable_parent_that_ends_closes_its_childs_record() {
    // Cancelled while its child waits: the parent's end is journaled, and so is the child's
    // (stopped), so that nothing is left `Running` for a resumer to pick up.
    let store = Arc::new(MemoryStore::new());
    let (desk, _) = desk();
    let runner = desk.runner().store(store.clone());
    let mut run = runner.start_durable("desk-3", "tides".into()).unwrap();
    let mut events = run.events();
    next_question(&mut events).await;
    run.cancel();
    assert!(matches!(run.await, Err(WorkflowError::Cancelled)));
    assert!(store.keys(RunStatus::Running).unwrap().is_empty());
    let child = store.load("desk-3/handle/1/Asker#0").unwrap().unwrap();
    assert_eq!(child.status, RunStatus::Failed);
    assert_eq!(
        child.error.as_deref(),
        Some("stopped by its parent: the parent run ended first")
    );
    let parent = store.load("desk-3").unwrap().unwrap();
    assert_eq!(
        parent.status,
        RunStatus::Cancelled,
        "the parent was cancelled"
    );
}
on_both_runtimes!(a_durable_parent_that_ends_closes_its_childs_record);

/// Panics: a child's panic is its failure, not the parent's.
struct Panicky;

#[workflow]
impl Panicky {
    #[step]
    async fn boom(&self, _ev: StartEvent<()>) -> StopEvent<()> {
        panic!("the child broke")
    }
}

struct CallsPanicky {
    child: Runner<Panicky>,
}

#[workflow]
impl CallsPanicky {
    #[step]
    async fn call(
        &self,
        ctx: &Context<Self>,
        _ev: StartEvent<()>,
    ) -> Result<StopEvent<()>, WorkflowError> {
        ctx.run_child(&self.child, ()).await?;
        Ok(StopEvent(()))
    }
}

async fn a_child_that_panics_fails_the_calling_step_with_its_panic() {
    let error = CallsPanicky {
        child: Panicky.runner(),
    }
    .runner()
    .run(())
    .await
    .unwrap_err();
    let Some(WorkflowError::ChildFailed { source, .. }) = error.step_error::<WorkflowError>()
    else {
        panic!("{error:?}")
    };
    assert!(
        matches!(&**source, WorkflowError::StepPanicked { step: "boom", message } if message == "the child broke"),
        "{source:?}"
    );
}
on_both_runtimes!(a_child_that_panics_fails_the_calling_step_with_its_panic);

async fn cancelling_a_fan_out_stops_every_child() {
    struct Fan {
        sleeper: Runner<Sleeper>,
    }
    #[workflow]
    impl Fan {
        #[step]
        async fn fan(
            &self,
            ctx: &Context<Self>,
            ev: StartEvent<u64>,
        ) -> Result<StopEvent<u64>, WorkflowError> {
            let all = ctx.run_children(&self.sleeper, vec![ev.0; 5]).await?;
            Ok(StopEvent(all.iter().sum()))
        }
    }
    let live = Live::default();
    let mut run = Fan {
        sleeper: Sleeper { live: live.clone() }.runner(),
    }
    .runner()
    .start(60_000);
    let events = run.events();
    while live.count() < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    run.cancel();
    assert!(matches!((&mut run).await, Err(WorkflowError::Cancelled)));
    assert_eq!(live.count(), 0);
    let lines: Vec<String> = drain(events).await.iter().map(describe).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(
        lines[..5]
            .iter()
            .all(|l| l == "[fan/Sleeper] end Cancelled"),
        "{lines:?}"
    );
    assert_eq!(lines[5], "end Cancelled");
}
on_both_runtimes!(cancelling_a_fan_out_stops_every_child);

/// Runs two children one after the other; the second asks.
struct Twice {
    asker: Runner<Asker>,
}

#[workflow(durable)]
impl Twice {
    #[step]
    async fn handle(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<String>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        let first = ctx.run_child(&self.asker, format!("{} 1", ev.0)).await?;
        let second = ctx.run_child(&self.asker, format!("{} 2", ev.0)).await?;
        Ok(StopEvent(format!("{first}, {second}")))
    }
}

async fn a_durable_parent_resumed_after_a_crash_takes_a_finished_childs_output_from_its_record() {
    // Crash while the second child asks: the first child finished (its record holds its
    // output), the parent's step had not. On resume the step runs again; its first
    // `run_child` returns the stored output and runs nothing, its second goes on.
    let store = Arc::new(MemoryStore::new());
    let drafts = Arc::new(AtomicU32::new(0));
    {
        let store = store.clone();
        let drafts = drafts.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let runner = Twice {
                    asker: Asker { drafts }.runner(),
                }
                .runner()
                .store(store);
                let mut run = runner.start_durable("twice", "q".into()).unwrap();
                let mut events = run.events();
                next_question(&mut events).await;
                run.send_response(Reply { text: "one".into() });
                let (_, topic) = next_question(&mut events).await;
                assert_eq!(topic, "q 2");
                drop(run);
            });
        })
        .join()
        .unwrap();
    }
    assert_eq!(drafts.load(Ordering::SeqCst), 2);
    let first = store.load("twice/handle/1/Asker#0").unwrap().unwrap();
    assert_eq!(first.status, RunStatus::Finished);
    assert_eq!(
        store
            .load("twice/handle/1/Asker#1")
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Running
    );

    let after = Arc::new(AtomicU32::new(0));
    let runner = Twice {
        asker: Asker {
            drafts: after.clone(),
        }
        .runner(),
    }
    .runner()
    .store(store.clone());
    let resumed = runner
        .answer("twice", Reply { text: "two".into() })
        .unwrap();
    assert_eq!(resumed.await.unwrap(), "one, two");
    assert_eq!(after.load(Ordering::SeqCst), 0, "no child step ran again");
}
on_both_runtimes!(
    a_durable_parent_resumed_after_a_crash_takes_a_finished_childs_output_from_its_record
);

async fn a_parents_trace_records_its_children() {
    let mut run = planner(1)
        .runner()
        .trace(true)
        .start(questions(&["a", "b"]));
    let recording = run.recording().unwrap();
    let events = run.events();
    (&mut run).await.unwrap();
    let ids: Vec<u64> = drain(events)
        .await
        .iter()
        .filter_map(|i| i.child().map(|(p, _)| p[0].run_id))
        .collect();
    let trace = recording.trace();
    let children: Vec<String> = trace
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            tidewater::trace::TraceEvent::ChildStarted {
                step,
                workflow,
                run_id,
            } => Some(format!(
                "started {step} {workflow} {}",
                ids.contains(run_id)
            )),
            tidewater::trace::TraceEvent::ChildEnded {
                step,
                workflow,
                run_id,
                outcome,
            } => Some(format!(
                "ended {step} {workflow} {} {outcome}",
                ids.contains(run_id)
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        children,
        [
            "started plan Research true",
            "started plan Research true",
            "ended plan Research true stopped",
            "ended plan Research true stopped",
        ]
    );
    let timeline = trace.timeline();
    assert!(
        timeline.contains("plan started child Research#")
            && timeline.contains("plan's child Research#")
            && timeline.contains(" ended: stopped"),
        "{timeline}"
    );
}
on_both_runtimes!(a_parents_trace_records_its_children);

/// Three durable levels: `Top` runs `Middle`, which runs `Research`-like `Leaf`s.
#[derive(Debug, Clone, Copy)]
struct Leaf;

#[workflow(durable)]
impl Leaf {
    #[step]
    async fn leaf(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        StopEvent(ev.0 * 2)
    }
}

struct Middle {
    leaf: Runner<Leaf>,
}

#[workflow(durable)]
impl Middle {
    #[step]
    async fn split(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        let parts = ctx.run_children(&self.leaf, [ev.0, ev.0 + 1]).await?;
        Ok(StopEvent(parts.iter().sum()))
    }
}

struct Top {
    middle: Runner<Middle>,
}

#[workflow(durable)]
impl Top {
    #[step]
    async fn start(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        Ok(StopEvent(ctx.run_child(&self.middle, ev.0).await?))
    }
}

async fn grandchildren_of_a_durable_run_are_journaled_under_their_parents_keys() {
    let store = Arc::new(MemoryStore::new());
    let runner = Top {
        middle: Middle {
            leaf: Leaf.runner(),
        }
        .runner(),
    }
    .runner()
    .store(store.clone());
    let out = runner.start_durable("top", 5).unwrap().await.unwrap();
    assert_eq!(out, 22);
    assert_eq!(
        store.keys(RunStatus::Finished).unwrap(),
        [
            "top",
            "top/start/1/Middle#0",
            "top/start/1/Middle#0/split/1/Leaf#0",
            "top/start/1/Middle#0/split/1/Leaf#1",
        ]
    );
    assert!(store.keys(RunStatus::Running).unwrap().is_empty());
}
on_both_runtimes!(grandchildren_of_a_durable_run_are_journaled_under_their_parents_keys);
