//! The scenarios on the framework.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tidewater::prelude::*;

use crate::{Check, check};

/// First hop of the chain.
#[derive(Debug, Clone, Event)]
struct A(u64);
/// Second hop of the chain.
#[derive(Debug, Clone, Event)]
struct B(u64);
/// Third hop of the chain.
#[derive(Debug, Clone, Event)]
struct C(u64);
/// Fourth hop of the chain.
#[derive(Debug, Clone, Event)]
struct D(u64);

/// `StartEvent -> A -> B -> C -> D -> StopEvent`: five steps, the output is the input + 4.
struct Chain;

#[workflow]
impl Chain {
    #[step]
    async fn s0(&self, ev: StartEvent<u64>) -> A {
        A(ev.0)
    }
    #[step]
    async fn s1(&self, ev: A) -> B {
        B(ev.0 + 1)
    }
    #[step]
    async fn s2(&self, ev: B) -> C {
        C(ev.0 + 1)
    }
    #[step]
    async fn s3(&self, ev: C) -> D {
        D(ev.0 + 1)
    }
    #[step]
    async fn s4(&self, ev: D) -> StopEvent<u64> {
        StopEvent(ev.0 + 1)
    }
}

/// `chain5_sequential_runs`: `n` runs of the chain, one after another.
pub(crate) async fn chain_sequential(n: u64) -> Check {
    let runner = Chain.runner();
    for i in 0..n {
        let out = runner.run(i).await.map_err(|e| e.to_string())?;
        check(out == i + 4, || {
            format!("chain({i}) = {out}, expected {}", i + 4)
        })?;
    }
    Ok(())
}

/// `chain5_concurrent_runs`: `n` runs of the chain started at once, all awaited.
pub(crate) async fn chain_concurrent(n: u64) -> Check {
    let runner = Chain.runner();
    let handlers: Vec<_> = (0..n).map(|i| runner.start(i)).collect();
    for (i, handler) in (0..n).zip(handlers) {
        let out = handler.await.map_err(|e| e.to_string())?;
        check(out == i + 4, || {
            format!("chain({i}) = {out}, expected {}", i + 4)
        })?;
    }
    Ok(())
}

/// The looping event: how many hops are left, how many were made.
#[derive(Debug, Clone, Event)]
struct Spin {
    left: u64,
    done: u64,
}

/// One step that consumes `Spin{n}` and emits `Spin{n-1}` until 0, then stops with the hop count.
struct Loop;

#[workflow]
impl Loop {
    #[step]
    async fn start(&self, ev: StartEvent<u64>) -> Spin {
        Spin {
            left: ev.0,
            done: 0,
        }
    }
    #[step]
    async fn spin(&self, ev: Spin) -> Either<Spin, StopEvent<u64>> {
        if ev.left == 0 {
            Either::Right(StopEvent(ev.done))
        } else {
            Either::Left(Spin {
                left: ev.left - 1,
                done: ev.done + 1,
            })
        }
    }
}

/// `loop_events_one_run`: one run, `n` hops of one event through one step.
pub(crate) async fn loop_one_run(n: u64) -> Check {
    let out = Loop
        .runner()
        .max_loop_invocations(None)
        .run(n)
        .await
        .map_err(|e| e.to_string())?;
    check(out == n, || format!("loop made {out} hops, expected {n}"))
}

/// A work item of the fan-out.
#[derive(Debug, Clone, Event)]
struct Item(u64);
/// A work item, doubled.
#[derive(Debug, Clone, Event)]
struct Doubled(u64);

/// How many items the collector waits for, set by the start step (Python keeps it in the store).
#[derive(Debug, Default)]
struct Expected(usize);

/// Start sends `n` items; 8 workers double them; a collector fans all `n` in with
/// `ctx.collect` and stops with the sum.
struct FanOut;

#[workflow(state = Expected)]
impl FanOut {
    #[step(emits = [Item])]
    async fn start(&self, ctx: &Context<Self>, ev: StartEvent<u64>) {
        let n = ev.0;
        ctx.update_state(|s| s.0 = n as usize);
        for i in 0..n {
            ctx.send_event(Item(i));
        }
    }
    #[step(num_workers = 8)]
    async fn work(&self, ev: Item) -> Doubled {
        Doubled(ev.0 * 2)
    }
    #[step]
    async fn gather(&self, ctx: &Context<Self>, ev: Doubled) -> Option<StopEvent<u64>> {
        let expected = ctx.update_state(|s| s.0);
        let all = ctx.collect(ev, expected)?;
        Some(StopEvent(all.iter().map(|d| d.0).sum()))
    }
}

/// `fanout_collect`: `runs` runs of a fan-out of `fan` items each.
pub(crate) async fn fanout(fan: u64, runs: u64) -> Check {
    let runner = FanOut.runner();
    let expected = fan * fan.saturating_sub(1);
    for _ in 0..runs {
        let out = runner.run(fan).await.map_err(|e| e.to_string())?;
        check(out == expected, || {
            format!("fan-out of {fan} summed to {out}, expected {expected}")
        })?;
    }
    Ok(())
}

/// The answer the outside sends a parked run.
#[derive(Debug, Clone, Event)]
#[event(response)]
struct Answer(u64);

/// Human-in-the-loop: one step waits inline (`ctx.wait_for`) for the answer from outside.
struct Park {
    /// How many runs have reached their wait (the bench waits for all of them to park).
    parked: Arc<AtomicUsize>,
}

#[workflow]
impl Park {
    #[step]
    async fn ask(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u64>,
    ) -> Result<StopEvent<u64>, WorkflowError> {
        self.parked.fetch_add(1, Ordering::Relaxed);
        let answer = ctx.wait_for::<Answer>().await?;
        Ok(StopEvent(ev.0 + answer.0))
    }
}

/// `suspended_run_memory`, framework side: starts `n` runs with `Runner::start`, each parked
/// in an inline wait for a response; returns the measured growth (see [`crate::ParkedCost`]),
/// then answers each run through its handler and checks every output.
pub(crate) async fn parked(n: u64) -> Result<crate::ParkedCost, String> {
    let parked = Arc::new(AtomicUsize::new(0));
    let runner = Park {
        parked: parked.clone(),
    }
    .runner();
    let mut handlers = Vec::with_capacity(n as usize);
    let cost = crate::measure_parked(
        n,
        || parked.load(Ordering::Relaxed),
        || {
            for i in 0..n {
                handlers.push(runner.start(i));
            }
        },
    )
    .await;
    let answering = std::time::Instant::now();
    for handler in &handlers {
        handler.send_response(Answer(crate::ANSWER));
    }
    for (i, handler) in (0..n).zip(handlers) {
        let out = handler.await.map_err(|e| e.to_string())?;
        check(out == i + crate::ANSWER, || {
            format!("parked run {i} answered {out}")
        })?;
    }
    Ok(crate::ParkedCost {
        answer_seconds: answering.elapsed().as_secs_f64(),
        ..cost
    })
}
