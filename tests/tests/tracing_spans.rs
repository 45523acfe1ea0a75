//! Observability: a `workflow.run` span per run and a `workflow.step` span per step invocation
//! (workflow, step, run id, attempt), each step span a child of its run's span.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewater::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event as TracingEvent, Metadata, Subscriber};

/// One recorded span: its name, fields and parent.
#[derive(Debug, Clone)]
struct SpanRecord {
    name: &'static str,
    meta: &'static Metadata<'static>,
    fields: HashMap<String, String>,
    parent: Option<u64>,
}

/// A minimal subscriber that records spans and tracks the current span per thread.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<HashMap<u64, SpanRecord>>>,
    stacks: Arc<Mutex<HashMap<std::thread::ThreadId, Vec<u64>>>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = if let Some(parent) = attrs.parent() {
            Some(parent.into_u64())
        } else if attrs.is_contextual() {
            let stacks = self.stacks.lock().unwrap();
            stacks
                .get(&std::thread::current().id())
                .and_then(|s| s.last().copied())
        } else {
            None
        };
        self.spans.lock().unwrap().insert(
            id,
            SpanRecord {
                name: attrs.metadata().name(),
                meta: attrs.metadata(),
                fields,
                parent,
            },
        );
        Id::from_u64(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        let stacks = self.stacks.lock().unwrap();
        let current = stacks
            .get(&std::thread::current().id())
            .and_then(|s| s.last().copied());
        match current {
            Some(id) => {
                let meta = self.spans.lock().unwrap()[&id].meta;
                tracing_core::span::Current::new(Id::from_u64(id), meta)
            }
            None => tracing_core::span::Current::none(),
        }
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &TracingEvent<'_>) {}

    fn enter(&self, span: &Id) {
        self.stacks
            .lock()
            .unwrap()
            .entry(std::thread::current().id())
            .or_default()
            .push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut stacks = self.stacks.lock().unwrap();
        let stack = stacks.entry(std::thread::current().id()).or_default();
        if let Some(pos) = stack.iter().rposition(|s| *s == span.into_u64()) {
            stack.remove(pos);
        }
    }
}

#[derive(Debug, Clone, Event)]
struct Half(u32);

struct Traced;

#[workflow]
impl Traced {
    #[step]
    async fn first(&self, ev: StartEvent<u32>) -> Half {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Half(ev.0 / 2)
    }

    #[step(retry = RetryPolicy::fixed(2, Duration::from_millis(1)))]
    async fn second(
        &self,
        ctx: &Context<Self>,
        ev: Half,
    ) -> Result<StopEvent<u32>, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if ctx.attempt() == 1 {
            return Err(std::io::Error::other("once"));
        }
        Ok(StopEvent(ev.0))
    }
}

#[test]
fn each_step_invocation_has_a_span_under_its_run_span() {
    let recorder = Recorder::default();
    let spans = recorder.spans.clone();
    tracing::subscriber::with_default(recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let runner = Traced.runner();
            let (a, b) = tokio::join!(runner.run(10), runner.run(20));
            assert_eq!((a.unwrap(), b.unwrap()), (5, 10));
        });
    });
    let spans = spans.lock().unwrap();
    let runs: Vec<(&u64, &SpanRecord)> = spans
        .iter()
        .filter(|(_, s)| s.name == "workflow.run")
        .collect();
    assert_eq!(runs.len(), 2);
    for (run_span, run) in runs {
        assert_eq!(run.fields["workflow"], "Traced");
        let run_id = &run.fields["run_id"];
        let mut steps: Vec<(String, String)> = spans
            .values()
            .filter(|s| s.name == "workflow.step" && s.parent == Some(*run_span))
            .map(|s| {
                assert_eq!(
                    &s.fields["run_id"], run_id,
                    "a step span carries its run's id"
                );
                (s.fields["step"].clone(), s.fields["attempt"].clone())
            })
            .collect();
        steps.sort();
        assert_eq!(
            steps,
            [
                ("first".to_string(), "1".to_string()),
                ("second".to_string(), "1".to_string()),
                ("second".to_string(), "2".to_string()),
            ]
        );
    }
    assert_eq!(
        spans.values().filter(|s| s.name == "workflow.step").count(),
        6,
        "every step span has a run parent"
    );
}

#[test]
fn a_run_started_inside_a_callers_span_is_its_child() {
    let recorder = Recorder::default();
    let spans = recorder.spans.clone();
    tracing::subscriber::with_default(recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let request = tracing::info_span!("http.request");
            // Started inside the caller's span; first polled in its own task, outside it.
            let handler = request.in_scope(|| Traced.start(10));
            assert_eq!(handler.await.unwrap(), 5);
        });
    });
    let spans = spans.lock().unwrap();
    let request = spans
        .iter()
        .find(|(_, s)| s.name == "http.request")
        .map(|(id, _)| *id)
        .unwrap();
    let run = spans.values().find(|s| s.name == "workflow.run").unwrap();
    assert_eq!(
        run.parent,
        Some(request),
        "the run's span is under the caller's"
    );
}

/// A child workflow, run by `Parent::delegate`.
struct Child;

#[workflow]
impl Child {
    #[step]
    async fn inner(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        StopEvent(ev.0 + 1)
    }
}

struct Parent {
    child: Runner<Child>,
}

#[workflow]
impl Parent {
    #[step]
    async fn delegate(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        let (a, b) = futures_util::future::try_join(
            ctx.run_child(&self.child, ev.0),
            ctx.run_child(&self.child, ev.0 * 10),
        )
        .await?;
        Ok(StopEvent(a + b))
    }
}

#[test]
fn a_child_runs_span_sits_under_the_calling_steps_span() {
    let recorder = Recorder::default();
    let spans = recorder.spans.clone();
    tracing::subscriber::with_default(recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let parent = Parent {
                child: Child.runner(),
            };
            assert_eq!(parent.run(1).await.unwrap(), 13);
        });
    });
    let spans = spans.lock().unwrap();
    let find = |name: &str, workflow: &str| -> Vec<(u64, SpanRecord)> {
        spans
            .iter()
            .filter(|(_, s)| s.name == name && s.fields["workflow"] == workflow)
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    };
    let parent_run = find("workflow.run", "Parent");
    let delegate = find("workflow.step", "Parent");
    let child_runs = find("workflow.run", "Child");
    let child_steps = find("workflow.step", "Child");
    assert_eq!((parent_run.len(), delegate.len()), (1, 1));
    assert_eq!(delegate[0].1.parent, Some(parent_run[0].0));
    assert_eq!(child_runs.len(), 2);
    for (id, run) in &child_runs {
        assert_eq!(
            run.parent,
            Some(delegate[0].0),
            "a child's run span sits under the step that started it"
        );
        let steps: Vec<&(u64, SpanRecord)> = child_steps
            .iter()
            .filter(|(_, s)| s.parent == Some(*id))
            .collect();
        assert_eq!(steps.len(), 1, "its own steps sit under it");
        assert_eq!(steps[0].1.fields["run_id"], run.fields["run_id"]);
        assert_ne!(run.fields["run_id"], parent_run[0].1.fields["run_id"]);
    }
}
