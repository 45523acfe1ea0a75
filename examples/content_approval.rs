//! Content approval: a writer proposes a post, a human approves it or rejects it with
//! feedback, and the writer revises until the post is approved.
//!
//! The human is asked through the graph: `review` emits a `Review`, a request event published
//! on the run's stream, and the run waits (it is not stuck: it waits for outside input). The
//! answer comes back as a `Verdict` (`#[event(response)]`) sent with `handler.send_event`, and
//! `decide` takes it like any event. The compiler checks the pair: a request that no step's
//! response answers does not build.
//!
//! ```sh
//! cargo run --example content_approval                      # on a terminal: you review
//! cargo run --example content_approval -- --auto            # scripted: reject once, then approve
//! cargo run --example content_approval -- "the 0.2 release" # another topic
//! printf 'mention the date\ny\n' | cargo run --example content_approval -- --interactive
//! ```
//!
//! With standard input not a terminal (CI, a pipe) the scripted reviewer answers unless
//! `--interactive` is given, so the example never waits for a human who is not there.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use futures_util::StreamExt;
use tidewater::prelude::*;

/// After this many rejected drafts the writer gives up.
const MAX_ROUNDS: u32 = 4;

/// A draft of the post, on its way to the reviewer.
#[derive(Debug, Clone, Event)]
struct Draft {
    text: String,
    round: u32,
}

/// Asks the outside world to review a draft; answered by a [`Verdict`].
#[derive(Debug, Clone, Event)]
#[event(request = Verdict)]
struct Review {
    text: String,
    round: u32,
}

/// The reviewer's answer to a [`Review`].
#[derive(Debug, Clone, Event)]
#[event(response)]
struct Verdict {
    approved: bool,
    feedback: String,
}

/// The outcome of the run.
#[derive(Debug, Clone)]
enum PostOutcome {
    Published { text: String, rounds: u32 },
    Abandoned { rounds: u32 },
}

/// What the writer knows: the topic, the current draft, every piece of feedback so far.
#[derive(Debug, Default, Clone)]
struct Desk {
    topic: String,
    draft: String,
    round: u32,
    feedback: Vec<String>,
}

/// The writer. An offline stand-in for a language model: it applies feedback by rules, so the
/// example is deterministic (see `examples/self_refine.rs` for a model in the loop).
fn write(topic: &str, feedback: &[String]) -> String {
    let mut sentences = vec![
        format!("Big news: {topic} is here!"),
        "It is faster, smaller and easier to use than anything before it.".to_string(),
        "Read the full story on our blog.".to_string(),
    ];
    for note in feedback {
        let note = note.trim();
        let lower = note.to_lowercase();
        let mut applied = false;
        if lower.contains("short") {
            sentences.truncate(2);
            applied = true;
        }
        if lower.contains("date") {
            sentences.insert(1, "It ships on Monday.".to_string());
            applied = true;
        }
        if lower.contains("calm") || lower.contains("hype") {
            sentences[0] = format!("{topic} is available.");
            applied = true;
        }
        if !applied {
            sentences.push(format!("({note})"));
        }
    }
    sentences.join(" ")
}

struct ContentApproval;

