//! The smallest useful workflow: two steps joined by one event, each asking a language model.
//!
//! Run it with `cargo run --example quickstart`. With no `OPENAI_API_KEY` or `OPENAI_BASE_URL`
//! in the environment it uses an offline stand-in model (and says so); set them (and
//! `OPENAI_MODEL`) to use a real one, e.g. a local Ollama at `http://localhost:11434/v1`.

use std::sync::Arc;

use tidewater::prelude::*;
use tidewater_llm::{ChatRequest, ChatResponse, Llm, LlmError, MockLlm, Role, model_from_env_or};

/// Enough for a short joke or one sentence, and a bound on a chatty model.
const MAX_TOKENS: u32 = 120;

/// The event between the two steps: a joke waiting for its critique.
#[derive(Debug, Clone, Event)]
struct Joke {
    text: String,
}

/// The workflow: its fields are the steps' resources, here the model.
struct JokeFlow {
    llm: Arc<dyn Llm>,
}

#[workflow]
impl JokeFlow {
    /// Takes the topic from the start event and asks the model for a joke about it.
    #[step]
    async fn write_joke(&self, ev: StartEvent<String>) -> Result<Joke, LlmError> {
        let topic = ev.into_inner();
        let request =
            ChatRequest::user(format!("Write a short joke about {topic}.")).max_tokens(MAX_TOKENS);
        let text = self.llm.chat(request).await?.message.content;
        Ok(Joke { text })
    }

    /// Asks the model to critique the joke, and ends the run with joke and critique.
    #[step]
    async fn critique(&self, ev: Joke) -> Result<StopEvent<String>, LlmError> {
        let request = ChatRequest::user(format!("Critique this joke in one sentence: {}", ev.text))
            .max_tokens(MAX_TOKENS);
        let critique = self.llm.chat(request).await?.message.content;
        Ok(StopEvent(format!(
            "Joke: {}\nCritique: {critique}",
            ev.text
        )))
    }
}

/// The offline stand-in: answers the two prompts of this example without a network.
fn stand_in() -> MockLlm {
    MockLlm::named("offline-jokes").responder(|request| {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        if let Some(topic) = prompt
            .strip_prefix("Write a short joke about ")
            .and_then(|rest| rest.strip_suffix('.'))
        {
            ChatResponse::text(format!(
                "Why did the {topic} cross the road? To get to the other side!"
            ))
        } else {
            ChatResponse::text("A classic: the setup is familiar, but the timing still works.")
        }
    })
}

/// The pictures of this example's workflows: `cargo run --example quickstart -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("quickstart", JokeFlow::GRAPH)];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
    examples::check_embedded(&["docs/visualize.md"], "quickstart.dot");
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    examples::graph_flag(PICTURES);
    let llm = model_from_env_or(stand_in)?;
    println!("{}", JokeFlow::graph());
    let output = JokeFlow { llm }.run("chicken".to_string()).await?;
    println!("{output}");
    Ok(())
}
