// Guards: every produced event is consumed; `write` may return a `Review` no step takes.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;
#[derive(Debug, Clone, Event)]
struct Review(String);

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Either<Draft, Review> {
        Either::Left(Draft(ev.0))
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
