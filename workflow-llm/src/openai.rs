//! The client for OpenAI-compatible chat completion servers: OpenAI, Ollama, vLLM, the
//! llama.cpp server, LM Studio, and the many proxies that speak the same wire format.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{Instrument, Span};

use crate::error::{LlmError, Result, excerpt, is_retryable_status};
use crate::http::{self, Endpoint};
use crate::llm::{Assembler, ChatStream, Llm, StreamEvent};
use crate::sse::SseParser;
use crate::telemetry;
use crate::types::{
    ChatRequest, ChatResponse, FinishReason, JsonMode, Message, Role, ToolCall, ToolChoice, Usage,
};

/// The default base URL when `OPENAI_BASE_URL` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The default model when `OPENAI_MODEL` is not set.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// When and how long to wait before sending a failed request again.
///
/// Retried: 408, 409, 429 and 5xx answers, connection failures and timeouts. The wait is the
/// server's `retry-after-ms` or `Retry-After` (in seconds) when it sends one, otherwise
/// `initial_backoff` doubled on each retry up to `max_backoff`. A server that asks for a
/// longer wait than `max_retry_after` gets its error returned at once instead. A request that
/// timed out waits at least `after_timeout` before it is sent again: its connection is closed,
/// but a busy one-slot server may still be finishing the abandoned answer.
///
/// Never retried: an answer whose body says the request is invalid, whatever its status
/// ([`LlmError::is_input_error`]).
///
/// ```
/// use std::time::Duration;
/// use tidewater_llm::RetryPolicy;
/// let p = RetryPolicy::default();
/// assert_eq!(p.backoff(1), Duration::from_millis(500));
/// assert_eq!(p.after_timeout, Duration::from_secs(5));
/// assert_eq!(p.backoff(2), Duration::from_secs(1));
/// assert_eq!(p.backoff(30), p.max_backoff);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry).
    pub max_retries: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The longest computed wait.
    pub max_backoff: Duration,
    /// The longest server-requested wait the client accepts.
    pub max_retry_after: Duration,
    /// The least wait before retrying a request that timed out.
    pub after_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            after_timeout: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The computed wait before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// A client for any server that speaks OpenAI's `/chat/completions`.
///
/// Configure it from the environment with [`OpenAiClient::from_env`], or by hand:
///
/// ```
/// use std::time::Duration;
/// use tidewater_llm::{Llm, OpenAiClient, RetryPolicy};
///
/// let llm = OpenAiClient::new("http://127.0.0.1:11434/v1", "llama3.2")
///     .unwrap()
///     .timeout(Duration::from_secs(120))
///     .retry(RetryPolicy::none());
/// assert_eq!(llm.model(), "llama3.2");
/// ```
///
/// Plain `http://` works out of the box; `https://` needs the crate's `tls` feature.
///
/// Structured output starts as `response_format: json_schema` and falls back, when the server
/// says it does not support that, to `json_object` with the schema in the prompt, then to the
/// prompt alone ([`JsonMode`]); the client (and its clones) remember the mode that worked.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    endpoint: Endpoint,
    api_key: Option<String>,
    model: String,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    /// The strictest structured-output mode the server has not refused (a `JsonMode` index).
    json_mode: Arc<AtomicU8>,
    /// Whether the server streams answers to requests that offer tools; `false` once it
    /// refused to ([`LlmError::rejects_streaming_tools`]).
    streams_tools: Arc<AtomicBool>,
    /// Headers computed for each request ([`OpenAiClient::request_headers`]).
    headers: Option<RequestHeaders>,
}

/// A function giving headers for each request, called inside the model call's span.
#[derive(Clone)]
struct RequestHeaders(Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>);

impl std::fmt::Debug for RequestHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestHeaders(..)")
    }
}

/// The default time limit of one attempt: two minutes, five for a server on this machine (a
/// local model on a CPU is slow).
fn default_timeout(endpoint: &Endpoint) -> Duration {
    let local = endpoint.host == "localhost"
        || endpoint
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Duration::from_secs(if local { 300 } else { 120 })
}

