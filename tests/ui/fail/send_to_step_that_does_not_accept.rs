// Guards: a targeted send to a step whose event parameter does not take the event's type is a
// compile error.
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Job(u32);

#[derive(Debug, Clone, Event)]
struct Other(u32);

struct Flow;

#[workflow]
impl Flow {
    #[step(emits = [Job])]
    async fn begin(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Other {
        ctx.send_to(Self::STEPS.work, Other(ev.0));
        Other(0)
    }

    #[step]
    async fn work(&self, ev: Job) -> StopEvent<u32> {
        StopEvent(ev.0)
    }

    #[step]
    async fn other(&self, ev: Other) -> StopEvent<u32> {
        StopEvent(ev.0)
    }
}

fn main() {}
