//! A served workflow whose step runs a child workflow that asks a human: the child's request
//! shows in the handler's event log with the child's path, and the answer posted to the
//! parent's handler reaches the child (its response type served as an extra event).

mod common;

use common::{Frame, Sse, post, spawn, wait_ended};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidewater::prelude::*;

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
#[event(request = Reply)]
struct Question {
    topic: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize, JsonSchema)]
#[event(response)]
struct Reply {
    text: String,
}

/// Asks about its topic and stops with the answer.
struct Asker;

#[workflow]
impl Asker {
    #[step]
    async fn ask(&self, ev: StartEvent<String>) -> Question {
        Question { topic: ev.0 }
    }

    #[step]
    async fn answer(&self, ev: Reply) -> StopEvent<String> {
        StopEvent(ev.text)
    }
}

struct Desk {
    asker: Runner<Asker>,
}

#[workflow]
impl Desk {
    #[step]
    async fn handle(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<String>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        let answer = ctx.run_child(&self.asker, ev.0).await?;
        Ok(StopEvent(format!("desk: {answer}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_request_is_logged_with_its_path_and_answered_through_the_parent() {
    let desk = Desk {
        asker: Asker.runner(),
    };
    let served =
        tidewater::serve::served_with(desk.runner(), vec![tidewater::EventMeta::of::<Reply>()]);
    let addr = spawn(tidewater_server::Server::new().serve_erased("desk", served)).await;
    let started = post(
        addr,
        "/workflows/desk/run-nowait",
        r#"{"start_event": "tides"}"#,
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.body);
    let id = started.json()["handler_id"].as_str().unwrap().to_string();

    // The child's question, in the parent's log, marked as the child's.
    let (_, mut sse) = Sse::open(addr, &format!("/events/{id}?after_sequence=-1"), &[]).await;
    let question = loop {
        match sse.next().await {
            Some(Frame::Event(_, event)) if event["type"] == "Question" => break event,
            Some(_) => {}
            None => panic!("the log ended before the question"),
        }
    };
    drop(sse);
    assert_eq!(question["value"], json!({ "topic": "tides" }));
    assert_eq!(question["types"], json!(["InputRequiredEvent"]));
    let child = &question["child"];
    assert_eq!(child.as_array().map(Vec::len), Some(1), "{question}");
    assert_eq!(child[0]["step"], "handle");
    assert_eq!(child[0]["workflow"], "Asker");
    assert!(child[0]["run_id"].as_u64().is_some());

    // Answered through the parent's handler: the parent hands it to the child.
    let answered = post(
        addr,
        &format!("/events/{id}"),
        r#"{"event": {"type": "Reply", "value": {"text": "high tide at noon"}}}"#,
    )
    .await;
    assert_eq!(answered.status, 200, "{}", answered.body);
    let ended = wait_ended(addr, &id).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(
        ended["result"]["value"]["result"], "desk: high tide at noon",
        "{ended}"
    );
}
