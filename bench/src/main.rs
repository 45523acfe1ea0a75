//! The benchmark scenarios of `../shared/bench/README.md`, run on the framework and on plain
//! tokio tasks and channels written by hand, in one process, so that ratios are measured in
//! the same sitting.
//!
//! ```text
//! workflow-bench [all|chain|loop|fanout|concurrent|memory|durable] [--scale tiny|small|full]
//!                [--reps N] [--fan N] [--parked N] [--durable-parked N]
//!                [--runtime multi|current] [--profile IMPL]
//! ```
//!
//! Prints one JSON line per scenario and implementation, then one ratio line per scenario.
//! Every scenario checks its results and the program exits with status 1 on a wrong one.
//! `--profile framework|handwritten|handwritten_1task` runs one implementation of the chosen
//! scenario once, untimed and unprinted (for callgrind or DHAT; see `docs/benchmarks.md`).

mod alloc;
mod durable;
mod framework;
mod handwritten;

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use handwritten::Shape;
use tokio::sync::oneshot;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// A scenario's verdict on its own results.
type Check = Result<(), String>;

/// Fails with the message when `ok` is false.
fn check(ok: bool, message: impl FnOnce() -> String) -> Check {
    if ok { Ok(()) } else { Err(message()) }
}

/// The answer the "human" sends every parked run.
const ANSWER: u64 = 7;

/// Where parked runs leave the sender their answer will come through (the "human" side).
type Waiters = Arc<Mutex<Vec<(u64, oneshot::Sender<u64>)>>>;

/// A waiter list with room for `n`, allocated before the measurement starts.
fn waiters(n: u64) -> Waiters {
    Arc::new(Mutex::new(Vec::with_capacity(n as usize)))
}

/// A parked run registers where its answer will come from.
fn park(waiters: &Waiters, id: u64, tx: oneshot::Sender<u64>) {
    waiters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((id, tx));
}

/// The "human" answers every parked run.
fn answer(waiters: &Waiters) {
    let all = std::mem::take(&mut *waiters.lock().unwrap_or_else(|p| p.into_inner()));
    for (_, tx) in all {
        let _ = tx.send(ANSWER);
    }
}

/// What `n` parked runs cost, measured between starting them and the last one parking, and
/// how long answering them took.
#[derive(Debug, Clone, Copy)]
struct ParkedCost {
    bytes: i64,
    allocs: u64,
    rss: i64,
    seconds: f64,
    /// From the first answer sent to the last run's output checked.
    answer_seconds: f64,
}

/// Counts the allocations made while `start_all` starts `n` runs and they all park
/// (`parked()` tells how many have).
async fn measure_parked(
    n: u64,
    parked: impl Fn() -> usize,
    start_all: impl FnOnce(),
) -> ParkedCost {
    let rss = alloc::resident_bytes() as i64;
    let t = Instant::now();
    alloc::start();
    start_all();
    while parked() < n as usize {
        tokio::task::yield_now().await;
    }
    let (bytes, allocs) = alloc::read();
    let seconds = t.elapsed().as_secs_f64();
    let rss = alloc::resident_bytes() as i64 - rss;
    alloc::stop();
    ParkedCost {
        bytes,
        allocs,
        rss,
        seconds,
        answer_seconds: 0.0,
    }
}

/// How many units each scenario runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    chain: u64,
    loop_hops: u64,
    fan: u64,
    fan_runs: u64,
    concurrent: u64,
    parked: u64,
    /// Journaled runs of the durable chain scenarios, and the raw commits they are measured against.
    durable: u64,
    /// Durable runs parked in the store, then answered.
    durable_parked: u64,
    reps: u32,
}

impl Plan {
    fn of(scale: &str) -> Option<Plan> {
        Some(match scale {
            "tiny" => Plan {
                chain: 50,
                loop_hops: 1_000,
                fan: 40,
                fan_runs: 2,
                concurrent: 100,
                parked: 100,
                durable: 20,
                durable_parked: 20,
                reps: 1,
            },
            "small" => Plan {
                chain: 2_000,
                loop_hops: 100_000,
                fan: 400,
                fan_runs: 25,
                concurrent: 2_000,
                parked: 2_000,
                durable: 300,
                durable_parked: 300,
                reps: 3,
            },
            "full" => Plan {
                chain: 20_000,
                loop_hops: 1_000_000,
                fan: 400,
                fan_runs: 250,
                concurrent: 20_000,
                parked: 10_000,
                durable: 2_000,
                durable_parked: 2_000,
                reps: 5,
            },
            _ => return None,
        })
    }
}

