// Guards: `ctx: Context<Self>` taken by value (the habit from Python) is reported once, on the
// context's type, as "take the context by reference", not as a second event parameter.

use tidewater::prelude::*;

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn only(&self, ctx: Context<Self>, ev: StartEvent<u8>) -> StopEvent<u8> {
        let _ = ctx;
        StopEvent(ev.0)
    }
}

fn main() {}
