// Guards: the usual cause of a step that never runs, `ctx.send_event(Draft)` in a step without
// `emits = [Draft]`, is reported once, on the event nobody produces, with the fix.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

#[derive(Debug, Clone, Event)]
struct Polished(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ctx: &Context<Self>, ev: StartEvent<String>) {
        ctx.send_event(Draft(ev.0));
    }

    #[step]
    async fn polish(&self, ev: Draft) -> Polished {
        Polished(ev.0)
    }

    #[step]
    async fn finish(&self, ev: Polished) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
