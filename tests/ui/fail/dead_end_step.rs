// Guards: from every step a `StopEvent` can be reached; `archive` takes a `Draft` and emits
// nothing, so that branch of the run can never finish.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Either<Draft, StopEvent<String>> {
        if ev.0.is_empty() {
            Either::Right(StopEvent(ev.0))
        } else {
            Either::Left(Draft(ev.0))
        }
    }

    #[step]
    async fn archive(&self, _ev: Draft) {}
}

fn main() {}
