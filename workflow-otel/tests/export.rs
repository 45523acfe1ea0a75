//! The export, end to end: a parent workflow whose step runs two child workflows is traced
//! through `Telemetry::layer` to a small OTLP/HTTP receiver on 127.0.0.1, which decodes the
//! protobuf bodies with the OTLP schema's own types; the test asserts the span tree (run ->
//! step -> child run -> child step -> model call, one trace) and the attributes, the model
//! call's after OTel's GenAI semantic conventions.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tidewater::prelude::*;
use tidewater_llm::{ChatRequest, ChatResponse, Llm, LlmError, MockLlm, Usage};
use tidewater_otel::Telemetry;
use tracing_subscriber::layer::SubscriberExt;

/// What the receiver got: each request's path and decoded spans, with the resource's service.
#[derive(Default)]
struct Received {
    paths: Vec<String>,
    content_types: Vec<String>,
    authorizations: Vec<String>,
    services: Vec<String>,
    spans: Vec<Span>,
}

/// An OTLP/HTTP receiver: answers every request `200 OK`, decodes its body.
fn receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            // Headers, then as many body bytes as Content-Length says.
            let (head, length) = loop {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the exporter closed before its headers");
                raw.extend_from_slice(&buf[..n]);
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let l = l.to_ascii_lowercase();
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .expect("a body length");
                    raw.drain(..end + 4);
                    break (head, length);
                }
            };
            while raw.len() < length {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the exporter closed before its body");
                raw.extend_from_slice(&buf[..n]);
            }
            let request = ExportTraceServiceRequest::decode(&raw[..length]).unwrap();
            {
                let mut got = store.lock().unwrap();
                let mut lines = head.lines();
                got.paths
                    .push(lines.next().unwrap().split(' ').nth(1).unwrap().to_string());
                for line in lines {
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-type:") {
                        got.content_types.push(value.trim().to_string());
                    }
                    if lower.starts_with("authorization:") {
                        got.authorizations
                            .push(line["authorization:".len()..].trim().to_string());
                    }
                }
                for resource_spans in request.resource_spans {
                    if let Some(resource) = &resource_spans.resource {
                        for kv in &resource.attributes {
                            if kv.key == "service.name" {
                                got.services
                                    .push(string(kv.value.as_ref().and_then(|v| v.value.as_ref())));
                            }
                        }
                    }
                    for scope in resource_spans.scope_spans {
                        got.spans.extend(scope.spans);
                    }
                }
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
        }
    });
    (address, received)
}

