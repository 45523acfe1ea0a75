//! The `Llm` trait every model client implements, the token stream, and structured output.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::error::{LlmError, Result};
use crate::schema::{JsonSchema, parse_structured};
use crate::types::{ChatRequest, ChatResponse, FinishReason, Message, ToolCall, Usage};

/// A chat model: the one trait steps depend on, so that a real client, the mock and the
/// offline stand-ins are interchangeable (`Arc<dyn Llm>` in a workflow's fields).
///
/// Implementations: [`OpenAiClient`](crate::OpenAiClient) (any OpenAI-compatible server),
/// [`MockLlm`](crate::MockLlm) (scripted, for tests and offline stand-ins). Convenience methods
/// (`complete`, `structured`, `stream_text`) are in [`LlmExt`].
///
/// ```
/// use std::sync::Arc;
/// use tidewater_llm::{ChatRequest, Llm, MockLlm};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let llm: Arc<dyn Llm> = Arc::new(MockLlm::new().reply("Paris."));
/// let answer = llm.chat(ChatRequest::user("Capital of France?")).await.unwrap();
/// assert_eq!(answer.content(), "Paris.");
/// # }
/// ```
pub trait Llm: Send + Sync {
    /// The model this client asks by default.
    fn model(&self) -> &str;

    /// Sends a request and waits for the whole answer.
    ///
    /// # Errors
    /// See [`LlmError`]: the server's status and message, timeouts, transport failures,
    /// malformed answers.
    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatResponse>>;

    /// Sends a request and streams the answer as it is generated: text deltas, tool-call
    /// fragments, and last the assembled [`ChatResponse`] (with usage when the server tells).
    ///
    /// # Errors
    /// As [`Llm::chat`]; errors after the stream started come as its items.
    fn chat_stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>>;
}

impl<L: Llm + ?Sized> Llm for Arc<L> {
    fn model(&self) -> &str {
        (**self).model()
    }
    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatResponse>> {
        (**self).chat(request)
    }
    fn chat_stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>> {
        (**self).chat_stream(request)
    }
}

impl<L: Llm + ?Sized> Llm for Box<L> {
    fn model(&self) -> &str {
        (**self).model()
    }
    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatResponse>> {
        (**self).chat(request)
    }
    fn chat_stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>> {
        (**self).chat_stream(request)
    }
}

/// One item of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The next piece of the answer's text.
    Text(String),
    /// A fragment of a tool call: the first fragment of a call carries its id and name, the
    /// following ones more of the arguments' JSON text.
    ToolCallDelta {
        /// Which call of this answer (0, 1, ...).
        index: usize,
        /// The call's id, on its first fragment.
        id: Option<String>,
        /// The tool's name, on its first fragment.
        name: Option<String>,
        /// More of the arguments' text.
        arguments: String,
    },
    /// The end: the whole answer, assembled from the deltas.
    Done(ChatResponse),
}

/// A streamed answer: a [`Stream`] of [`StreamEvent`]s that ends with [`StreamEvent::Done`]
/// (or an error).
///
/// ```
/// use futures_util::StreamExt;
/// use tidewater_llm::{ChatRequest, Llm, MockLlm, StreamEvent};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let llm = MockLlm::new().reply("Hello there, friend.");
/// let mut stream = llm.chat_stream(ChatRequest::user("hi")).await.unwrap();
/// let mut text = String::new();
/// while let Some(event) = stream.next().await {
///     match event.unwrap() {
///         StreamEvent::Text(delta) => text.push_str(&delta),
///         StreamEvent::Done(answer) => assert_eq!(answer.content(), text),
///         _ => {}
///     }
/// }
/// assert_eq!(text, "Hello there, friend.");
/// # }
/// ```
pub struct ChatStream {
    inner: Pin<Box<dyn Stream<Item = Result<StreamEvent>> + Send>>,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatStream")
    }
}

impl ChatStream {
    /// Wraps any stream of events (for implementors of [`Llm`]).
    pub fn new(stream: impl Stream<Item = Result<StreamEvent>> + Send + 'static) -> ChatStream {
        ChatStream {
            inner: Box::pin(stream),
        }
    }

    /// Reads the stream to its end and returns the assembled answer, calling `on_text` with
    /// each text delta on the way.
    ///
    /// # Errors
    /// The stream's first error, or [`LlmError::Malformed`] when it ends without its answer.
    pub async fn for_each_text(mut self, mut on_text: impl FnMut(&str)) -> Result<ChatResponse> {
        while let Some(event) = self.next().await {
            match event? {
                StreamEvent::Text(delta) => on_text(&delta),
                StreamEvent::Done(answer) => return Ok(answer),
                StreamEvent::ToolCallDelta { .. } => {}
            }
        }
        Err(LlmError::Malformed {
            reason: "the stream ended before the answer was complete".into(),
            excerpt: String::new(),
        })
    }

