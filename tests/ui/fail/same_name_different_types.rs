// Guards: identity is the type, not its name; `a::Draft` and `b::Draft` are two events, so
// the one produced is never consumed and the one consumed is never produced.

use tidewater::prelude::*;

mod a {
    #[derive(Debug, Clone, tidewater::Event)]
    pub struct Draft(pub String);
}

mod b {
    #[derive(Debug, Clone, tidewater::Event)]
    pub struct Draft(pub String);
}

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Either<a::Draft, StopEvent<String>> {
        Either::Left(a::Draft(ev.0))
    }

    #[step]
    async fn finish(&self, ev: b::Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
