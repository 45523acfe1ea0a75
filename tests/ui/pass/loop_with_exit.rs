// Guards a cycle that has an exit: `tick` feeds itself and can also stop, so it is neither a
// dead end nor a loop without exit.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Tick(u32);

#[derive(Debug, Clone, Event)]
struct Tock(u32);

struct Countdown;

#[workflow]
impl Countdown {
    #[step]
    async fn start(&self, ev: StartEvent<u32>) -> Tick {
        Tick(ev.0)
    }

    #[step]
    async fn tick(&self, ev: Tick) -> Either<Tock, StopEvent<&'static str>> {
        if ev.0 == 0 {
            Either::Right(StopEvent("liftoff"))
        } else {
            Either::Left(Tock(ev.0 - 1))
        }
    }

    #[step]
    async fn tock(&self, ev: Tock) -> Tick {
        Tick(ev.0)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Countdown.run(5)).unwrap(), "liftoff");
}
