// Guards: a step takes one event parameter; a second one is rejected (use `Either<A, B>`),
// once: code running the workflow still sees its `String` output, so nothing follows on.

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
    async fn finish(&self, ev: Draft, other: Draft) -> StopEvent<String> {
        StopEvent(ev.0 + &other.0)
    }
}

fn main() {
    let _run = async {
        let output: String = Flow.run("draft".to_string()).await.unwrap();
        output
    };
}
