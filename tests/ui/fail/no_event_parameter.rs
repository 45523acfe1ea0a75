// Guards: a step takes exactly one event; one with none is named in the error.

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
    async fn finish(&self) -> StopEvent<String> {
        StopEvent(String::new())
    }
}

fn main() {}
