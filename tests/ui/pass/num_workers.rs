// Guards `#[step(num_workers = N)]`: the option is accepted and recorded in the graph.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Job(u32);

struct Pool;

#[workflow]
impl Pool {
    #[step]
    async fn start(&self, ev: StartEvent<u32>) -> Job {
        Job(ev.0)
    }

    #[step(num_workers = 4)]
    async fn work(&self, ev: Job) -> StopEvent<u32> {
        StopEvent(ev.0 + 1)
    }
}

fn main() {
    assert_eq!(Pool::graph().steps[0].num_workers, 1);
    assert_eq!(Pool::graph().steps[1].num_workers, 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Pool.run(1)).unwrap(), 2);
}
