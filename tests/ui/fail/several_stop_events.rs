// Guards: a workflow has one stop event type; `StopEvent<usize>` beside `StopEvent<String>`
// is rejected on the second one.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Either<Draft, StopEvent<usize>> {
        if ev.0.is_empty() {
            Either::Right(StopEvent(0))
        } else {
            Either::Left(Draft(ev.0))
        }
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