fn mode_index(mode: JsonMode) -> u8 {
    match mode {
        JsonMode::Schema => 0,
        JsonMode::Object => 1,
        JsonMode::Prompt => 2,
    }
}

fn mode_of(index: u8) -> JsonMode {
    match index {
        0 => JsonMode::Schema,
        1 => JsonMode::Object,
        _ => JsonMode::Prompt,
    }
}

impl OpenAiClient {
    /// A client for the API at `base_url` (up to and including `/v1`), asking `model`.
    ///
    /// # Errors
    /// [`LlmError::Config`] when the URL is not `http(s)://host[:port][/path]`, or is https
    /// without the `tls` feature.
    pub fn new(base_url: &str, model: impl Into<String>) -> Result<OpenAiClient> {
        let endpoint = Endpoint::parse(base_url)?;
        Ok(OpenAiClient {
            timeout: default_timeout(&endpoint),
            endpoint,
            api_key: None,
            model: model.into(),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            json_mode: Arc::new(AtomicU8::new(0)),
            streams_tools: Arc::new(AtomicBool::new(true)),
            headers: None,
        })
    }

    /// A client configured by the environment: `OPENAI_BASE_URL` (default
    /// [`DEFAULT_BASE_URL`]), `OPENAI_API_KEY` (optional: local servers need none),
    /// `OPENAI_MODEL` (default [`DEFAULT_MODEL`]), `OPENAI_TIMEOUT_SECS` (default 120, or 300
    /// for a server on this machine).
    ///
    /// # Errors
    /// See [`OpenAiClient::new`]; also a timeout that is not a number.
    pub fn from_env() -> Result<OpenAiClient> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let base = var("OPENAI_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let model = var("OPENAI_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let mut client = OpenAiClient::new(base.trim(), model.trim())?;
        client.api_key = var("OPENAI_API_KEY").map(|k| k.trim().to_string());
        if let Some(secs) = var("OPENAI_TIMEOUT_SECS") {
            let secs: f64 = secs.trim().parse().map_err(|_| {
                LlmError::Config(format!("OPENAI_TIMEOUT_SECS=`{secs}` is not a number"))
            })?;
            client.timeout = Duration::from_secs_f64(secs);
        }
        Ok(client)
    }

    /// Sends `Authorization: Bearer <key>`.
    pub fn api_key(mut self, key: impl Into<String>) -> OpenAiClient {
        self.api_key = Some(key.into());
        self
    }

    /// Adds the headers `headers()` returns to every request (each attempt), calling it inside
    /// the model call's `tracing` span: the way to send a W3C `traceparent` naming that span,
    /// so that the model server's own trace continues the workflow's (with the
    /// `tidewater-otel` crate: `.request_headers(tidewater_otel::traceparent_header)`), or a
    /// per-request id. A header that is not a valid HTTP header is left out.
    ///
    /// ```
    /// use tidewater_llm::OpenAiClient;
    ///
    /// let llm = OpenAiClient::new("http://127.0.0.1:11434/v1", "llama3.2")
    ///     .unwrap()
    ///     .request_headers(|| vec![("x-request-source".to_string(), "docs".to_string())]);
    /// # let _ = llm;
    /// ```
    pub fn request_headers(
        mut self,
        headers: impl Fn() -> Vec<(String, String)> + Send + Sync + 'static,
    ) -> OpenAiClient {
        self.headers = Some(RequestHeaders(Arc::new(headers)));
        self
    }

    /// The time limit of one attempt: for `chat`, the whole answer; for `chat_stream`, the
    /// response head and then each gap between two pieces of the stream. A client talks to
    /// one endpoint and one default model, so this is the limit for that endpoint; a request
    /// can set its own ([`ChatRequest::timeout`]). A timed-out attempt's connection is
    /// closed.
    pub fn timeout(mut self, limit: Duration) -> OpenAiClient {
        self.timeout = limit;
        self
    }

