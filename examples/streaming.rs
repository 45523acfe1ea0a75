//! Streaming: a step publishes progress events while it works, and the caller renders them as a
//! progress bar, then reads the terminal outcome and the output.
//!
//! Run it with `cargo run --example streaming`.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use tidewater::Outcome;
use tidewater::prelude::*;

/// Progress of the download: `done` of `total` chunks.
#[derive(Debug, Clone, Event)]
struct Progress {
    done: u32,
    total: u32,
}

/// The downloaded bytes, on their way to the checksum step.
#[derive(Debug, Clone, Event)]
struct Downloaded {
    bytes: Vec<u8>,
}

struct Download;

#[workflow]
impl Download {
    /// Downloads `n` chunks, publishing progress after each.
    #[step]
    async fn download(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Downloaded {
        let total = ev.into_inner();
        let mut bytes = Vec::new();
        for done in 1..=total {
            tokio::time::sleep(Duration::from_millis(15)).await;
            bytes.extend_from_slice(&done.to_le_bytes());
            ctx.write_event_to_stream(Progress { done, total });
        }
        Downloaded { bytes }
    }

    /// Checks the download and ends the run with a checksum.
    #[step]
    async fn checksum(&self, ev: Downloaded) -> StopEvent<u64> {
        StopEvent(ev.bytes.iter().map(|b| u64::from(*b)).sum())
    }
}

fn bar(done: u32, total: u32) -> String {
    let width = 30;
    let filled = (done * width / total.max(1)) as usize;
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(width as usize - filled)
    )
}

/// The pictures of this example's workflows: `cargo run --example streaming -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("streaming", Download::GRAPH)];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    examples::graph_flag(PICTURES);
    let mut run = Download.runner().internal_events(true).start(20);
    let mut events = run.events();
    let mut bar_open = false;
    while let Some(item) = events.next().await {
        if bar_open && item.event::<Progress>().is_none() {
            println!();
            bar_open = false;
        }
        match item {
            StreamItem::StepStarted { step, .. } => println!("step `{step}` started"),
            StreamItem::StepFinished { step, .. } => println!("step `{step}` finished"),
            StreamItem::End(Outcome::Stopped) => println!("run stopped"),
            StreamItem::End(other) => println!("run ended: {other:?}"),
            item => {
                if let Some(p) = item.event::<Progress>() {
                    print!("\r{}", bar(p.done, p.total));
                    bar_open = true;
                    std::io::stdout().flush().ok();
                }
            }
        }
    }
    let checksum = run.await?;
    println!("checksum: {checksum}");
    Ok(())
}
