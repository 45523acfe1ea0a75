// Guards `#[step(emits = [..])]`: events sent with `ctx.send_event` count as produced, so the
// step taking them is reachable and the graph checks pass.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Ping(u32);

struct Sender;

#[workflow]
impl Sender {
    #[step(emits = [Ping])]
    async fn start(&self, ctx: &Context<Self>, ev: StartEvent<u32>) {
        ctx.send_event(Ping(ev.0 + 1));
    }

    #[step]
    async fn pong(&self, ev: Ping) -> StopEvent<u32> {
        StopEvent(ev.0)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Sender.run(41)).unwrap(), 42);
}
