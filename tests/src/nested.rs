//! The durable parent of the process-level child-run test (`tests/nested_kill.rs`) and its
//! child process (`src/bin/nested_child.rs`): a planner whose one step runs a `Research` child
//! per part at once; every step of both logs a line to a side-effect log when it starts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;

/// What a research child found for its part.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
pub struct Found(pub u64);

/// The side-effect log and the place to hang, shared by both workflows.
#[derive(Debug, Clone)]
pub struct Effects {
    /// One line per step invocation.
    pub log: PathBuf,
    /// An invocation whose line is this one sleeps for a minute after logging: a
    /// deterministic place for a crash.
    pub hang_on: Option<String>,
}

impl Effects {
    async fn enter(&self, line: String) {
        crate::process::append(&self.log, &line);
        if self.hang_on.as_deref() == Some(line.as_str()) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

/// The child: gathers, then digests, its part.
#[derive(Debug, Clone)]
pub struct Research {
    /// Where its steps log.
    pub effects: Effects,
}

#[workflow(durable)]
impl Research {
    #[step]
    async fn gather(&self, ev: StartEvent<u64>) -> Found {
        self.effects.enter(format!("gather {}", ev.0)).await;
        Found(ev.0 * 10)
    }

    #[step]
    async fn digest(&self, ev: Found) -> StopEvent<u64> {
        self.effects.enter(format!("digest {}", ev.0 / 10)).await;
        StopEvent(ev.0 + 1)
    }
}

/// The parent: one `Research` child per part `1..=n`, at once.
#[derive(Debug, Clone)]
pub struct Planner {
    /// Where its step logs.
    pub effects: Effects,
    /// The child workflow.
    pub research: Runner<Research>,
}

#[workflow(durable)]
impl Planner {
    #[step]
    async fn plan(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u64>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        self.effects.enter("plan".to_string()).await;
        let outputs = ctx.run_children(&self.research, 1..=ev.0).await?;
        Ok(StopEvent(format!("{outputs:?}")))
    }
}

impl Planner {
    /// The planner and its child, logging to `log`, hanging on `hang_on`.
    pub fn new(log: PathBuf, hang_on: Option<String>) -> Planner {
        let effects = Effects { log, hang_on };
        Planner {
            research: Research {
                effects: effects.clone(),
            }
            .runner(),
            effects,
        }
    }
}
