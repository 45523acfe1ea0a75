// Guards: `ctx.run_child` returns the child workflow's output type (`Square` stops with a
// `u64`, which is not a `String`).

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
    async fn go(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u64>,
    ) -> Result<StopEvent<String>, WorkflowError> {
        let squared: String = ctx.run_child(&self.square, ev.0).await?;
        Ok(StopEvent(squared))
    }
}

fn main() {}
