//! The type-erased serving layer of `tidewater::serve`, without HTTP, on both runtimes: the
//! start payload is validated before anything runs, events go both ways as JSON envelopes,
//! an event type without serde still shows on the stream.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tidewater::prelude::*;
use tidewater::serve::{envelope, served, short_name};

#[derive(Debug, Clone, Event)]
struct Opaque(#[allow(dead_code)] u8);

struct Chatty;

#[workflow]
impl Chatty {
    #[step]
    async fn say(&self, ctx: &Context<Self>, ev: StartEvent<u8>) -> StopEvent<u8> {
        ctx.write_event_to_stream(Opaque(ev.0));
        ctx.write_event_to_stream(Progress { done: 1, of: 1 });
        StopEvent(ev.0)
    }
}

async fn erased_round_trip() {
    let wf = served(Chatty.runner());
    let refused = wf.start(json!("seven")).unwrap_err();
    assert!(
        refused.message.contains("invalid type: string"),
        "{refused}"
    );

    let mut run = wf.start(json!(7)).unwrap();
    let mut envelopes = Vec::new();
    while let Some(item) = run.events.next().await {
        if let StreamItem::Event(event) = item {
            envelopes.push(envelope(&event));
        }
    }
    assert_eq!(run.outcome.await.unwrap(), json!(7));
    assert_eq!(envelopes[0]["type"], "Opaque");
    assert_eq!(envelopes[0]["value"], json!({ "debug": "Opaque(7)" }));
    assert_eq!(envelopes[1]["value"], json!({ "done": 1, "of": 1 }));
    assert_eq!(envelopes[1]["types"], serde_json::Value::Null);
}

#[tokio::test(flavor = "current_thread")]
async fn erased_round_trip_current_thread() {
    erased_round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_round_trip_multi_thread() {
    erased_round_trip().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_sent_event_is_decoded_by_short_or_full_name_and_refused_with_its_field() {
    let wf = served(Approval.runner());
    let run = wf.start(json!({ "topic": "x", "steps": 0 })).unwrap();
    let bad = run
        .control
        .send_json("Verdict", json!({ "approved": 3 }), None)
        .unwrap_err();
    assert!(bad.message.contains("approved"), "{bad}");
    let unknown = run.control.send_json("Topic", json!({}), None).unwrap_err();
    assert!(
        unknown
            .message
            .starts_with("Invalid event type: Topic. Expected one of"),
        "{unknown}"
    );
    let full = <Verdict as Event>::NAME;
    run.control
        .send_json(full, json!({ "approved": true }), None)
        .unwrap();
    assert_eq!(run.outcome.await.unwrap(), json!(true));
    assert_eq!(short_name(full), "Verdict");
    // Schemas come from schemars, derived beside `Event`.
    let schemas = wf.event_schemas();
    let verdict = schemas.iter().find(|(n, _)| *n == full).unwrap();
    assert_eq!(verdict.1["properties"]["approved"]["type"], "boolean");
}

#[test]
fn workflows_marked_serve_are_registered() {
    let names: Vec<&str> = tidewater_server::registered()
        .iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec!["approval", "report"]);
}
