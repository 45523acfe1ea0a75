//! A function-calling agent: the model calls typed Rust tools (several at once when it can),
//! reads their results, and answers. The agent is a workflow (`tidewater_llm::agent::Agent`);
//! this program gives it tools and prints what happens on the run's stream.
//!
//! ```text
//! cargo run -p examples --example agent
//! cargo run -p examples --example agent -- "Is it warmer in Oslo or in Lisbon, in Fahrenheit?"
//! ```
//!
//! Offline, an announced rule-based stand-in plays the model's part (it asks for the weather
//! of the cities it recognises, converts the warmer temperature, then answers); the weather
//! tool itself is a fixed demo table in both modes.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tidewater::prelude::*;
use tidewater_llm::agent::{Agent, AgentError, AgentToken, Tool, ToolCallRequest, ToolCallResult};
use tidewater_llm::schema::{JsonSchema, ObjectSchema};
use tidewater_llm::serde_json::Value;
use tidewater_llm::{ChatRequest, ChatResponse, MockLlm, Role, ToolCall};

/// Arguments of `get_weather`.
#[derive(Deserialize)]
struct CityArgs {
    city: String,
}

impl JsonSchema for CityArgs {
    fn json_schema() -> Value {
        ObjectSchema::new()
            .field::<String>("city", "a city name, e.g. Oslo")
            .build()
    }
}

/// Arguments of `celsius_to_fahrenheit`.
#[derive(Deserialize)]
struct Celsius {
    celsius: f64,
}

impl JsonSchema for Celsius {
    fn json_schema() -> Value {
        ObjectSchema::new()
            .field::<f64>("celsius", "a temperature in °C")
            .build()
    }
}

/// A demo weather service: a fixed table, with a little latency.
async fn get_weather(args: CityArgs) -> Result<String, String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (temp, sky) = match args.city.to_lowercase().as_str() {
        "oslo" => (4.0, "light snow"),
        "lisbon" => (19.0, "sunny"),
        "tokyo" => (12.0, "cloudy"),
        "nairobi" => (24.0, "scattered showers"),
        _ => {
            return Err(format!(
                "no weather data for `{}` (demo table: Oslo, Lisbon, Tokyo, Nairobi)",
                args.city
            ));
        }
    };
    Ok(format!("{}: {temp} °C, {sky}", args.city))
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "get_weather",
            "The current weather in a city (temperature in °C)",
            get_weather,
        ),
        Tool::sync(
            "celsius_to_fahrenheit",
            "Converts °C to °F",
            |a: Celsius| Ok::<_, String>(format!("{:.1} °F", a.celsius * 9.0 / 5.0 + 32.0)),
        ),
    ]
}

/// The offline stand-in: a rule-based policy in the model's seat. It reads the conversation
/// like a model would and picks the next move.
fn rule_based_policy(request: &ChatRequest) -> ChatResponse {
    let question = request
        .messages
        .iter()
        .find(|m| m.role == Role::User)
        .map_or(String::new(), |m| m.content.to_lowercase());
    let results: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.as_str())
        .collect();
    let weather: Vec<(&str, f64)> = results
        .iter()
        .filter_map(|r| {
            let (city, rest) = r.split_once(": ")?;
            Some((city, rest.split(' ').next()?.parse().ok()?))
        })
        .collect();
    if results.is_empty() {
        let calls: Vec<ToolCall> = ["Oslo", "Lisbon", "Tokyo", "Nairobi"]
            .iter()
            .filter(|c| question.contains(&c.to_lowercase()))
            .enumerate()
            .map(|(i, c)| {
                ToolCall::new(
                    format!("call_{i}"),
                    "get_weather",
                    format!(r#"{{"city": "{c}"}}"#),
                )
            })
            .collect();
        if calls.is_empty() {
            return ChatResponse::text(
                "I can only look up the weather in Oslo, Lisbon, Tokyo and Nairobi.",
            );
        }
        return ChatResponse::tool_calls(calls);
    }
    let warmest = weather.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    let fahrenheit = results.iter().find(|r| r.ends_with("°F"));
    match (warmest, fahrenheit) {
        (Some((_, celsius)), None) if question.contains("fahrenheit") => {
            ChatResponse::tool_calls(vec![ToolCall::new(
                "call_f",
                "celsius_to_fahrenheit",
                format!(r#"{{"celsius": {celsius}}}"#),
            )])
        }
        (Some((city, celsius)), f) => {
            let summary: Vec<String> = results
                .iter()
                .filter(|r| !r.ends_with("°F"))
                .map(|r| r.to_string())
                .collect();
            let f = f.map_or(String::new(), |f| format!(" ({f})"));
            ChatResponse::text(format!(
                "{}. The warmest is {city} at {celsius} °C{f}.",
                summary.join("; ")
            ))
        }
        (None, _) => ChatResponse::text(format!("The tools said: {}", results.join("; "))),
    }
}

async fn run() -> Result<(), Report> {
    let question = std::env::args().nth(1).unwrap_or_else(|| {
        "Is it warmer in Oslo or in Lisbon right now? Give the warmer one in Fahrenheit.".into()
    });
    let llm = tidewater_llm::model_from_env_or(|| {
        MockLlm::named("offline-rule-based-policy")
            .responder(rule_based_policy)
            .token_delay(Duration::from_millis(20))
    })?;
    let agent = Agent::new(llm, tools())
        .system_prompt("You answer questions about the weather with the tools. Be brief.")
        .max_iterations(6)
        .answer_on_last_turn(true)
        .max_tokens(256);

    println!("Q: {question}\n");
    let mut run = agent.start(question);
    let mut events = run.events();
    let mut answering = false;
    while let Some(item) = events.next().await {
        if let Some(ToolCallRequest { call, .. }) = item.event::<ToolCallRequest>() {
            println!("→ {}({})", call.name, call.arguments);
        } else if let Some(ToolCallResult { call, content, .. }) = item.event::<ToolCallResult>() {
            println!("← {}: {content}", call.name);
        } else if let Some(AgentToken(token)) = item.event::<AgentToken>() {
            if !answering {
                print!("\nA: ");
                answering = true;
            }
            print!("{token}");
            std::io::stdout().flush()?;
        }
    }
    match run.await {
        Ok(answer) => {
            println!(
                "\n\n({} model calls, {} tool calls, {})",
                answer.model_calls,
                answer.tool_calls.len(),
                answer.usage_line()
            );
            if answer.tools_cut_off {
                println!(
                    "note: the model reached its last turn and was asked to answer from the \
                     tool results it had"
                );
            }
            if answer.used_no_tool() {
                println!(
                    "note: the model answered without using any tool; the answer is its own \
                     guess, not the tools' data"
                );
            }
            Ok(())
        }
        Err(error) => {
            if let Some(AgentError::MaxIterations { limit, .. }) = AgentError::of(&error) {
                eprintln!("the agent gave up after {limit} model turns");
            }
            Err(error.into())
        }
    }
}

/// The pictures of this example's workflows: `cargo run --example agent -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("agent", Agent::GRAPH)];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
}

/// Runs the example; an error is printed with its causes and fails the process.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    examples::graph_flag(PICTURES);
    Report::exit(run().await)
}
