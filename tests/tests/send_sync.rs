//! The public futures and handles are `Send + 'static` (so they can be spawned and held across
//! tasks): checked at compile time, like tokio's `async_send_sync.rs`.

use tidewater::prelude::*;
use tidewater::{EventStream, StepRef};

#[derive(Debug, Clone, Event)]
struct Middle;

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn first(
        &self,
        ctx: &Context<Self>,
        _ev: StartEvent<()>,
    ) -> Result<Middle, WorkflowError> {
        // The inline wait's future is held across an await inside a step: it must be `Send`.
        let _ = ctx
            .wait_for::<Middle>()
            .timeout(std::time::Duration::from_millis(1))
            .await;
        Ok(Middle)
    }

    #[step]
    async fn second(&self, _ev: Middle) -> StopEvent<()> {
        StopEvent(())
    }
}

fn send_static<T: Send + 'static>(_: &T) {}
fn send<T: Send>(_: &T) {}
fn send_sync_static<T: Send + Sync + 'static>(_: &T) {}

#[tokio::test]
async fn public_futures_and_handles_are_send_and_static() {
    let runner = Flow.runner();
    send_sync_static(&runner);
    let run = runner.run(());
    send_static(&run);
    drop(run);
    let mut handler = runner.start(());
    send_static(&handler);
    let events: EventStream = handler.events();
    send_static(&events);
    let snapshot = handler.snapshot();
    send(&snapshot);
    drop(snapshot);
    let step: StepRef<Flow, Middle> = Flow::STEPS.second;
    send_sync_static(&step);
    handler.cancel();
    let _ = handler.await;
}
