// A request leaves the graph (published for the outside) and its response enters it: neither is
// "produced but never consumed" nor "consumed but never produced".
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
#[event(request = Approval)]
struct AskApproval(u8);

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Approval(bool);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn ask(&self, ev: StartEvent<u8>) -> AskApproval {
        AskApproval(ev.0)
    }

    #[step]
    async fn decide(&self, ev: Approval) -> StopEvent<bool> {
        StopEvent(ev.0)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    use futures_util::StreamExt;
    assert!(Flow::graph().validate().is_ok());
    let mut run = Flow.start(3);
    let mut events = run.events();
    while let Some(item) = events.next().await {
        if let Some(ask) = item.event::<AskApproval>() {
            run.send_event(Approval(ask.0 == 3));
        }
    }
    assert!(run.await.unwrap());
}