    /// Reads the stream to its end and returns the assembled answer.
    ///
    /// # Errors
    /// See [`ChatStream::for_each_text`].
    pub async fn into_response(self) -> Result<ChatResponse> {
        self.for_each_text(|_| {}).await
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Builds the final answer out of stream deltas (text and tool-call fragments by index).
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    text: String,
    calls: BTreeMap<usize, ToolCall>,
    pub(crate) usage: Option<Usage>,
    pub(crate) finish_reason: Option<FinishReason>,
    pub(crate) model: String,
}

impl Assembler {
    /// Adds one delta.
    pub(crate) fn push(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Text(delta) => self.text.push_str(delta),
            StreamEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                let call = self.calls.entry(*index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = id {
                    call.id.clone_from(id);
                }
                if let Some(name) = name {
                    // Some servers repeat the whole name on every fragment, others split it.
                    if call.name != *name {
                        call.name.push_str(name);
                    }
                }
                call.arguments.push_str(arguments);
            }
            StreamEvent::Done(_) => {}
        }
    }

    /// The whole answer.
    pub(crate) fn finish(self) -> ChatResponse {
        let calls: Vec<ToolCall> = self.calls.into_values().collect();
        ChatResponse {
            message: Message::assistant_tool_calls(self.text, calls),
            usage: self.usage,
            finish_reason: self.finish_reason,
            model: self.model,
            json_mode: None,
        }
    }
}

/// Conveniences on every [`Llm`]: one-shot prompts, structured output, streamed text.
pub trait LlmExt: Llm {
    /// Asks one question, returns the text of the answer.
    ///
    /// ```
    /// use tidewater_llm::{LlmExt, MockLlm};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let llm = MockLlm::new().reply("4");
    /// assert_eq!(llm.complete("2 + 2?").await.unwrap(), "4");
    /// # }
    /// ```
    ///
    /// # Errors
    /// See [`Llm::chat`].
    fn complete(&self, prompt: impl Into<String>) -> impl Future<Output = Result<String>> + Send {
        let request = ChatRequest::user(prompt);
        async move { Ok(self.chat(request).await?.message.content) }
    }

    /// Asks for an answer shaped like `T`: sends `T`'s JSON schema as the response format,
    /// then parses the answer, validates it against the schema and deserializes it.
    ///
    /// ```
    /// use serde::Deserialize;
    /// use tidewater_llm::schema::{JsonSchema, ObjectSchema};
    /// use tidewater_llm::{ChatRequest, LlmExt, MockLlm};
    ///
    /// #[derive(Deserialize)]
    /// struct City { name: String, population: u64 }
    ///
    /// impl JsonSchema for City {
    ///     fn json_schema() -> serde_json::Value {
    ///         ObjectSchema::new()
    ///             .field::<String>("name", "the city's name")
    ///             .field::<u64>("population", "inhabitants")
    ///             .build()
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let llm = MockLlm::new().reply(r#"{"name": "Oslo", "population": 709000}"#);
    /// let city: City = llm.structured(ChatRequest::user("Largest city of Norway?")).await.unwrap();
    /// assert_eq!((city.name.as_str(), city.population), ("Oslo", 709000));
    /// let sent = &llm.requests()[0];
    /// assert!(sent.json_output.is_some());
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`LlmError::InvalidOutput`] (with the model's text) when the answer is not JSON that
    /// follows the schema; otherwise see [`Llm::chat`].
    fn structured<T: JsonSchema + DeserializeOwned>(
        &self,
        request: ChatRequest,
    ) -> impl Future<Output = Result<T>> + Send {
        let schema = T::json_schema();
        let request = request.json_output(T::schema_name(), schema.clone());
        async move {
            let answer = self.chat(request).await?;
            parse_structured::<T>(answer.content(), &schema).map_err(|reason| {
                LlmError::InvalidOutput {
                    reason,
                    content: answer.message.content.clone(),
                }
            })
        }
    }

    /// Streams the answer's text, calling `on_text` with each delta, and returns the whole
    /// answer.
    ///
    /// # Errors
    /// See [`Llm::chat_stream`].
    fn stream_text(
        &self,
        request: ChatRequest,
        on_text: impl FnMut(&str) + Send,
    ) -> impl Future<Output = Result<ChatResponse>> + Send {
        async move {
            self.chat_stream(request)
                .await?
                .for_each_text(on_text)
                .await
        }
    }
}

impl<L: Llm + ?Sized> LlmExt for L {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembler_joins_fragments_by_index() {
        let mut a = Assembler::default();
        let events = [
            StreamEvent::Text("Let me ".into()),
            StreamEvent::ToolCallDelta {
                index: 1,
                id: Some("b".into()),
                name: Some("second".into()),
                arguments: "{\"x\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("a".into()),
                name: Some("first".into()),
                arguments: String::new(),
            },
            StreamEvent::Text("check.".into()),
            StreamEvent::ToolCallDelta {
                index: 1,
                id: None,
                name: None,
                arguments: "2}".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "{}".into(),
            },
        ];
        for e in &events {
            a.push(e);
        }
        let answer = a.finish();
        assert_eq!(answer.content(), "Let me check.");
        assert_eq!(
            answer.calls(),
            [
                ToolCall::new("a", "first", "{}"),
                ToolCall::new("b", "second", "{\"x\":2}")
            ]
        );
    }
}
