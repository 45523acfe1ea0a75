// Guards: `ctx.run_child` is a typed call: the input must be the child workflow's start event
// payload (`Square` takes a `u64`, not a `String`).

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
        ev: StartEvent<String>,
    ) -> Result<StopEvent<u64>, WorkflowError> {
        let squared = ctx.run_child(&self.square, ev.0).await?;
        Ok(StopEvent(squared))
    }
}

fn main() {}