    /// The time limit for opening a connection.
    pub fn connect_timeout(mut self, limit: Duration) -> OpenAiClient {
        self.connect_timeout = limit;
        self
    }

    /// How failed requests are retried.
    pub fn retry(mut self, policy: RetryPolicy) -> OpenAiClient {
        self.retry = policy;
        self
    }

    /// The structured-output mode the next request asking for JSON starts with: the
    /// strictest the server has not refused so far.
    pub fn json_mode(&self) -> JsonMode {
        mode_of(self.json_mode.load(Ordering::Relaxed))
    }

    /// The chat completions URL this client posts to.
    pub fn url(&self) -> String {
        self.endpoint.url("/chat/completions")
    }

    fn span(&self, request: &ChatRequest, stream: bool) -> Span {
        let model = request.model.as_deref().unwrap_or(&self.model);
        let span = telemetry::chat_span("openai", model, request, stream);
        span.record("server.address", self.endpoint.host.as_str());
        span.record("server.port", self.endpoint.port);
        span
    }

    /// Sends the request, retrying per the policy; returns the successful response (its body
    /// already read when `stream` is false).
    async fn send(
        &self,
        path: &str,
        body: Bytes,
        stream: bool,
        timeout: Duration,
    ) -> Result<Success> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.attempt(path, body.clone(), stream, timeout).await
            {
                Ok(success) => return Ok(success),
                Err(failure) => failure,
            };
            let error = with_attempts(error, attempt);
            if !error.is_retryable() || attempt > self.retry.max_retries {
                return Err(error);
            }
            let mut wait = retry_after.unwrap_or_else(|| self.retry.backoff(attempt));
            if matches!(error, LlmError::Timeout { .. }) {
                wait = wait.max(self.retry.after_timeout);
            }
            if wait > self.retry.max_retry_after {
                return Err(error);
            }
            tracing::info!(attempt, ?wait, error = %error, "retrying the model call");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        path: &str,
        body: Bytes,
        stream: bool,
        limit: Duration,
    ) -> std::result::Result<Success, (LlmError, Option<Duration>)> {
        let url = self.endpoint.url(path);
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut request = self
            .endpoint
            .post(path, self.api_key.as_deref(), accept, body)
            .map_err(|e| (e, None))?;
        if let Some(RequestHeaders(headers)) = &self.headers {
            for (name, value) in headers() {
                match (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    hyper::header::HeaderValue::from_str(&value),
                ) {
                    (Ok(name), Ok(value)) => {
                        request.headers_mut().insert(name, value);
                    }
                    _ => tracing::warn!(header = %name, "left out a header that is not valid HTTP"),
                }
            }
        }
        let timeout = |url: String| LlmError::Timeout {
            url,
            timeout: limit,
            attempts: 1,
        };
        let deadline = tokio::time::Instant::now() + limit;
        let (response, connection) = match tokio::time::timeout_at(
            deadline,
            http::send(&self.endpoint, request, self.connect_timeout),
        )
        .await
        {
            Err(_) => return Err((timeout(url), None)),
            Ok(Err(source)) => {
                return Err((
                    LlmError::Transport {
                        url,
                        attempts: 1,
                        source,
                    },
                    None,
                ));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if status.is_success() && stream {
            return Ok(Success::Stream(response.into_body(), connection));
        }
        let body = match tokio::time::timeout_at(deadline, response.into_body().collect()).await {
            Err(_) => return Err((timeout(url), None)),
            Ok(Err(source)) => {
                return Err((
                    LlmError::Transport {
                        url,
                        attempts: 1,
                        source: Box::new(source),
                    },
                    None,
                ));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        drop(connection);
        if status.is_success() {
            return Ok(Success::Full(body));
        }
        let text = String::from_utf8_lossy(&body);
        let mut message = error_message(&text).unwrap_or_else(|| {
            let reason = status.canonical_reason().unwrap_or("error");
            if text.trim().is_empty() {
                format!("{reason} (empty body)")
            } else {
                format!("{reason}: {}", excerpt(text.trim(), 500))
            }
        });
        if status.as_u16() == 404 && !self.endpoint.base_path.ends_with("/v1") {
            message.push_str(&format!(
                " (is `/v1` missing from the base URL? OpenAI-compatible servers answer under \
                 `{}`)",
                self.endpoint.url("/v1")
            ));
        }
        let error = LlmError::Status {
            url,
            status: status.as_u16(),
            message,
            body: excerpt(&text, 4096),
            attempts: 1,
        };
        let retry_after = retry_after.filter(|_| is_retryable_status(status.as_u16()));
        Err((error, retry_after))
    }
}

/// Embeddings from the same server's `/embeddings` endpoint, as a retrieval
/// [`Embedder`](crate::retrieval::Embedder).
///
/// ```
/// use tidewater_llm::OpenAiClient;
/// let client = OpenAiClient::new("http://127.0.0.1:11434/v1", "llama3.2").unwrap();
/// let embedder = client.embedder("nomic-embed-text");
/// # let _ = embedder;
/// ```
#[derive(Debug, Clone)]
pub struct OpenAiEmbedder {
    client: OpenAiClient,
    model: String,
}

impl OpenAiClient {
    /// An embedder using `model` on this client's server (same URL, key, timeout, retries).
    pub fn embedder(&self, model: impl Into<String>) -> OpenAiEmbedder {
        OpenAiEmbedder {
            client: self.clone(),
            model: model.into(),
        }
    }
}

#[derive(Deserialize)]
struct WireEmbeddings {
    data: Vec<WireEmbedding>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

impl crate::retrieval::Embedder for OpenAiEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let body = json!({"model": self.model, "input": texts}).to_string();
            let Success::Full(bytes) = self
                .client
                .send("/embeddings", Bytes::from(body), false, self.client.timeout)
                .await?
            else {
                unreachable!("a non-streaming request reads its body")
            };
            let wire: WireEmbeddings = serde_json::from_slice(&bytes)
                .map_err(|e| malformed(format!("not an embeddings answer ({e})"), &bytes))?;
            if wire.data.len() != texts.len() {
                return Err(malformed(
                    format!(
                        "asked for {} embeddings, got {}",
                        texts.len(),
                        wire.data.len()
                    ),
                    &bytes,
                ));
            }
            let mut out = vec![Vec::new(); texts.len()];
            for (position, item) in wire.data.into_iter().enumerate() {
                let index = item.index.unwrap_or(position);
                let slot = out.get_mut(index).ok_or_else(|| {
                    malformed(format!("embedding index {index} out of range"), &bytes)
                })?;
                *slot = item.embedding;
            }
            Ok(out)
        })
    }
}

