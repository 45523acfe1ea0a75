//! The runtime contract beyond the foundation: typed state, sending and targeted delivery,
//! fan-in, concurrency limits, retries and the catch-error step, step timeouts, cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Item(u64);

#[derive(Debug, Clone, Event)]
struct Doubled(u64);

/// A tiny deterministic generator for randomized interleavings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Typed state: atomic read-modify-write under concurrent workers.

#[derive(Debug, Default, Clone)]
struct Counter {
    hits: u64,
}

struct Racy;

#[workflow(state = Counter)]
impl Racy {
    #[step(emits = [Item])]
    async fn fan_out(&self, ctx: &Context<Self>, ev: StartEvent<u64>) {
        for i in 0..ev.0 {
            ctx.send_event(Item(i));
        }
    }

    #[step(num_workers = 8)]
    async fn hit(&self, ctx: &Context<Self>, ev: Item) -> Doubled {
        // Read, yield to the other workers, then write: only an atomic update survives this.
        ctx.update_state(|s| s.hits += 1);
        tokio::task::yield_now().await;
        Doubled(ev.0)
    }

    #[step]
    async fn done(&self, ctx: &Context<Self>, ev: Doubled) -> Option<StopEvent<u64>> {
        let n = ctx.state().hits;
        let all = ctx.collect(ev, 200)?;
        assert_eq!(all.len(), 200);
        Some(StopEvent(n))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_updates_are_atomic_under_concurrent_workers() {
    assert_eq!(Racy.run(200).await.unwrap(), 200);
}

#[tokio::test]
async fn a_run_can_start_from_a_given_state_and_hand_it_to_the_next_run() {
    let runner = Racy.runner();
    let mut state = Counter { hits: 1000 };
    assert_eq!(runner.run_with(200, &mut state).await.unwrap(), 1200);
    assert_eq!(state.hits, 1200);
    assert_eq!(runner.run_with(200, &mut state).await.unwrap(), 1400);
    // A plain run starts from the default state again.
    assert_eq!(runner.run(200).await.unwrap(), 200);
    assert_eq!(
        runner
            .run_with_state(200, Counter { hits: 5 })
            .await
            .unwrap(),
        205
    );
}

// ---------------------------------------------------------------------------------------------
// Fan-in: exactly once, whatever the interleaving, with several workers and producers.

struct Scatter {
    seed: u64,
    completions: AtomicUsize,
}

#[derive(Debug, Clone, Event)]
struct Batch(u64);

#[workflow]
impl Scatter {
    #[step(emits = [Batch])]
    async fn start(&self, ctx: &Context<Self>, ev: StartEvent<u64>) {
        // Two producers' worth of batches.
        for b in 0..ev.0 {
            ctx.send_event(Batch(b));
        }
    }

    #[step(num_workers = 4, emits = [Item])]
    async fn produce(&self, ctx: &Context<Self>, ev: Batch) {
        let mut rng = Rng(self.seed ^ ((ev.0 + 1) * 0x9E37_79B9));
        for i in 0..10 {
            tokio::time::sleep(Duration::from_micros(rng.next() % 300)).await;
            ctx.send_event(Item(ev.0 * 10 + i));
        }
    }

    #[step(num_workers = 8)]
    async fn work(&self, ev: Item) -> Doubled {
        let mut rng = Rng(self.seed ^ ((ev.0 + 7) * 0x2545_F491));
        tokio::time::sleep(Duration::from_micros(rng.next() % 500)).await;
        Doubled(ev.0 * 2)
    }

    #[step(num_workers = 3)]
    async fn gather(&self, ctx: &Context<Self>, ev: Doubled) -> Option<StopEvent<Vec<u64>>> {
        let all = ctx.collect(ev, 40)?;
        self.completions.fetch_add(1, Ordering::SeqCst);
        Some(StopEvent(all.into_iter().map(|d| d.0).collect()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_completes_exactly_once_with_every_event_under_random_interleavings() {
    for seed in 1..=40u64 {
        let runner = Scatter {
            seed: seed.wrapping_mul(0xA24B_AED4_963E_E407) | 1,
            completions: AtomicUsize::new(0),
        }
        .runner();
        let mut got = runner.run(4).await.unwrap();
        assert_eq!(
            runner.workflow().completions.load(Ordering::SeqCst),
            1,
            "seed {seed}"
        );
        got.sort_unstable();
        let want: Vec<u64> = (0..40).map(|i| i * 2).collect();
        assert_eq!(got, want, "seed {seed}");
    }
}

#[derive(Debug, Clone, Event)]
struct Weather(&'static str);
#[derive(Debug, Clone, Event)]
struct News(&'static str);
#[derive(Debug, Clone, Event)]
struct Stocks(u32);

struct Briefing {
    seed: u64,
}

#[workflow]
impl Briefing {
    #[step(emits = [Weather, News, Stocks])]
    async fn fetch(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        // Send two full sets in an order that depends on the seed.
        let mut rng = Rng(self.seed);
        let mut events: Vec<u8> = vec![0, 1, 2, 0, 1, 2];
        for i in (1..events.len()).rev() {
            events.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        for (n, e) in events.into_iter().enumerate() {
            match e {
                0 => ctx.send_event(Weather(if n < 3 { "sun" } else { "rain" })),
                1 => ctx.send_event(News("rates")),
                _ => ctx.send_event(Stocks(n as u32)),
            }
        }
    }

    #[step]
    async fn join(
        &self,
        ctx: &Context<Self>,
        ev: Either<Weather, Either<News, Stocks>>,
    ) -> Option<StopEvent<String>> {
        let (weather, news, stocks) = ctx.collect_each::<(Weather, News, Stocks)>(ev)?;
        // The first complete set stops the run: declared order, whatever the arrival order.
        Some(StopEvent(format!(
            "{} {} {}",
            weather.0,
            news.0,
            stocks.0 < 6
        )))
    }
}

#[tokio::test]
async fn heterogeneous_collect_returns_one_of_each_in_declared_order() {
    for seed in 1..=30u64 {
        let out = Briefing { seed: seed * 7919 }.run(()).await.unwrap();
        let parts: Vec<&str> = out.split(' ').collect();
        assert!(parts[0] == "sun" || parts[0] == "rain", "{out}");
        assert_eq!(&parts[1..], ["rates", "true"], "{out}");
    }
}

// ---------------------------------------------------------------------------------------------
// Targeted delivery.

struct Targeted {
    hits: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

#[workflow]
impl Targeted {
    #[step(emits = [Item])]
    async fn begin(&self, ctx: &Context<Self>, _ev: StartEvent<()>) -> Result<(), WorkflowError> {
        ctx.send_event_to("second", Item(1))?;
        let unknown = ctx.send_event_to("nope", Item(2)).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "event `runtime_semantics::Item` cannot be delivered: workflow `Targeted` has no step `nope`"
        );
        let wrong = ctx.send_event_to("finish", Item(3)).unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "event `runtime_semantics::Item` cannot be delivered: step `finish` does not accept it"
        );
        Ok(())
    }

    #[step]
    async fn first(&self, _ev: Item) -> Doubled {
        self.hits.lock().unwrap().push("first");
        Doubled(0)
    }

    #[step]
    async fn second(&self, _ev: Item) -> Doubled {
        self.hits.lock().unwrap().push("second");
        Doubled(1)
    }

    #[step]
    async fn finish(&self, ev: Doubled) -> StopEvent<u64> {
        StopEvent(ev.0)
    }
}

#[tokio::test]
async fn send_event_to_delivers_to_the_named_step_only_and_rejects_bad_names() {
    let hits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = Targeted { hits: hits.clone() }.run(()).await.unwrap();
    assert_eq!(out, 1);
    assert_eq!(*hits.lock().unwrap(), ["second"]);
}

// ---------------------------------------------------------------------------------------------
// Limits on concurrent runs.

struct Gate {
    running: AtomicUsize,
    peak: AtomicUsize,
}

#[workflow]
impl Gate {
    #[step]
    async fn pass(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        StopEvent(ev.0)
    }
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_runs_bounds_the_runs_of_one_runner() {
    let runner = Gate {
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    }
    .runner()
    .max_concurrent_runs(3);
    let runs: Vec<_> = (0..10).map(|i| tokio::spawn(runner.run(i))).collect();
    for (i, run) in runs.into_iter().enumerate() {
        assert_eq!(run.await.unwrap().unwrap(), i as u32);
    }
    assert_eq!(runner.workflow().peak.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------------------------
// Retries, attempts, last error, deterministic backoff, predicate, catch-error step.

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("try again (attempt {0})")]
    Transient(u32),
    #[error("not found")]
    Fatal,
}

fn transient_only(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<FetchError>(),
        Some(FetchError::Transient(_))
    )
}

struct Flaky {
    fail_times: u32,
    fatal: bool,
    calls: AtomicU32,
    seen: std::sync::Mutex<Vec<(u32, Option<String>, tokio::time::Instant)>>,
}

impl Flaky {
    fn new(fail_times: u32, fatal: bool) -> Flaky {
        Flaky {
            fail_times,
            fatal,
            calls: AtomicU32::new(0),
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }
}

#[workflow]
impl Flaky {
    #[step]
    async fn begin(&self, ev: StartEvent<u64>) -> Item {
        Item(ev.0)
    }

    #[step(retry = RetryPolicy::exponential(4)
        .base_delay(Duration::from_millis(100))
        .without_jitter()
        .retry_if(transient_only))]
    async fn fetch(&self, ctx: &Context<Self>, ev: Item) -> Result<StopEvent<u64>, FetchError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.lock().unwrap().push((
            ctx.attempt(),
            ctx.last_error().map(ToString::to_string),
            tokio::time::Instant::now(),
        ));
        if self.fatal {
            return Err(FetchError::Fatal);
        }
        if call <= self.fail_times {
            Err(FetchError::Transient(ctx.attempt()))
        } else {
            Ok(StopEvent(ev.0 * 10))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_is_retried_with_backoff_and_sees_its_attempt_and_last_error() {
    let runner = Flaky::new(2, false).runner();
    assert_eq!(runner.run(4).await.unwrap(), 40);
    let seen = runner.workflow().seen.lock().unwrap();
    let attempts: Vec<_> = seen.iter().map(|(a, e, _)| (*a, e.clone())).collect();
    assert_eq!(
        attempts,
        [
            (1, None),
            (2, Some("try again (attempt 1)".to_string())),
            (3, Some("try again (attempt 2)".to_string())),
        ]
    );
    assert_eq!(seen[1].2 - seen[0].2, Duration::from_millis(100));
    assert_eq!(seen[2].2 - seen[1].2, Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn retries_exhausted_fail_the_run_with_the_attempt_count() {
    let runner = Flaky::new(10, false).runner();
    let error = runner.run(4).await.unwrap_err();
    assert_eq!(error.to_string(), "step `fetch` failed after 4 attempt(s)");
    assert_eq!(runner.workflow().calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn the_retry_predicate_stops_retries_of_other_errors() {
    let runner = Flaky::new(0, true).runner();
    let error = runner.run(4).await.unwrap_err();
    assert!(
        matches!(error, WorkflowError::StepFailed { attempts: 1, .. }),
        "{error:?}"
    );
    assert_eq!(runner.workflow().calls.load(Ordering::SeqCst), 1);
}

#[test]
fn exponential_jitter_is_deterministic_per_run_step_and_attempt() {
    let policy = RetryPolicy::exponential(5);
    let a: Vec<_> = (1..5).map(|n| policy.delay(n, 42, 1)).collect();
    let b: Vec<_> = (1..5).map(|n| policy.delay(n, 42, 1)).collect();
    assert_eq!(a, b);
    let other_run: Vec<_> = (1..5).map(|n| policy.delay(n, 43, 1)).collect();
    assert_ne!(a, other_run);
    for (n, delay) in a.iter().enumerate() {
        let base = Duration::from_millis(100) * 2u32.pow(n as u32);
        assert!(
            *delay >= base && *delay <= base + base / 2,
            "{delay:?} vs {base:?}"
        );
    }
}

struct Recovering {
    recoveries: AtomicU32,
}

#[workflow]
impl Recovering {
    #[step]
    async fn begin(&self, ev: StartEvent<u64>) -> Item {
        Item(ev.0)
    }

    #[step(retry = RetryPolicy::fixed(2, Duration::from_millis(1)))]
    async fn fragile(&self, ev: Item) -> Result<StopEvent<String>, FetchError> {
        if ev.0 > 0 {
            Err(FetchError::Transient(0))
        } else {
            Ok(StopEvent("fine".into()))
        }
    }

    #[step]
    async fn recover(&self, failure: StepFailure) -> Item {
        self.recoveries.fetch_add(1, Ordering::SeqCst);
        let input = failure.input.downcast_ref::<Item>().unwrap();
        assert_eq!(failure.step, "fragile");
        assert_eq!(failure.attempts, 2);
        assert_eq!(failure.error.to_string(), "try again (attempt 0)");
        // Try again with a smaller input: recovers after `input` rounds.
        Item(input.0 - 1)
    }
}

#[tokio::test(start_paused = true)]
async fn a_catch_error_step_receives_the_typed_failure_and_may_recover() {
    let runner = Recovering {
        recoveries: AtomicU32::new(0),
    }
    .runner();
    assert_eq!(runner.run(2).await.unwrap(), "fine");
    assert_eq!(runner.workflow().recoveries.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_recovery_budget_ends_a_failure_loop() {
    let runner = Recovering {
        recoveries: AtomicU32::new(0),
    }
    .runner()
    .max_recoveries(3);
    let error = runner.run(10).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "step `fragile` failed after 2 attempt(s)"
    );
    assert_eq!(runner.workflow().recoveries.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------------------------
// Step timeouts and cancel.

struct Slow;

#[workflow]
impl Slow {
    #[step]
    async fn begin(&self, ev: StartEvent<u64>) -> Item {
        Item(ev.0)
    }

    #[step(timeout = Duration::from_millis(20), retry = RetryPolicy::fixed(5, Duration::ZERO))]
    async fn wait(&self, ev: Item) -> StopEvent<u64> {
        tokio::time::sleep(Duration::from_millis(ev.0)).await;
        StopEvent(ev.0)
    }

    #[step]
    async fn recover(&self, _failure: StepFailure) -> StopEvent<u64> {
        StopEvent(0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_timeout_is_final_neither_retried_nor_caught() {
    assert_eq!(Slow.run(5).await.unwrap(), 5);
    let started = tokio::time::Instant::now();
    let error = Slow.run(1000).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(20));
    assert_eq!(error.to_string(), "step `wait` timed out after 20ms");
}

#[tokio::test(start_paused = true)]
async fn cancel_is_terminal_idempotent_and_drops_the_running_steps() {
    let handler = Slow.start(10_000);
    tokio::time::sleep(Duration::from_millis(1)).await;
    handler.cancel();
    handler.cancel();
    let error = handler.await.unwrap_err();
    assert!(matches!(error, WorkflowError::Cancelled), "{error:?}");
}

#[tokio::test]
async fn cancelling_a_finished_run_keeps_its_outcome() {
    let handler = Slow.start(1);
    while !handler.is_finished() {
        tokio::task::yield_now().await;
    }
    handler.cancel();
    assert_eq!(handler.await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// Targeted delivery checked at compile time.

struct Typed {
    hits: Arc<std::sync::Mutex<Vec<String>>>,
}

#[workflow]
impl Typed {
    #[step(emits = [Item, Doubled])]
    async fn begin(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        // `both` takes an `Either`: both of its types can be sent to it.
        ctx.send_to(Self::STEPS.both, Item(1));
        ctx.send_to(Self::STEPS.both, Doubled(2));
    }

    #[step]
    async fn items(&self, ev: Item) -> Option<StopEvent<u64>> {
        self.hits.lock().unwrap().push(format!("items {}", ev.0));
        None
    }

    #[step]
    async fn both(&self, ctx: &Context<Self>, ev: Either<Item, Doubled>) -> Option<StopEvent<u64>> {
        let (item, doubled) = ctx.collect_each::<(Item, Doubled)>(ev)?;
        self.hits.lock().unwrap().push("both".to_string());
        Some(StopEvent(item.0 + doubled.0))
    }
}

#[tokio::test]
async fn send_to_reaches_only_the_named_step_including_either_parameters() {
    let hits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = Typed { hits: hits.clone() }.run(()).await.unwrap();
    assert_eq!(out, 3);
    assert_eq!(
        *hits.lock().unwrap(),
        ["both"],
        "`items` never saw the targeted `Item`"
    );
    assert_eq!(Typed::STEPS.both.name(), "both");
    assert_eq!(format!("{:?}", Typed::STEPS.items), "StepRef(items)");
}

// ---------------------------------------------------------------------------------------------
// A large fan-in completes (its linear cost is shown by the benchmark's scaling run).

struct Big;

#[workflow]
impl Big {
    #[step(emits = [Item])]
    async fn fan_out(&self, ctx: &Context<Self>, ev: StartEvent<u64>) {
        for i in 0..ev.0 {
            ctx.send_event(Item(i));
        }
    }

    #[step(num_workers = 8)]
    async fn double(&self, ev: Item) -> Doubled {
        Doubled(ev.0 * 2)
    }

    #[step]
    async fn sum(&self, ctx: &Context<Self>, ev: Doubled) -> Option<StopEvent<u64>> {
        let all = ctx.collect(ev, 100_000)?;
        Some(StopEvent(all.iter().map(|d| d.0).sum()))
    }
}

#[tokio::test]
async fn a_fan_in_of_100_000_events_completes_exactly_once() {
    let n = 100_000u64;
    assert_eq!(Big.run(n).await.unwrap(), n * (n - 1));
}
