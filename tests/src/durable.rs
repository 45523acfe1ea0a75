//! The durable workflow of the `SIGKILL` test (`tests/durable_kill.rs`), shared with the child
//! process that runs it and gets killed (`src/bin/durable_child.rs`).
//!
//! `plan` fans out [`PARTS`] parts, `work` (two workers) squares each, `gather` collects them,
//! `report` ends the run. Every step invocation appends `step <name> input <n>` to a side-effect
//! log as soon as it starts (synced to disk before it goes on), then sleeps a little: the log
//! says which invocations ran, and how many times.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;

/// How many parts `plan` fans out.
pub const PARTS: u32 = 6;

/// One part of the job.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Part {
    /// Which part.
    pub index: u32,
}

/// A part, worked.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Worked {
    /// Which part.
    pub index: u32,
    /// Its result.
    pub value: u64,
}

/// All parts, summed.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Summed {
    /// The sum of the results.
    pub total: u64,
}

/// Written to the stream by each `work` invocation (journaled by durable runs).
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Progress {
    /// The part worked.
    pub index: u32,
}

/// The run's state: what the steps counted.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tally {
    /// How many `work` invocations completed.
    pub worked: u32,
    /// The parts `gather` received, in arrival order.
    pub gathered: Vec<u32>,
}

/// The workflow. Its fields are the side-effect log and the pacing.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The side-effect log (one line per step invocation).
    pub log: PathBuf,
    /// How long each invocation sleeps after logging.
    pub delay: Duration,
    /// An invocation whose log line is this one sleeps for a minute after logging: a
    /// deterministic place for a crash.
    pub hang_on: Option<String>,
}

impl Pipeline {
    /// Logs `step <step> input <input>` (appended, flushed and synced), then sleeps.
    async fn enter(&self, step: &str, input: u64) {
        let line = format!("step {step} input {input}");
        crate::process::append(&self.log, &line);
        if self.hang_on.as_deref() == Some(line.as_str()) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        tokio::time::sleep(self.delay).await;
    }
}

#[workflow(state = Tally, durable)]
impl Pipeline {
    /// Fans out the parts.
    #[step(emits = [Part])]
    async fn plan(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
        self.enter("plan", u64::from(ev.0)).await;
        for index in 0..ev.0 {
            ctx.send_event(Part { index });
        }
    }

    /// Works one part.
    #[step(num_workers = 2)]
    async fn work(&self, ctx: &Context<Self>, ev: Part) -> Worked {
        self.enter("work", u64::from(ev.index)).await;
        ctx.update_state(|t| t.worked += 1);
        // Written as the step returns: the write and the completion happen in one poll of the
        // run, so no checkpoint falls between them and the journal holds each `Progress` once
        // (`tests/durable_sqlite.rs` shows an event written before a checkpoint by a step still
        // running, which is journaled again when that step re-runs).
        ctx.write_event_to_stream(Progress { index: ev.index });
        let value = u64::from(ev.index + 1).pow(2);
        Worked {
            index: ev.index,
            value,
        }
    }

    /// Collects the worked parts.
    #[step]
    async fn gather(&self, ctx: &Context<Self>, ev: Worked) -> Option<Summed> {
        self.enter("gather", u64::from(ev.index)).await;
        ctx.update_state(|t| t.gathered.push(ev.index));
        let all = ctx.collect(ev, PARTS as usize)?;
        Some(Summed {
            total: all.iter().map(|w| w.value).sum(),
        })
    }

    /// Ends the run.
    #[step]
    async fn report(&self, ctx: &Context<Self>, ev: Summed) -> StopEvent<String> {
        self.enter("report", ev.total).await;
        let tally = ctx.update_state(|t| t.clone());
        let mut gathered = tally.gathered;
        gathered.sort_unstable();
        StopEvent(format!(
            "total {} from {} parts, gathered {gathered:?}",
            ev.total, tally.worked
        ))
    }
}
