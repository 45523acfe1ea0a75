// Guards the opt-outs: a `#[step(skip_graph_checks)]` island fed only from outside (here, by
// another island) is neither unreachable nor a dead end, and `#[workflow(skip_graph_checks)]`
// turns the reachability rules off for a whole workflow.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Audit(u32);

#[derive(Debug, Clone, Event)]
struct Logged(u32);

struct Island;

#[workflow]
impl Island {
    #[step]
    async fn run(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        StopEvent(ev.0)
    }

    #[step(skip_graph_checks)]
    async fn audit(&self, ev: Audit) -> Logged {
        Logged(ev.0)
    }

    #[step(skip_graph_checks)]
    async fn log(&self, ev: Logged) -> Audit {
        Audit(ev.0)
    }
}

struct Whole;

#[workflow(skip_graph_checks)]
impl Whole {
    #[step]
    async fn run(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        StopEvent(ev.0)
    }

    #[step]
    async fn audit(&self, ev: Audit) -> Logged {
        Logged(ev.0)
    }

    #[step]
    async fn log(&self, ev: Logged) -> Audit {
        Audit(ev.0)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Island.run(7)).unwrap(), 7);
    assert_eq!(rt.block_on(Whole.run(8)).unwrap(), 8);
    assert!(Island::graph().validate().is_ok());
    assert!(Whole::graph().validate().is_ok());
}
