//! Workflows of workflows: a planner splits a question into sub-questions and runs a
//! `Research` child workflow per sub-question, all at once, with `ctx.run_children`.
//!
//! Each child's progress reaches the planner's stream marked with the child's path
//! (`StreamItem::Child`), and a child's end does not end the planner's stream. One child finds
//! its sub-question ambiguous and asks a human (a request event of its own graph): the
//! question appears on the planner's stream, the answer is sent to the planner's handler, and
//! the planner hands it to the child that asked. The planner's time limit is its children's
//! too; cancelling it stops them.
//!
//! ```sh
//! cargo run --example nested                                # on a terminal: you answer
//! cargo run --example nested -- --auto                      # scripted answer
//! cargo run --example nested -- "which tides are highest and when do they turn"
//! ```
//!
//! With standard input not a terminal (CI, a pipe) the scripted answer is given unless
//! `--interactive` is, so the example never waits for a human who is not there.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use futures_util::StreamExt;
use tidewater::prelude::*;

// ---- the child: research one sub-question ----

/// What a research run found so far, written to its stream.
#[derive(Debug, Clone, Event)]
struct Progress(String);

/// The sources a research run reads.
#[derive(Debug, Clone, Event)]
struct Sources {
    question: String,
    sources: Vec<String>,
}

/// The sub-question is ambiguous: which meaning? Published for a human; a `Scope` answers it.
#[derive(Debug, Clone, Event)]
#[event(request = Scope)]
struct AskScope {
    question: String,
    options: Vec<String>,
}

/// A human's answer to an `AskScope`.
#[derive(Debug, Clone, Event)]
#[event(response)]
struct Scope {
    question: String,
    choice: String,
}

/// One sub-question's answer.
#[derive(Debug, Clone)]
struct Finding {
    question: String,
    answer: String,
}

/// Researches one sub-question: gathers sources (asking a human when the question is
/// ambiguous) and summarizes them.
struct Research;

#[workflow]
impl Research {
    #[step]
    async fn gather(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<String>,
    ) -> Either<Sources, AskScope> {
        let question = ev.0;
        // Stand-in for a search: longer questions take longer.
        tokio::time::sleep(Duration::from_millis(10 * question.len() as u64)).await;
        if question.starts_with("which") {
            ctx.write_event_to_stream(Progress("ambiguous: asking".into()));
            return Either::Right(AskScope {
                options: vec!["by height".into(), "by frequency".into()],
                question,
            });
        }
        ctx.write_event_to_stream(Progress("3 sources".into()));
        Either::Left(Sources {
            sources: (1..=3)
                .map(|i| format!("source {i} on {question}"))
                .collect(),
            question,
        })
    }

    #[step]
    async fn narrow(&self, ctx: &Context<Self>, ev: Scope) -> Sources {
        ctx.write_event_to_stream(Progress(format!("narrowed to {}", ev.choice)));
        Sources {
            sources: vec![format!("tables of {} ({})", ev.question, ev.choice)],
            question: ev.question,
        }
    }

    #[step]
    async fn summarize(&self, ev: Sources) -> StopEvent<Finding> {
        StopEvent(Finding {
            answer: format!("{} source(s), e.g. {}", ev.sources.len(), ev.sources[0]),
            question: ev.question,
        })
    }
}

// ---- the parent: plan, research each part at once, write the answer ----

/// The sub-questions of the question.
#[derive(Debug, Clone, Event)]
struct Plan(Vec<String>);

/// The planner; its field is the child workflow it runs.
struct Planner {
    research: Runner<Research>,
}

#[workflow]
impl Planner {
    #[step]
    async fn plan(&self, ev: StartEvent<String>) -> Plan {
        Plan(
            ev.0.split(" and ")
                .map(|part| part.trim().to_string())
                .filter(|part| !part.is_empty())
                .collect(),
        )
    }

    /// One `Research` child per sub-question, all at once; their outputs in plan order.
    #[step]
    async fn research(
        &self,
        ctx: &Context<Self>,
        ev: Plan,
    ) -> Result<StopEvent<Vec<Finding>>, WorkflowError> {
        let findings = ctx.run_children(&self.research, ev.0).await?;
        Ok(StopEvent(findings))
    }
}

/// The pictures of this example's workflows: `cargo run --example nested -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[
    ("nested_planner", Planner::GRAPH),
    ("nested_research", Research::GRAPH),
];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
}

#[test]
fn runs_offline_with_the_scripted_answer() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (findings, asked) = runtime
        .block_on(plan_and_research(
            "which tides are highest and when do they turn".into(),
            false,
        ))
        .unwrap();
    assert_eq!(asked, ["which tides are highest"]);
    assert_eq!(findings.len(), 2);
    assert_eq!(
        findings[0].answer,
        "1 source(s), e.g. tables of which tides are highest (by height)"
    );
    assert_eq!(findings[1].question, "when do they turn");
}

/// Runs the planner, printing its stream; answers each child's question from the terminal
/// (`interactive`) or with the first option. Returns the findings and the questions asked.
async fn plan_and_research(
    question: String,
    interactive: bool,
) -> Result<(Vec<Finding>, Vec<String>), WorkflowError> {
    let planner = Planner {
        research: Research.runner(),
    };
    // A human may take a while; the whole thing, children included, gets an hour.
    let mut run = planner
        .timeout(Duration::from_secs(3600))
        .start(question.clone());
    let mut events = run.events();
    let mut asked = Vec::new();
    println!("question: {question}");
    while let Some(item) = events.next().await {
        let Some((path, inner)) = item.child() else {
            continue;
        };
        // `plan/Research#7`: the step that started the child, its workflow, its run id.
        let who = path
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" > ");
        if let Some(Progress(text)) = inner.event::<Progress>() {
            println!("  [{who}] {text}");
        } else if let Some(ask) = inner.event::<AskScope>() {
            println!(
                "  [{who}] asks: {:?}: {}?",
                ask.question,
                ask.options.join(" or ")
            );
            asked.push(ask.question.clone());
            let choice = if interactive {
                prompt(&ask.options)
            } else {
                ask.options[0].clone()
            };
            println!("  answer: {choice}");
            // Sent to the planner; it reaches the child that asked.
            run.send_response(Scope {
                question: ask.question.clone(),
                choice,
            });
        } else if let StreamItem::End(outcome) = inner {
            println!("  [{who}] ended: {outcome:?}");
        }
    }
    let findings = run.await?;
    Ok((findings, asked))
}

/// Asks on the terminal; the first option when nothing usable is typed.
fn prompt(options: &[String]) -> String {
    print!("  which one? [{}] ", options.join(" / "));
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let line = line.trim();
    options
        .iter()
        .find(|o| !line.is_empty() && o.starts_with(line))
        .unwrap_or(&options[0])
        .clone()
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    examples::graph_flag(PICTURES);
    let mut question = "which tides are highest and when do they turn and why".to_string();
    let mut auto = false;
    let mut interactive = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--auto" => auto = true,
            "--interactive" => interactive = true,
            "-h" | "--help" => {
                println!("usage: nested [--auto | --interactive] [--graph [DIR]] [QUESTION]");
                return Ok(());
            }
            _ => question = arg,
        }
    }
    let interactive = !auto && (interactive || std::io::stdin().is_terminal());
    if !interactive {
        println!("(scripted answer: pass --interactive to answer yourself)");
    }
    let (findings, _) = plan_and_research(question, interactive).await?;
    println!();
    for finding in findings {
        println!("{}: {}", finding.question, finding.answer);
    }
    Ok(())
}
