//! A scriptable model for tests and offline stand-ins.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tracing::Instrument;

use crate::error::{LlmError, Result};
use crate::llm::{ChatStream, Llm, StreamEvent};
use crate::telemetry;
use crate::types::{ChatRequest, ChatResponse, Role, ToolCall, Usage};

type Responder = Box<dyn Fn(&ChatRequest) -> ChatResponse + Send + Sync>;

enum Scripted {
    Reply(ChatResponse),
    Error(LlmError),
}

struct Inner {
    model: String,
    script: Mutex<VecDeque<Scripted>>,
    responder: Mutex<Option<Responder>>,
    requests: Mutex<Vec<ChatRequest>>,
    token_delay: Mutex<Option<Duration>>,
    calls: Mutex<u32>,
}

/// A model that answers from a script: replies, tool calls and errors in order, or a function
/// of the request once the script is used up. It records every request, so a test can assert
/// what a step sent. Streaming splits each reply into word tokens (and each tool call's
/// arguments into two fragments), like a real server.
///
/// Cheap to clone; clones share the script and the record.
///
/// ```
/// use tidewater_llm::{ChatRequest, Llm, LlmError, MockLlm, Role};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let llm = MockLlm::new()
///     .tool_call("get_weather", r#"{"city": "Paris"}"#)
///     .reply("It is sunny in Paris.")
///     .error(LlmError::Mock("overloaded".into()));
///
/// let first = llm.chat(ChatRequest::user("Weather in Paris?")).await.unwrap();
/// assert_eq!(first.calls()[0].name, "get_weather");
/// let second = llm.chat(ChatRequest::user("and?")).await.unwrap();
/// assert_eq!(second.content(), "It is sunny in Paris.");
/// assert!(llm.chat(ChatRequest::user("again")).await.is_err());
/// assert!(llm.chat(ChatRequest::user("more")).await.is_err()); // the script is used up
///
/// assert_eq!(llm.requests().len(), 4);
/// assert_eq!(llm.requests()[0].messages[0].role, Role::User);
/// llm.assert_last_user_message("more");
/// # }
/// ```
#[derive(Clone)]
pub struct MockLlm {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MockLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlm")
            .field("model", &self.inner.model)
            .field("scripted", &lock(&self.inner.script).len())
            .field("requests", &lock(&self.inner.requests).len())
            .finish()
    }
}

