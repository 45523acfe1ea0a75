//! Each model call is one span carrying the OpenTelemetry GenAI attributes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tidewater_llm::{ChatRequest, Llm, LlmError, MockLlm};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Fields = BTreeMap<String, String>;

/// A subscriber that remembers every span's name and fields.
#[derive(Default, Clone)]
struct Recorder {
    spans: Arc<Mutex<Vec<(String, Fields)>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_string(), fields));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let fields = &mut spans[id.into_u64() as usize - 1].1;
        values.record(&mut Collect(fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn a_chat_span_carries_model_and_token_usage() {
    let recorder = Recorder::default();
    let llm = MockLlm::named("gpt-test")
        .respond(tidewater_llm::ChatResponse::text("hello").with_usage(21, 7))
        .error(LlmError::Mock("boom".into()));
    tracing::subscriber::with_default(recorder.clone(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            llm.chat(ChatRequest::user("hi").temperature(0.5).max_tokens(64))
                .await
                .unwrap();
            llm.chat(ChatRequest::user("again")).await.unwrap_err();
        });
    });
    let spans = recorder.spans.lock().unwrap();
    let chats: Vec<&Fields> = spans
        .iter()
        .filter(|(n, _)| n == "gen_ai.chat")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(chats.len(), 2, "one span per call");
    let ok = chats[0];
    for (key, value) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "mock"),
        ("gen_ai.request.model", "gpt-test"),
        ("gen_ai.request.temperature", "0.5"),
        ("gen_ai.request.max_tokens", "64"),
        ("gen_ai.response.model", "gpt-test"),
        ("gen_ai.response.finish_reasons", "stop"),
        ("gen_ai.usage.input_tokens", "21"),
        ("gen_ai.usage.output_tokens", "7"),
        ("otel.name", "chat gpt-test"),
    ] {
        assert_eq!(
            ok.get(key).map(String::as_str),
            Some(value),
            "{key} in {ok:?}"
        );
    }
    assert!(!ok.contains_key("error.type"));
    assert_eq!(chats[1].get("error.type").map(String::as_str), Some("mock"));
}
