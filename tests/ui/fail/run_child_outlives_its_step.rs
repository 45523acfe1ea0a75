// Guards: a child run cannot outlive the step that started it: its future borrows the step's
// context, so it cannot be spawned on a task of its own (which could outlive the parent run).

use tidewater::prelude::*;

struct Square;

#[workflow]
impl Square {
    #[step]
    async fn square(&self, ev: StartEvent<u64>) -> StopEvent<u64> {
        StopEvent(ev.0 * ev.0)
    }
}

struct Parent {
    square: Runner<Square>,
}

#[workflow]
impl Parent {
    #[step]
    async fn go(&self, ctx: &Context<Self>, ev: StartEvent<u64>) -> StopEvent<u64> {
        tokio::spawn(ctx.run_child(&self.square, ev.0));
        StopEvent(ev.0)
    }
}

fn main() {}