enum Success {
    Full(Bytes),
    Stream(Incoming, http::Connection),
}

fn with_attempts(mut error: LlmError, n: u32) -> LlmError {
    match &mut error {
        LlmError::Status { attempts, .. }
        | LlmError::Timeout { attempts, .. }
        | LlmError::Transport { attempts, .. } => *attempts = n,
        _ => {}
    }
    error
}

/// The server's requested wait: `retry-after-ms` (OpenAI), else `Retry-After` in seconds.
/// (An HTTP-date `Retry-After` is not parsed; the computed backoff applies then.)
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let value = headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    number("retry-after").map(Duration::from_secs_f64)
}

/// The message of an error body: `{"error": {"message": ..}}` (OpenAI, vLLM),
/// `{"error": ".."}` (Ollama), `{"message": ..}`, `{"detail": ..}`.
fn error_message(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    value
        .get("error")
        .and_then(|e| e.get("message").and_then(text).or_else(|| text(e)))
        .or_else(|| value.get("message").and_then(text))
        .or_else(|| value.get("detail").and_then(text))
}

/// The request body in OpenAI's wire format, asking for structured output (when the request
/// does) in `mode`.
pub(crate) fn wire_request(
    request: &ChatRequest,
    default_model: &str,
    stream: bool,
    mode: JsonMode,
) -> Value {
    let mut messages: Vec<Value> = request.messages.iter().map(wire_message).collect();
    if let Some(output) = request
        .json_output
        .as_ref()
        .filter(|_| mode != JsonMode::Schema)
    {
        let instructions = output.instructions();
        match messages.first_mut() {
            Some(first) if first["role"] == "system" => {
                let text = first["content"].as_str().unwrap_or_default();
                first["content"] = json!(format!("{text}\n\n{instructions}"));
            }
            _ => messages.insert(0, json!({"role": "system", "content": instructions})),
        }
    }
    let mut body = json!({
        "model": request.model.as_deref().unwrap_or(default_model),
        "messages": messages,
    });
    let map = body.as_object_mut().expect("a JSON object");
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
        map.insert("tools".into(), tools.into());
    }
    // Many servers (llama.cpp, llama-cpp-python) return `tool_calls` only when `tool_choice`
    // is sent, so "auto" goes with every request that offers tools unless it says otherwise.
    let choice = request
        .tool_choice
        .clone()
        .or_else(|| (!request.tools.is_empty()).then_some(ToolChoice::Auto));
    if let Some(choice) = &choice {
        let choice = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        map.insert("tool_choice".into(), choice);
    }
    if let Some(output) = &request.json_output {
        match mode {
            JsonMode::Schema => {
                map.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {
                        "name": output.name, "schema": output.schema, "strict": output.strict,
                    }}),
                );
            }
            JsonMode::Object => {
                map.insert("response_format".into(), json!({"type": "json_object"}));
            }
            JsonMode::Prompt => {}
        }
    }
    if let Some(t) = request.temperature {
        map.insert("temperature".into(), json!(t));
    }
    if let Some(m) = request.max_tokens {
        map.insert("max_tokens".into(), json!(m));
    }
    if stream {
        map.insert("stream".into(), json!(true));
        map.insert("stream_options".into(), json!({"include_usage": true}));
    }
    body
}

