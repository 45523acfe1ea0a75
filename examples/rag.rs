//! Retrieval-augmented generation: ingest a folder of text, retrieve, rerank, and synthesize
//! an answer that cites its sources, streaming it as it is written.
//!
//! ```text
//! cargo run -p examples --example rag
//! cargo run -p examples --example rag -- "How long does charging take?" [folder]
//! ```
//!
//! With no `OPENAI_API_KEY`/`OPENAI_BASE_URL` it runs offline: the index uses the built-in
//! hashed bag-of-words embedding, and the answer comes from an announced stand-in that quotes
//! the best-matching sentences. With `OPENAI_BASE_URL=http://localhost:11434/v1
//! OPENAI_MODEL=llama3.2` (Ollama) or an OpenAI key, a real model writes the answer.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tidewater::prelude::*;
use tidewater_llm::retrieval::{self, HashEmbedder, Hit, VectorIndex};
use tidewater_llm::{ChatRequest, ChatResponse, Llm, LlmError, MockLlm};

/// The question and the candidates the vector search found.
#[derive(Debug, Clone, Event)]
struct Retrieved {
    question: String,
    hits: Vec<Hit>,
}

/// The question and the few passages worth showing the model.
#[derive(Debug, Clone, Event)]
struct Reranked {
    question: String,
    passages: Vec<Hit>,
}

/// A piece of the answer, streamed to whoever watches the run.
#[derive(Debug, Clone, Event)]
struct Token(String);

/// The answer and the passages it was based on.
#[derive(Debug, Clone)]
struct Answer {
    text: String,
    sources: Vec<Hit>,
    /// Whether the answer stopped at `MAX_ANSWER_TOKENS`.
    cut: bool,
    /// Tokens used, when the server said.
    usage: Option<tidewater_llm::Usage>,
}

/// The longest answer: a small local model otherwise copies its sources for minutes.
const MAX_ANSWER_TOKENS: u32 = 200;

/// The RAG workflow: its fields are the steps' resources.
struct Rag {
    llm: Arc<dyn Llm>,
    index: VectorIndex<HashEmbedder>,
}

#[workflow]
impl Rag {
    /// Finds the chunks closest to the question.
    #[step]
    async fn retrieve(&self, ev: StartEvent<String>) -> Result<Retrieved, LlmError> {
        let question = ev.into_inner();
        let hits = self.index.search(&question, 8).await?;
        Ok(Retrieved { question, hits })
    }

    /// Keeps the best three, fusing vector similarity with BM25 over the candidates.
    #[step]
    async fn rerank(&self, ev: Retrieved) -> Reranked {
        let passages = retrieval::rerank(&ev.question, ev.hits, 3);
        Reranked {
            question: ev.question,
            passages,
        }
    }

    /// Asks the model to answer from the passages only, streaming its tokens.
    #[step]
    async fn synthesize(
        &self,
        ctx: &Context<Self>,
        ev: Reranked,
    ) -> Result<StopEvent<Answer>, LlmError> {
        let context: Vec<String> = ev
            .passages
            .iter()
            .enumerate()
            .map(|(i, hit)| {
                format!(
                    "[{}] ({}) {}",
                    i + 1,
                    hit.chunk.source,
                    hit.chunk.text.replace("\n\n", " ")
                )
            })
            .collect();
        let request = ChatRequest::user(format!(
            "Context:\n{}\n\nQuestion: {}",
            context.join("\n\n"),
            ev.question
        ))
        .system(
            "Answer the question using only the numbered context passages. Cite them like [1]. \
             If the context does not contain the answer, say so.",
        )
        .temperature(0.0)
        .max_tokens(MAX_ANSWER_TOKENS);
        let answer = self
            .llm
            .chat_stream(request)
            .await?
            .for_each_text(|delta| ctx.write_event_to_stream(Token(delta.to_string())))
            .await?;
        Ok(StopEvent(Answer {
            cut: answer.finish_reason == Some(tidewater_llm::FinishReason::Length),
            usage: answer.usage,
            text: answer.message.content,
            sources: ev.passages,
        }))
    }
}

/// The offline stand-in's way of "answering": it quotes the two context sentences that share
/// the most words with the question, citing their passage. No model, no network.
fn quote_best_sentences(request: &ChatRequest) -> ChatResponse {
    let prompt = request.messages.last().map_or("", |m| m.content.as_str());
    let (context, question) = prompt.split_once("\n\nQuestion: ").unwrap_or((prompt, ""));
    let wanted = retrieval::terms(question);
    let mut scored = Vec::new();
    for passage in context.trim_start_matches("Context:\n").split("\n\n") {
        let Some((label, text)) = passage.split_once(") ") else {
            continue;
        };
        let citation = label.split(' ').next().unwrap_or("");
        for sentence in retrieval::sentences(text) {
            let overlap = retrieval::terms(&sentence)
                .iter()
                .filter(|t| wanted.contains(t))
                .count();
            scored.push((overlap, format!("{sentence} {citation}")));
        }
    }
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    let best: Vec<String> = scored
        .into_iter()
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(_, s)| s)
        .collect();
    if best.is_empty() {
        ChatResponse::text("The documents do not say.")
    } else {
        ChatResponse::text(best.join(" "))
    }
}

async fn run() -> Result<(), Report> {
    let mut args = std::env::args().skip(1);
    let question = args.next().unwrap_or_else(|| {
        "How long does it take to charge the battery, and what does a blinking red light mean?"
            .into()
    });
    let folder = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/data").to_string());

    let llm = tidewater_llm::model_from_env_or(|| {
        MockLlm::named("offline-extractive")
            .responder(quote_best_sentences)
            .token_delay(Duration::from_millis(25))
    })?;

    let documents =
        retrieval::load_dir(&folder).map_err(|e| format!("cannot read {folder}: {e}"))?;
    let mut index = VectorIndex::new(HashEmbedder::default()).chunk_chars(400);
    let chunks = index.add(documents).await?;
    println!("indexed {chunks} chunks from {folder}\n");
    println!("Q: {question}\nA: ");

    let mut run = Rag { llm, index }.start(question);
    let mut events = run.events();
    while let Some(item) = futures_util::StreamExt::next(&mut events).await {
        if let Some(Token(delta)) = item.event::<Token>() {
            print!("{delta}");
            std::io::stdout().flush()?;
        }
    }
    let answer = run.await?;
    if answer.cut {
        print!(" […cut at {MAX_ANSWER_TOKENS} tokens]");
    }
    match answer.usage {
        Some(u) => println!(
            "\n\n({} tokens in, {} out)",
            u.input_tokens, u.output_tokens
        ),
        None => println!("\n\n(usage not reported by the server)"),
    }
    println!("\nsources:");
    for (i, hit) in answer.sources.iter().enumerate() {
        let preview: String = hit.chunk.text.replace('\n', " ").chars().take(70).collect();
        println!(
            "  [{}] {} (score {:.2}): {preview}…",
            i + 1,
            hit.chunk.source,
            hit.score
        );
    }
    if answer.text.trim().is_empty() {
        return Err("the model returned an empty answer".into());
    }
    Ok(())
}

/// The pictures of this example's workflows: `cargo run --example rag -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("rag", Rag::GRAPH)];

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
