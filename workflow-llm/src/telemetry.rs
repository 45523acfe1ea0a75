//! One `tracing` span per model call, with the OpenTelemetry GenAI semantic-convention
//! attribute names, so an OpenTelemetry layer exports them as the standard says.

use tracing::Span;
use tracing::field::Empty;

use crate::error::LlmError;
use crate::types::{ChatRequest, ChatResponse};

/// Opens the span of one chat call (not entered).
pub(crate) fn chat_span(
    provider: &'static str,
    model: &str,
    request: &ChatRequest,
    stream: bool,
) -> Span {
    let span = tracing::info_span!(
        "gen_ai.chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        gen_ai.request.stream = stream,
        gen_ai.request.temperature = Empty,
        gen_ai.request.max_tokens = Empty,
        gen_ai.request.tool_count = request.tools.len(),
        gen_ai.output.type = if request.json_output.is_some() { "json" } else { "text" },
        gen_ai.response.model = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        server.address = Empty,
        server.port = Empty,
        error.type = Empty,
    );
    if let Some(t) = request.temperature {
        span.record("gen_ai.request.temperature", f64::from(t));
    }
    if let Some(m) = request.max_tokens {
        span.record("gen_ai.request.max_tokens", m);
    }
    span
}

/// Records what the answer says about itself.
pub(crate) fn record_response(span: &Span, response: &ChatResponse) {
    if !response.model.is_empty() {
        span.record("gen_ai.response.model", response.model.as_str());
    }
    if let Some(reason) = &response.finish_reason {
        span.record("gen_ai.response.finish_reasons", reason.as_str());
    }
    if let Some(usage) = response.usage {
        span.record("gen_ai.usage.input_tokens", usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", usage.output_tokens);
    }
}

/// Records a failure.
pub(crate) fn record_error(span: &Span, error: &LlmError) {
    span.record("error.type", error.kind());
    span.in_scope(|| tracing::warn!(error = %error, "model call failed"));
}
