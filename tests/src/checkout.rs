//! The durable workflow of the wait-inside-a-step kill test (`tests/durable_wait.rs`), shared
//! with the child process that runs it and gets killed (`src/bin/wait_child.rs`).
//!
//! One step, `checkout`, does work, waits for a human, does more work, waits again, and ends:
//! it charges a card (in `ctx.once`), waits for an [`Approval`], sends an email (in
//! `ctx.once`), waits for a second [`Approval`], and stops with both approvers' names. Each
//! side effect appends a line to a log file (synced to disk), and so does every (re)start of
//! the step: the log says what ran and how many times.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;

/// Published by `checkout` before each wait: which approval it waits for (1 or 2).
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct AskApproval {
    /// 1 for the first wait, 2 for the second.
    pub round: u32,
}

/// The human's answer to one [`AskApproval`].
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
pub struct Approval {
    /// Who approved.
    pub by: String,
}

/// The workflow. Its field is the side-effect log.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// One line per side effect and per start of the step.
    pub log: PathBuf,
}

pub use crate::process::append;

#[workflow(durable)]
impl Checkout {
    #[step]
    async fn checkout(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        let cents = ev.0;
        append(&self.log, "start");
        let key = ctx.invocation_key();
        let log = self.log.clone();
        let charge = ctx
            .once("charge", || async move {
                append(&log, &format!("charge {cents} key {key}"));
                format!("charge-{cents}")
            })
            .await?;
        let first = ctx
            .wait_for::<Approval>()
            .publishing(AskApproval { round: 1 })
            .await?;
        let log = self.log.clone();
        let by = first.by.clone();
        ctx.once("email", || async move {
            append(&log, &format!("email {by}"));
        })
        .await?;
        let second = ctx
            .wait_for::<Approval>()
            .publishing(AskApproval { round: 2 })
            .await?;
        Ok(StopEvent(format!(
            "{charge} by {} and {}",
            first.by, second.by
        )))
    }

    /// Takes an approval nobody waits for (none, when the run goes as planned): makes
    /// `Approval` an event of the graph, so the durable codec can record it.
    #[step]
    async fn stray(&self, ev: Approval) -> Option<StopEvent<String>> {
        append(&self.log, &format!("stray {}", ev.by));
        None
    }
}