fn wire_message(message: &Message) -> Value {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut m = json!({"role": role, "content": message.content});
    let map = m.as_object_mut().expect("a JSON object");
    if !message.tool_calls.is_empty() {
        if message.content.is_empty() {
            map.insert("content".into(), Value::Null);
        }
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        map.insert("tool_calls".into(), calls.into());
    }
    if let Some(id) = &message.tool_call_id {
        map.insert("tool_call_id".into(), json!(id));
    }
    m
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    timings: Option<WireUsage>,
    #[serde(default)]
    x_groq: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    /// A JSON string per the spec; some servers send the object itself.
    #[serde(default)]
    arguments: Option<Value>,
}

/// Token counts in the shapes servers send them: OpenAI's `prompt_tokens`/`completion_tokens`,
/// the `input_tokens`/`output_tokens` of newer APIs, llama.cpp's `timings`.
#[derive(Deserialize, Clone, Copy, Default)]
struct WireUsage {
    #[serde(default, alias = "input_tokens", alias = "prompt_n")]
    prompt_tokens: Option<u32>,
    #[serde(default, alias = "output_tokens", alias = "predicted_n")]
    completion_tokens: Option<u32>,
}

impl WireUsage {
    /// The usage, or `None` when the server gave no counts (all zero counts mean the same: no
    /// real call reads zero prompt tokens).
    fn usage(self) -> Option<Usage> {
        let input = self.prompt_tokens.unwrap_or(0);
        let output = self.completion_tokens.unwrap_or(0);
        (input > 0 || output > 0).then_some(Usage {
            input_tokens: input,
            output_tokens: output,
        })
    }
}

