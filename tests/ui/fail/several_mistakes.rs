// Guards: all the mistakes of one workflow come out in one build, each on its own token,
// with no follow-on errors: not async, `&mut self`, two events, a bad option.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    fn write(&self, ev: StartEvent<String>) -> Draft {
        Draft(ev.0)
    }

    #[step(num_workers = 0)]
    async fn edit(&mut self, ev: Draft, again: Draft) -> Draft {
        Draft(ev.0 + &again.0)
    }

    #[step(retries = 3)]
    async fn finish(&self, ev: &Draft) -> StopEvent<String> {
        StopEvent(ev.0.clone())
    }
}

fn main() {}
