//! The provider-neutral vocabulary of a chat: messages, tools, requests, responses, usage.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person (or program) asking.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call, answering the assistant's request.
    Tool,
}

/// One message of a conversation.
///
/// ```
/// use tidewater_llm::{Message, Role};
/// let m = Message::user("What is 2 + 2?");
/// assert_eq!(m.role, Role::User);
/// assert_eq!(m.content, "What is 2 + 2?");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text (empty for an assistant message that only calls tools).
    pub content: String,
    /// The tools the assistant asks to call (assistant messages only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Which call this message answers (tool messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new(Role::User, content)
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new(Role::Assistant, content)
    }

    /// An assistant message that calls tools (and may carry text too).
    pub fn assistant_tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Message {
        Message {
            tool_calls: calls,
            ..Message::new(Role::Assistant, content)
        }
    }

    /// The answer to tool call `call_id`.
    ///
    /// ```
    /// use tidewater_llm::Message;
    /// let m = Message::tool_result("call_1", "21°C, sunny");
    /// assert_eq!(m.tool_call_id.as_deref(), Some("call_1"));
    /// ```
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            tool_call_id: Some(call_id.into()),
            ..Message::new(Role::Tool, content)
        }
    }
}

/// A request from the model to call one tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The id the model gave the call; the tool's answer quotes it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as the JSON text the model wrote (it may be invalid: models err).
    pub arguments: String,
}

impl ToolCall {
    /// A tool call (mostly for scripting a mock).
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// Parses the arguments into a typed value.
    ///
    /// ```
    /// # use tidewater_llm::ToolCall;
    /// #[derive(serde::Deserialize)]
    /// struct Args { city: String }
    /// let call = ToolCall::new("c1", "weather", r#"{"city":"Oslo"}"#);
    /// assert_eq!(call.parse_arguments::<Args>().unwrap().city, "Oslo");
    /// ```
    ///
    /// # Errors
    /// When the text is not JSON of the expected shape.
    pub fn parse_arguments<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let text = if self.arguments.trim().is_empty() {
            "{}"
        } else {
            &self.arguments
        };
        serde_json::from_str(text)
    }
}

impl ToolCall {
    /// Reads tool calls that a server left in the answer's text instead of `tool_calls`: a
    /// JSON object (bare, or in a ```json fence, or after a `functions.NAME:` prefix) with
    /// `name` and `arguments` (or `parameters`), or a list of them. Only calls of the
    /// `offered` tools count; anything else gives no calls, so prose stays prose.
    ///
    /// ```
    /// use tidewater_llm::{ToolCall, ToolSpec};
    /// let offered = [ToolSpec {
    ///     name: "get_weather".into(),
    ///     description: String::new(),
    ///     parameters: serde_json::json!({"type": "object"}),
    /// }];
    /// let text = "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n```";
    /// let calls = ToolCall::from_text(text, &offered);
    /// assert_eq!(calls, [ToolCall::new("text_call_0", "get_weather", r#"{"city":"Oslo"}"#)]);
    /// assert!(ToolCall::from_text("It is sunny in Oslo.", &offered).is_empty());
    /// assert!(ToolCall::from_text(r#"{"name": "rm_rf", "arguments": {}}"#, &offered).is_empty());
    /// ```
    pub fn from_text(text: &str, offered: &[ToolSpec]) -> Vec<ToolCall> {
        let offered_name = |name: &str| offered.iter().any(|t| t.name == name);
        let trimmed = text.trim();
        // `functions.get_weather:\n{"city": "Oslo"}` (a chat template's own call syntax).
        if let Some(rest) = trimmed.strip_prefix("functions.") {
            let Some((name, arguments)) = rest.split_once(':') else {
                return Vec::new();
            };
            let name = name.trim();
            return match serde_json::from_str::<Value>(arguments.trim()) {
                Ok(value) if value.is_object() && offered_name(name) => {
                    vec![ToolCall::new("text_call_0", name, value.to_string())]
                }
                _ => Vec::new(),
            };
        }
        let Some(json) = crate::schema::extract_json(trimmed) else {
            return Vec::new();
        };
        let Ok(value) = serde_json::from_str::<Value>(json) else {
            return Vec::new();
        };
        let items = match value {
            Value::Array(items) => items,
            single => vec![single],
        };
        let mut calls = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(name) = item.get("name").and_then(Value::as_str) else {
                return Vec::new();
            };
            if !offered_name(name) {
                return Vec::new();
            }
            let arguments = match item.get("arguments").or_else(|| item.get("parameters")) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "{}".to_string(),
                Some(other) => other.to_string(),
            };
            calls.push(ToolCall::new(format!("text_call_{i}"), name, arguments));
        }
        calls
    }
}

