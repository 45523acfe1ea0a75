//! Snapshots and resume: a resumed run equals an uninterrupted one from every checkpoint,
//! snapshots survive JSON, bad snapshots fail loudly with the path of the bad field, and
//! durable runs journal, evict and come back when their answer arrives.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::snapshot::Snapshot;
use tidewater::store::{MemoryStore, RunStatus, Store};

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Chunk {
    index: u32,
    text: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Counted {
    index: u32,
    words: u32,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Again {
    left: u32,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct Tally {
    chunks: u32,
    loops: u32,
}

/// A sample workflow with fan-out, fan-in, a loop and state; it logs each completed step.
struct Sample {
    log: Arc<Mutex<Vec<String>>>,
}

impl Sample {
    fn new() -> Sample {
        Sample {
            log: Arc::default(),
        }
    }
    fn done(&self, what: String) {
        self.log.lock().unwrap().push(what);
    }
}

#[workflow(state = Tally, durable)]
impl Sample {
    #[step(emits = [Chunk])]
    async fn split(&self, ctx: &Context<Self>, ev: StartEvent<String>) {
        for (index, text) in ev.0.split('.').enumerate() {
            ctx.send_event(Chunk {
                index: index as u32,
                text: text.to_string(),
            });
        }
        self.done("split".into());
    }

    #[step]
    async fn count(&self, ctx: &Context<Self>, ev: Chunk) -> Counted {
        ctx.update_state(|t| t.chunks += 1);
        self.done(format!("count {}", ev.index));
        Counted {
            index: ev.index,
            words: ev.text.split_whitespace().count() as u32,
        }
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Counted) -> Option<Again> {
        let Some(all) = ctx.collect(ev, 3) else {
            self.done("join (waits)".into());
            return None;
        };
        self.done("join".into());
        Some(Again {
            left: all.iter().map(|c| c.words).sum::<u32>() % 4 + 1,
        })
    }

    #[step]
    async fn spin(&self, ctx: &Context<Self>, ev: Again) -> Either<Again, StopEvent<String>> {
        let tally = ctx.update_state(|t| {
            t.loops += 1;
            t.clone()
        });
        self.done(format!("spin {}", ev.left));
        if ev.left == 0 {
            Either::Right(StopEvent(format!(
                "{} chunks, {} loops",
                tally.chunks, tally.loops
            )))
        } else {
            Either::Left(Again { left: ev.left - 1 })
        }
    }
}

const TEXT: &str = "one two three. four five. six";

#[tokio::test]
async fn resuming_from_every_step_boundary_equals_the_uninterrupted_run() {
    // The uninterrupted run, journaled: one checkpoint at the start and after each step.
    let store = Arc::new(MemoryStore::new());
    let reference = Sample::new();
    let log = reference.log.clone();
    let runner = reference.runner().store(store.clone());
    let expected = runner
        .start_durable("reference", TEXT.to_string())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(expected, "3 chunks, 4 loops");
    let full_log = log.lock().unwrap().clone();
    let history = store.history("reference");
    // A checkpoint at the start and after each completion; the last completion (the stop
    // event) is journaled as the finished record.
    assert_eq!(history.len(), full_log.len() + 1);
    assert_eq!(history.last().unwrap().completed as usize, full_log.len());
    let history = &history[..history.len() - 1];
    assert_eq!(
        store.load("reference").unwrap().unwrap().status,
        RunStatus::Finished
    );
    assert_eq!(runner.stored_output("reference").unwrap(), expected);

    for (k, checkpoint) in history.iter().enumerate() {
        // Through JSON, as if written to disk and read by another process.
        let snapshot = Snapshot::from_json(&checkpoint.to_json()).unwrap();
        assert_eq!(&snapshot, checkpoint);
        assert_eq!(snapshot.completed as usize, k);
        let fresh = Sample::new();
        let fresh_log = fresh.log.clone();
        let output = fresh
            .runner()
            .resume(&snapshot)
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("checkpoint {k}: {e}\n{}", snapshot.to_json()));
        assert_eq!(output, expected, "resumed from checkpoint {k}");
        // Completed steps did not run again; everything after the checkpoint ran once.
        assert_eq!(
            *fresh_log.lock().unwrap(),
            full_log[k..],
            "resumed from checkpoint {k}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A run waiting for a human, snapshotted, resumed elsewhere and answered.

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Decision)]
struct Proposal {
    text: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Decision {
    approved: bool,
}

struct Approve {
    proposals: Arc<Mutex<u32>>,
}

#[workflow(durable)]
impl Approve {
    #[step]
    async fn propose(&self, ev: StartEvent<String>) -> Proposal {
        // A side effect before the wait: it must happen once, even across a resume.
        *self.proposals.lock().unwrap() += 1;
        Proposal {
            text: format!("publish {}", ev.0),
        }
    }

    #[step]
    async fn decide(&self, ev: Decision) -> StopEvent<String> {
        StopEvent(if ev.approved { "published" } else { "dropped" }.to_string())
    }
}

#[tokio::test]
async fn a_waiting_run_is_snapshotted_resumed_in_a_new_runner_and_answered() {
    let proposals = Arc::new(Mutex::new(0));
    let mut run = Approve {
        proposals: proposals.clone(),
    }
    .start("post".to_string());
    let mut events = run.events();
    while let Some(item) = events.next().await {
        if item.event::<Proposal>().is_some() {
            break;
        }
    }
    let json = run.snapshot().await.unwrap().to_json();
    run.cancel();
    assert!(matches!(run.await, Err(WorkflowError::Cancelled)));

    // "Another process": a new workflow value and runner, from the JSON text.
    let snapshot = Snapshot::from_json(&json).unwrap();
    assert_eq!(snapshot.pending_requests.len(), 1);
    let mut resumed = Approve {
        proposals: proposals.clone(),
    }
    .runner()
    .resume(&snapshot)
    .unwrap();
    let mut events = resumed.events();
    // The unanswered request is published again for the new watcher.
    let first = events.next().await.unwrap();
    assert_eq!(
        first.event::<Proposal>().map(|p| p.text.as_str()),
        Some("publish post")
    );
    resumed.send_event(Decision { approved: true });
    assert_eq!(resumed.await.unwrap(), "published");
    assert_eq!(
        *proposals.lock().unwrap(),
        1,
        "the step before the wait ran once"
    );
}

#[tokio::test]
async fn a_durable_run_parked_for_a_human_leaves_memory_and_comes_back_with_the_answer() {
    let store = Arc::new(MemoryStore::new());
    let proposals = Arc::new(Mutex::new(0));
    let runner = Approve {
        proposals: proposals.clone(),
    }
    .runner()
    .store(store.clone())
    .evict_when_waiting(true);
    let error = runner
        .start_durable("post-1", "news".to_string())
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, WorkflowError::Suspended { key } if key == "post-1"),
        "{error:?}"
    );
    assert_eq!(store.keys(RunStatus::Waiting).unwrap(), ["post-1"]);
    // Starting the same key again is refused: it would lose the waiting run.
    assert!(matches!(
        runner.start_durable("post-1", "other".to_string()),
        Err(WorkflowError::Durable { .. })
    ));

    let handler = runner
        .answer("post-1", Decision { approved: false })
        .unwrap();
    assert_eq!(handler.await.unwrap(), "dropped");
    assert_eq!(*proposals.lock().unwrap(), 1);
    assert_eq!(
        store.load("post-1").unwrap().unwrap().status,
        RunStatus::Finished
    );
    assert_eq!(runner.stored_output("post-1").unwrap(), "dropped");
    let again = runner.resume_stored("post-1").unwrap_err();
    assert_eq!(
        again.to_string(),
        "durable run `post-1`: the run has ended (Finished)"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad snapshots fail loudly, naming the field.

async fn waiting_snapshot() -> Snapshot {
    let mut run = Approve {
        proposals: Arc::default(),
    }
    .start("x".to_string());
    let mut events = run.events();
    while let Some(item) = events.next().await {
        if item.event::<Proposal>().is_some() {
            break;
        }
    }
    let snapshot = run.snapshot().await.unwrap();
    run.cancel();
    snapshot
}

fn resume_error(snapshot: &Snapshot) -> String {
    let runner = Approve {
        proposals: Arc::default(),
    }
    .runner();
    match runner.resume(snapshot) {
        Ok(_) => panic!("the snapshot was accepted"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_corrupt_snapshot_is_an_error_naming_the_bad_field() {
    let snapshot = waiting_snapshot().await;

    let not_json = Snapshot::from_json("{ not json").unwrap_err();
    assert_eq!(not_json.path, "");
    assert!(
        not_json.reason.contains("key must be a string"),
        "{not_json}"
    );

    let mut json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
    json["recoveries"] = serde_json::json!("three");
    let wrong_type = Snapshot::from_json(&json.to_string()).unwrap_err();
    assert_eq!(wrong_type.path, "recoveries");

    let mut json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
    json.as_object_mut().unwrap().remove("state");
    let missing = Snapshot::from_json(&json.to_string()).unwrap_err();
    assert!(
        missing.reason.contains("missing field `state`"),
        "{missing}"
    );

    let mut json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
    json["pending_requests"][0]["data"]["text"] = serde_json::json!(42);
    let bad_event = Snapshot::from_json(&json.to_string()).unwrap();
    assert_eq!(
        resume_error(&bad_event),
        "bad snapshot field `pending_requests[0].data`: invalid type: integer `42`, expected a string"
    );

    let mut renamed = snapshot.clone();
    renamed.pending_requests[0].event = "elsewhere::Proposal".into();
    assert_eq!(
        resume_error(&renamed),
        "bad snapshot field `pending_requests[0].event`: unknown event type `elsewhere::Proposal`"
    );

    let mut newer = snapshot.clone();
    newer.format = tidewater::snapshot::SNAPSHOT_FORMAT + 1;
    assert_eq!(
        resume_error(&newer),
        format!(
            "bad snapshot field `format`: unsupported format {}: this build reads formats 1 to {} \
             (was it written by a newer build?)",
            tidewater::snapshot::SNAPSHOT_FORMAT + 1,
            tidewater::snapshot::SNAPSHOT_FORMAT
        )
    );

    let mut other = snapshot.clone();
    other.workflow = "Sample".into();
    assert_eq!(
        resume_error(&other),
        "bad snapshot field `workflow`: the snapshot is of workflow `Sample`, not `Approve`"
    );
}

mod v2 {
    //! The same workflow name, one step more: a changed graph.
    use super::*;

    #[derive(Debug, Clone, Event, Serialize, Deserialize)]
    pub(super) struct Audited(pub(super) bool);

    pub(super) struct Approve;

    #[workflow(durable)]
    impl Approve {
        #[step]
        async fn propose(&self, ev: StartEvent<String>) -> Proposal {
            Proposal { text: ev.0 }
        }

        #[step]
        async fn decide(&self, ev: Decision) -> Audited {
            Audited(ev.approved)
        }

        #[step]
        async fn audit(&self, ev: Audited) -> StopEvent<String> {
            StopEvent(ev.0.to_string())
        }
    }
}

#[tokio::test]
async fn a_snapshot_from_a_changed_workflow_is_refused() {
    let snapshot = waiting_snapshot().await;
    let error = match v2::Approve.runner().resume(&snapshot) {
        Ok(_) => panic!("a snapshot of another graph was accepted"),
        Err(error) => error,
    };
    assert_eq!(error.path, "fingerprint");
    assert!(
        error
            .reason
            .starts_with("the graph of `Approve` changed since the snapshot was taken"),
        "{error}"
    );
}

struct Plain;

#[workflow]
impl Plain {
    #[step]
    async fn only(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        StopEvent(ev.0)
    }
}

#[tokio::test]
async fn a_workflow_that_is_not_durable_says_so() {
    let run = Plain.start(1);
    let error = run.snapshot().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "bad snapshot field ``: workflow `Plain` is not `#[workflow(durable)]`: its runs cannot be snapshotted"
    );
    assert_eq!(run.await.unwrap(), 1);
    let no_store = Plain.runner().start_durable("k", 1).unwrap_err();
    assert_eq!(
        no_store.to_string(),
        "durable run `k`: workflow `Plain` is not `#[workflow(durable)]`"
    );
}

#[tokio::test]
async fn a_durable_run_journals_its_stream_events_in_order() {
    #[derive(Debug, Clone, Event, Serialize, Deserialize)]
    struct Note(u32);

    struct Noisy;

    #[workflow(durable)]
    impl Noisy {
        #[step]
        async fn go(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> StopEvent<u32> {
            for i in 0..ev.0 {
                ctx.write_event_to_stream(Note(i));
            }
            StopEvent(ev.0)
        }
    }

    let store = Arc::new(MemoryStore::new());
    let runner = Noisy.runner().store(store.clone());
    assert_eq!(runner.start_durable("n", 3).unwrap().await.unwrap(), 3);
    let events = store.events("n").unwrap();
    let seqs: Vec<u64> = events.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(events[0].1.event.ends_with("::Note"));
    // `Note` is not an event of the graph: journaled as its debug text.
    assert_eq!(events[2].1.data, serde_json::json!({ "debug": "Note(2)" }));
    assert_eq!(store.load("n").unwrap().unwrap().snapshot.stream_seq, 3);
}