/// The usage wherever a body carries it: `usage`, `timings` (llama.cpp), `x_groq.usage`.
fn usage_of(
    usage: Option<WireUsage>,
    timings: Option<WireUsage>,
    extra: Option<&Value>,
) -> Option<Usage> {
    usage
        .and_then(WireUsage::usage)
        .or_else(|| timings.and_then(WireUsage::usage))
        .or_else(|| {
            let nested = extra?.get("usage")?;
            serde_json::from_value::<WireUsage>(nested.clone())
                .ok()?
                .usage()
        })
}

fn arguments_text(arguments: Option<Value>) -> String {
    match arguments {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

fn malformed(reason: impl Into<String>, body: &[u8]) -> LlmError {
    LlmError::Malformed {
        reason: reason.into(),
        excerpt: excerpt(&String::from_utf8_lossy(body), 300),
    }
}

pub(crate) fn parse_response(body: &[u8]) -> Result<ChatResponse> {
    let wire: WireResponse = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("not a chat completion ({e})"), body))?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| malformed("the answer has no choices", body))?;
    let calls = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: c.id.unwrap_or_else(|| format!("call_{i}")),
            name: c.function.name,
            arguments: arguments_text(c.function.arguments),
        })
        .collect();
    let content = choice
        .message
        .content
        .or(choice.message.refusal)
        .unwrap_or_default();
    Ok(ChatResponse {
        message: Message::assistant_tool_calls(content, calls),
        usage: usage_of(wire.usage, wire.timings, wire.x_groq.as_ref()),
        finish_reason: choice.finish_reason.as_deref().map(FinishReason::parse),
        model: wire.model.unwrap_or_default(),
        json_mode: None,
    })
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<WireDeltaChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    timings: Option<WireUsage>,
    #[serde(default)]
    x_groq: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireDeltaChoice {
    #[serde(default)]
    delta: Option<WireDelta>,
    /// Some servers put the usage in the last choice.
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolDelta>>,
}

#[derive(Deserialize)]
struct WireToolDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Reads an SSE chat completion stream into [`StreamEvent`]s.
struct StreamState {
    body: Incoming,
    /// Closed when the stream is dropped, ends or times out.
    connection: Option<http::Connection>,
    json_mode: Option<JsonMode>,
    parser: SseParser,
    assembler: Assembler,
    pending: VecDeque<StreamEvent>,
    idle: Duration,
    url: String,
    done: bool,
    span: Span,
}