/// One implementation of a run scenario: the framework or one of the hand-written shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Framework,
    Hand(Shape),
}

impl Impl {
    const ALL: [Impl; 3] = [
        Impl::Framework,
        Impl::Hand(Shape::Tasks),
        Impl::Hand(Shape::OneTask),
    ];

    fn name(self) -> &'static str {
        match self {
            Impl::Framework => "framework",
            Impl::Hand(Shape::Tasks) => "handwritten",
            Impl::Hand(Shape::OneTask) => "handwritten_1task",
        }
    }
}

/// The four run scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Chain,
    Loop,
    FanOut,
    Concurrent,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Chain => "chain5_sequential_runs",
            Scenario::Loop => "loop_events_one_run",
            Scenario::FanOut => "fanout_collect",
            Scenario::Concurrent => "chain5_concurrent_runs",
        }
    }

    /// How many units (runs, hops, items) one execution makes.
    fn units(self, plan: &Plan) -> u64 {
        match self {
            Scenario::Chain => plan.chain,
            Scenario::Loop => plan.loop_hops,
            Scenario::FanOut => plan.fan * plan.fan_runs,
            Scenario::Concurrent => plan.concurrent,
        }
    }

    /// Runs the scenario once on `imp`, checking its results.
    async fn run(self, imp: Impl, plan: &Plan) -> Check {
        match (self, imp) {
            (Scenario::Chain, Impl::Framework) => framework::chain_sequential(plan.chain).await,
            (Scenario::Chain, Impl::Hand(s)) => handwritten::chain_sequential(s, plan.chain).await,
            (Scenario::Loop, Impl::Framework) => framework::loop_one_run(plan.loop_hops).await,
            (Scenario::Loop, Impl::Hand(s)) => handwritten::loop_one_run(s, plan.loop_hops).await,
            (Scenario::FanOut, Impl::Framework) => framework::fanout(plan.fan, plan.fan_runs).await,
            (Scenario::FanOut, Impl::Hand(s)) => {
                handwritten::fanout(s, plan.fan, plan.fan_runs).await
            }
            (Scenario::Concurrent, Impl::Framework) => {
                framework::chain_concurrent(plan.concurrent).await
            }
            (Scenario::Concurrent, Impl::Hand(s)) => {
                handwritten::chain_concurrent(s, plan.concurrent).await
            }
        }
    }
}