impl Default for MockLlm {
    fn default() -> Self {
        MockLlm::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MockLlm {
    /// A mock named `mock` with an empty script.
    pub fn new() -> MockLlm {
        MockLlm::named("mock")
    }

    /// A mock with this model name.
    pub fn named(model: impl Into<String>) -> MockLlm {
        MockLlm {
            inner: Arc::new(Inner {
                model: model.into(),
                script: Mutex::new(VecDeque::new()),
                responder: Mutex::new(None),
                requests: Mutex::new(Vec::new()),
                token_delay: Mutex::new(None),
                calls: Mutex::new(0),
            }),
        }
    }

    fn push(self, item: Scripted) -> MockLlm {
        lock(&self.inner.script).push_back(item);
        self
    }

    /// Next, answer with this text.
    pub fn reply(self, text: impl Into<String>) -> MockLlm {
        self.push(Scripted::Reply(ChatResponse::text(text)))
    }

    /// Next, answer with this response.
    pub fn respond(self, response: ChatResponse) -> MockLlm {
        self.push(Scripted::Reply(response))
    }

    /// Next, call one tool (the call's id is `call_<n>`).
    pub fn tool_call(self, name: &str, arguments: &str) -> MockLlm {
        let n = lock(&self.inner.script).len();
        self.push(Scripted::Reply(ChatResponse::tool_calls(vec![
            ToolCall::new(format!("call_{n}"), name, arguments),
        ])))
    }

    /// Next, call several tools at once (parallel tool calls).
    pub fn tool_calls(self, calls: Vec<ToolCall>) -> MockLlm {
        self.push(Scripted::Reply(ChatResponse::tool_calls(calls)))
    }

    /// Next, fail with this error.
    pub fn error(self, error: LlmError) -> MockLlm {
        self.push(Scripted::Error(error))
    }

    /// Once the script is used up, answer every request with `f(request)`: the way to build
    /// an offline stand-in whose answers depend on the question.
    pub fn responder(
        self,
        f: impl Fn(&ChatRequest) -> ChatResponse + Send + Sync + 'static,
    ) -> MockLlm {
        *lock(&self.inner.responder) = Some(Box::new(f));
        self
    }

    /// When streaming, wait this long before each token (to watch streaming happen).
    pub fn token_delay(self, delay: Duration) -> MockLlm {
        *lock(&self.inner.token_delay) = Some(delay);
        self
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        lock(&self.inner.requests).clone()
    }

    /// How many scripted answers are left.
    pub fn remaining(&self) -> usize {
        lock(&self.inner.script).len()
    }

    /// Asserts the whole script was used.
    ///
    /// # Panics
    /// When scripted answers are left.
    #[track_caller]
    pub fn assert_exhausted(&self) {
        let left = self.remaining();
        assert!(
            left == 0,
            "the mock still has {left} scripted answer(s) nobody asked for"
        );
    }

    /// Asserts the last request's last user message was `expected`.
    ///
    /// # Panics
    /// When it was not, or there was no request.
    #[track_caller]
    pub fn assert_last_user_message(&self, expected: &str) {
        let requests = lock(&self.inner.requests);
        let last = requests.last().expect("the mock received no request");
        let user = last
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str());
        assert_eq!(user, Some(expected), "the last user message differs");
    }

    fn answer(&self, request: &ChatRequest) -> Result<ChatResponse> {
        lock(&self.inner.requests).push(request.clone());
        let n = {
            let mut calls = lock(&self.inner.calls);
            *calls += 1;
            *calls
        };
        let next = lock(&self.inner.script).pop_front();
        let mut answer = match next {
            Some(Scripted::Reply(answer)) => answer,
            Some(Scripted::Error(error)) => return Err(error),
            None => match &*lock(&self.inner.responder) {
                Some(responder) => responder(request),
                None => {
                    return Err(LlmError::Mock(format!(
                        "no scripted answer left for request #{n} (last message: {:?})",
                        request
                            .messages
                            .last()
                            .map(|m| m.content.as_str())
                            .unwrap_or("")
                    )));
                }
            },
        };
        if answer.model.is_empty() {
            answer.model.clone_from(&self.inner.model);
        }
        if let Some(output) = &request.json_output {
            answer.json_mode = Some(output.mode.unwrap_or(crate::types::JsonMode::Schema));
        }
        if answer.usage.is_none() {
            // A deterministic stand-in for a tokenizer: one token per word.
            let words = |s: &str| s.split_whitespace().count() as u32;
            answer.usage = Some(Usage {
                input_tokens: request.messages.iter().map(|m| words(&m.content)).sum(),
                output_tokens: words(answer.content())
                    + answer
                        .calls()
                        .iter()
                        .map(|c| words(&c.arguments) + 1)
                        .sum::<u32>(),
            });
        }
        Ok(answer)
    }
}

/// Splits text into word tokens that keep their following whitespace.
fn tokens(text: &str) -> Vec<String> {
    text.split_inclusive(char::is_whitespace)
        .map(str::to_string)
        .collect()
}

fn stream_events(answer: ChatResponse) -> Vec<StreamEvent> {
    let mut events: Vec<StreamEvent> = tokens(answer.content())
        .into_iter()
        .map(StreamEvent::Text)
        .collect();
    for (index, call) in answer.calls().iter().enumerate() {
        let mid = (0..=call.arguments.len() / 2)
            .rev()
            .find(|&i| call.arguments.is_char_boundary(i))
            .unwrap_or(0);
        events.push(StreamEvent::ToolCallDelta {
            index,
            id: Some(call.id.clone()),
            name: Some(call.name.clone()),
            arguments: call.arguments[..mid].to_string(),
        });
        events.push(StreamEvent::ToolCallDelta {
            index,
            id: None,
            name: None,
            arguments: call.arguments[mid..].to_string(),
        });
    }
    events.push(StreamEvent::Done(answer));
    events
}

impl Llm for MockLlm {
    fn model(&self) -> &str {
        &self.inner.model
    }

    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatResponse>> {
        let span = telemetry::chat_span(
            "mock",
            request.model.as_deref().unwrap_or(&self.inner.model),
            &request,
            false,
        );
        let result = self.answer(&request);
        match &result {
            Ok(answer) => telemetry::record_response(&span, answer),
            Err(error) => telemetry::record_error(&span, error),
        }
        Box::pin(async move { result }.instrument(span))
    }

    fn chat_stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>> {
        let span = telemetry::chat_span(
            "mock",
            request.model.as_deref().unwrap_or(&self.inner.model),
            &request,
            true,
        );
        let result = self.answer(&request);
        match &result {
            Ok(answer) => telemetry::record_response(&span, answer),
            Err(error) => telemetry::record_error(&span, error),
        }
        let delay = *lock(&self.inner.token_delay);
        Box::pin(async move {
            let events = stream_events(result?);
            let stream =
                futures_util::stream::unfold(events.into_iter(), move |mut events| async move {
                    let event = events.next()?;
                    if let (Some(delay), StreamEvent::Text(_)) = (delay, &event) {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok(event), events))
                });
            Ok(ChatStream::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_events_reassemble_into_the_answer() {
        let answer = ChatResponse {
            message: crate::Message::assistant_tool_calls(
                "Checking both. ",
                vec![
                    ToolCall::new("a", "f", r#"{"x":"é"}"#),
                    ToolCall::new("b", "g", ""),
                ],
            ),
            ..ChatResponse::text("")
        };
        let mut assembler = crate::llm::Assembler::default();
        let events = stream_events(answer.clone());
        for e in &events {
            assembler.push(e);
        }
        let rebuilt = assembler.finish();
        assert_eq!(rebuilt.message, answer.message);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, StreamEvent::Text(_)))
                .count(),
            2
        );
    }
}
