//! Fan-out and fan-in: one query becomes several sub-queries, a worker step with a limit of 3
//! concurrent workers answers them, and a collector joins the answers in one go. A second run
//! shows the typed heterogeneous fan-in: one `Web`, one `Docs` and one `Code` result, joined in
//! declared order whatever order they finish in.
//!
//! Run it with `cargo run --example parallel_search`.

use std::time::{Duration, Instant};

use tidewater::prelude::*;

/// One sub-query for a search worker.
#[derive(Debug, Clone, Event)]
struct SubQuery {
    index: usize,
    text: String,
}

/// A worker's answer to one sub-query.
#[derive(Debug, Clone, Event)]
struct Hit {
    index: usize,
    text: String,
}

/// A result from the web search engine.
#[derive(Debug, Clone, Event)]
struct Web(String);

/// A result from the documentation index.
#[derive(Debug, Clone, Event)]
struct Docs(String);

/// A result from the code search.
#[derive(Debug, Clone, Event)]
struct Code(String);

/// How many sub-queries the current run fanned out: the collector needs to know.
#[derive(Debug, Default)]
struct Pending {
    expected: usize,
}

struct Search;

#[workflow(state = Pending)]
impl Search {
    /// Splits the question into one sub-query per word and sends them all at once.
    #[step(emits = [SubQuery])]
    async fn fan_out(&self, ctx: &Context<Self>, ev: StartEvent<String>) {
        let words: Vec<String> = ev.split_whitespace().map(str::to_string).collect();
        ctx.update_state(|p| p.expected = words.len());
        for (index, text) in words.into_iter().enumerate() {
            ctx.send_event(SubQuery { index, text });
        }
    }

    /// At most three searches at a time; the others wait their turn in order.
    #[step(num_workers = 3)]
    async fn search(&self, ctx: &Context<Self>, ev: SubQuery) -> Hit {
        // Stand-in for a network call: longer words take longer.
        tokio::time::sleep(Duration::from_millis(20 * ev.text.len() as u64)).await;
        println!("  worker {} searched {:?}", ctx.worker(), ev.text);
        Hit {
            index: ev.index,
            text: format!("{} ({} results)", ev.text, ev.text.len() * 7),
        }
    }

    /// Fan-in: nothing until every hit is in, then one combined answer, in query order.
    #[step]
    async fn combine(&self, ctx: &Context<Self>, ev: Hit) -> Option<StopEvent<String>> {
        let expected = ctx.update_state(|p| p.expected);
        let mut hits = ctx.collect(ev, expected)?;
        hits.sort_by_key(|h| h.index);
        Some(StopEvent(
            hits.into_iter()
                .map(|h| h.text)
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

struct Sources;

#[workflow]
impl Sources {
    /// Asks three different sources at once.
    #[step(emits = [Web, Docs, Code])]
    async fn ask(&self, ctx: &Context<Self>, ev: StartEvent<String>) {
        let q = ev.into_inner();
        let (web, docs, code) = (q.clone(), q.clone(), q);
        tokio::join!(
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                ctx.send_event(Web(format!("web: 1.2M pages on {web}")));
            },
            async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ctx.send_event(Docs(format!("docs: chapter 4 covers {docs}")));
            },
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                ctx.send_event(Code(format!("code: 3 call sites of {code}")));
            },
        );
    }

    /// Typed heterogeneous fan-in: one of each, in the declared order (web, docs, code).
    #[step]
    async fn join(
        &self,
        ctx: &Context<Self>,
        ev: Either<Web, Either<Docs, Code>>,
    ) -> Option<StopEvent<String>> {
        let (web, docs, code) = ctx.collect_each::<(Web, Docs, Code)>(ev)?;
        Some(StopEvent(format!("{}\n  {}\n  {}", web.0, docs.0, code.0)))
    }
}

/// The pictures of this example's workflows: `cargo run --example parallel_search -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[
    ("parallel_search", Search::GRAPH),
    ("parallel_search_sources", Sources::GRAPH),
];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    examples::graph_flag(PICTURES);
    let started = Instant::now();
    println!("searching with at most 3 workers:");
    let answer = Search
        .run("how do tokio tasks get woken".to_string())
        .await?;
    println!("combined: {answer}");
    println!(
        "took {:?} (sequential would take ~{}ms)\n",
        started.elapsed(),
        20 * 22
    );

    println!("heterogeneous fan-in:");
    let brief = Sources.run("async cancellation".to_string()).await?;
    println!("  {brief}");
    Ok(())
}
