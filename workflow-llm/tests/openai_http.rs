//! The OpenAI-compatible client against a real HTTP server on 127.0.0.1 (see `common`).

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{Reply, Server, completion, text_chunk};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tidewater_llm::schema::{JsonSchema, ObjectSchema};
use tidewater_llm::{
    ChatRequest, FinishReason, JsonMode, Llm, LlmError, LlmExt, OpenAiClient, RetryPolicy,
    StreamEvent, ToolCall, ToolChoice, ToolSpec, Usage,
};

/// Every test is bounded in time: a hang is a failure, not a stuck CI job.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("the test took longer than 15 s")
}

fn client(server: &Server) -> OpenAiClient {
    OpenAiClient::new(&server.base_url(), "test-model")
        .unwrap()
        .api_key("test-key")
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_retries: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(5),
            after_timeout: Duration::from_millis(10),
        })
}

#[tokio::test]
async fn plain_chat_sends_the_wire_format_and_reads_the_answer() {
    bounded(async {
        let server = Server::start(vec![Reply::json(200, completion("Paris."))]).await;
        let answer = client(&server)
            .chat(ChatRequest::user("Capital of France?").system("Be brief.").temperature(0.0))
            .await
            .unwrap();
        assert_eq!(answer.content(), "Paris.");
        assert_eq!(answer.model, "test-model-0613");
        assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
        assert_eq!(answer.usage, Some(Usage { input_tokens: 12, output_tokens: 5 }));

        let sent = &server.received()[0];
        assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/chat/completions"));
        assert_eq!(sent.header("authorization"), Some("Bearer test-key"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.body["model"], "test-model");
        assert_eq!(sent.body["temperature"], 0.0);
        assert_eq!(
            sent.body["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}])
        );
        assert!(sent.body.get("stream").is_none());
    })
    .await;
}

#[tokio::test]
async fn streamed_chat_yields_tokens_then_the_assembled_answer_with_usage() {
    bounded(async {
        let pieces = vec![
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            ),
            format!("data: {}\n\n", text_chunk("Hel")),
            // One chunk split across two TCP writes, and a keep-alive comment.
            format!("data: {}", text_chunk("lo, ")),
            "\n\n: ping\n\n".to_string(),
            format!("data: {}\n\n", text_chunk("world")),
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            ),
            format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
            ),
            "data: [DONE]\n\n".to_string(),
        ];
        let server = Server::start(vec![Reply::Sse {
            pieces,
            gap: Duration::from_millis(5),
        }])
        .await;
        let mut stream = client(&server)
            .chat_stream(ChatRequest::user("hi"))
            .await
            .unwrap();
        let mut deltas = Vec::new();
        let mut done = None;
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::Text(t) => deltas.push(t),
                StreamEvent::Done(answer) => done = Some(answer),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(deltas, ["Hel", "lo, ", "world"]);
        let answer = done.expect("the stream ends with the answer");
        assert_eq!(answer.content(), "Hello, world");
        assert_eq!(
            answer.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4
            })
        );
        assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
        assert_eq!(answer.model, "test-model-0613");

        let sent = &server.received()[0];
        assert_eq!(sent.body["stream"], true);
        assert_eq!(sent.body["stream_options"]["include_usage"], true);
        assert_eq!(sent.header("accept"), Some("text/event-stream"));
    })
    .await;
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Current weather".into(),
        parameters: ObjectSchema::new().field::<String>("city", "").build(),
    }
}

#[tokio::test]
async fn parallel_tool_calls_are_parsed() {
    bounded(async {
        let body = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]}}]});
        let server = Server::start(vec![Reply::json(200, body)]).await;
        let answer = client(&server)
            .chat(ChatRequest::user("Weather in Oslo and Rome?").tool(weather_tool()))
            .await
            .unwrap();
        assert_eq!(answer.content(), "");
        assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            answer.calls(),
            [
                ToolCall::new("call_a", "get_weather", r#"{"city":"Oslo"}"#),
                ToolCall::new("call_b", "get_weather", r#"{"city":"Rome"}"#),
            ]
        );
        let sent = &server.received()[0];
        assert_eq!(sent.body["tools"][0]["type"], "function");
        assert_eq!(sent.body["tools"][0]["function"]["parameters"]["required"], json!(["city"]));
    })
    .await;
}

