//! The function-calling agent workflow, on the scripted mock.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tidewater::prelude::*;
use tidewater_llm::agent::{Agent, AgentError, AgentToken, Tool, ToolCallRequest, ToolCallResult};
use tidewater_llm::schema::{JsonSchema, ObjectSchema};
use tidewater_llm::{ChatResponse, LlmError, MockLlm, Role, ToolCall, ToolChoice};
use tokio::sync::Barrier;

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("the test took longer than 10 s")
}

#[derive(Deserialize)]
struct City {
    city: String,
}

impl JsonSchema for City {
    fn json_schema() -> serde_json::Value {
        ObjectSchema::new()
            .field::<String>("city", "the city")
            .build()
    }
}

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

impl JsonSchema for Add {
    fn json_schema() -> serde_json::Value {
        ObjectSchema::new()
            .field::<i64>("a", "")
            .field::<i64>("b", "")
            .build()
    }
}

fn add_tool() -> Tool {
    Tool::sync("add", "Adds two integers", |x: Add| {
        Ok::<_, String>(x.a + x.b)
    })
}

#[tokio::test]
async fn tool_calls_run_in_parallel_and_results_return_in_call_order() {
    bounded(async {
        // Both weather calls wait for each other: if the agent ran them one after the other,
        // the first would wait forever and the test would time out.
        let barrier = Arc::new(Barrier::new(2));
        let weather = Tool::new("get_weather", "Current weather", move |c: City| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                Ok::<_, String>(format!("{}: 18°C", c.city))
            }
        });
        let llm = MockLlm::new()
            .tool_calls(vec![
                ToolCall::new("w1", "get_weather", r#"{"city": "Oslo"}"#),
                ToolCall::new("w2", "get_weather", r#"{"city": "Rome"}"#),
                ToolCall::new("s1", "add", r#"{"a": 18, "b": 18}"#),
            ])
            .reply("Both are at 18°C; together 36.");
        let agent = Agent::new(Arc::new(llm.clone()), vec![weather, add_tool()])
            .system_prompt("Use tools.");
        let answer = agent
            .run("Weather in Oslo and Rome, summed?".into())
            .await
            .unwrap();

        assert_eq!(answer.text, "Both are at 18°C; together 36.");
        assert_eq!(answer.model_calls, 2);
        let results: Vec<(&str, &str)> = answer
            .tool_calls
            .iter()
            .map(|r| (r.call.id.as_str(), r.content.as_str()))
            .collect();
        assert_eq!(
            results,
            [("w1", "Oslo: 18°C"), ("w2", "Rome: 18°C"), ("s1", "36")]
        );

        let requests = llm.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].tools.len(), 2);
        assert_eq!(requests[0].messages[0].role, Role::System);
        let tool_messages: Vec<(Option<&str>, &str)> = requests[1]
            .messages
            .iter()
            .filter(|m| m.role == Role::Tool)
            .map(|m| (m.tool_call_id.as_deref(), m.content.as_str()))
            .collect();
        assert_eq!(
            tool_messages,
            [
                (Some("w1"), "Oslo: 18°C"),
                (Some("w2"), "Rome: 18°C"),
                (Some("s1"), "36")
            ]
        );
        // The assistant turn that asked for the tools precedes their results.
        assert_eq!(requests[1].messages[2].tool_calls.len(), 3);
        llm.assert_exhausted();
    })
    .await;
}