/// A tool the model may call: a name, what it does, and a JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name (letters, digits, `_` and `-`).
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// The JSON schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This tool.
    Tool(String),
}

/// How structured output is asked of the server, from the strictest to the most portable.
///
/// [`OpenAiClient`](crate::OpenAiClient) starts with [`JsonMode::Schema`] and, when the server
/// answers that it does not support it, falls back to [`JsonMode::Object`], then to
/// [`JsonMode::Prompt`], remembering per client what worked. The answer says which mode was
/// used ([`ChatResponse::json_mode`]); in every mode the caller validates the answer against
/// the schema ([`LlmExt::structured`](crate::LlmExt::structured) does).
///
/// ```
/// use tidewater_llm::JsonMode;
/// assert_eq!(JsonMode::Object.to_string(), "json_object with the schema in the prompt");
/// assert_eq!(JsonMode::Schema.fallback(), Some(JsonMode::Object));
/// assert_eq!(JsonMode::Prompt.fallback(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JsonMode {
    /// `response_format: {"type": "json_schema", ...}`: the server constrains the output.
    Schema,
    /// `response_format: {"type": "json_object"}` with the schema in a system message.
    Object,
    /// No `response_format`; the schema and the request for JSON only are in a system message.
    Prompt,
}

impl JsonMode {
    /// The next, more portable mode, if any.
    pub fn fallback(self) -> Option<JsonMode> {
        match self {
            JsonMode::Schema => Some(JsonMode::Object),
            JsonMode::Object => Some(JsonMode::Prompt),
            JsonMode::Prompt => None,
        }
    }
}

impl std::fmt::Display for JsonMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonMode::Schema => "json_schema",
            JsonMode::Object => "json_object with the schema in the prompt",
            JsonMode::Prompt => "JSON asked for in the prompt only",
        })
    }
}

/// Asks the model for JSON that follows a schema (OpenAI's `response_format: json_schema`,
/// or a fallback: see [`JsonMode`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonOutput {
    /// A short name for the schema (letters, digits, `_`, `-`).
    pub name: String,
    /// The JSON schema the output must follow.
    pub schema: Value,
    /// Ask the server to enforce the schema exactly (OpenAI's strict mode, which restricts
    /// the schema: every property required, no extra properties).
    pub strict: bool,
    /// How to ask for it; `None` lets the client choose (the strictest mode the server
    /// supports).
    pub mode: Option<JsonMode>,
}

impl JsonOutput {
    /// The system message that asks for JSON following the schema, for the modes that put the
    /// schema in the prompt.
    pub fn instructions(&self) -> String {
        format!(
            "Answer with one JSON object only, no prose and no code fence, shaped like this \
             example (with the real values in place of the placeholders):\n{}\nIt must \
             follow this JSON schema (named `{}`):\n{}",
            crate::schema::example_of(&self.schema),
            self.name,
            self.schema
        )
    }
}

/// One chat completion request.
///
/// ```
/// use tidewater_llm::{ChatRequest, Message};
/// let req = ChatRequest::new([Message::system("Be brief."), Message::user("Hi")])
///     .temperature(0.0)
///     .max_tokens(50);
/// assert_eq!(req.messages.len(), 2);
/// assert_eq!(req.max_tokens, Some(50));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ChatRequest {
    /// Overrides the client's model for this request.
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// The tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Whether the model must call a tool.
    pub tool_choice: Option<ToolChoice>,
    /// Structured output: the schema the answer must follow.
    pub json_output: Option<JsonOutput>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// The most tokens to generate.
    pub max_tokens: Option<u32>,
    /// The time limit of this request's attempts, instead of the client's.
    pub timeout: Option<std::time::Duration>,
}

impl ChatRequest {
    /// A request with these messages.
    pub fn new(messages: impl IntoIterator<Item = Message>) -> ChatRequest {
        ChatRequest {
            messages: messages.into_iter().collect(),
            ..ChatRequest::default()
        }
    }

    /// A request with one user message.
    ///
    /// ```
    /// # use tidewater_llm::ChatRequest;
    /// assert_eq!(ChatRequest::user("hello").messages[0].content, "hello");
    /// ```
    pub fn user(prompt: impl Into<String>) -> ChatRequest {
        ChatRequest::new([Message::user(prompt)])
    }

    /// Puts a system message first.
    pub fn system(mut self, instructions: impl Into<String>) -> ChatRequest {
        self.messages.insert(0, Message::system(instructions));
        self
    }

