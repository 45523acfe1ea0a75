//! The durable workflows of the journal tests (`tests/durable_journal.rs`, issue 18 items 2 to
//! 4), shared with their child process (`src/bin/journal_child.rs`).
//!
//! - [`Relay`]: `fan` sends one [`Part`] at a time *while it runs* (pausing between sends),
//!   then tells the join how many it sent; `work` (two workers) logs each part and writes a
//!   [`Progress`] naming its process to the stream; `join` sums them.
//! - [`Poll`]: `ask` publishes [`QUESTIONS`] requests of one type ([`Review`], correlated with
//!   its [`Verdict`] by `id`); `decide` logs each answer; `tally` ends the run once every
//!   question is decided.
//!
//! Each side effect appends a line to a log file (synced to disk): the log says what ran and
//! how many times. A line listed in `hang_on` sleeps a minute after it is logged: a
//! deterministic place for a kill.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;

use crate::process::append;

/// How many parts `Relay` runs are started with in the tests.
pub const PARTS: u32 = 4;

/// How many requests `Poll::ask` publishes.
pub const QUESTIONS: u32 = 3;

/// One part of the job.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Part {
    /// Which part.
    pub index: u32,
}

/// How many parts `fan` sent: the join's count.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Planned(pub usize);

/// A part, worked.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Worked {
    /// Which part.
    pub index: u32,
    /// Its result.
    pub value: u64,
}

/// Written to the stream by each `work` invocation: which part, in which process. A re-run in
/// another process says something else.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Progress {
    /// The part worked.
    pub index: u32,
    /// The process that worked it.
    pub pid: u32,
}

/// The fan-out workflow. Its fields are the side-effect log and the pacing.
#[derive(Debug, Clone)]
pub struct Relay {
    /// One line per side effect.
    pub log: PathBuf,
    /// How long `fan` pauses after each send (`work` does not pause: each part is done long
    /// before the next is sent).
    pub delay: Duration,
    /// Lines after which a step sleeps for a minute: `fan <n>` (after sending part n),
    /// `work <n>`.
    pub hang_on: Vec<String>,
}

impl Relay {
    /// After `fan` sent part n.
    async fn pause(&self, line: &str) {
        if self.hang_on.iter().any(|l| l == line) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        tokio::time::sleep(self.delay).await;
    }
}

#[workflow(durable)]
impl Relay {
    /// Sends the parts one by one while it runs, then their count.
    #[step(emits = [Part])]
    async fn fan(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Planned {
        append(&self.log, "fan");
        for index in 0..ev.0 {
            ctx.send_event(Part { index });
            self.pause(&format!("fan {index}")).await;
        }
        Planned(ev.0 as usize)
    }

    /// Works one part.
    #[step(num_workers = 2)]
    async fn work(&self, ctx: &Context<Self>, ev: Part) -> Worked {
        let line = format!("work {}", ev.index);
        append(&self.log, &line);
        if self.hang_on.contains(&line) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        ctx.write_event_to_stream(Progress {
            index: ev.index,
            pid: std::process::id(),
        });
        Worked {
            index: ev.index,
            value: u64::from(ev.index + 1).pow(2),
        }
    }

    /// Sums the parts once the count and every part are in.
    #[step]
    async fn join(
        &self,
        ctx: &Context<Self>,
        ev: Either<Planned, Worked>,
    ) -> Option<StopEvent<String>> {
        let worked = ctx.collect_counted(ev, |planned| planned.0)?;
        let mut parts: Vec<u32> = worked.iter().map(|w| w.index).collect();
        parts.sort_unstable();
        let total: u64 = worked.iter().map(|w| w.value).sum();
        Some(StopEvent(format!("total {total} from parts {parts:?}")))
    }
}

/// A question for a human; the [`Verdict`] with the same `id` answers it.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Verdict, correlate = id)]
pub struct Review {
    /// Which question.
    pub id: u32,
}

/// The human's answer to the [`Review`] with the same `id`.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
pub struct Verdict {
    /// Which question it answers.
    pub id: u32,
    /// The answer.
    pub ok: bool,
}

/// A question, decided.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Decided {
    /// Which question.
    pub id: u32,
    /// The answer.
    pub ok: bool,
}

/// The asking workflow. Its fields are the side-effect log and where to hang.
#[derive(Debug, Clone)]
pub struct Poll {
    /// One line per side effect.
    pub log: PathBuf,
    /// Lines after which a step sleeps for a minute: `decide <id>`.
    pub hang_on: Vec<String>,
}

#[workflow(durable)]
impl Poll {
    /// Publishes the questions.
    #[step]
    async fn ask(&self, _ev: StartEvent<()>) -> Vec<Review> {
        append(&self.log, "ask");
        (1..=QUESTIONS).map(|id| Review { id }).collect()
    }

    /// Takes one answer.
    #[step]
    async fn decide(&self, ev: Verdict) -> Decided {
        let line = format!("decide {}", ev.id);
        append(&self.log, &line);
        if self.hang_on.contains(&line) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Decided {
            id: ev.id,
            ok: ev.ok,
        }
    }

    /// Ends the run once every question is decided.
    #[step]
    async fn tally(&self, ctx: &Context<Self>, ev: Decided) -> Option<StopEvent<String>> {
        let mut all = ctx.collect(ev, QUESTIONS as usize)?;
        all.sort_by_key(|d| d.id);
        let decided: Vec<String> = all.iter().map(|d| format!("{}={}", d.id, d.ok)).collect();
        Some(StopEvent(decided.join(" ")))
    }
}
