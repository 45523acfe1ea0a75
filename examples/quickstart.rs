//! The smallest useful workflow: two steps joined by one event.
//!
//! Run it with `cargo run --example quickstart`.

use workflow_core::prelude::*;

/// The event between the two steps: a joke waiting for its critique.
#[derive(Debug, Clone, Event)]
struct Joke {
    text: String,
}

/// The workflow: its fields would be the steps' resources (a model client, a database...).
struct JokeFlow;

#[workflow]
impl JokeFlow {
    /// Takes the topic from the start event and writes a joke about it.
    #[step]
    async fn write_joke(&self, ev: StartEvent<String>) -> Joke {
        let topic = ev.into_inner();
        Joke {
            text: format!("Why did the {topic} cross the road? To get to the other side!"),
        }
    }

    /// Critiques the joke and ends the run with the critique.
    #[step]
    async fn critique(&self, ev: Joke) -> StopEvent<String> {
        let verdict = if ev.text.len() > 40 {
            "a classic, if long"
        } else {
            "short and sweet"
        };
        StopEvent(format!("Joke: {}\nCritique: {verdict}.", ev.text))
    }
}

#[tokio::main]
async fn main() -> Result<(), WorkflowError> {
    println!("{}", JokeFlow::graph());
    let output = JokeFlow.run("chicken".to_string()).await?;
    println!("{output}");
    Ok(())
}