    /// Appends a message.
    pub fn message(mut self, message: Message) -> ChatRequest {
        self.messages.push(message);
        self
    }

    /// Offers the model a tool.
    pub fn tool(mut self, tool: ToolSpec) -> ChatRequest {
        self.tools.push(tool);
        self
    }

    /// Offers the model these tools.
    pub fn tools(mut self, tools: impl IntoIterator<Item = ToolSpec>) -> ChatRequest {
        self.tools.extend(tools);
        self
    }

    /// Sets whether the model must call a tool.
    pub fn tool_choice(mut self, choice: ToolChoice) -> ChatRequest {
        self.tool_choice = Some(choice);
        self
    }

    /// Asks for JSON following `schema`.
    pub fn json_output(mut self, name: impl Into<String>, schema: Value) -> ChatRequest {
        self.json_output = Some(JsonOutput {
            name: name.into(),
            schema,
            strict: false,
            mode: None,
        });
        self
    }

    /// Sets the sampling temperature.
    pub fn temperature(mut self, temperature: f32) -> ChatRequest {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the most tokens to generate.
    pub fn max_tokens(mut self, max_tokens: u32) -> ChatRequest {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Asks for structured output in this mode only, instead of letting the client choose
    /// (needs [`ChatRequest::json_output`] first; ignored without it).
    pub fn json_mode(mut self, mode: JsonMode) -> ChatRequest {
        if let Some(output) = &mut self.json_output {
            output.mode = Some(mode);
        }
        self
    }

    /// Sets the time limit of this request's attempts (a slow local model, a long answer),
    /// instead of the client's.
    pub fn timeout(mut self, limit: std::time::Duration) -> ChatRequest {
        self.timeout = Some(limit);
        self
    }

    /// Uses another model than the client's for this request.
    pub fn model(mut self, model: impl Into<String>) -> ChatRequest {
        self.model = Some(model.into());
        self
    }
}

/// Tokens a call consumed.
///
/// ```
/// use tidewater_llm::Usage;
/// let mut u = Usage { input_tokens: 10, output_tokens: 5 };
/// u += Usage { input_tokens: 1, output_tokens: 1 };
/// assert_eq!(u.total(), 17);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

impl Usage {
    /// Input plus output tokens.
    pub fn total(&self) -> u32 {
        self.input_tokens + self.output_tokens
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end.
    Stop,
    /// The token limit.
    Length,
    /// It wants tools called.
    ToolCalls,
    /// The provider's content filter.
    ContentFilter,
    /// Something else, as the server spelled it.
    Other(String),
}

impl FinishReason {
    /// Reads the OpenAI spelling.
    pub fn parse(s: &str) -> FinishReason {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_string()),
        }
    }

    /// The OpenAI spelling.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
        }
    }
}

/// The model's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant message: text, tool calls, or both.
    pub message: Message,
    /// Tokens consumed, when the server said.
    pub usage: Option<Usage>,
    /// Why the model stopped, when the server said.
    pub finish_reason: Option<FinishReason>,
    /// The model that answered, as the server named it.
    pub model: String,
    /// How structured output was asked for, when the request asked for it.
    pub json_mode: Option<JsonMode>,
}

impl ChatResponse {
    /// A text answer (mostly for mocks and tests).
    ///
    /// ```
    /// # use tidewater_llm::ChatResponse;
    /// assert_eq!(ChatResponse::text("hi").content(), "hi");
    /// ```
    pub fn text(content: impl Into<String>) -> ChatResponse {
        ChatResponse {
            message: Message::assistant(content),
            usage: None,
            finish_reason: Some(FinishReason::Stop),
            model: String::new(),
            json_mode: None,
        }
    }

    /// An answer that calls tools (mostly for mocks and tests).
    pub fn tool_calls(calls: Vec<ToolCall>) -> ChatResponse {
        ChatResponse {
            message: Message::assistant_tool_calls("", calls),
            usage: None,
            finish_reason: Some(FinishReason::ToolCalls),
            model: String::new(),
            json_mode: None,
        }
    }

    /// Sets the usage (for mocks).
    pub fn with_usage(mut self, input_tokens: u32, output_tokens: u32) -> ChatResponse {
        self.usage = Some(Usage {
            input_tokens,
            output_tokens,
        });
        self
    }

    /// The text of the answer.
    pub fn content(&self) -> &str {
        &self.message.content
    }

    /// The tools the model asked to call.
    pub fn calls(&self) -> &[ToolCall] {
        &self.message.tool_calls
    }
}
