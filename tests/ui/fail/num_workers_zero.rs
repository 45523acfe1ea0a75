// Guards: `num_workers = 0` would never run the step; rejected on the value.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Draft {
        Draft(ev.0)
    }

    #[step(num_workers = 0)]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
