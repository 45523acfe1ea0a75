// Guards: a misspelled `#[workflow]` option is rejected on its name, with the valid ones listed.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow(skip_checks)]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Draft {
        Draft(ev.0)
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
