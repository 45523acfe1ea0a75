//! Branches and loops: the start step picks one of two chains, and one chain loops until its
//! counter runs out. Both are plain events: a branch is a step returning `Either<A, B>`, a loop
//! is an event flowing back into the step that emitted it.
//!
//! Run it with `cargo run --example branches_and_loops`.

use tidewater::prelude::*;

/// A number to shout about: the short chain.
#[derive(Debug, Clone, Event)]
struct Shout {
    n: u32,
}

/// A counter on its way down to zero: the loop.
#[derive(Debug, Clone, Event)]
struct Countdown {
    left: u32,
}

/// The last stop of the loop chain.
#[derive(Debug, Clone, Event)]
struct Liftoff {
    steps: u32,
}

/// What the run records as it goes.
#[derive(Debug, Default, Clone)]
struct Log {
    lines: Vec<String>,
}

struct Rocket;

#[workflow(state = Log)]
impl Rocket {
    /// The branch: odd numbers shout, even numbers count down.
    #[step]
    async fn choose(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Either<Shout, Countdown> {
        let n = ev.into_inner();
        if n % 2 == 1 {
            ctx.update_state(|log| log.lines.push(format!("{n} is odd: shout")));
            Either::Left(Shout { n })
        } else {
            ctx.update_state(|log| log.lines.push(format!("{n} is even: count down")));
            Either::Right(Countdown { left: n })
        }
    }

    /// The first chain: one step and done.
    #[step]
    async fn shout(&self, ctx: &Context<Self>, ev: Shout) -> StopEvent<Vec<String>> {
        ctx.update_state(|log| log.lines.push(format!("{}!!!", ev.n)));
        StopEvent(ctx.state().lines)
    }

    /// The loop: emits `Countdown` back to itself until it reaches zero.
    #[step]
    async fn tick(&self, ctx: &Context<Self>, ev: Countdown) -> Either<Countdown, Liftoff> {
        ctx.update_state(|log| log.lines.push(format!("T-{}", ev.left)));
        if ev.left == 0 {
            Either::Right(Liftoff {
                steps: ctx.state().lines.len() as u32 - 1,
            })
        } else {
            Either::Left(Countdown { left: ev.left - 1 })
        }
    }

    /// The second chain's end.
    #[step]
    async fn liftoff(&self, ctx: &Context<Self>, ev: Liftoff) -> StopEvent<Vec<String>> {
        ctx.update_state(|log| log.lines.push(format!("liftoff after {} ticks", ev.steps)));
        StopEvent(ctx.state().lines)
    }
}

/// The pictures of this example's workflows: `cargo run --example branches_and_loops -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("branches_and_loops", Rocket::GRAPH)];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    examples::graph_flag(PICTURES);
    println!("{}", Rocket::graph());
    let runner = Rocket.runner();
    for input in [3, 4] {
        println!("run({input}):");
        for line in runner.run(input).await? {
            println!("  {line}");
        }
    }
    Ok(())
}
