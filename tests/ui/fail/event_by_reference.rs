// Guards: a step takes its event by value; `&Draft` is rejected on the `&`.

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
    async fn finish(&self, ev: &Draft) -> StopEvent<String> {
        StopEvent(ev.0.clone())
    }
}

fn main() {}
