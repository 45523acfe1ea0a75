// Guards: `ctx.send_event` only compiles for events of the workflow's graph; `Stray` is
// accepted by no step.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;
#[derive(Debug, Clone, Event)]
struct Stray;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> Draft {
        ctx.send_event(Stray);
        Draft(ev.0)
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
