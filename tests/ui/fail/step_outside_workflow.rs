// Guards: `#[step]` without `#[workflow]` on the impl is an error, not silently ignored.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Draft {
        Draft(ev.0)
    }
}

fn main() {}
