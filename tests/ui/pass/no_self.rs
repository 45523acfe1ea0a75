// Guards steps without a receiver (associated functions), with and without a context, and
// with the context after the event.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Doubled(u32);

struct Pure;

#[workflow]
impl Pure {
    #[step]
    async fn double(ev: StartEvent<u32>) -> Doubled {
        Doubled(ev.0 * 2)
    }

    #[step]
    async fn done(ev: Doubled, ctx: &Context<Self>) -> StopEvent<String> {
        StopEvent(format!("{} from {}", ev.0, ctx.step_name()))
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Pure.run(21)).unwrap(), "42 from done");
}
