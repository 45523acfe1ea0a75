// Guards: a step returning `Result<_, E>` needs an `E` that converts into a boxed error;
// rustc says so on the `Result`, once.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

#[derive(Debug)]
struct NotAnError;

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Result<Draft, NotAnError> {
        Ok(Draft(ev.0))
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
