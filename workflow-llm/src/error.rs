//! Errors of model calls.

use std::time::Duration;

/// The result of a model call.
pub type Result<T, E = LlmError> = std::result::Result<T, E>;

/// Why a model call failed. Every variant says what the server (or the mock) actually did.
///
/// ```
/// use tidewater_llm::LlmError;
/// let err = LlmError::Status {
///     url: "http://127.0.0.1:8080/v1/chat/completions".into(),
///     status: 429,
///     message: "Rate limit reached".into(),
///     body: String::new(),
///     attempts: 3,
/// };
/// assert_eq!(
///     err.to_string(),
///     "http://127.0.0.1:8080/v1/chat/completions answered 429 after 3 attempt(s): Rate limit reached"
/// );
/// assert!(err.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The server answered with an HTTP error status (after the retries, when it was retryable).
    #[error("{url} answered {status} after {attempts} attempt(s): {message}")]
    Status {
        /// Where the request went.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The server's own error message (`error.message` of the JSON body), or the start of the body.
        message: String,
        /// The raw body, cut to a few kilobytes.
        body: String,
        /// How many requests were sent.
        attempts: u32,
    },
    /// No answer within the time limit.
    #[error("no answer from {url} within {timeout:?} (after {attempts} attempt(s))")]
    Timeout {
        /// Where the request went.
        url: String,
        /// The time limit.
        timeout: Duration,
        /// How many requests were sent.
        attempts: u32,
    },
    /// The connection failed or broke.
    #[error("cannot talk to {url} (after {attempts} attempt(s))")]
    Transport {
        /// Where the request went.
        url: String,
        /// How many requests were sent.
        attempts: u32,
        /// The I/O or HTTP error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered, but not in the expected wire format.
    #[error("malformed response: {reason}; the server sent: {excerpt}")]
    Malformed {
        /// What was wrong.
        reason: String,
        /// The start of what the server sent.
        excerpt: String,
    },
    /// The server reported an error in the middle of a streamed answer.
    #[error("the server reported an error mid-stream: {message}")]
    Stream {
        /// The server's message.
        message: String,
    },
    /// The model answered, but its output does not follow the requested schema.
    #[error("the model's output does not follow the schema: {reason}")]
    InvalidOutput {
        /// What is wrong, with JSON paths.
        reason: String,
        /// The model's raw output.
        content: String,
    },
    /// The client is misconfigured (a bad URL, a missing feature).
    #[error("configuration error: {0}")]
    Config(String),
    /// A [`MockLlm`](crate::MockLlm) was asked for more than it was scripted for, or
    /// replays a scripted error.
    #[error("mock: {0}")]
    Mock(String),
}

impl LlmError {
    /// Would sending the same request again plausibly work? (429, 408, 409, 5xx, transport
    /// failures and timeouts; never an answer whose body says the request itself is invalid,
    /// whatever its status: some servers answer a validation error with a 500.)
    ///
    /// ```
    /// use tidewater_llm::LlmError;
    /// let err = LlmError::Status {
    ///     url: "http://127.0.0.1:8080/v1/chat/completions".into(),
    ///     status: 500,
    ///     message: "1 validation error: Input should be 'text' or 'json_object'".into(),
    ///     body: String::new(),
    ///     attempts: 1,
    /// };
    /// assert!(err.is_input_error());
    /// assert!(!err.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => {
                is_retryable_status(*status) && !self.is_input_error()
            }
            LlmError::Timeout { .. } | LlmError::Transport { .. } => true,
            _ => false,
        }
    }

    /// Does the server say the request itself is wrong (a validation error, an invalid or
    /// unsupported parameter), whatever the status code? Sending it again cannot help.
    pub fn is_input_error(&self) -> bool {
        match self {
            LlmError::Status {
                status,
                message,
                body,
                ..
            } => {
                matches!(status, 400 | 404 | 405 | 413 | 415 | 422)
                    || looks_like_input_error(message)
                    || looks_like_input_error(body)
            }
            _ => false,
        }
    }

    /// Does the server refuse the requested structured-output format (`response_format:
    /// json_schema` or `json_object`)? The client then falls back to `json_object` with the
    /// schema in the prompt, then to JSON asked for in the prompt alone.
    pub fn rejects_response_format(&self) -> bool {
        let LlmError::Status { message, body, .. } = self else {
            return false;
        };
        if !self.is_input_error() {
            return false;
        }
        let text = format!("{message}\n{body}").to_lowercase();
        ["json_schema", "json_object", "response_format"]
            .iter()
            .any(|needle| text.contains(needle))
    }

    /// Does the server refuse to stream an answer that may hold tool calls (llama.cpp's
    /// Python server: "Automatic streaming tool choice is not supported")? The client then asks
    /// for the same answer without streaming, and hands it back as a one-piece stream.
    ///
    /// ```
    /// use tidewater_llm::LlmError;
    /// let error = LlmError::Status {
    ///     url: "http://127.0.0.1:8080/v1/chat/completions".into(),
    ///     status: 500,
    ///     message: "Automatic streaming tool choice is not supported".into(),
    ///     body: String::new(),
    ///     attempts: 1,
    /// };
    /// assert!(error.rejects_streaming_tools());
    /// ```
    pub fn rejects_streaming_tools(&self) -> bool {
        let LlmError::Status { message, body, .. } = self else {
            return false;
        };
        let text = format!("{message}\n{body}").to_lowercase();
        text.contains("stream")
            && text.contains("tool")
            && (text.contains("not supported") || text.contains("unsupported"))
    }

    /// The HTTP status, for [`LlmError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short, stable name of the error kind (the OpenTelemetry `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Status { .. } => "http_status",
            LlmError::Timeout { .. } => "timeout",
            LlmError::Transport { .. } => "transport",
            LlmError::Malformed { .. } => "malformed_response",
            LlmError::Stream { .. } => "stream_error",
            LlmError::InvalidOutput { .. } => "invalid_output",
            LlmError::Config(_) => "config",
            LlmError::Mock(_) => "mock",
        }
    }
}

/// The words servers use for a request they reject as invalid: pydantic (llama-cpp-python,
/// vLLM, LiteLLM), OpenAI's `invalid_request_error`, Ollama and llama.cpp's own wording.
fn looks_like_input_error(text: &str) -> bool {
    let text = text.to_lowercase();
    [
        "validation error",
        "input should be",
        "invalid_request_error",
        "invalid request",
        "invalid parameter",
        "unrecognized request argument",
        "extra inputs are not permitted",
        "not supported",
        "unsupported",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// Cuts text to at most `max` bytes on a char boundary, marking the cut.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}