/// Times `f`, failing on a wrong result.
async fn timed<F: Future<Output = Check>>(f: F) -> Result<f64, String> {
    let t = Instant::now();
    f.await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs one scenario on every implementation: one counted pass (allocations per unit, untimed),
/// then `reps` timed passes interleaved across implementations; reports the best time of each.
async fn bench(scenario: Scenario, plan: &Plan) -> Check {
    let n = scenario.units(plan);
    let mut allocs = [0.0; Impl::ALL.len()];
    for (i, imp) in Impl::ALL.into_iter().enumerate() {
        alloc::start();
        let result = scenario.run(imp, plan).await;
        let (_, count) = alloc::stop();
        result.map_err(|e| format!("{} {}: {e}", scenario.name(), imp.name()))?;
        allocs[i] = count as f64 / n as f64;
    }
    let mut best = [f64::INFINITY; Impl::ALL.len()];
    for _ in 0..plan.reps {
        for (i, imp) in Impl::ALL.into_iter().enumerate() {
            let seconds = timed(scenario.run(imp, plan))
                .await
                .map_err(|e| format!("{} {}: {e}", scenario.name(), imp.name()))?;
            best[i] = best[i].min(seconds);
        }
    }
    for (i, imp) in Impl::ALL.into_iter().enumerate() {
        println!(
            "{{\"scenario\":\"{}\",\"impl\":\"{}\",\"n\":{n},\"seconds\":{:.6},\"per_sec\":{:.1},\"allocs_per_unit\":{:.2},\"reps\":{}}}",
            scenario.name(),
            imp.name(),
            best[i],
            n as f64 / best[i],
            allocs[i],
            plan.reps,
        );
    }
    // Ratio of throughputs: > 1 means the framework is faster.
    let ratio = |i: usize| best[i] / best[0];
    println!(
        "{{\"scenario\":\"{}\",\"ratio\":\"framework/handwritten\",\"value\":{:.3},\"vs_1task\":{:.3},\"target\":1.0,\"met\":{}}}",
        scenario.name(),
        ratio(1),
        ratio(2),
        ratio(1) >= 1.0,
    );
    Ok(())
}

/// `suspended_run_memory`: the framework's parked runs against parked hand-written tasks.
async fn bench_memory(plan: &Plan) -> Check {
    // Issue 11.4: at most 1 KiB per parked run.
    const TARGET: f64 = 1024.0;
    let n = plan.parked;
    let framework = framework::parked(n).await?;
    let hand = handwritten::parked(n).await?;
    let per = |c: &ParkedCost| c.bytes as f64 / n as f64;
    for (name, cost) in [("framework", &framework), ("handwritten", &hand)] {
        println!(
            "{{\"scenario\":\"suspended_run_memory\",\"impl\":\"{name}\",\"n\":{n},\"seconds\":{:.6},\"per_sec\":{:.1},\"answer_seconds\":{:.6},\"answered_per_sec\":{:.1},\"bytes_per_run\":{:.1},\"allocs_per_run\":{:.2},\"rss_bytes_per_run\":{:.1}}}",
            cost.seconds,
            n as f64 / cost.seconds,
            cost.answer_seconds,
            n as f64 / cost.answer_seconds,
            per(cost),
            cost.allocs as f64 / n as f64,
            cost.rss as f64 / n as f64,
        );
    }
    println!(
        "{{\"scenario\":\"suspended_run_memory\",\"ratio\":\"framework/handwritten bytes\",\"value\":{:.3},\"target_bytes_per_run\":{TARGET},\"met\":{}}}",
        per(&framework) / per(&hand),
        per(&framework) <= TARGET,
    );
    Ok(())
}

/// Durable runs in flight at once in `durable_chain5_concurrent_runs`.
const DURABLE_IN_FLIGHT: usize = 100;

/// The durable scenarios, each against the raw single-row commit rate of SQLite measured in
/// the same sitting (best of `reps` for every figure).
async fn bench_durable(plan: &Plan) -> Check {
    let n = plan.durable;
    let (mut raw, mut seq, mut conc) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let (mut seq_per_run, mut conc_per_run) = Default::default();
    let mut parked: Option<durable::Parked> = None;
    let np = plan.durable_parked;
    // Timed slices of answers: 1,000 runs each (the first and the last 1,000 are compared),
    // or a tenth of the runs when there are fewer than 10,000.
    let slice = if np >= 10_000 {
        1_000
    } else {
        (np / 10).max(1)
    };
    for _ in 0..plan.reps {
        raw = raw.min(durable::raw_commits(n)?);
        let t = Instant::now();
        seq_per_run = durable::chain_sequential(n).await?;
        seq = seq.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        conc_per_run = durable::chain_concurrent(n, DURABLE_IN_FLIGHT).await?;
        conc = conc.min(t.elapsed().as_secs_f64());
        let p = durable::parked(np, DURABLE_IN_FLIGHT, slice).await?;
        if parked
            .as_ref()
            .is_none_or(|best| p.answer_seconds < best.answer_seconds)
        {
            parked = Some(p);
        }
    }
    let commit_rate = n as f64 / raw;
    println!(
        "{{\"scenario\":\"raw_sqlite_commits\",\"n\":{n},\"seconds\":{raw:.6},\"per_sec\":{commit_rate:.1},\"reps\":{}}}",
        plan.reps
    );
    for (name, seconds, per_run) in [
        ("durable_chain5_sequential_runs", seq, seq_per_run),
        ("durable_chain5_concurrent_runs", conc, conc_per_run),
    ] {
        let durable::PerRun { writes, syncs } = per_run;
        println!(
            "{{\"scenario\":\"{name}\",\"impl\":\"framework\",\"n\":{n},\"seconds\":{seconds:.6},\"per_sec\":{:.1},\"store_writes_per_run\":{writes:.2},\"synced_commits_per_run\":{syncs:.2},\"reps\":{}}}",
            n as f64 / seconds,
            plan.reps
        );
    }
    // Sequential: against one raw commit per synced commit of a run, the best a run alone can
    // do (target: within 1.5x). Concurrent: against the raw commit rate itself (target: at
    // least that many runs/s, i.e. several runs per sync).
    let seq_limit = commit_rate / seq_per_run.syncs;
    let seq_ratio = (n as f64 / seq) / seq_limit;
    println!(
        "{{\"scenario\":\"durable_chain5_sequential_runs\",\"ratio\":\"runs_per_sec/(commit_rate/synced_commits_per_run)\",\"value\":{seq_ratio:.3},\"target\":0.667,\"met\":{}}}",
        seq_ratio >= 1.0 / 1.5
    );
    let conc_ratio = (n as f64 / conc) / commit_rate;
    println!(
        "{{\"scenario\":\"durable_chain5_concurrent_runs\",\"ratio\":\"runs_per_sec/commit_rate\",\"value\":{conc_ratio:.3},\"in_flight\":{DURABLE_IN_FLIGHT},\"target\":1.0,\"met\":{}}}",
        conc_ratio >= 1.0
    );
    let parked = parked.ok_or("no rep of durable_parked_runs")?;
    let durable::Parked {
        park_seconds,
        answer_seconds,
        slices,
        per_run,
    } = &parked;
    let first = slices.first().copied().unwrap_or(f64::NAN);
    let last = slices.last().copied().unwrap_or(f64::NAN);
    println!(
        "{{\"scenario\":\"durable_parked_runs\",\"impl\":\"framework\",\"n\":{np},\"in_flight\":{DURABLE_IN_FLIGHT},\"park_seconds\":{park_seconds:.6},\"parked_per_sec\":{:.1},\"answer_seconds\":{answer_seconds:.6},\"answered_per_sec\":{:.1},\"store_writes_per_run\":{:.2},\"synced_commits_per_run\":{:.2},\"slice\":{slice},\"first_slice_seconds\":{first:.6},\"last_slice_seconds\":{last:.6}}}",
        np as f64 / park_seconds,
        np as f64 / answer_seconds,
        per_run.writes,
        per_run.syncs,
    );
    let every: Vec<String> = slices.iter().map(|s| format!("{:.1}", s * 1e3)).collect();
    println!(
        "{{\"scenario\":\"durable_parked_runs\",\"slices_ms\":[{}]}}",
        every.join(",")
    );
    println!(
        "{{\"scenario\":\"durable_parked_runs\",\"ratio\":\"last_slice/first_slice\",\"value\":{:.3},\"target\":1.5,\"met\":{},\"answered_per_sec/commit_rate\":{:.3}}}",
        last / first,
        last / first <= 1.5,
        (np as f64 / answer_seconds) / commit_rate,
    );
    Ok(())
}

/// The command line.
struct Args {
    which: String,
    plan: Plan,
    multi_thread: bool,
    profile: Option<Impl>,
}

fn parse_args() -> Result<Args, String> {
    let mut which = "all".to_string();
    let mut scale = "small".to_string();
    let (mut reps, mut fan, mut parked, mut memory_parked) = (None, None, None, None);
    let mut multi_thread = true;
    let mut profile = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--scale" => scale = value("--scale")?,
            "--reps" => {
                reps = Some(
                    value("--reps")?
                        .parse()
                        .map_err(|e| format!("--reps: {e}"))?,
                )
            }
            "--fan" => fan = Some(value("--fan")?.parse().map_err(|e| format!("--fan: {e}"))?),
            "--parked" => {
                memory_parked = Some(
                    value("--parked")?
                        .parse()
                        .map_err(|e| format!("--parked: {e}"))?,
                )
            }
            "--durable-parked" => {
                parked = Some(
                    value("--durable-parked")?
                        .parse()
                        .map_err(|e| format!("--durable-parked: {e}"))?,
                )
            }
            "--runtime" => {
                multi_thread = match value("--runtime")?.as_str() {
                    "multi" => true,
                    "current" => false,
                    other => return Err(format!("--runtime multi|current, not {other}")),
                }
            }
            "--profile" => {
                let name = value("--profile")?;
                profile = Some(
                    Impl::ALL
                        .into_iter()
                        .find(|i| i.name() == name)
                        .ok_or(format!("--profile {name}: not an implementation"))?,
                );
            }
            "-h" | "--help" => {
                return Err(
                    "usage: workflow-bench [all|chain|loop|fanout|concurrent|memory|durable] \
                     [--scale tiny|small|full] [--reps N] [--fan N] [--parked N] \
                     [--durable-parked N] \
                     [--runtime multi|current] \
                     [--profile framework|handwritten|handwritten_1task]"
                        .into(),
                );
            }
            "all" | "chain" | "loop" | "fanout" | "concurrent" | "memory" | "durable" => {
                which = arg
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    let mut plan = Plan::of(&scale).ok_or(format!("--scale tiny|small|full, not {scale}"))?;
    if let Some(reps) = reps {
        plan.reps = reps;
    }
    if let Some(parked) = parked {
        plan.durable_parked = parked;
    }
    if let Some(parked) = memory_parked {
        plan.parked = parked;
    }
    if let Some(fan) = fan {
        // Keep the total number of items about the same.
        plan.fan_runs = (plan.fan * plan.fan_runs).div_ceil(fan).max(1);
        plan.fan = fan;
    }
    Ok(Args {
        which,
        plan,
        multi_thread,
        profile,
    })
}

async fn run(args: &Args) -> Check {
    let scenarios = [
        ("chain", Scenario::Chain),
        ("loop", Scenario::Loop),
        ("fanout", Scenario::FanOut),
        ("concurrent", Scenario::Concurrent),
    ];
    if let Some(imp) = args.profile {
        for (name, scenario) in scenarios {
            if args.which == name {
                return scenario.run(imp, &args.plan).await;
            }
        }
        return match imp {
            Impl::Framework => framework::parked(args.plan.parked).await.map(drop),
            Impl::Hand(_) => handwritten::parked(args.plan.parked).await.map(drop),
        };
    }
    // Memory first: before the other scenarios have grown the heap, so that the resident
    // memory growth it reports (a cross-check of the counted bytes) is not hidden by reuse.
    if args.which == "all" || args.which == "memory" {
        bench_memory(&args.plan).await?;
    }
    for (name, scenario) in scenarios {
        if args.which == "all" || args.which == name {
            bench(scenario, &args.plan).await?;
        }
    }
    if args.which == "all" || args.which == "durable" {
        bench_durable(&args.plan).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .enable_time()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("WRONG RESULT: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CI smoke: every scenario at the tiny scale, results checked, timings ignored.
    #[test]
    fn every_scenario_is_correct_at_tiny_scale() {
        let plan = Plan::of("tiny").unwrap();
        for multi in [false, true] {
            let runtime = if multi {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_time()
                    .build()
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
            }
            .unwrap();
            runtime.block_on(async {
                for scenario in [
                    Scenario::Chain,
                    Scenario::Loop,
                    Scenario::FanOut,
                    Scenario::Concurrent,
                ] {
                    for imp in Impl::ALL {
                        scenario.run(imp, &plan).await.unwrap();
                    }
                }
                let cost = framework::parked(plan.parked).await.unwrap();
                assert!(cost.bytes > 0);
                handwritten::parked(plan.parked).await.unwrap();
                durable::raw_commits(plan.durable).unwrap();
                let per_run = durable::chain_sequential(plan.durable).await.unwrap();
                assert!(
                    per_run.syncs >= 1.0,
                    "a journaled run syncs its store: {per_run:?}"
                );
                durable::chain_concurrent(plan.durable, 7).await.unwrap();
                let parked = durable::parked(plan.durable_parked, 7, 5).await.unwrap();
                assert_eq!(parked.slices.len() as u64, plan.durable_parked / 5);
            });
        }
    }
}