fn string(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                string(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

/// Asks a (scripted) model, whose span follows OTel's GenAI conventions.
struct Child {
    llm: MockLlm,
}

#[workflow]
impl Child {
    #[step]
    async fn inner(&self, ev: StartEvent<u32>) -> Result<StopEvent<u32>, LlmError> {
        let answer = self
            .llm
            .chat(ChatRequest::user(format!("add one to {}", ev.0)))
            .await?;
        Ok(StopEvent(ev.0 + answer.content().len() as u32))
    }
}

fn answer() -> ChatResponse {
    let mut answer = ChatResponse::text("1");
    answer.usage = Some(Usage {
        input_tokens: 12,
        output_tokens: 3,
    });
    answer.model = "mock-1-2026".into();
    answer
}

struct Parent {
    child: Runner<Child>,
}

#[workflow]
impl Parent {
    #[step]
    async fn delegate(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        let outputs = ctx.run_children(&self.child, [ev.0, ev.0 * 10]).await?;
        Ok(StopEvent(outputs.iter().sum()))
    }
}

#[test]
fn runs_steps_and_child_runs_are_exported_as_one_span_tree() {
    let (address, received) = receiver();
    let telemetry = Telemetry::otlp_http_with_headers(
        &address,
        "otel-test",
        &[("authorization", "Basic dGlkZTp3YXRlcg==")],
    )
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let llm = MockLlm::named("mock-1").respond(answer()).respond(answer());
        let parent = Parent {
            child: Child { llm: llm.clone() }.runner(),
        };
        assert_eq!(runtime.block_on(parent.run(1)).unwrap(), 13);
        llm.assert_exhausted();
    });
    telemetry.shutdown().unwrap();

    let got = received.lock().unwrap();
    assert!(!got.paths.is_empty());
    assert!(
        got.paths.iter().all(|p| p == "/v1/traces"),
        "{:?}",
        got.paths
    );
    assert!(
        got.content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        got.content_types
    );
    assert!(got.services.iter().all(|s| s == "otel-test") && !got.services.is_empty());
    assert_eq!(
        got.authorizations.len(),
        got.paths.len(),
        "every export carries the header"
    );
    assert!(
        got.authorizations
            .iter()
            .all(|a| a == "Basic dGlkZTp3YXRlcg==")
    );

    let named = |name: &str, workflow: &str| -> Vec<&Span> {
        got.spans
            .iter()
            .filter(|s| {
                s.name == name
                    && attributes(s).get("workflow").map(String::as_str) == Some(workflow)
            })
            .collect()
    };
    let parent_runs = named("workflow.run", "Parent");
    let delegate = named("workflow.step", "Parent");
    let child_runs = named("workflow.run", "Child");
    let child_steps = named("workflow.step", "Child");
    assert_eq!(
        (
            parent_runs.len(),
            delegate.len(),
            child_runs.len(),
            child_steps.len()
        ),
        (1, 1, 2, 2),
        "{:#?}",
        got.spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let run = parent_runs[0];
    assert!(run.parent_span_id.is_empty(), "the parent run is the root");
    assert_eq!(delegate[0].parent_span_id, run.span_id);
    assert_eq!(attributes(delegate[0])["step"], "delegate");
    assert_eq!(attributes(delegate[0])["attempt"], "1");
    let run_id = &attributes(run)["run_id"];
    assert_eq!(&attributes(delegate[0])["run_id"], run_id);
    for child in &child_runs {
        assert_eq!(
            child.parent_span_id, delegate[0].span_id,
            "a child run sits under the step that called it"
        );
        assert_ne!(&attributes(child)["run_id"], run_id);
        let steps: Vec<&&Span> = child_steps
            .iter()
            .filter(|s| s.parent_span_id == child.span_id)
            .collect();
        assert_eq!(steps.len(), 1);
        assert_eq!(attributes(steps[0])["step"], "inner");
        // The model call, under the step that made it, named and described as OTel's GenAI
        // semantic conventions say.
        let calls: Vec<&Span> = got
            .spans
            .iter()
            .filter(|s| s.parent_span_id == steps[0].span_id)
            .collect();
        assert_eq!(calls.len(), 1);
        let call = calls[0];
        assert_eq!(call.name, "chat mock-1");
        assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
        let attributes = attributes(call);
        for (key, value) in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", "mock"),
            ("gen_ai.request.model", "mock-1"),
            ("gen_ai.response.model", "mock-1-2026"),
            ("gen_ai.response.finish_reasons", "stop"),
            ("gen_ai.usage.input_tokens", "12"),
            ("gen_ai.usage.output_tokens", "3"),
        ] {
            assert_eq!(
                attributes.get(key).map(String::as_str),
                Some(value),
                "{key}: {attributes:?}"
            );
        }
    }
    // One trace for the whole tree.
    assert!(got.spans.iter().all(|s| s.trace_id == run.trace_id));
    // Each span closes after it opens, and a child run lies within its step.
    for span in &got.spans {
        assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
    }
    for child in &child_runs {
        assert!(child.start_time_unix_nano >= delegate[0].start_time_unix_nano);
        assert!(child.end_time_unix_nano <= delegate[0].end_time_unix_nano);
    }
}

/// A model server speaking OpenAI's `/chat/completions`: answers every request with one
/// canned completion and keeps each request's `traceparent` header.
fn model_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            let (head, length) = loop {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0);
                raw.extend_from_slice(&buf[..n]);
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let l = l.to_ascii_lowercase();
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    raw.drain(..end + 4);
                    break (head, length);
                }
            };
            while raw.len() < length {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0);
                raw.extend_from_slice(&buf[..n]);
            }
            for line in head.lines() {
                if line.to_ascii_lowercase().starts_with("traceparent:") {
                    store
                        .lock()
                        .unwrap()
                        .push(line["traceparent:".len()..].trim().to_string());
                }
            }
            let body = r#"{"id":"c1","object":"chat.completion","model":"fake-1","choices":[{"index":0,"message":{"role":"assistant","content":"1"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).unwrap();
        }
    });
    (base, seen)
}

