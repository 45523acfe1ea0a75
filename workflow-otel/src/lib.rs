//! OpenTelemetry export of tidewater's spans: each run (`workflow.run`), each step invocation
//! (`workflow.step`) and each child run (a `workflow.run` under the step that called it) become
//! OTel spans, sent to a collector over OTLP/HTTP with protobuf bodies.
//!
//! `tidewater` itself only emits [`tracing`] spans; this crate is the opt-in bridge
//! ([`tracing-opentelemetry`] and [`opentelemetry-otlp`]), kept apart so that builds that do
//! not export pay nothing for it.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An OTLP/HTTP collector: Jaeger, Tempo, Phoenix, Langfuse, the OTel collector...
//! let telemetry = tidewater_otel::Telemetry::otlp_http("http://127.0.0.1:4318", "my-service")?;
//! let subscriber = tracing_subscriber::registry().with(telemetry.layer());
//! tracing::subscriber::set_global_default(subscriber)?;
//! // ... run workflows ...
//! telemetry.shutdown()?; // sends what is still buffered
//! # Ok(()) }
//! ```
//!
//! Step spans are at `DEBUG` level: a filter in front of the layer must let `tidewater=debug`
//! through for them to be exported (run spans are `INFO`).
//!
//! [`tracing-opentelemetry`]: https://docs.rs/tracing-opentelemetry
//! [`opentelemetry-otlp`]: https://docs.rs/opentelemetry-otlp

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// Why the export could not be set up or flushed.
///
/// ```
/// let error = tidewater_otel::Telemetry::otlp_http("ftp://collector", "svc").unwrap_err();
/// assert!(error.to_string().starts_with("bad OTLP endpoint `ftp://collector`"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The collector's address is not a plain `http://` URL.
    #[error("bad OTLP endpoint `{endpoint}`: {reason}")]
    Endpoint {
        /// The address given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The exporter could not be built.
    #[error("the OTLP exporter could not be built: {0}")]
    Build(String),
    /// Buffered spans could not be sent, or the pipeline could not be shut down.
    #[error("the spans could not be exported: {0}")]
    Export(String),
}

/// An OTLP/HTTP span pipeline: a tracer provider batching spans to a collector, and the
/// [`tracing_subscriber::Layer`] that feeds it.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports to the OTLP/HTTP collector at `endpoint`, its base address
    /// (`http://127.0.0.1:4318`; `/v1/traces` is appended unless the address ends with it),
    /// as service `service_name`. Spans are batched and sent from a thread of the pipeline's
    /// own, over plain HTTP/1.1 (for TLS, put a collector on the same host or network).
    ///
    /// # Errors
    /// [`OtelError::Endpoint`] when `endpoint` is not an `http://` URL;
    /// [`OtelError::Build`] when the exporter cannot be made.
    pub fn otlp_http(endpoint: &str, service_name: &str) -> Result<Telemetry, OtelError> {
        Telemetry::otlp_http_with_headers(endpoint, service_name, &[])
    }

    /// Like [`Telemetry::otlp_http`], sending `headers` with every export (a collector that
    /// wants credentials: Langfuse's `Authorization: Basic ...`, an API key).
    ///
    /// # Errors
    /// As [`Telemetry::otlp_http`].
    pub fn otlp_http_with_headers(
        endpoint: &str,
        service_name: &str,
        headers: &[(&str, &str)],
    ) -> Result<Telemetry, OtelError> {
        let bad = |reason: &str| OtelError::Endpoint {
            endpoint: endpoint.to_string(),
            reason: reason.to_string(),
        };
        let Some(rest) = endpoint.strip_prefix("http://") else {
            return Err(bad("only `http://` collectors are supported"));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("no host"));
        }
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(10))
            .with_http_client(PlainHttp {
                timeout: Duration::from_secs(10),
            })
            .with_headers(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .build()
            .map_err(|e| OtelError::Build(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        Ok(Telemetry { provider })
    }

    /// The layer that turns `tracing` spans (tidewater's and any other) into OTel spans of
    /// this pipeline. Add it to a subscriber: `tracing_subscriber::registry().with(layer)`.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("tidewater"))
    }

    /// Sends the spans buffered so far.
    ///
    /// # Errors
    /// [`OtelError::Export`] when the collector could not take them.
    pub fn flush(&self) -> Result<(), OtelError> {
        self.provider
            .force_flush()
            .map_err(|e| OtelError::Export(e.to_string()))
    }

    /// Sends what is buffered and stops the pipeline.
    ///
    /// # Errors
    /// [`OtelError::Export`] when the last spans could not be sent.
    pub fn shutdown(&self) -> Result<(), OtelError> {
        self.provider
            .shutdown()
            .map_err(|e| OtelError::Export(e.to_string()))
    }
}

/// The W3C `traceparent` of the current `tracing` span (`00-<trace id>-<span id>-<flags>`),
/// to send with an outgoing request so that the callee's trace continues this one; `None`
/// when the current span is not exported by a [`Telemetry`] layer.
///
/// ```
/// // Outside any exported span: nothing to propagate.
/// assert_eq!(tidewater_otel::traceparent(), None);
/// ```
pub fn traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// [`traceparent`] as the header list `OpenAiClient::request_headers` of `tidewater-llm`
/// takes: every model call then carries the `traceparent` of its own span.
pub fn traceparent_header() -> Vec<(String, String)> {
    traceparent()
        .map(|value| vec![("traceparent".to_string(), value)])
        .unwrap_or_default()
}

/// Makes `span` a child of the remote span a W3C `traceparent` header names (an incoming
/// request's): start a run inside `span` and the whole run joins the caller's trace. Returns
/// whether the header was valid and the span exported (otherwise nothing changes).
///
/// ```
/// let span = tracing::info_span!("http.request");
/// // Not a traceparent: refused, nothing changes.
/// assert!(!tidewater_otel::set_remote_parent(&span, "not-a-traceparent"));
/// ```
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) -> bool {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let context = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if !context.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(context).is_ok()
}

/// A minimal blocking HTTP/1.1 client (one connection per export, `Connection: close`): the
/// batch processor exports from a thread of its own, outside any async runtime, so no
/// runtime-bound client (and no extra HTTP stack) is needed.
#[derive(Debug)]
struct PlainHttp {
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for PlainHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        post(&request, self.timeout)
    }
}

fn post(request: &Request<Bytes>, timeout: Duration) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri();
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{uri}`: only http:// is supported").into());
    }
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| format!("`{host}` does not resolve"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let body = request.body();
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        request.method(),
        uri.authority().map_or(host, |a| a.as_str()),
        body.len()
    );
    for (name, value) in request.headers() {
        if matches!(name.as_str(), "host" | "content-length" | "connection") {
            continue;
        }
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(value.to_str()?);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the collector's answer has no end of headers")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("the collector's answer has no status")?;
    let chunked = lines.any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(Response::builder().status(status).body(Bytes::from(body))?)
}

/// The data of a chunked body (what an exporter reads of it: an error message, if any).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[(end + 4 + size).min(body.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_is_read_back() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
        assert_eq!(dechunk(b"0\r\n\r\n"), b"");
    }

    #[test]
    fn only_plain_http_collectors_are_taken() {
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "http://",
            "http:///v1",
        ] {
            assert!(
                matches!(
                    Telemetry::otlp_http(bad, "svc"),
                    Err(OtelError::Endpoint { .. })
                ),
                "{bad}"
            );
        }
    }
}
