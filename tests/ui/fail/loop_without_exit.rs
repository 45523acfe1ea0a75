// Guards: every cycle has an exit; `edit` and `review` pass the draft back and forth and
// neither can ever emit the `StopEvent`.

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
        if ev.0.is_empty() {
            Either::Right(StopEvent(ev.0))
        } else {
            Either::Left(Draft(ev.0))
        }
    }

    #[step]
    async fn edit(&self, ev: Draft) -> Review {
        Review(ev.0)
    }

    #[step]
    async fn review(&self, ev: Review) -> Draft {
        Draft(ev.0)
    }
}

fn main() {}