/// Asks a real HTTP client that sends the `traceparent` of its model call's span.
struct Asks {
    llm: tidewater_llm::OpenAiClient,
}

#[workflow]
impl Asks {
    #[step]
    async fn ask(&self, ev: StartEvent<u32>) -> Result<StopEvent<u32>, LlmError> {
        let answer = self
            .llm
            .chat(ChatRequest::user(format!("{}", ev.0)))
            .await?;
        Ok(StopEvent(ev.0 + answer.content().len() as u32))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_run_joins_its_callers_trace_and_model_calls_carry_their_traceparent() {
    const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const CALLER_SPAN: &str = "b7ad6b7169203331";
    let (address, received) = receiver();
    let (base, seen) = model_server();
    let telemetry = Telemetry::otlp_http(&address, "otel-propagation").unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let llm = tidewater_llm::OpenAiClient::new(&base, "fake-1")
            .unwrap()
            .request_headers(tidewater_otel::traceparent_header);
        // An incoming request's header: the run started inside its span joins that trace.
        let request = tracing::info_span!("http.request");
        assert!(tidewater_otel::set_remote_parent(
            &request,
            &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        ));
        let run = request.in_scope(|| Asks { llm }.run(1));
        assert_eq!(runtime.block_on(run).unwrap(), 2);
    });
    telemetry.shutdown().unwrap();

    let got = received.lock().unwrap();
    let find = |name: &str| -> &Span {
        got.spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no `{name}` span"))
    };
    let (request, run, step, call) = (
        find("http.request"),
        find("workflow.run"),
        find("workflow.step"),
        find("chat fake-1"),
    );
    for span in [request, run, step, call] {
        assert_eq!(hex(&span.trace_id), CALLER_TRACE, "{}", span.name);
    }
    assert_eq!(
        hex(&request.parent_span_id),
        CALLER_SPAN,
        "the caller's span"
    );
    assert_eq!(run.parent_span_id, request.span_id);
    assert_eq!(step.parent_span_id, run.span_id);
    assert_eq!(call.parent_span_id, step.span_id);
    // The model server was told which span called it.
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        [format!("00-{CALLER_TRACE}-{}-01", hex(&call.span_id))],
        "one request, with the model call's traceparent"
    );
}

struct Echo;

#[workflow]
impl Echo {
    #[step]
    async fn echo(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        StopEvent(ev.0)
    }
}

/// A blocking HTTP/1.1 POST; the whole answer.
fn post(addr: std::net::SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_server_starts_each_run_in_its_callers_trace() {
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let (address, received) = receiver();
    let telemetry = Telemetry::otlp_http(&address, "otel-server").unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tidewater_server::Server::new()
                .serve_workflow("echo", Echo.runner())
                .run_span(|workflow, traceparent| {
                    let span = tracing::info_span!("http.run", workflow);
                    if let Some(traceparent) = traceparent {
                        tidewater_otel::set_remote_parent(&span, traceparent);
                    }
                    span
                });
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(server.serve_on(listener, async {
                let _ = stopped.await;
            }));
            let answer = tokio::task::spawn_blocking(move || {
                post(
                    addr,
                    "/workflows/echo/run",
                    r#"{"start_event": 5}"#,
                    &[(
                        "traceparent",
                        &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
                    )],
                )
            })
            .await
            .unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            let _ = stop.send(());
            serving.await.unwrap().unwrap();
        });
    });
    telemetry.shutdown().unwrap();

    let got = received.lock().unwrap();
    let find = |name: &str| -> &Span {
        got.spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no `{name}` span in {:?}",
                    got.spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let (request, run, step) = (
        find("http.run"),
        find("workflow.run"),
        find("workflow.step"),
    );
    assert_eq!(attributes(request)["workflow"], "echo");
    assert_eq!(
        hex(&request.parent_span_id),
        CALLER_SPAN,
        "the caller's span"
    );
    assert_eq!(run.parent_span_id, request.span_id);
    assert_eq!(step.parent_span_id, run.span_id);
    for span in [request, run, step] {
        assert_eq!(hex(&span.trace_id), CALLER_TRACE, "{}", span.name);
    }
}
