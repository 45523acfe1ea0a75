// Guards: a workflow has one start event type; `StartEvent<u32>` beside `StartEvent<String>`
// is rejected on the second one.

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

    #[step]
    async fn count(&self, ev: StartEvent<u32>) -> Draft {
        Draft(ev.0.to_string())
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
