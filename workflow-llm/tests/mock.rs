//! The scriptable mock: replies, streaming, tool calls, errors, request assertions.

use futures_util::StreamExt;
use tidewater_llm::{
    ChatRequest, ChatResponse, Llm, LlmError, LlmExt, MockLlm, StreamEvent, ToolCall, Usage,
};

#[tokio::test]
async fn streams_text_and_tool_calls_like_a_server() {
    let llm = MockLlm::new().tool_calls(vec![
        ToolCall::new("a", "search", r#"{"q": "rust"}"#),
        ToolCall::new("b", "search", r#"{"q": "tokio"}"#),
    ]);
    let events: Vec<StreamEvent> = llm
        .chat_stream(ChatRequest::user("find"))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let fragments = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolCallDelta { .. }))
        .count();
    assert_eq!(fragments, 4, "two fragments per call");
    let Some(StreamEvent::Done(answer)) = events.last() else {
        panic!("no answer")
    };
    assert_eq!(
        answer.calls()[1],
        ToolCall::new("b", "search", r#"{"q": "tokio"}"#)
    );
}

#[tokio::test]
async fn scripted_errors_and_an_empty_script_fail_with_a_message() {
    let llm = MockLlm::new().error(LlmError::Mock("scripted".into()));
    assert_eq!(
        llm.complete("a").await.unwrap_err().to_string(),
        "mock: scripted"
    );
    let err = llm.complete("b").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "mock: no scripted answer left for request #2 (last message: \"b\")"
    );
    // Errors come before the stream too.
    let err = MockLlm::new()
        .error(LlmError::Mock("x".into()))
        .chat_stream(ChatRequest::user("c"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Mock(_)));
}

#[tokio::test]
async fn records_requests_and_estimates_usage() {
    let llm = MockLlm::new()
        .reply("four words right here")
        .respond(ChatResponse::text("x").with_usage(100, 1));
    let answer = llm
        .chat(ChatRequest::user("one two three").system("sys"))
        .await
        .unwrap();
    assert_eq!(
        answer.usage,
        Some(Usage {
            input_tokens: 4,
            output_tokens: 4
        })
    );
    assert_eq!(answer.model, "mock");
    let answer = llm.chat(ChatRequest::user("q")).await.unwrap();
    assert_eq!(
        answer.usage,
        Some(Usage {
            input_tokens: 100,
            output_tokens: 1
        })
    );
    assert_eq!(llm.requests()[0].messages[0].content, "sys");
    llm.assert_last_user_message("q");
    llm.assert_exhausted();
}

#[test]
#[should_panic(expected = "still has 1 scripted answer")]
fn assert_exhausted_panics_when_answers_are_left() {
    MockLlm::new().reply("unused").assert_exhausted();
}
