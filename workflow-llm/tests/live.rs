//! The examples' calls against a real OpenAI-compatible server: opt-in, because it needs one.
//!
//! ```text
//! eval "$(../shared/tools/local-llm.sh start)"        # or any server: Ollama, vLLM, ...
//! TIDEWATER_LIVE_LLM=1 cargo test -p tidewater-llm --test live -- --nocapture
//! ```
//!
//! Without `TIDEWATER_LIVE_LLM=1` every test returns at once (and says so). The server is read
//! from `OPENAI_BASE_URL`, `OPENAI_MODEL`, `OPENAI_API_KEY`. The checks are what any model must
//! satisfy, not what a good one would answer: a small local model is often wrong, never silent.
//! One test runs the calls in turn, since a local server computes one answer at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tidewater::prelude::*;
use tidewater_llm::agent::{Agent, Tool};
use tidewater_llm::schema::{JsonSchema, ObjectSchema};
use tidewater_llm::{
    ChatRequest, FinishReason, JsonMode, Llm, LlmError, LlmExt, OpenAiClient, RetryPolicy,
    ToolChoice,
};

fn live() -> Option<OpenAiClient> {
    if std::env::var("TIDEWATER_LIVE_LLM").ok().as_deref() != Some("1") {
        eprintln!("skipped: set TIDEWATER_LIVE_LLM=1 and OPENAI_BASE_URL to run the live suite");
        return None;
    }
    let client = OpenAiClient::from_env().expect("OPENAI_BASE_URL and friends");
    Some(client.retry(RetryPolicy {
        max_retries: 1,
        ..RetryPolicy::default()
    }))
}

#[derive(Debug, Deserialize)]
struct City {
    name: String,
    country: String,
}

impl JsonSchema for City {
    fn json_schema() -> serde_json::Value {
        ObjectSchema::new()
            .field::<String>("name", "the city's name")
            .field::<String>("country", "the country it is in")
            .build()
    }
}

#[derive(Deserialize)]
struct CityArgs {
    city: String,
}

impl JsonSchema for CityArgs {
    fn json_schema() -> serde_json::Value {
        ObjectSchema::new()
            .field::<String>("city", "a city name, e.g. Oslo")
            .build()
    }
}

fn step(name: &str, started: Instant) {
    eprintln!(
        "live: {name} done after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_calls_work_against_the_live_server() {
    let Some(llm) = live() else { return };
    let started = Instant::now();

    // quickstart: a bounded plain answer.
    let answer = llm
        .chat(ChatRequest::user("Write a short joke about a chicken.").max_tokens(40))
        .await
        .unwrap();
    assert!(!answer.content().trim().is_empty(), "an empty answer");
    if let Some(usage) = answer.usage {
        assert!(usage.input_tokens > 0, "usage is real or absent: {usage:?}");
    }
    assert!(answer.usage.is_none_or(|u| u.output_tokens <= 40 + 1));
    step("quickstart (chat)", started);

    // rag: a streamed, bounded answer; usage is real or absent.
    let mut text = String::new();
    let streamed = llm
        .stream_text(
            ChatRequest::user("Name three colours.")
                .max_tokens(16)
                .temperature(0.0),
            |delta| text.push_str(delta),
        )
        .await
        .unwrap();
    assert_eq!(streamed.content(), text);
    assert!(!text.trim().is_empty());
    assert!(streamed.usage.is_none_or(|u| u.input_tokens > 0));
    assert!(matches!(
        streamed.finish_reason,
        Some(FinishReason::Stop | FinishReason::Length)
    ));
    step("rag (stream)", started);

    // self_refine: structured output, whatever the server supports; the answer is validated.
    let result = llm
        .chat(
            ChatRequest::user("The largest city of Norway, as JSON.")
                .json_output("City", City::json_schema())
                .max_tokens(60)
                .temperature(0.0),
        )
        .await;
    let answer = result.unwrap();
    let mode = answer
        .json_mode
        .expect("the answer says which mode was used");
    eprintln!("live: structured output as {mode}: {}", answer.content());
    assert_eq!(mode, llm.json_mode());
    match tidewater_llm::schema::parse_structured::<City>(answer.content(), &City::json_schema()) {
        Ok(city) => assert!(!city.name.is_empty() && !city.country.is_empty()),
        // A small model may get it wrong; the failure must then say what is wrong.
        Err(problem) => assert!(!problem.is_empty()),
    }
    let again: Result<City, LlmError> = llm
        .structured(ChatRequest::user("The capital of France, as JSON.").max_tokens(60))
        .await;
    match again {
        Ok(city) => assert!(!city.name.is_empty()),
        Err(LlmError::InvalidOutput { reason, .. }) => assert!(!reason.is_empty()),
        Err(other) => panic!("structured output failed: {other}"),
    }
    if mode != JsonMode::Schema {
        eprintln!("live: the server refused json_schema; the client fell back to {mode}");
    }
    step("self_refine (structured)", started);

    // agent: a real tool call, the tool's result back to the model, a final answer.
    let get_weather = Tool::sync(
        "get_weather",
        "The current weather in a city",
        |a: CityArgs| Ok::<_, String>(format!("{}: 4.0 °C, light snow", a.city)),
    );
    let answer = Agent::new(Arc::new(llm.clone()) as Arc<dyn Llm>, vec![get_weather])
        .system_prompt("You answer questions about the weather with the tools. Be brief.")
        .tool_choice(ToolChoice::Tool("get_weather".into()))
        .max_tokens(96)
        .max_iterations(3)
        .answer_on_last_turn(true)
        .run("What is the weather in Oslo?".into())
        .await
        .unwrap();
    eprintln!(
        "live: agent: {} ({} model calls, {} tool calls, {}{})",
        answer.text.trim(),
        answer.model_calls,
        answer.tool_calls.len(),
        answer.usage_line(),
        if answer.tools_cut_off {
            ", asked to answer on its last turn"
        } else {
            ""
        }
    );
    assert!(
        !answer.text.trim().is_empty() && !answer.text.trim_start().starts_with("functions."),
        "a real answer, not a leaked call: {:?}",
        answer.text
    );
    assert!(!answer.tool_calls.is_empty(), "the agent made no tool call");
    assert!(
        answer
            .tool_calls
            .iter()
            .all(|c| c.call.name == "get_weather")
    );
    assert!(answer.usage.is_none_or(|u| u.input_tokens > 0));
    step("agent (tools)", started);
    assert!(started.elapsed() < Duration::from_secs(900));
}
