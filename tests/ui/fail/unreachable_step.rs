// Guards: every step can run; `polish` and `proofread` feed each other but nothing from
// the `StartEvent` leads to them.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;
#[derive(Debug, Clone, Event)]
struct Polish(String);

#[derive(Debug, Clone, Event)]
struct Proofread(String);

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> StopEvent<String> {
        StopEvent(ev.0)
    }

    #[step]
    async fn polish(&self, ev: Polish) -> Either<Proofread, StopEvent<String>> {
        Either::Left(Proofread(ev.0))
    }

    #[step]
    async fn proofread(&self, ev: Proofread) -> Polish {
        Polish(ev.0)
    }
}

fn main() {}
