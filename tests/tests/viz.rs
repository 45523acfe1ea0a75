//! Pictures of a workflow (`tidewater::viz`) and run traces (`tidewater::trace`): the graph
//! export is stable and shows every kind of node and edge; the SVG is well-formed XML naming
//! every step; a recorded run with a loop, a retry and a human wait is traced in order, in
//! process and from a durable run's journal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::MemoryStore;
use tidewater::trace::{Trace, TraceEvent};
use tidewater::viz::{self, Format};

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Draft {
    text: String,
    round: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Verdict)]
struct Review {
    text: String,
    round: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Verdict {
    approved: bool,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Note(String);

/// Draft, polish (two workers, retried, fails its first attempt), ask a human, loop back on a
/// rejection; a catch-error step.
#[derive(Default)]
struct Studio {
    polish_calls: Arc<AtomicU32>,
}

#[workflow(durable)]
impl Studio {
    #[step]
    async fn draft(&self, ev: StartEvent<String>) -> Draft {
        Draft {
            text: ev.0,
            round: 1,
        }
    }

    #[step(num_workers = 2, retry = RetryPolicy::fixed(3, Duration::from_millis(10)))]
    async fn polish(&self, ev: Draft) -> Result<Either<Review, Note>, std::io::Error> {
        if self.polish_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(std::io::Error::other("the polisher jammed"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Either::Left(Review {
            text: format!("{} (polished)", ev.text),
            round: ev.round,
        }))
    }

    #[step]
    async fn decide(&self, ev: Verdict) -> Either<Draft, StopEvent<String>> {
        if ev.approved {
            Either::Right(StopEvent("published".into()))
        } else {
            Either::Left(Draft {
                text: "again".into(),
                round: 2,
            })
        }
    }

    #[step]
    async fn file(&self, ev: Note) -> StopEvent<String> {
        StopEvent(ev.0)
    }

    #[step]
    async fn recover(&self, failure: StepFailure) -> StopEvent<String> {
        StopEvent(failure.error.to_string())
    }
}

const MERMAID: &str = r#"---
title: Studio
---
flowchart TD
    e0(("StartEvent")):::start
    s0["draft"]:::step
    e1(["Draft"]):::event
    s1["polish<br/>2 workers"]:::step
    e2{{"Review"}}:::request
    e3(["Note"]):::event
    s2["decide"]:::step
    e4[/"Verdict"/]:::response
    e5((("StopEvent"))):::stop
    s3["file"]:::step
    s4["recover"]:::step
    e6[/"StepFailure"\]:::failure
    e0 --> s0
    s0 --> e1
    e1 --> s1
    s1 -->|"1"| e2
    s1 -->|"2"| e3
    e4 --> s2
    s2 -.->|"1 · loop"| e1
    s2 -->|"2"| e5
    e3 --> s3
    s3 --> e5
    e6 --> s4
    s4 --> e5
    e2 -.->|"human"| e4
    classDef step fill:#dbeafe,stroke:#1d4ed8,color:#111827
    classDef event fill:#f3f4f6,stroke:#4b5563,color:#111827
    classDef start fill:#dcfce7,stroke:#15803d,color:#111827
    classDef stop fill:#fee2e2,stroke:#b91c1c,color:#111827
    classDef request fill:#ffedd5,stroke:#c2410c,color:#111827
    classDef response fill:#fef9c3,stroke:#a16207,color:#111827
    classDef failure fill:#fce7f3,stroke:#be185d,color:#111827
    classDef idle fill:#f9fafb,stroke:#d1d5db,color:#111827
    classDef failed fill:#fecaca,stroke:#dc2626,color:#111827
"#;

#[test]
fn mermaid_shows_every_kind_in_a_stable_order() {
    let text = viz::mermaid(Studio::graph());
    assert_eq!(text, MERMAID, "got:\n{text}");
    // Byte for byte the same on every call.
    assert_eq!(viz::mermaid(Studio::graph()), text);
}

#[test]
fn dot_shows_every_kind_in_a_stable_order() {
    let text = viz::dot(Studio::graph());
    let expected = [
        "digraph \"Studio\" {",
        "    e0 [label=\"StartEvent\", shape=oval, style=\"filled,bold\"",
        "    s1 [label=\"polish\\n2 workers\", shape=box, style=\"rounded,filled\"",
        "    e2 [label=\"Review\", shape=hexagon",
        "    e4 [label=\"Verdict\", shape=parallelogram",
        "    e5 [label=\"StopEvent\", shape=oval, style=\"filled,bold\", peripheries=2",
        "    e6 [label=\"StepFailure\", shape=box, style=\"dashed,filled\"",
        "    s1 -> e2 [label=\"1\"];",
        "    s1 -> e3 [label=\"2\"];",
        "    s2 -> e1 [label=\"1 · loop\", style=dashed, constraint=false];",
        "    e2 -> e4 [label=\"human\", style=dashed, color=\"#c2410c\"];",
    ];
    for line in expected {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // Emits follow the signature: Review (1) before Note (2).
    assert!(text.find("s1 -> e2").unwrap() < text.find("s1 -> e3").unwrap());
    assert_eq!(viz::dot(Studio::graph()), text);
    assert!(text.ends_with("}\n"));
}

/// Every element of a parsed SVG, depth first.
fn elements<'a>(doc: &'a roxmltree::Document<'a>) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants().filter(|n| n.is_element()).collect()
}

#[test]
fn svg_is_xml_and_names_every_step_and_event() {
    let svg = viz::svg(Studio::graph());
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let nodes = elements(&doc);
    for step in Studio::graph().steps {
        let group = nodes
            .iter()
            .find(|n| n.attribute("data-step") == Some(step.name))
            .unwrap_or_else(|| panic!("no group for step {}", step.name));
        let text: String = group
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert!(text.contains(step.name), "{text}");
    }
    for event in [
        "StartEvent",
        "Draft",
        "Review",
        "Verdict",
        "Note",
        "StopEvent",
        "StepFailure",
    ] {
        assert!(
            nodes
                .iter()
                .any(|n| n.attribute("data-event") == Some(event)),
            "no node for {event}"
        );
    }
    // Shapes tell kinds apart: a hexagon for the request, a double ellipse for the stop.
    let class_of = |name: &str| {
        nodes
            .iter()
            .find(|n| n.attribute("data-event") == Some(name))
            .and_then(|n| n.attribute("class"))
            .unwrap()
            .to_string()
    };
    assert_eq!(class_of("Review"), "node event request");
    assert_eq!(class_of("StopEvent"), "node event stop");
    let edges: Vec<_> = nodes
        .iter()
        .filter(|n| n.attribute("class").is_some_and(|c| c.starts_with("edge ")))
        .collect();
    assert_eq!(edges.len(), 13);
    assert!(
        edges
            .iter()
            .any(|e| e.attribute("class") == Some("edge answer"))
    );
    // Stable, and every number is finite.
    assert_eq!(viz::svg(Studio::graph()), svg);
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    assert_eq!(viz::render(Studio::graph(), Format::Svg), svg);
}

/// Runs the studio: the first polish attempt fails and is retried, the human rejects the
/// first review (the loop) and approves the second.
async fn traced_run() -> Trace {
    let mut run = Studio::default().runner().trace(true).start("post".into());
    let recording = run.recording().expect("the runner records");
    let mut events = run.events();
    let mut answers = [false, true].into_iter();
    while let Some(item) = events.next().await {
        if item.event::<Review>().is_some() {
            let approved = answers.next().expect("two reviews");
            run.send_response(Verdict { approved });
        }
    }
    assert_eq!(run.await.unwrap(), "published");
    recording.trace()
}

fn check_trace(trace: &Trace) {
    assert_eq!(trace.steps(), ["draft", "polish", "decide"]);
    assert_eq!(trace.invocations("polish"), 2);
    assert_eq!(trace.stats("polish").retried, 1);
    assert_eq!(trace.stats("polish").attempts, 3);
    assert_eq!(trace.invocations("decide"), 2);
    assert_eq!(trace.invocations("file"), 0);
    assert_eq!(
        trace.event_path(),
        [
            "StartEvent",
            "Draft",
            "Review",
            "Verdict",
            "Draft",
            "Review",
            "Verdict",
            "StopEvent"
        ]
    );
    let waits = trace
        .entries
        .iter()
        .filter(|e| matches!(e.what, TraceEvent::HumanWait { .. }))
        .count();
    assert_eq!(waits, 2);
    assert_eq!(trace.outcome(), Some("stopped"));
    let timeline = trace.timeline();
    assert!(
        timeline.contains("! polish attempt 1 failed after"),
        "{timeline}"
    );
    assert!(
        timeline.contains("the polisher jammed; retry in 10.0ms"),
        "{timeline}"
    );
    assert!(
        timeline.contains("? waiting for a human: Review"),
        "{timeline}"
    );
    assert!(timeline.contains("? answered: Verdict after"), "{timeline}");
    let mermaid = viz::render_trace(Studio::graph(), trace, Format::Mermaid);
    assert!(
        mermaid.contains("s1[\"polish<br/>2 workers<br/>ran 2× · "),
        "{mermaid}"
    );
    assert!(mermaid.contains(" · 1 retried\"]:::step"), "{mermaid}");
    // Steps that never ran are greyed out, edges never taken dotted.
    assert!(mermaid.contains("s3[\"file\"]:::idle"), "{mermaid}");
    assert!(
        mermaid.contains("s2 -.->|\"1 · loop · 1×\"| e1"),
        "{mermaid}"
    );
    assert!(mermaid.contains("e2 -.->|\"human · 2×\"| e4"), "{mermaid}");
    let svg = viz::render_trace(Studio::graph(), trace, Format::Svg);
    roxmltree::Document::parse(&svg).expect("the trace SVG is well-formed XML");
    assert!(svg.contains("class=\"node step step ran\""));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn trace_of_a_loop_a_retry_and_a_human_wait_current_thread() {
    let trace = traced_run().await;
    check_trace(&trace);
    // Paused time: the timeline is exact.
    let timeline = trace.timeline();
    let expected = "\
run RUN of Studio: stopped after 20.0ms
       0µs  > began with StartEvent
       0µs    draft#1 started on StartEvent [worker 0]
       0µs    draft finished in 0µs -> Draft
       0µs    polish#1 started on Draft [worker 0]
       0µs  ! polish attempt 1 failed after 0µs: the polisher jammed; retry in 10.0ms
    10.0ms    polish#1 started (attempt 2) on Draft [worker 0]
    15.0ms    polish finished in 5.0ms -> Review
    15.0ms  ? waiting for a human: Review
    15.0ms  ? answered: Verdict after 0µs
    15.0ms    decide#1 started on Verdict [worker 0]
    15.0ms    decide finished in 0µs -> Draft
    15.0ms    polish#2 started on Draft [worker 0]
    20.0ms    polish finished in 5.0ms -> Review
    20.0ms  ? waiting for a human: Review
    20.0ms  ? answered: Verdict after 0µs
    20.0ms    decide#2 started on Verdict [worker 0]
    20.0ms    decide finished in 0µs -> StopEvent
    20.0ms  > ended: stopped

step     runs  retries  failed        busy
draft       1        0       0         0µs
polish      2        1       0      10.0ms
decide      2        0       0         0µs
"
    .replace("RUN", &trace.run_id.to_string());
    assert_eq!(timeline, expected, "got:\n{timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_of_a_loop_a_retry_and_a_human_wait_multi_thread() {
    check_trace(&traced_run().await);
}

#[tokio::test(flavor = "current_thread")]
async fn a_runner_that_does_not_record_has_no_recording() {
    let run = Studio::default().runner().start("post".into());
    assert!(run.recording().is_none());
    run.cancel();
    assert!(matches!(run.await, Err(WorkflowError::Cancelled)));
}

async fn durable_trace_from_the_journal() {
    let store = Arc::new(MemoryStore::new());
    let runner = Studio::default()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true)
        .trace(true);
    // Parks for the first review and leaves memory.
    let parked = runner.start_durable("k", "post".into()).unwrap().await;
    assert!(matches!(parked, Err(WorkflowError::Suspended { .. })));
    let trace = runner.stored_trace("k").unwrap().expect("recorded");
    assert_eq!(trace.event_path(), ["StartEvent", "Draft", "Review"]);
    assert_eq!(trace.stats("polish").retried, 1);
    assert_eq!(trace.outcome(), Some("suspended"));
    // Answered by "another process": a fresh runner on the same store.
    let other = Studio::default()
        .runner()
        .store(store.clone())
        .evict_when_waiting(true)
        .trace(true);
    let parked = other
        .answer("k", Verdict { approved: false })
        .unwrap()
        .await;
    assert!(matches!(parked, Err(WorkflowError::Suspended { .. })));
    let done = other.answer("k", Verdict { approved: true }).unwrap().await;
    assert_eq!(done.unwrap(), "published");
    let trace = other.stored_trace("k").unwrap().expect("recorded");
    assert_eq!(
        trace.event_path(),
        [
            "StartEvent",
            "Draft",
            "Review",
            "Verdict",
            "Draft",
            "Review",
            "Verdict",
            "StopEvent"
        ]
    );
    let resumed = trace
        .entries
        .iter()
        .filter(|e| e.what == TraceEvent::Resumed)
        .count();
    assert_eq!(resumed, 2);
    assert_eq!(trace.outcome(), Some("stopped"));
    // Times never go backwards across processes.
    assert!(trace.entries.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    // A runner that does not record leaves no trace in the journal.
    let plain = Studio::default().runner().store(store.clone());
    let run = plain.start_durable("plain", "post".into()).unwrap();
    run.cancel();
    assert!(run.await.is_err());
    assert!(matches!(plain.stored_trace("plain"), Ok(None)));
    assert!(plain.stored_trace("missing").is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn durable_trace_is_read_from_the_journal_current_thread() {
    durable_trace_from_the_journal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_trace_is_read_from_the_journal_multi_thread() {
    durable_trace_from_the_journal().await;
}

/// `VIZ_DUMP=dir cargo test -p integration-tests --test viz -- --ignored dump` writes the
/// pictures for a person to look at.
#[tokio::test(flavor = "current_thread", start_paused = true)]
#[ignore = "writes pictures for a person to look at"]
async fn dump() {
    let dir = std::env::var("VIZ_DUMP").unwrap_or_else(|_| "target".into());
    let trace = traced_run().await;
    for format in Format::ALL {
        let ext = format.extension();
        std::fs::write(
            format!("{dir}/studio.{ext}"),
            viz::render(Studio::graph(), format),
        )
        .unwrap();
        std::fs::write(
            format!("{dir}/studio-trace.{ext}"),
            viz::render_trace(Studio::graph(), &trace, format),
        )
        .unwrap();
    }
    std::fs::write(format!("{dir}/studio-trace.txt"), trace.timeline()).unwrap();
}

/// A step that waits inline for the human (`ctx.wait_for`) in the middle of its work.
struct Inline;

#[workflow]
impl Inline {
    #[step]
    async fn ask(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<String>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        let first = ctx
            .wait_for::<Verdict>()
            .publishing(Review {
                text: ev.0.clone(),
                round: 1,
            })
            .await?;
        // A second wait that publishes nothing: the answer is expected all the same.
        let second = ctx.wait_for::<Verdict>().await?;
        Ok(StopEvent(format!("{} {}", first.approved, second.approved)))
    }
}

async fn inline_waits_are_traced() {
    let mut run = Inline.runner().trace(true).start("post".into());
    let recording = run.recording().expect("the runner records");
    let mut events = run.events();
    while let Some(item) = events.next().await {
        if item.event::<Review>().is_some() {
            run.send_response(Verdict { approved: false });
            // The second wait registers after the first answer is taken: its trace entry
            // is the sign that it waits.
            let second_wait = async {
                loop {
                    let trace = recording.trace();
                    let waits = trace
                        .entries
                        .iter()
                        .filter(|e| matches!(e.what, TraceEvent::HumanWait { .. }))
                        .count();
                    if waits == 2 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), second_wait)
                .await
                .expect("the second inline wait is traced");
            run.send_response(Verdict { approved: true });
        }
    }
    assert_eq!(run.await.unwrap(), "false true");
    let trace = recording.trace();
    let kinds: Vec<String> = trace
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            TraceEvent::HumanWait { request } => Some(format!("wait {request}")),
            TraceEvent::HumanAnswer { response } => Some(format!("answer {response}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "wait viz::Review",
            "answer viz::Verdict",
            "wait viz::Verdict",
            "answer viz::Verdict"
        ]
    );
    let timeline = trace.timeline();
    assert!(
        timeline.contains("? waiting for a human: Review"),
        "{timeline}"
    );
    assert!(
        timeline.contains("? waiting for a human: Verdict"),
        "{timeline}"
    );
    assert_eq!(timeline.matches("? answered: Verdict after").count(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn inline_waits_are_traced_current_thread() {
    inline_waits_are_traced().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_waits_are_traced_multi_thread() {
    inline_waits_are_traced().await;
}