#[workflow(state = Desk)]
impl ContentApproval {
    /// Writes the first draft.
    #[step]
    async fn propose(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> Draft {
        let topic = ev.into_inner();
        let text = write(&topic, &[]);
        ctx.update_state(|desk| desk.topic = topic);
        Draft { text, round: 1 }
    }

    /// Sends the draft out for review; the run waits for the verdict.
    #[step]
    async fn review(&self, ctx: &Context<Self>, ev: Draft) -> Review {
        ctx.update_state(|desk| {
            desk.draft = ev.text.clone();
            desk.round = ev.round;
        });
        Review {
            text: ev.text,
            round: ev.round,
        }
    }

    /// Publishes an approved draft, or revises a rejected one with the feedback.
    #[step]
    async fn decide(
        &self,
        ctx: &Context<Self>,
        ev: Verdict,
    ) -> Either<Draft, StopEvent<PostOutcome>> {
        let desk = ctx.update_state(|desk| {
            if !ev.approved {
                desk.feedback.push(ev.feedback.clone());
            }
            desk.clone()
        });
        if ev.approved {
            return Either::Right(StopEvent(PostOutcome::Published {
                text: desk.draft,
                rounds: desk.round,
            }));
        }
        if desk.round >= MAX_ROUNDS {
            return Either::Right(StopEvent(PostOutcome::Abandoned { rounds: desk.round }));
        }
        Either::Left(Draft {
            text: write(&desk.topic, &desk.feedback),
            round: desk.round + 1,
        })
    }
}

/// Who answers the reviews.
enum Reviewer {
    /// A person at the terminal (or whatever feeds standard input with `--interactive`).
    Person,
    /// Rejects the first draft with feedback, approves the next.
    Scripted,
}

impl Reviewer {
    /// The verdict on `review`, or `None` when standard input ended.
    async fn judge(&self, review: &Review) -> Option<Verdict> {
        match self {
            Reviewer::Scripted => {
                let approved = review.round > 1;
                let feedback = if approved {
                    String::new()
                } else {
                    "shorter please, and mention the date".to_string()
                };
                println!(
                    "reviewer (scripted): {}",
                    if approved {
                        "approve".to_string()
                    } else {
                        format!("reject: {feedback}")
                    }
                );
                Some(Verdict { approved, feedback })
            }
            Reviewer::Person => {
                let answer = loop {
                    print!("approve? [y = publish, anything else = feedback for a new draft] > ");
                    std::io::stdout().flush().ok();
                    // Reading standard input blocks: keep it off the runtime's threads.
                    let line = tokio::task::spawn_blocking(|| {
                        let mut line = String::new();
                        match std::io::stdin().lock().read_line(&mut line) {
                            Ok(0) | Err(_) => None,
                            Ok(_) => Some(line),
                        }
                    })
                    .await
                    .ok()
                    .flatten()?;
                    let answer = line.trim().to_string();
                    if !std::io::stdin().is_terminal() {
                        println!("{answer}");
                    }
                    if !answer.is_empty() {
                        break answer;
                    }
                };
                let approved =
                    ["y", "yes", "ok", "approve"].contains(&answer.to_lowercase().as_str());
                Some(Verdict {
                    approved,
                    feedback: answer,
                })
            }
        }
    }
}

/// The pictures of this example's workflows: `cargo run --example content_approval -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("content_approval", ContentApproval::GRAPH)];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
    examples::check_embedded(&["README.md", "docs/visualize.md"], "content_approval.mmd");
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    examples::graph_flag(PICTURES);
    let mut topic = "tidewater 0.1".to_string();
    let mut auto = false;
    let mut interactive = false;
    let mut trace_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--auto" => auto = true,
            "--interactive" => interactive = true,
            "--trace" => trace_dir = Some(args.next().unwrap_or_else(|| ".".into())),
            "-h" | "--help" => {
                println!(
                    "usage: content_approval [--auto | --interactive] [--trace DIR] [--graph [DIR]] [TOPIC]"
                );
                return Ok(());
            }
            _ => topic = arg,
        }
    }
    let reviewer = if auto || (!interactive && !std::io::stdin().is_terminal()) {
        println!("(scripted reviewer: pass --interactive to answer yourself)");
        Reviewer::Scripted
    } else {
        Reviewer::Person
    };

    // A human may take a while; the run itself has no reason to take a day.
    let mut run = ContentApproval
        .timeout(Duration::from_secs(24 * 3600))
        .trace(trace_dir.is_some())
        .start(topic.clone());
    let recording = run.recording();
    let mut events = run.events();
    println!("writing a post about {topic:?}");
    while let Some(item) = events.next().await {
        let Some(review) = item.event::<Review>() else {
            continue;
        };
        println!("\n--- draft {} ---\n{}\n", review.round, review.text);
        match reviewer.judge(review).await {
            Some(verdict) => run.send_event(verdict),
            None => {
                println!("\nno reviewer (end of input): stopping");
                run.cancel();
            }
        }
    }
    let outcome = run.await;
    if let (Some(dir), Some(recording)) = (trace_dir, recording) {
        // `--trace DIR`: what this run did, drawn on the graph and as a timeline.
        let trace = recording.trace();
        println!("\n{}", trace.timeline());
        let written = examples::write_trace(
            "content_approval-trace",
            ContentApproval::graph(),
            &trace,
            std::path::Path::new(&dir),
        );
        match written {
            Ok(paths) => paths.iter().for_each(|p| println!("{}", p.display())),
            Err(error) => eprintln!("error: cannot write the trace into {dir}: {error}"),
        }
    }
    match outcome {
        Ok(PostOutcome::Published { text, rounds }) => {
            println!("\npublished after {rounds} round(s):\n{text}");
        }
        Ok(PostOutcome::Abandoned { rounds }) => {
            println!("\nabandoned after {rounds} rejected drafts");
        }
        // Nobody approved anything: say so with the exit status too.
        Err(error) => return Err(error.into()),
    }
    Ok(())
}
