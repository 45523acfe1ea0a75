//! Self-refine: extract JSON from free text, validate it against a schema, and when it does
//! not pass, send the model its own output with the validation errors and ask again, a bounded
//! number of times. Running out of attempts is an error, never a half-valid result.
//!
//! ```text
//! cargo run -p examples --example self_refine
//! cargo run -p examples --example self_refine -- "text of an order e-mail"
//! ```
//!
//! Offline, an announced stand-in plays the model: its first answer has deliberate mistakes
//! (a quantity in words, a missing currency) so that you see the retry loop at work.

use std::sync::Arc;

use serde::Deserialize;
use tidewater::prelude::*;
use tidewater_llm::schema::{self, JsonSchema, ObjectSchema, string_enum};
use tidewater_llm::serde_json::{Value, json};
use tidewater_llm::{ChatRequest, ChatResponse, Llm, LlmError, Message, MockLlm};

/// How many times the model may try.
const MAX_ATTEMPTS: u32 = 3;

/// What we want out of the e-mail.
#[derive(Debug, Clone, Deserialize)]
struct Order {
    customer: String,
    currency: String,
    items: Vec<Item>,
    delivery_date: Option<String>,
}

/// One line of the order.
#[derive(Debug, Clone, Deserialize)]
struct Item {
    product: String,
    quantity: u32,
    unit_price: f64,
}

impl JsonSchema for Item {
    fn json_schema() -> Value {
        ObjectSchema::new()
            .field::<String>("product", "the product name")
            .property(
                "quantity",
                json!({"type": "integer", "minimum": 1}),
                "how many",
                true,
            )
            .property(
                "unit_price",
                json!({"type": "number", "exclusiveMinimum": 0}),
                "price of one",
                true,
            )
            .build()
    }
}

impl JsonSchema for Order {
    fn json_schema() -> Value {
        ObjectSchema::new()
            .field::<String>("customer", "who ordered")
            .property(
                "currency",
                string_enum(["EUR", "USD", "GBP"]),
                "ISO currency code",
                true,
            )
            .property(
                "items",
                json!({"type": "array", "items": Item::json_schema(), "minItems": 1}),
                "",
                true,
            )
            .optional::<String>("delivery_date", "YYYY-MM-DD, if the text gives one")
            .build()
    }
}

/// Ask the model (again): the text, and what went wrong last time.
#[derive(Debug, Clone, Event)]
struct Extract {
    text: String,
    attempt: u32,
    /// The previous output and why it was rejected.
    feedback: Option<(String, String)>,
}

/// What the model answered, waiting for validation.
#[derive(Debug, Clone, Event)]
struct Candidate {
    text: String,
    attempt: u32,
    output: String,
}

/// The loop ran out of attempts.
#[derive(Debug)]
struct GaveUp {
    attempts: u32,
    last_error: String,
}

impl std::error::Error for GaveUp {}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no valid order after {} attempts; last problem: {}",
            self.attempts, self.last_error
        )
    }
}

struct SelfRefine {
    llm: Arc<dyn Llm>,
}

#[workflow]
impl SelfRefine {
    #[step]
    async fn begin(&self, ev: StartEvent<String>) -> Extract {
        Extract {
            text: ev.into_inner(),
            attempt: 1,
            feedback: None,
        }
    }

    /// Asks for the order as JSON following the schema; on a retry, shows the model its
    /// previous answer and the errors.
    #[step]
    async fn extract(&self, ev: Extract) -> Result<Candidate, LlmError> {
        let mut request = ChatRequest::user(format!(
            "Extract the order from this e-mail:\n\n{}",
            ev.text
        ))
        .system("You extract data as JSON. Answer with the JSON object only.")
        .json_output("Order", Order::json_schema())
        .temperature(0.0)
        .max_tokens(400);
        if let Some((previous, errors)) = &ev.feedback {
            request = request
                .message(Message::assistant(previous.clone()))
                .message(Message::user(format!(
                    "That JSON failed validation: {errors}. Answer again with corrected JSON only."
                )));
        }
        println!("attempt {}: asking the model…", ev.attempt);
        let answer = self.llm.chat(request).await?;
        if let Some(mode) = answer.json_mode {
            println!("attempt {}: structured output as {mode}", ev.attempt);
        }
        Ok(Candidate {
            text: ev.text,
            attempt: ev.attempt,
            output: answer.message.content,
        })
    }

    /// Validates the candidate: done, or another attempt with the errors, or give up.
    #[step]
    async fn validate(&self, ev: Candidate) -> Result<Either<Extract, StopEvent<Order>>, GaveUp> {
        match schema::parse_structured::<Order>(&ev.output, &Order::json_schema()) {
            Ok(order) => Ok(Either::Right(StopEvent(order))),
            Err(problem) => {
                println!("attempt {}: rejected: {problem}", ev.attempt);
                if ev.attempt >= MAX_ATTEMPTS {
                    return Err(GaveUp {
                        attempts: ev.attempt,
                        last_error: problem,
                    });
                }
                Ok(Either::Left(Extract {
                    text: ev.text,
                    attempt: ev.attempt + 1,
                    feedback: Some((ev.output, problem)),
                }))
            }
        }
    }
}

/// The offline stand-in: a first answer with typical mistakes, then the corrected one once it
/// is shown the validation errors.
fn scripted_extractor(request: &ChatRequest) -> ChatResponse {
    let retrying = request
        .messages
        .iter()
        .any(|m| m.content.contains("failed validation"));
    if retrying {
        ChatResponse::text(
            r#"{"customer": "Maria Lopez", "currency": "EUR", "delivery_date": "2025-03-14",
                "items": [{"product": "oak desk", "quantity": 2, "unit_price": 349.0},
                          {"product": "desk lamp", "quantity": 1, "unit_price": 39.9}]}"#,
        )
    } else {
        ChatResponse::text(
            "Here is the order:\n```json\n{\"customer\": \"Maria Lopez\", \"delivery_date\": \"2025-03-14\",\n \"items\": [{\"product\": \"oak desk\", \"quantity\": \"two\", \"unit_price\": 349.0},\n           {\"product\": \"desk lamp\", \"quantity\": 1, \"unit_price\": 39.9}]}\n```",
        )
    }
}

const EMAIL: &str = "Hi! This is Maria Lopez. I'd like two of the oak desks at €349 each and one desk \
lamp (€39.90). Could you deliver them on 14 March 2025? Thanks, Maria";

async fn run() -> Result<(), Report> {
    let text = std::env::args().nth(1).unwrap_or_else(|| EMAIL.to_string());
    let llm = tidewater_llm::model_from_env_or(|| {
        MockLlm::named("offline-scripted-extractor").responder(scripted_extractor)
    })?;
    println!("e-mail: {text}\n");
    match (SelfRefine { llm }).run(text).await {
        Ok(order) => {
            println!("\nvalid order for {} ({}):", order.customer, order.currency);
            let mut total = 0.0;
            for item in &order.items {
                println!(
                    "  {} × {} at {:.2}",
                    item.quantity, item.product, item.unit_price
                );
                total += f64::from(item.quantity) * item.unit_price;
            }
            println!("  total {total:.2} {}", order.currency);
            if let Some(date) = order.delivery_date {
                println!("  deliver on {date}");
            }
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// The pictures of this example's workflows: `cargo run --example self_refine -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("self_refine", SelfRefine::GRAPH)];

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
