// Guards: no step may take the `StopEvent`, which ends the run.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> StopEvent<String> {
        StopEvent(ev.0)
    }

    #[step]
    async fn after(&self, ev: StopEvent<String>) -> Draft {
        Draft(ev.0)
    }
}

fn main() {}