#[tokio::test]
async fn streamed_tool_call_deltas_are_assembled() {
    bounded(async {
        let call = |index: u32, id: Option<&str>, name: Option<&str>, args: &str| {
            let mut function = json!({"arguments": args});
            if let Some(name) = name {
                function["name"] = json!(name);
            }
            let mut delta = json!({"index": index, "function": function});
            if let Some(id) = id {
                delta["id"] = json!(id);
                delta["type"] = json!("function");
            }
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": null}]})
        };
        let server = Server::start(vec![Reply::sse(&[
            call(0, Some("call_a"), Some("get_weather"), ""),
            call(0, None, None, "{\"ci"),
            call(1, Some("call_b"), Some("get_weather"), "{\"city\""),
            call(0, None, None, "ty\": \"Oslo\"}"),
            call(1, None, None, ": \"Rome\"}"),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ])])
        .await;
        let stream = client(&server)
            .chat_stream(ChatRequest::user("Weather?").tool(weather_tool()))
            .await
            .unwrap();
        let events: Vec<StreamEvent> = stream.map(Result::unwrap).collect().await;
        let fragments = events.iter().filter(|e| matches!(e, StreamEvent::ToolCallDelta { .. })).count();
        assert_eq!(fragments, 5);
        let Some(StreamEvent::Done(answer)) = events.last() else { panic!("no final answer") };
        assert_eq!(
            answer.calls(),
            [
                ToolCall::new("call_a", "get_weather", r#"{"city": "Oslo"}"#),
                ToolCall::new("call_b", "get_weather", r#"{"city": "Rome"}"#),
            ]
        );
        assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    })
    .await;
}

#[derive(Debug, Deserialize, PartialEq)]
struct Capital {
    country: String,
    city: String,
    population_millions: f64,
}

impl JsonSchema for Capital {
    fn json_schema() -> serde_json::Value {
        ObjectSchema::new()
            .field::<String>("country", "")
            .field::<String>("city", "")
            .field::<f64>("population_millions", "")
            .build()
    }
}

#[tokio::test]
async fn structured_output_sends_the_schema_and_validates_the_answer() {
    bounded(async {
        let server = Server::start(vec![
            Reply::json(200, completion(r#"{"country": "France", "city": "Paris", "population_millions": 2.1}"#)),
            Reply::json(200, completion(r#"{"country": "France", "city": 75}"#)),
        ])
        .await;
        let llm = client(&server);
        let capital: Capital = llm.structured(ChatRequest::user("Capital of France?")).await.unwrap();
        assert_eq!(
            capital,
            Capital { country: "France".into(), city: "Paris".into(), population_millions: 2.1 }
        );
        let format = &server.received()[0].body["response_format"];
        assert_eq!(format["type"], "json_schema");
        assert_eq!(format["json_schema"]["name"], "Capital");
        assert_eq!(format["json_schema"]["schema"]["required"], json!(["country", "city", "population_millions"]));

        let err = llm.structured::<Capital>(ChatRequest::user("again")).await.unwrap_err();
        let LlmError::InvalidOutput { reason, content } = err else { panic!("expected InvalidOutput, got {err:?}") };
        assert_eq!(reason, "$: missing required property `population_millions`; $.city: expected string, found integer 75");
        assert_eq!(content, r#"{"country": "France", "city": 75}"#);
    })
    .await;
}

#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after() {
    bounded(async {
        let server = Server::start(vec![
            Reply::json(
                429,
                json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
            )
            .with_header("retry-after", "1"),
            Reply::json(200, completion("finally")),
        ])
        .await;
        let started = Instant::now();
        let answer = client(&server).chat(ChatRequest::user("hi")).await.unwrap();
        assert_eq!(answer.content(), "finally");
        assert_eq!(server.received().len(), 2);
        // The computed backoff is 10 ms: waiting a second means `Retry-After` was honoured.
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "waited only {:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn retry_after_ms_wins_and_exhausted_retries_report_the_server_message() {
    bounded(async {
        let limited = || {
            Reply::json(429, json!({"error": {"message": "Rate limit reached"}}))
                .with_header("retry-after-ms", "20")
        };
        let server = Server::start(vec![
            limited(),
            limited(),
            limited(),
            Reply::json(200, completion("never")),
        ])
        .await;
        let err = client(&server)
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}/chat/completions answered 429 after 3 attempt(s): Rate limit reached",
                server.base_url()
            )
        );
        assert_eq!(err.status(), Some(429));
        assert_eq!(server.received().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_retry_after_longer_than_the_policy_allows_fails_at_once() {
    bounded(async {
        let server = Server::start(vec![
            Reply::json(429, json!({"error": {"message": "come back tomorrow"}}))
                .with_header("retry-after", "86400"),
        ])
        .await;
        let started = Instant::now();
        let err = client(&server)
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LlmError::Status {
                    status: 429,
                    attempts: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    })
    .await;
}

#[tokio::test]
async fn a_500_is_retried_with_backoff_then_succeeds() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Http {
                status: 500,
                headers: vec![],
                body: "upstream exploded".into(),
            },
            Reply::json(200, completion("recovered")),
        ])
        .await;
        let answer = client(&server).chat(ChatRequest::user("hi")).await.unwrap();
        assert_eq!(answer.content(), "recovered");
        assert_eq!(server.received().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_persistent_500_reports_status_and_body() {
    bounded(async {
        let server = Server::start(vec![Reply::Http {
            status: 500,
            headers: vec![],
            body: "upstream exploded".into(),
        }])
        .await;
        let err = client(&server)
            .retry(RetryPolicy::none())
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}/chat/completions answered 500 after 1 attempt(s): Internal Server Error: upstream exploded", server.base_url())
        );
        let LlmError::Status { body, .. } = &err else {
            panic!()
        };
        assert_eq!(body, "upstream exploded");
    })
    .await;
}

#[tokio::test]
async fn a_400_is_not_retried() {
    bounded(async {
        let server = Server::start(vec![
            Reply::json(
                400,
                json!({"error": {"message": "Invalid schema for response_format"}}),
            ),
            Reply::json(200, completion("should not be asked")),
        ])
        .await;
        let err = client(&server)
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}/chat/completions answered 400 after 1 attempt(s): Invalid schema for response_format", server.base_url())
        );
        assert!(!err.is_retryable());
        assert_eq!(server.received().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_silent_server_times_out() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Silence(Duration::from_secs(30)),
            Reply::Silence(Duration::from_secs(30)),
        ])
        .await;
        let started = Instant::now();
        let err = client(&server)
            .timeout(Duration::from_millis(200))
            .retry(RetryPolicy {
                max_retries: 1,
                initial_backoff: Duration::from_millis(10),
                after_timeout: Duration::from_millis(10),
                ..RetryPolicy::default()
            })
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LlmError::Timeout { attempts: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("within 200ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(server.received().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_stream_that_stalls_times_out_after_its_first_tokens() {
    bounded(async {
        let pieces = vec![
            format!("data: {}\n\n", text_chunk("partial")),
            "data: [DONE]\n\n".into(),
        ];
        let server = Server::start(vec![Reply::Sse {
            pieces,
            gap: Duration::from_secs(30),
        }])
        .await;
        let mut stream = client(&server)
            .timeout(Duration::from_millis(200))
            .chat_stream(ChatRequest::user("hi"))
            .await
            .unwrap();
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            StreamEvent::Text("partial".into())
        );
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
        assert!(
            stream.next().await.is_none(),
            "the stream ends after its error"
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_answers_say_what_the_server_sent() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Http {
                status: 200,
                headers: vec![],
                body: "<html>gateway</html>".into(),
            },
            Reply::json(200, json!({"id": "x", "choices": []})),
            Reply::Raw("this is not http\r\n\r\n".into()),
        ])
        .await;
        let llm = client(&server).retry(RetryPolicy::none());
        let err = llm.chat(ChatRequest::user("1")).await.unwrap_err();
        let LlmError::Malformed { reason, excerpt } = &err else {
            panic!("{err:?}")
        };
        assert!(reason.starts_with("not a chat completion"), "{reason}");
        assert_eq!(excerpt, "<html>gateway</html>");

        let err = llm.chat(ChatRequest::user("2")).await.unwrap_err();
        assert!(
            err.to_string().contains("the answer has no choices"),
            "{err}"
        );

        let err = llm.chat(ChatRequest::user("3")).await.unwrap_err();
        assert!(matches!(err, LlmError::Transport { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn malformed_streams_fail_instead_of_ending_quietly() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Sse {
                pieces: vec![
                    format!("data: {}\n\n", text_chunk("a")),
                    "data: {not json\n\n".into(),
                ],
                gap: Duration::ZERO,
            },
            Reply::Sse {
                pieces: vec![format!("data: {}\n\n", text_chunk("cut off"))],
                gap: Duration::ZERO,
            },
            Reply::Sse {
                pieces: vec![format!(
                    "data: {}\n\n",
                    json!({"error": {"message": "model overloaded"}})
                )],
                gap: Duration::ZERO,
            },
        ])
        .await;
        let llm = client(&server);

        let err = llm
            .chat_stream(ChatRequest::user("1"))
            .await
            .unwrap()
            .into_response()
            .await
            .unwrap_err();
        let LlmError::Malformed { reason, excerpt } = &err else {
            panic!("{err:?}")
        };
        assert!(reason.starts_with("a stream chunk is not JSON"), "{reason}");
        assert_eq!(excerpt, "{not json");

        let err = llm
            .chat_stream(ChatRequest::user("2"))
            .await
            .unwrap()
            .into_response()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no `[DONE]`"), "{err}");

        let err = llm
            .chat_stream(ChatRequest::user("3"))
            .await
            .unwrap()
            .into_response()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server reported an error mid-stream: model overloaded"
        );
    })
    .await;
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error_naming_the_url() {
    bounded(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = OpenAiClient::new(&format!("http://{addr}/v1"), "m")
            .unwrap()
            .retry(RetryPolicy::none())
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LlmError::Transport { attempts: 1, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("http://{addr}/v1/chat/completions")),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    use tidewater_llm::retrieval::Embedder;
    bounded(async {
        let server = Server::start(vec![
            Reply::json(
                200,
                json!({"object": "list", "data": [
                    {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
                    {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}
                ]}),
            ),
            Reply::json(200, json!({"data": [{"index": 0, "embedding": [1.0]}]})),
        ])
        .await;
        let embedder = client(&server).embedder("embed-small");
        let texts = vec!["first".to_string(), "second".to_string()];
        let vectors = embedder.embed(&texts).await.unwrap();
        assert_eq!(vectors, [vec![1.0, 0.0], vec![0.0, 1.0]]);
        let sent = &server.received()[0];
        assert_eq!(sent.path, "/v1/embeddings");
        assert_eq!(
            sent.body,
            json!({"model": "embed-small", "input": ["first", "second"]})
        );

        let err = embedder.embed(&texts).await.unwrap_err();
        assert!(
            err.to_string().contains("asked for 2 embeddings, got 1"),
            "{err}"
        );
    })
    .await;
}

/// llama-cpp-python's answer to `response_format: json_schema`: a 500 with a validation error.
fn json_schema_refused() -> Reply {
    Reply::json(
        500,
        json!({"error": {"message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}", "type": "internal_server_error"}}),
    )
}

#[tokio::test]
async fn structured_output_falls_back_to_json_object_when_json_schema_is_refused() {
    bounded(async {
        let server = Server::start(vec![
            json_schema_refused(),
            Reply::json(200, completion(r#"{"name": "Oslo", "population": 709000}"#)),
            Reply::json(
                200,
                completion(r#"{"name": "Bergen", "population": 291000}"#),
            ),
        ])
        .await;
        let llm = client(&server);
        let city: City = llm
            .structured(ChatRequest::user("Largest city of Norway?").system("Be exact."))
            .await
            .unwrap();
        assert_eq!((city.name.as_str(), city.population), ("Oslo", 709000));
        assert_eq!(llm.json_mode(), JsonMode::Object);
        // The refused request was not retried: one refusal, one fallback.
        let sent = server.received();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].body["response_format"]["type"], "json_schema");
        assert_eq!(
            sent[1].body["response_format"],
            json!({"type": "json_object"})
        );
        let system = sent[1].body["messages"][0]["content"].as_str().unwrap();
        assert!(
            system.starts_with("Be exact.\n\nAnswer with one JSON object only"),
            "{system}"
        );
        assert!(
            system.contains(r#""population""#),
            "the schema is in the prompt: {system}"
        );
        // The client remembers: the next structured call starts with json_object.
        let answer = llm
            .chat(ChatRequest::user("Second city?").json_output("City", City::json_schema()))
            .await
            .unwrap();
        assert_eq!(answer.json_mode, Some(JsonMode::Object));
        let sent = server.received();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2].body["response_format"]["type"], "json_object");
        assert_eq!(sent[2].body["messages"][0]["role"], "system");
    })
    .await;
}

#[tokio::test]
async fn structured_output_falls_back_to_the_prompt_alone_and_still_validates() {
    bounded(async {
        let server = Server::start(vec![
            json_schema_refused(),
            Reply::json(
                400,
                json!({"error": {"message": "response_format json_object is not supported"}}),
            ),
            Reply::json(200, completion(r#"Sure: {"name": "Oslo", "population": -1}"#)),
        ])
        .await;
        let llm = client(&server);
        let err = llm
            .structured::<City>(ChatRequest::user("Largest city of Norway?"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LlmError::InvalidOutput { reason, .. } if reason.contains("$.population")),
            "{err:?}"
        );
        assert_eq!(llm.json_mode(), JsonMode::Prompt);
        let sent = server.received();
        assert_eq!(sent.len(), 3);
        assert!(sent[2].body.get("response_format").is_none());
        assert_eq!(sent[2].body["messages"][0]["role"], "system");
        assert_eq!(sent[2].body["messages"][1]["content"], "Largest city of Norway?");
    })
    .await;
}

#[tokio::test]
async fn a_pinned_json_mode_does_not_fall_back() {
    bounded(async {
        let server = Server::start(vec![json_schema_refused()]).await;
        let llm = client(&server);
        let err = llm
            .chat(
                ChatRequest::user("hi")
                    .json_output("City", City::json_schema())
                    .json_mode(JsonMode::Schema),
            )
            .await
            .unwrap_err();
        assert!(err.rejects_response_format(), "{err}");
        assert!(err.is_input_error() && !err.is_retryable());
        assert_eq!(
            server.received().len(),
            1,
            "a 500 that is an input error is not retried"
        );
        assert_eq!(llm.json_mode(), JsonMode::Schema);
    })
    .await;
}

#[tokio::test]
async fn a_404_names_the_url_and_suggests_a_missing_v1() {
    bounded(async {
        let server = Server::start(vec![
            Reply::json(404, json!({"detail": "Not Found"})),
            Reply::json(404, json!({"detail": "Not Found"})),
        ])
        .await;
        let bare = format!("http://{}", server.addr);
        let err = OpenAiClient::new(&bare, "m")
            .unwrap()
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("http://{}/chat/completions answered 404", server.addr)), "{text}");
        assert!(text.contains(&format!("is `/v1` missing from the base URL? OpenAI-compatible servers answer under `http://{}/v1`", server.addr)), "{text}");
        // With /v1 in place, a 404 (a wrong model, say) gets no such hint.
        let err = client(&server).chat(ChatRequest::user("hi")).await.unwrap_err();
        assert!(!err.to_string().contains("missing"), "{err}");
        assert_eq!(server.received().len(), 2, "404s are not retried");
    })
    .await;
}

#[tokio::test]
async fn tool_choice_auto_is_sent_whenever_tools_are_offered() {
    bounded(async {
        let server = Server::start(vec![
            Reply::json(200, completion("a")),
            Reply::json(200, completion("b")),
            Reply::json(200, completion("c")),
        ])
        .await;
        let llm = client(&server);
        llm.chat(ChatRequest::user("weather?").tool(weather_tool()))
            .await
            .unwrap();
        llm.chat(
            ChatRequest::user("weather?")
                .tool(weather_tool())
                .tool_choice(ToolChoice::Required),
        )
        .await
        .unwrap();
        llm.chat(ChatRequest::user("no tools")).await.unwrap();
        let sent = server.received();
        assert_eq!(sent[0].body["tool_choice"], "auto");
        assert_eq!(sent[1].body["tool_choice"], "required");
        assert!(sent[2].body.get("tool_choice").is_none());
    })
    .await;
}

#[tokio::test]
async fn usage_is_absent_when_the_server_reports_none_or_zeros() {
    bounded(async {
        let no_usage = json!({"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]});
        let zeros = json!({"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}});
        let timings = json!({"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "timings": {"prompt_n": 31, "predicted_n": 2}});
        let server = Server::start(vec![
            Reply::json(200, no_usage),
            Reply::json(200, zeros),
            Reply::json(200, timings),
            // A stream without a usage chunk (llama-cpp-python ignores include_usage).
            Reply::sse(&[text_chunk("hi"), json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})]),
            // A stream whose usage rides in its last choice.
            Reply::sse(&[
                text_chunk("hi"),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                    "usage": {"prompt_tokens": 9, "completion_tokens": 1}}]}),
            ]),
        ])
        .await;
        let llm = client(&server);
        assert_eq!(llm.chat(ChatRequest::user("a")).await.unwrap().usage, None);
        assert_eq!(llm.chat(ChatRequest::user("b")).await.unwrap().usage, None);
        assert_eq!(
            llm.chat(ChatRequest::user("c")).await.unwrap().usage,
            Some(Usage { input_tokens: 31, output_tokens: 2 })
        );
        let streamed = llm.chat_stream(ChatRequest::user("d")).await.unwrap().into_response().await.unwrap();
        assert_eq!((streamed.content(), streamed.usage), ("hi", None));
        let streamed = llm.chat_stream(ChatRequest::user("e")).await.unwrap().into_response().await.unwrap();
        assert_eq!(streamed.usage, Some(Usage { input_tokens: 9, output_tokens: 1 }));
        assert_eq!(server.received()[3].body["stream_options"]["include_usage"], true);
    })
    .await;
}

#[tokio::test]
async fn a_timed_out_request_closes_its_connection() {
    bounded(async {
        let (closed, mut closes) = tokio::sync::mpsc::unbounded_channel();
        let server = Server::start(vec![Reply::UntilClosed(closed)]).await;
        let err = client(&server)
            .retry(RetryPolicy::none())
            .chat(ChatRequest::user("hi").timeout(Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Timeout { timeout, .. } if timeout == Duration::from_millis(200)), "{err:?}");
        let closed_at = tokio::time::timeout(Duration::from_secs(2), closes.recv())
            .await
            .expect("the server saw the connection closed")
            .unwrap();
        let sent_at = server.received()[0].at;
        assert!(closed_at >= sent_at);
    })
    .await;
}

#[tokio::test]
async fn a_timed_out_stream_closes_its_connection() {
    bounded(async {
        let (closed, mut closes) = tokio::sync::mpsc::unbounded_channel();
        let server = Server::start(vec![Reply::UntilClosed(closed)]).await;
        let result = client(&server)
            .retry(RetryPolicy::none())
            .timeout(Duration::from_millis(200))
            .chat_stream(ChatRequest::user("hi"))
            .await;
        assert!(
            matches!(result, Err(LlmError::Timeout { .. })),
            "{result:?}"
        );
        tokio::time::timeout(Duration::from_secs(2), closes.recv())
            .await
            .expect("the server saw the connection closed")
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_timed_out_request_is_retried_only_after_the_timeout_backoff() {
    bounded(async {
        let server = Server::start(vec![
            Reply::Silence(Duration::from_secs(30)),
            Reply::json(200, completion("late but fine")),
        ])
        .await;
        let answer = client(&server)
            .timeout(Duration::from_millis(100))
            .retry(RetryPolicy {
                max_retries: 1,
                initial_backoff: Duration::from_millis(1),
                after_timeout: Duration::from_millis(400),
                ..RetryPolicy::default()
            })
            .chat(ChatRequest::user("hi"))
            .await
            .unwrap();
        assert_eq!(answer.content(), "late but fine");
        let sent = server.received();
        assert_eq!(sent.len(), 2);
        let gap = sent[1].at - sent[0].at;
        assert!(
            gap >= Duration::from_millis(500),
            "timeout (100 ms) + backoff (400 ms), got {gap:?}"
        );
    })
    .await;
}

#[derive(Debug, Deserialize)]
struct City {
    name: String,
    population: u64,
}

impl JsonSchema for City {
    fn json_schema() -> serde_json::Value {
        ObjectSchema::new()
            .field::<String>("name", "the city")
            .field::<u64>("population", "inhabitants")
            .build()
    }
}

/// llama-cpp-python's answer to a streamed request with `tool_choice: auto` when the model
/// picks a tool.
fn streaming_tools_refused() -> Reply {
    Reply::json(
        500,
        json!({"error": {"message": "Automatic streaming tool choice is not supported", "type": "internal_server_error"}}),
    )
}

#[tokio::test]
async fn a_server_that_cannot_stream_tool_calls_is_asked_without_streaming() {
    bounded(async {
        let call = json!({
            "id": "chatcmpl-2", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
        });
        let server = Server::start(vec![
            streaming_tools_refused(),
            Reply::json(200, call),
            Reply::json(200, completion("It is 4 °C in Oslo.")),
        ])
        .await;
        let llm = client(&server);
        let request = ChatRequest::user("Weather in Oslo?").tools(vec![weather_tool()]);
        let mut texts = Vec::new();
        let answer = llm
            .chat_stream(request.clone())
            .await
            .unwrap()
            .for_each_text(|t| texts.push(t.to_string()))
            .await
            .unwrap();
        assert_eq!(answer.calls()[0].name, "get_weather");
        assert!(texts.is_empty(), "{texts:?}");
        assert_eq!(answer.usage.map(|u| u.input_tokens), Some(30));
        let sent = server.received();
        assert_eq!(sent.len(), 2, "the refusal is not retried");
        assert_eq!(sent[0].body["stream"], true);
        assert_eq!(sent[1].body.get("stream"), None);
        assert_eq!(sent[1].body["tool_choice"], "auto");
        // Remembered: the next request with tools is not streamed; its text comes in one piece.
        let answer = llm
            .chat_stream(request)
            .await
            .unwrap()
            .for_each_text(|t| texts.push(t.to_string()))
            .await
            .unwrap();
        assert_eq!(texts, ["It is 4 °C in Oslo."]);
        assert_eq!(answer.content(), "It is 4 °C in Oslo.");
        let sent = server.received();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2].body.get("stream"), None);
    })
    .await;
}

#[tokio::test]
async fn other_refusals_are_not_read_as_a_streaming_refusal() {
    bounded(async {
        let server = Server::start(vec![Reply::json(
            400,
            json!({"error": {"message": "tools: unsupported parameter", "type": "invalid_request_error"}}),
        )])
        .await;
        let llm = client(&server);
        let Err(error) = llm
            .chat_stream(ChatRequest::user("Hi").tools(vec![weather_tool()]))
            .await
        else {
            panic!("the refusal is an error")
        };
        assert_eq!(error.status(), Some(400));
        assert!(!error.rejects_streaming_tools());
        assert_eq!(server.received().len(), 1);
    })
    .await;
}
