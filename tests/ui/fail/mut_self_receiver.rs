// Guards: a step takes `&self`; `&mut self` is rejected (steps of a run run concurrently).

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&mut self, ev: StartEvent<String>) -> Draft {
        Draft(ev.0)
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
