//! The same scenarios written by hand on tokio: no framework, typed channels wired directly
//! between the steps (the routing a careful engineer would write for a fixed graph).
//!
//! Two shapes, both reasonable:
//! - `tasks`: every step is a tokio task, joined to the next by an unbounded mpsc channel
//!   (unbounded like the framework's queues). This is "plain tokio tasks and channels".
//! - `one_task`: the same step loops and the same channels, but the step futures are polled
//!   together inside the run's own task (`join!`) instead of being spawned: no task per step,
//!   which is what the framework's executor does too.

use futures_util::future::join_all;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use crate::{Check, check};

/// Run the steps as spawned tasks, or as futures joined in the run's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One tokio task per step.
    Tasks,
    /// All steps polled in the run's own task.
    OneTask,
}

/// The chain's events: typed like the framework's, one channel per edge.
struct A(u64);
struct B(u64);
struct C(u64);
struct D(u64);

/// A step that maps every event of its inbox into its outbox, until its inbox closes.
async fn stage<I, O>(mut inbox: UnboundedReceiver<I>, outbox: UnboundedSender<O>, f: fn(I) -> O) {
    while let Some(ev) = inbox.recv().await {
        if outbox.send(f(ev)).is_err() {
            return;
        }
    }
}

/// One run of the five-step chain: the output is the input + 4.
pub(crate) async fn chain_run(shape: Shape, input: u64) -> u64 {
    let (start_tx, start_rx) = unbounded_channel::<u64>();
    let (a_tx, a_rx) = unbounded_channel::<A>();
    let (b_tx, b_rx) = unbounded_channel::<B>();
    let (c_tx, c_rx) = unbounded_channel::<C>();
    let (d_tx, mut d_rx) = unbounded_channel::<D>();
    let (stop_tx, stop_rx) = oneshot::channel::<u64>();
    let s0 = stage(start_rx, a_tx, A);
    let s1 = stage(a_rx, b_tx, |A(n)| B(n + 1));
    let s2 = stage(b_rx, c_tx, |B(n)| C(n + 1));
    let s3 = stage(c_rx, d_tx, |C(n)| D(n + 1));
    let s4 = async move {
        if let Some(D(n)) = d_rx.recv().await {
            let _ = stop_tx.send(n + 1);
        }
    };
    let _ = start_tx.send(input);
    drop(start_tx);
    match shape {
        Shape::Tasks => {
            tokio::spawn(s0);
            tokio::spawn(s1);
            tokio::spawn(s2);
            tokio::spawn(s3);
            tokio::spawn(s4);
            stop_rx.await.unwrap_or(u64::MAX)
        }
        Shape::OneTask => {
            let ((), (), (), (), (), out) = tokio::join!(s0, s1, s2, s3, s4, stop_rx);
            out.unwrap_or(u64::MAX)
        }
    }
}

/// `chain5_sequential_runs`: `n` runs one after another.
pub(crate) async fn chain_sequential(shape: Shape, n: u64) -> Check {
    for i in 0..n {
        let out = chain_run(shape, i).await;
        check(out == i + 4, || {
            format!("chain({i}) = {out}, expected {}", i + 4)
        })?;
    }
    Ok(())
}

/// `chain5_concurrent_runs`: `n` runs started at once (a task each), all awaited.
pub(crate) async fn chain_concurrent(shape: Shape, n: u64) -> Check {
    let runs: Vec<_> = (0..n).map(|i| tokio::spawn(chain_run(shape, i))).collect();
    for (i, run) in (0..n).zip(runs) {
        let out = run.await.map_err(|e| e.to_string())?;
        check(out == i + 4, || {
            format!("chain({i}) = {out}, expected {}", i + 4)
        })?;
    }
    Ok(())
}

/// The looping event: hops left, hops made.
struct Spin {
    left: u64,
    done: u64,
}

