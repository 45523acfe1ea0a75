// Guards: a workflow has one stop event type; `StopEvent<usize>` beside `StopEvent<String>`
// is rejected once, naming both steps. The output type is then left unknown rather than taken
// from the first step, so code expecting the other one gets no unrelated type mismatch (a call
// awaiting the run repeats the same root cause).

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

fn main() {
    let _run = async {
        let output: String = Flow.run("draft".to_string()).await.unwrap();
        output
    };
}
