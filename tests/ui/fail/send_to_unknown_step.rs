// Guards: a targeted send to a step the workflow does not have is a compile error (the name is
// static), not a run-time failure.
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Job(u32);

struct Flow;

#[workflow]
impl Flow {
    #[step(emits = [Job])]
    async fn begin(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
        ctx.send_to(Self::STEPS.wrok, Job(ev.0));
    }

    #[step]
    async fn work(&self, ev: Job) -> StopEvent<u32> {
        StopEvent(ev.0)
    }
}

fn main() {}