#[tokio::test]
async fn the_iteration_limit_is_an_error_not_a_quiet_answer() {
    bounded(async {
        let llm = MockLlm::new().responder(|_| {
            ChatResponse::tool_calls(vec![ToolCall::new("again", "add", r#"{"a": 1, "b": 1}"#)])
        });
        let err = Agent::new(Arc::new(llm.clone()), vec![add_tool()])
            .max_iterations(3)
            .run("loop forever".into())
            .await
            .unwrap_err();
        match AgentError::of(&err) {
            Some(AgentError::MaxIterations { limit, wanted }) => {
                assert_eq!(*limit, 3);
                assert_eq!(wanted, &["add"]);
            }
            other => panic!("expected MaxIterations, got {other:?} from {err}"),
        }
        assert_eq!(
            llm.requests().len(),
            3,
            "exactly `max_iterations` model calls"
        );
    })
    .await;
}

#[tokio::test]
async fn tool_failures_go_back_to_the_model() {
    bounded(async {
        let failing = Tool::sync("divide", "Divides", |x: Add| {
            if x.b == 0 {
                Err("division by zero")
            } else {
                Ok(x.a / x.b)
            }
        });
        let llm = MockLlm::new()
            .tool_calls(vec![
                ToolCall::new("1", "nope", "{}"),
                ToolCall::new("2", "add", r#"{"a": "x", "b": 1}"#),
                ToolCall::new("3", "divide", r#"{"a": 1, "b": 0}"#),
                ToolCall::new("4", "add", r#"{"a": 1"#),
            ])
            .reply("I could not compute it.");
        let answer = Agent::new(Arc::new(llm.clone()), vec![add_tool(), failing])
            .run("compute".into())
            .await
            .unwrap();
        assert_eq!(answer.text, "I could not compute it.");
        let contents: Vec<&str> = answer
            .tool_calls
            .iter()
            .map(|r| r.content.as_str())
            .collect();
        assert_eq!(
            contents[0],
            "error: there is no tool `nope`; the tools are: add, divide"
        );
        assert_eq!(
            contents[1],
            "error: bad arguments: $.a: expected integer, found string \"x\""
        );
        assert_eq!(contents[2], "error: division by zero");
        assert!(
            contents[3].starts_with("error: the arguments are not valid JSON"),
            "{}",
            contents[3]
        );
        assert!(answer.tool_calls.iter().all(|r| r.is_error));
    })
    .await;
}

#[tokio::test]
async fn a_model_failure_fails_the_run() {
    bounded(async {
        let llm = MockLlm::new().error(LlmError::Mock("service unavailable".into()));
        let err = Agent::new(Arc::new(llm), vec![]).run("hi".into()).await.unwrap_err();
        assert!(matches!(AgentError::of(&err), Some(AgentError::Llm(LlmError::Mock(m))) if m == "service unavailable"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn tokens_and_tool_activity_are_streamed() {
    bounded(async {
        let llm = MockLlm::new()
            .tool_calls(vec![ToolCall::new("1", "add", r#"{"a": 2, "b": 2}"#)])
            .reply("The sum is 4.");
        let mut run = Agent::new(Arc::new(llm), vec![add_tool()]).start("2 + 2?".into());
        let mut events = run.events();
        let mut log = Vec::new();
        while let Some(item) = events.next().await {
            if let Some(AgentToken(t)) = item.event::<AgentToken>() {
                log.push(format!("token {t:?}"));
            } else if let Some(r) = item.event::<ToolCallRequest>() {
                log.push(format!("call {}", r.call.name));
            } else if let Some(r) = item.event::<ToolCallResult>() {
                log.push(format!("result {}", r.content));
            }
        }
        assert_eq!(
            log,
            [
                "call add",
                "result 4",
                "token \"The \"",
                "token \"sum \"",
                "token \"is \"",
                "token \"4.\""
            ]
        );
        assert_eq!(run.await.unwrap().text, "The sum is 4.");
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_tool_call_written_as_json_text_is_run_as_a_call_current_thread() {
    a_tool_call_written_as_json_text_is_run_as_a_call().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_written_as_json_text_is_run_as_a_call_multi_thread() {
    a_tool_call_written_as_json_text_is_run_as_a_call().await;
}

async fn a_tool_call_written_as_json_text_is_run_as_a_call() {
    bounded(async {
        let llm = MockLlm::new()
            .reply("```json\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n```")
            .reply("2 + 3 = 5");
        let mut run = Agent::new(Arc::new(llm.clone()), vec![add_tool()]).start("2 + 3?".into());
        let mut seen = Vec::new();
        let mut events = run.events();
        while let Some(item) = events.next().await {
            if let Some(ToolCallRequest { call, .. }) = item.event::<ToolCallRequest>() {
                seen.push(format!("request {}", call.name));
            } else if let Some(ToolCallResult {
                content, is_error, ..
            }) = item.event::<ToolCallResult>()
            {
                seen.push(format!("result {content} {is_error}"));
            }
        }
        let answer = run.await.unwrap();
        assert_eq!(seen, ["request add", "result 5 false"]);
        assert_eq!(answer.text, "2 + 3 = 5");
        assert!(!answer.used_no_tool());
        assert_eq!(answer.tool_calls.len(), 1);
        // The conversation holds a real call, and its result answers it.
        let sent = llm.requests();
        let call_turn = &sent[1].messages[1];
        assert_eq!(
            call_turn.tool_calls,
            [ToolCall::new("text_call_0", "add", r#"{"a":2,"b":3}"#)]
        );
        assert_eq!(
            sent[1].messages[2].tool_call_id.as_deref(),
            Some("text_call_0")
        );
    })
    .await;
}

#[tokio::test]
async fn json_text_naming_a_tool_that_was_not_offered_stays_the_answer() {
    bounded(async {
        let text = r#"{"name": "delete_everything", "arguments": {}}"#;
        let llm = MockLlm::new().reply(text);
        let answer = Agent::new(Arc::new(llm), vec![add_tool()])
            .run("hi".into())
            .await
            .unwrap();
        assert_eq!(answer.text, text);
        assert!(answer.used_no_tool());
    })
    .await;
}

#[tokio::test]
async fn tool_choice_applies_to_the_first_turn_and_auto_after() {
    bounded(async {
        let llm = MockLlm::new()
            .tool_calls(vec![ToolCall::new("1", "add", r#"{"a": 1, "b": 1}"#)])
            .reply("2");
        let answer = Agent::new(Arc::new(llm.clone()), vec![add_tool()])
            .tool_choice(ToolChoice::Tool("add".into()))
            .max_tokens(64)
            .run("1 + 1?".into())
            .await
            .unwrap();
        assert_eq!(answer.text, "2");
        let sent = llm.requests();
        assert_eq!(sent[0].tool_choice, Some(ToolChoice::Tool("add".into())));
        assert_eq!(sent[1].tool_choice, Some(ToolChoice::Auto));
        assert_eq!(
            (sent[0].max_tokens, sent[1].max_tokens),
            (Some(64), Some(64))
        );
    })
    .await;
}

#[tokio::test]
async fn an_answer_without_tools_is_flagged_and_unreported_usage_stays_absent() {
    bounded(async {
        // Usage reported on one call but not on the other: the sum would be a lie, so none.
        let mut no_usage = ChatResponse::text("It is sunny.");
        no_usage.usage = None;
        struct Unreported(MockLlm);
        impl tidewater_llm::Llm for Unreported {
            fn model(&self) -> &str {
                "unreported"
            }
            fn chat(&self, r: tidewater_llm::ChatRequest) -> futures_util::future::BoxFuture<'_, tidewater_llm::Result<ChatResponse>> {
                self.0.chat(r)
            }
            fn chat_stream(&self, r: tidewater_llm::ChatRequest) -> futures_util::future::BoxFuture<'_, tidewater_llm::Result<tidewater_llm::ChatStream>> {
                Box::pin(async move {
                    let mut answer = self.0.chat_stream(r).await?.into_response().await?;
                    answer.usage = None;
                    let done = tidewater_llm::StreamEvent::Done(answer);
                    Ok(tidewater_llm::ChatStream::new(futures_util::stream::iter([Ok(done)])))
                })
            }
        }
        let llm = Unreported(MockLlm::new().reply("It is sunny."));
        let answer = Agent::new(Arc::new(llm), vec![add_tool()]).run("weather?".into()).await.unwrap();
        assert!(answer.used_no_tool());
        assert_eq!(answer.usage, None);
        assert_eq!(answer.usage_line(), "usage not reported by the server");

        let answer = Agent::new(Arc::new(MockLlm::new().reply("four words long here")), vec![add_tool()])
            .run("q".into())
            .await
            .unwrap();
        assert_eq!(answer.usage.map(|u| u.output_tokens), Some(4));
    })
    .await;
}

#[tokio::test]
async fn a_call_leaked_as_text_is_asked_for_again_by_name() {
    bounded(async {
        let llm = MockLlm::new()
            .reply("functions.add:")
            .tool_calls(vec![ToolCall::new("c1", "add", r#"{"a": 20, "b": 22}"#)])
            .reply("42");
        let answer = Agent::new(Arc::new(llm.clone()), vec![add_tool()])
            .run("20 + 22?".into())
            .await
            .unwrap();
        assert_eq!(answer.text, "42");
        assert_eq!(answer.model_calls, 3);
        assert_eq!(answer.tool_calls[0].content, "42");
        let sent = llm.requests();
        assert_eq!(sent[0].tool_choice, Some(ToolChoice::Auto));
        assert_eq!(sent[1].tool_choice, Some(ToolChoice::Tool("add".into())));
        assert_eq!(
            sent[1].messages, sent[0].messages,
            "the leak is not part of the conversation"
        );
        llm.assert_exhausted();
    })
    .await;
}

#[tokio::test]
async fn a_leaked_call_is_not_streamed_and_counts_as_one_turn() {
    bounded(async {
        let llm = MockLlm::new()
            .reply("functions.add:")
            .tool_calls(vec![ToolCall::new("c1", "add", r#"{"a": 20, "b": 22}"#)])
            .reply("It is 42.")
            .token_delay(Duration::from_millis(1));
        // Two turns, three model calls: the re-ask after the leak is part of the first turn.
        let mut run = Agent::new(Arc::new(llm.clone()), vec![add_tool()])
            .max_iterations(2)
            .start("20 + 22?".into());
        let mut seen = Vec::new();
        let mut events = run.events();
        while let Some(item) = events.next().await {
            if let Some(AgentToken(token)) = item.event::<AgentToken>() {
                seen.push(format!("token {token}"));
            } else if let Some(request) = item.event::<ToolCallRequest>() {
                seen.push(format!("call {}", request.call.name));
            } else if let Some(result) = item.event::<ToolCallResult>() {
                seen.push(format!("result {}", result.content));
            }
        }
        let answer = run.await.unwrap();
        assert_eq!(answer.text, "It is 42.");
        assert_eq!(answer.model_calls, 3);
        assert!(!answer.tools_cut_off);
        let text: String = seen
            .iter()
            .filter_map(|s| s.strip_prefix("token "))
            .collect();
        assert_eq!(
            text, "It is 42.",
            "the leaked call never reaches the stream"
        );
        assert_eq!(&seen[..2], ["call add", "result 42"], "{seen:?}");
        llm.assert_exhausted();
    })
    .await;
}

#[tokio::test]
async fn text_that_only_starts_like_a_leak_is_streamed_whole() {
    bounded(async {
        let llm = MockLlm::new()
            .reply("functions. are what I cannot call here.")
            .token_delay(Duration::from_millis(1));
        let mut run = Agent::new(Arc::new(llm.clone()), vec![add_tool()]).start("Hi".into());
        let mut text = String::new();
        let mut events = run.events();
        while let Some(item) = events.next().await {
            if let Some(AgentToken(token)) = item.event::<AgentToken>() {
                text.push_str(token);
            }
        }
        let answer = run.await.unwrap();
        assert_eq!(answer.text, "functions. are what I cannot call here.");
        assert_eq!(
            text, answer.text,
            "held-back text is released once it is not a call"
        );
        assert!(answer.used_no_tool());
    })
    .await;
}

/// A model that keeps asking for `add` unless told `tool_choice: none`.
fn insists_on_add(request: &tidewater_llm::ChatRequest) -> ChatResponse {
    if request.tool_choice == Some(ToolChoice::None) {
        ChatResponse::text("1 + 1 = 2, as the tool said.")
    } else {
        ChatResponse::tool_calls(vec![ToolCall::new("again", "add", r#"{"a": 1, "b": 1}"#)])
    }
}

#[tokio::test]
async fn on_its_last_turn_the_model_is_asked_to_answer_from_what_it_has() {
    bounded(async {
        let llm = MockLlm::new().responder(insists_on_add);
        let answer = Agent::new(Arc::new(llm.clone()), vec![add_tool()])
            .max_iterations(3)
            .answer_on_last_turn(true)
            .run("1 + 1?".into())
            .await
            .unwrap();
        assert_eq!(answer.text, "1 + 1 = 2, as the tool said.");
        assert!(answer.tools_cut_off);
        assert_eq!(answer.model_calls, 3);
        assert_eq!(
            answer.tool_calls.len(),
            2,
            "two turns of tools, then the answer"
        );
        let sent = llm.requests();
        let choices: Vec<_> = sent.iter().map(|r| r.tool_choice.clone()).collect();
        assert_eq!(
            choices,
            [
                Some(ToolChoice::Auto),
                Some(ToolChoice::Auto),
                Some(ToolChoice::None)
            ]
        );
        let last = sent[2].messages.last().unwrap();
        assert_eq!(last.role, Role::User);
        assert!(
            last.content.contains("without calling any tool"),
            "{last:?}"
        );
        assert_eq!(
            answer
                .messages
                .iter()
                .filter(|m| m.role == Role::User)
                .count(),
            2,
            "the request to answer stays in the conversation"
        );
    })
    .await;
}

#[tokio::test]
async fn a_model_that_still_wants_tools_on_its_last_turn_fails_the_run() {
    bounded(async {
        // This model ignores `tool_choice: none`.
        let llm = MockLlm::new().responder(|_| {
            ChatResponse::tool_calls(vec![ToolCall::new("again", "add", r#"{"a": 1, "b": 1}"#)])
        });
        let err = Agent::new(Arc::new(llm.clone()), vec![add_tool()])
            .max_iterations(2)
            .answer_on_last_turn(true)
            .run("1 + 1?".into())
            .await
            .unwrap_err();
        assert!(matches!(
            AgentError::of(&err),
            Some(AgentError::MaxIterations { limit: 2, .. })
        ));
        assert_eq!(llm.requests()[1].tool_choice, Some(ToolChoice::None));
        // A leak on the last turn is a wish for a tool too, not an answer.
        let llm = MockLlm::new()
            .tool_calls(vec![ToolCall::new("c1", "add", r#"{"a": 1, "b": 1}"#)])
            .reply("functions.add:");
        let err = Agent::new(Arc::new(llm.clone()), vec![add_tool()])
            .max_iterations(2)
            .answer_on_last_turn(true)
            .run("1 + 1?".into())
            .await
            .unwrap_err();
        match AgentError::of(&err) {
            Some(AgentError::MaxIterations { wanted, .. }) => assert_eq!(wanted, &["add"]),
            other => panic!("expected MaxIterations, got {other:?}"),
        }
        llm.assert_exhausted();
    })
    .await;
}

#[tokio::test]
async fn usage_reported_for_some_calls_is_shown_as_such() {
    bounded(async {
        /// Drops the usage of its first answer, as llama-cpp-python does for a stream.
        struct FirstUnreported(MockLlm, std::sync::atomic::AtomicU32);
        impl tidewater_llm::Llm for FirstUnreported {
            fn model(&self) -> &str {
                "first-unreported"
            }
            fn chat(
                &self,
                r: tidewater_llm::ChatRequest,
            ) -> futures_util::future::BoxFuture<'_, tidewater_llm::Result<ChatResponse>> {
                self.0.chat(r)
            }
            fn chat_stream(
                &self,
                r: tidewater_llm::ChatRequest,
            ) -> futures_util::future::BoxFuture<'_, tidewater_llm::Result<tidewater_llm::ChatStream>>
            {
                Box::pin(async move {
                    let mut answer = self.0.chat_stream(r).await?.into_response().await?;
                    if self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        answer.usage = None;
                    }
                    let done = tidewater_llm::StreamEvent::Done(answer);
                    Ok(tidewater_llm::ChatStream::new(futures_util::stream::iter([Ok(done)])))
                })
            }
        }
        let mock = MockLlm::new()
            .tool_calls(vec![ToolCall::new("c1", "add", r#"{"a": 1, "b": 2}"#)])
            .reply("three words here");
        let llm = FirstUnreported(mock, std::sync::atomic::AtomicU32::new(0));
        let answer = Agent::new(Arc::new(llm), vec![add_tool()])
            .run("1 + 2?".into())
            .await
            .unwrap();
        assert_eq!(answer.model_calls, 2);
        assert_eq!(answer.usage, None, "not every call reported: no total");
        assert_eq!(answer.unreported_calls, 1);
        let partial = answer.partial_usage.expect("the second call's usage");
        assert_eq!(partial.output_tokens, 3);
        assert!(
            answer
                .usage_line()
                .ends_with("out over 1 of 2 model calls (the server reported no usage for the other)"),
            "{}",
            answer.usage_line()
        );
    })
    .await;
}
