// Guards: a step emits a request (`#[event(request = Approval)]`) whose response no step
// accepts; the outside's answer would have nowhere to go.
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
#[event(request = Approval)]
struct AskApproval;

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Approval;

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn ask(&self, ev: StartEvent<u8>) -> Either<AskApproval, StopEvent<u8>> {
        if ev.0 > 0 { Either::Left(AskApproval) } else { Either::Right(StopEvent(0)) }
    }
}

fn main() {}