/// `loop_events_one_run`: a start step sends `Spin{n}` to the spin step, whose inbox is also
/// its outbox, until 0; the hop count comes back through a oneshot.
pub(crate) async fn loop_one_run(shape: Shape, n: u64) -> Check {
    let (start_tx, mut start_rx) = unbounded_channel::<u64>();
    let (spin_tx, mut spin_rx) = unbounded_channel::<Spin>();
    let (stop_tx, stop_rx) = oneshot::channel::<u64>();
    let again = spin_tx.clone();
    let start = async move {
        if let Some(n) = start_rx.recv().await {
            let _ = spin_tx.send(Spin { left: n, done: 0 });
        }
    };
    let spin = async move {
        while let Some(ev) = spin_rx.recv().await {
            if ev.left == 0 {
                let _ = stop_tx.send(ev.done);
                return;
            }
            let _ = again.send(Spin {
                left: ev.left - 1,
                done: ev.done + 1,
            });
        }
    };
    let _ = start_tx.send(n);
    let out = match shape {
        Shape::Tasks => {
            tokio::spawn(start);
            tokio::spawn(spin);
            stop_rx.await
        }
        Shape::OneTask => tokio::join!(start, spin, stop_rx).2,
    }
    .unwrap_or(u64::MAX);
    check(out == n, || format!("loop made {out} hops, expected {n}"))
}

/// One fan-out run: the start step deals `fan` items round-robin to 8 workers' inboxes, the
/// workers double them into the collector's inbox, the collector sums all `fan`.
pub(crate) async fn fanout_run(shape: Shape, fan: u64) -> u64 {
    const WORKERS: usize = 8;
    let (done_tx, mut done_rx) = unbounded_channel::<u64>();
    let (stop_tx, stop_rx) = oneshot::channel::<u64>();
    let mut inboxes = Vec::with_capacity(WORKERS);
    let mut workers = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        let (tx, rx) = unbounded_channel::<u64>();
        inboxes.push(tx);
        workers.push(stage(rx, done_tx.clone(), |n| n * 2));
    }
    drop(done_tx);
    let start = async move {
        for i in 0..fan {
            let _ = inboxes[(i % WORKERS as u64) as usize].send(i);
        }
    };
    let gather = async move {
        let (mut got, mut sum) = (0, 0);
        while got < fan {
            let Some(n) = done_rx.recv().await else {
                return;
            };
            got += 1;
            sum += n;
        }
        let _ = stop_tx.send(sum);
    };
    match shape {
        Shape::Tasks => {
            for worker in workers {
                tokio::spawn(worker);
            }
            tokio::spawn(gather);
            tokio::spawn(start);
            stop_rx.await
        }
        Shape::OneTask => tokio::join!(start, join_all(workers), gather, stop_rx).3,
    }
    .unwrap_or(u64::MAX)
}

/// `fanout_collect`: `runs` runs of a fan-out of `fan` items each.
pub(crate) async fn fanout(shape: Shape, fan: u64, runs: u64) -> Check {
    let expected = fan * fan.saturating_sub(1);
    for _ in 0..runs {
        let out = fanout_run(shape, fan).await;
        check(out == expected, || {
            format!("fan-out of {fan} summed to {out}, expected {expected}")
        })?;
    }
    Ok(())
}

/// `suspended_run_memory`, by hand: `n` tasks, each parked on a oneshot answer.
pub(crate) async fn parked(n: u64) -> Result<crate::ParkedCost, String> {
    let waiters = crate::waiters(n);
    let mut runs = Vec::with_capacity(n as usize);
    let parked = || waiters.lock().unwrap_or_else(|p| p.into_inner()).len();
    let cost = crate::measure_parked(n, parked, || {
        for i in 0..n {
            let waiters = waiters.clone();
            runs.push(tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                crate::park(&waiters, i, tx);
                i + rx.await.unwrap_or(u64::MAX)
            }));
        }
    })
    .await;
    let answering = std::time::Instant::now();
    crate::answer(&waiters);
    for (i, run) in (0..n).zip(runs) {
        let out = run.await.map_err(|e| e.to_string())?;
        check(out == i + crate::ANSWER, || {
            format!("parked task {i} answered {out}")
        })?;
    }
    Ok(crate::ParkedCost {
        answer_seconds: answering.elapsed().as_secs_f64(),
        ..cost
    })
}