impl StreamState {
    /// Handles one SSE data payload.
    fn data(&mut self, data: &str) -> Result<()> {
        if data.trim() == "[DONE]" {
            self.finish();
            return Ok(());
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
            malformed(
                format!("a stream chunk is not JSON of the expected shape ({e})"),
                data.as_bytes(),
            )
        })?;
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_string);
            return Err(LlmError::Stream { message });
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.assembler.model = model;
        }
        if let Some(usage) = usage_of(chunk.usage, chunk.timings, chunk.x_groq.as_ref()) {
            self.assembler.usage = Some(usage);
        }
        for choice in chunk.choices.unwrap_or_default() {
            if let Some(usage) = choice.usage.and_then(WireUsage::usage) {
                self.assembler.usage = Some(usage);
            }
            if let Some(reason) = choice.finish_reason {
                self.assembler.finish_reason = Some(FinishReason::parse(&reason));
            }
            let Some(delta) = choice.delta else { continue };
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.emit(StreamEvent::Text(text));
            }
            for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                let function = call.function;
                let (name, arguments) = match function {
                    Some(f) => (f.name, arguments_text(f.arguments)),
                    None => (None, String::new()),
                };
                self.emit(StreamEvent::ToolCallDelta {
                    index: call.index.unwrap_or(position),
                    id: call.id,
                    name,
                    arguments,
                });
            }
        }
        Ok(())
    }

    fn emit(&mut self, event: StreamEvent) {
        self.assembler.push(&event);
        self.pending.push_back(event);
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.connection = None;
        let mut answer = std::mem::take(&mut self.assembler).finish();
        answer.json_mode = self.json_mode;
        telemetry::record_response(&self.span, &answer);
        self.pending.push_back(StreamEvent::Done(answer));
    }

    /// The next event, reading more of the body when none is pending.
    async fn next(&mut self) -> Option<Result<StreamEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => {
                    self.connection = None;
                    return Some(Err(LlmError::Timeout {
                        url: self.url.clone(),
                        timeout: self.idle,
                        attempts: 1,
                    }));
                }
                Ok(frame) => frame,
            };
            let mut payloads = Vec::new();
            match frame {
                Some(Ok(frame)) => {
                    if let Some(bytes) = frame.data_ref() {
                        self.parser.push(bytes, &mut payloads);
                    }
                }
                Some(Err(source)) => {
                    return Some(Err(LlmError::Transport {
                        url: self.url.clone(),
                        attempts: 1,
                        source: Box::new(source),
                    }));
                }
                None => {
                    self.parser.finish(&mut payloads);
                    for data in &payloads {
                        if let Err(e) = self.data(data) {
                            return Some(Err(e));
                        }
                    }
                    if !self.done {
                        if self.assembler.finish_reason.is_some() {
                            // Lenient: the server closed after the last chunk without `[DONE]`.
                            self.finish();
                        } else {
                            return Some(Err(LlmError::Malformed {
                                reason:
                                    "the stream ended before the answer was complete (no `[DONE]`)"
                                        .into(),
                                excerpt: String::new(),
                            }));
                        }
                    }
                    continue;
                }
            }
            for data in &payloads {
                if let Err(e) = self.data(data) {
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Llm for OpenAiClient {
    fn model(&self) -> &str {
        &self.model
    }

    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatResponse>> {
        let span = self.span(&request, false);
        let traced = span.clone();
        Box::pin(
            async move {
                let result = match self.open(&request, false).await {
                    Ok((Success::Full(bytes), mode)) => parse_response(&bytes).map(|mut a| {
                        a.json_mode = mode;
                        a
                    }),
                    Ok((Success::Stream(..), _)) => {
                        unreachable!("a non-streaming request reads its body")
                    }
                    Err(e) => Err(e),
                };
                match &result {
                    Ok(answer) => telemetry::record_response(&traced, answer),
                    Err(error) => telemetry::record_error(&traced, error),
                }
                result
            }
            .instrument(span),
        )
    }

    fn chat_stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>> {
        if !request.tools.is_empty() && !self.streams_tools.load(Ordering::Relaxed) {
            return Box::pin(self.one_piece(request));
        }
        let span = self.span(&request, true);
        let traced = span.clone();
        Box::pin(
            async move {
                let (body, connection, json_mode) = match self.open(&request, true).await {
                    Ok((Success::Stream(body, connection), mode)) => (body, connection, mode),
                    Ok((Success::Full(_), _)) => unreachable!("a streaming request keeps its body"),
                    Err(error) if !request.tools.is_empty() && error.rejects_streaming_tools() => {
                        tracing::warn!(
                            %error,
                            "the server does not stream answers that may call tools; asking \
                             without streaming from now on"
                        );
                        telemetry::record_error(&traced, &error);
                        self.streams_tools.store(false, Ordering::Relaxed);
                        return self.one_piece(request).await;
                    }
                    Err(error) => {
                        telemetry::record_error(&traced, &error);
                        return Err(error);
                    }
                };
                let state = StreamState {
                    body,
                    connection: Some(connection),
                    json_mode,
                    parser: SseParser::default(),
                    assembler: Assembler::default(),
                    pending: VecDeque::new(),
                    idle: request.timeout.unwrap_or(self.timeout),
                    url: self.url(),
                    done: false,
                    span: traced,
                };
                let stream = futures_util::stream::unfold(state, |mut state| async move {
                    let span = state.span.clone();
                    let item = state.next().instrument(span.clone()).await;
                    if let Some(Err(error)) = &item {
                        telemetry::record_error(&span, error);
                        state.done = true;
                        state.connection = None;
                        state.pending.clear();
                    }
                    item.map(|item| (item, state))
                });
                Ok(ChatStream::new(stream))
            }
            .instrument(span),
        )
    }
}

impl OpenAiClient {
    /// The answer to `request` asked without streaming, as a stream of one piece: its text,
    /// then the answer (for servers that refuse to stream when tools are offered).
    async fn one_piece(&self, request: ChatRequest) -> Result<ChatStream> {
        let answer = self.chat(request).await?;
        let mut events = Vec::new();
        if !answer.content().is_empty() {
            events.push(Ok(StreamEvent::Text(answer.content().to_string())));
        }
        events.push(Ok(StreamEvent::Done(answer)));
        Ok(ChatStream::new(futures_util::stream::iter(events)))
    }

    /// Sends a chat request (with retries), falling back to a more portable structured-output
    /// mode when the server refuses the one asked for; returns the mode that was used.
    async fn open(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<(Success, Option<JsonMode>)> {
        let pinned = request.json_output.as_ref().and_then(|o| o.mode);
        let mut mode = pinned.unwrap_or_else(|| self.json_mode());
        let timeout = request.timeout.unwrap_or(self.timeout);
        loop {
            let body = Bytes::from(wire_request(request, &self.model, stream, mode).to_string());
            match self.send("/chat/completions", body, stream, timeout).await {
                Ok(success) => return Ok((success, request.json_output.as_ref().map(|_| mode))),
                Err(error) => {
                    let next = mode.fallback().filter(|_| {
                        pinned.is_none()
                            && request.json_output.is_some()
                            && error.rejects_response_format()
                    });
                    let Some(next) = next else { return Err(error) };
                    tracing::warn!(
                        refused = %mode,
                        next = %next,
                        error = %error,
                        "the server refuses this structured-output mode; falling back"
                    );
                    self.json_mode
                        .fetch_max(mode_index(next), Ordering::Relaxed);
                    mode = next;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ToolSpec;

    #[test]
    fn the_request_body_follows_the_wire_format() {
        let request = ChatRequest::user("weather?")
            .system("be brief")
            .message(Message::assistant_tool_calls(
                "",
                vec![ToolCall::new("c1", "weather", "{}")],
            ))
            .message(Message::tool_result("c1", "sunny"))
            .tool(ToolSpec {
                name: "weather".into(),
                description: "the weather".into(),
                parameters: json!({"type": "object"}),
            })
            .tool_choice(ToolChoice::Tool("weather".into()))
            .json_output("answer", json!({"type": "object"}))
            .max_tokens(9);
        let body = wire_request(&request, "m", true, JsonMode::Schema);
        assert_eq!(body["model"], "m");
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            body["messages"][2],
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]})
        );
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "content": "sunny", "tool_call_id": "c1"})
        );
        assert_eq!(body["tools"][0]["function"]["name"], "weather");
        assert_eq!(body["tool_choice"]["function"]["name"], "weather");
        assert_eq!(body["response_format"]["json_schema"]["name"], "answer");
        assert_eq!(body["max_tokens"], 9);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("temperature").is_none());
    }

    #[test]
    fn error_messages_are_found_in_common_shapes() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad key","type":"auth"}}"#).as_deref(),
            Some("bad key")
        );
        assert_eq!(
            error_message(r#"{"error":"model not found"}"#).as_deref(),
            Some("model not found")
        );
        assert_eq!(
            error_message(r#"{"detail":"nope"}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(error_message("<html>"), None);
    }

    #[test]
    fn object_arguments_are_accepted() {
        let body = br#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},"finish_reason":"tool_calls"}]}"#;
        let answer = parse_response(body).unwrap();
        assert_eq!(answer.calls(), [ToolCall::new("call_0", "f", r#"{"a":1}"#)]);
        assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    }
}
