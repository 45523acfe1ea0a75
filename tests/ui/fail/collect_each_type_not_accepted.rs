// Guards: `collect_each::<(..)>` of a type the step does not accept is a compile error (no
// such event ever reaches the step, so the set could never complete).
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Hit(u32);

#[derive(Debug, Clone, Event)]
struct Miss(u32);

#[derive(Debug, Clone, Event)]
struct Late(u32);

struct Flow;

#[workflow]
impl Flow {
    #[step(emits = [Hit, Miss])]
    async fn fan(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
        ctx.send_event(Hit(ev.0));
        ctx.send_event(Miss(ev.0));
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Either<Hit, Miss>) -> Option<StopEvent<u32>> {
        let (hit, miss, late) = ctx.collect_each::<(Hit, Miss, Late)>(ev)?;
        Some(StopEvent(hit.0 + miss.0 + late.0))
    }
}

fn main() {}
