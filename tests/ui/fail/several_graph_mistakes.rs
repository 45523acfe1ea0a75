// Guards: the graph rules also report every violation of one workflow in one build: an event
// never produced, one never consumed, a dead end and a loop without exit.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

#[derive(Debug, Clone, Event)]
struct Orphan;

#[derive(Debug, Clone, Event)]
struct Unused;

#[derive(Debug, Clone, Event)]
struct Archive;

#[derive(Debug, Clone, Event)]
struct Ping;

#[derive(Debug, Clone, Event)]
struct Pong;

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> Either<Draft, Either<Archive, Ping>> {
        let _ = ev;
        Either::Left(Draft(String::new()))
    }

    #[step]
    async fn finish(&self, ev: Draft) -> Either<StopEvent<String>, Unused> {
        Either::Left(StopEvent(ev.0))
    }

    #[step]
    async fn orphan(&self, _ev: Orphan) -> StopEvent<String> {
        StopEvent(String::new())
    }

    #[step]
    async fn archive(&self, _ev: Archive) {}

    #[step]
    async fn ping(&self, _ev: Ping) -> Pong {
        Pong
    }

    #[step]
    async fn pong(&self, _ev: Pong) -> Ping {
        Ping
    }
}

fn main() {}
