// Guards: every consumed event is produced; `finish` waits for a `Review` no step returns.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;
#[derive(Debug, Clone, Event)]
struct Review(String);

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Either<Draft, StopEvent<String>> {
        Either::Left(Draft(ev.0))
    }

    #[step]
    async fn edit(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }

    #[step]
    async fn finish(&self, ev: Review) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
