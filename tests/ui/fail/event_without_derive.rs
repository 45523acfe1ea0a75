// Guards: a type used as an event must derive `Event`; rustc says so on the type.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;
#[derive(Debug, Clone)]
struct Review(String);

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Review {
        Review(ev.0)
    }

    #[step]
    async fn finish(&self, ev: Review) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
