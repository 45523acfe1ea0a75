//! Fan-in told its size up front (issue 10, item 4): `ctx.collect_counted` completes a join
//! exactly once for a fan-out of any size, 0 included, whether the count comes before or after
//! the items, with several rounds in flight, and a run stuck short of a set names the join, the
//! type and how many it has of how many. Each on the current-thread and the multi-thread runtime.

use std::sync::Mutex;
use std::time::Duration;

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Planned(usize);

#[derive(Debug, Clone, Event)]
struct Job(u64);

/// `plan` fans out `n` jobs (the count before or after them); `join` (four workers, so
/// invocations race) sums a complete set.
struct Fan {
    count_first: bool,
    /// Every `join` invocation, in order: what it received and whether it returned a set.
    log: Mutex<Vec<String>>,
}

#[workflow]
impl Fan {
    #[step(emits = [Job, Planned])]
    async fn plan(&self, ctx: &Context<Self>, ev: StartEvent<u64>) {
        if self.count_first {
            ctx.send_event(Planned(ev.0 as usize));
        }
        for i in 1..=ev.0 {
            ctx.send_event(Job(i));
        }
        if !self.count_first {
            ctx.send_event(Planned(ev.0 as usize));
        }
    }

    #[step(num_workers = 4)]
    async fn join(
        &self,
        ctx: &Context<Self>,
        ev: Either<Planned, Job>,
    ) -> Option<StopEvent<(usize, u64)>> {
        let what = match &ev {
            Either::Left(p) => format!("planned {}", p.0),
            Either::Right(_) => "job".to_string(),
        };
        let set = ctx.collect_counted(ev, |p| p.0);
        let outcome = match &set {
            Some(jobs) => format!("{what} -> set of {}", jobs.len()),
            None => format!("{what} -> none"),
        };
        self.log.lock().unwrap().push(outcome);
        let jobs = set?;
        Some(StopEvent((jobs.len(), jobs.iter().map(|j| j.0).sum())))
    }
}

async fn a_fan_out_of_any_size_completes_its_join_once() {
    for count_first in [true, false] {
        for n in [0_u64, 1, 2, 7, 100] {
            let runner = Fan {
                count_first,
                log: Mutex::default(),
            }
            .runner()
            .timeout(Duration::from_secs(5));
            let (len, sum) = runner.run(n).await.unwrap();
            assert_eq!(len as u64, n, "count_first {count_first}");
            assert_eq!(sum, n * (n + 1) / 2, "each job once");
            let log = runner.workflow().log.lock().unwrap().clone();
            let sets: Vec<&String> = log.iter().filter(|l| l.contains("set of")).collect();
            assert_eq!(sets.len(), 1, "the join fires exactly once: {log:?}");
            // Every event reached the join once; the set came with the last of them.
            assert_eq!(log.len() as u64, n + 1, "{log:?}");
            assert!(log.last().unwrap().contains("set of"), "{log:?}");
            if n == 0 {
                assert_eq!(log, ["planned 0 -> set of 0"], "zero completes at once");
            }
            if count_first {
                assert_eq!(
                    log[0],
                    format!(
                        "planned {n} -> {}",
                        if n == 0 { "set of 0" } else { "none" }
                    )
                );
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_fan_out_of_any_size_completes_its_join_once_current_thread() {
    a_fan_out_of_any_size_completes_its_join_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_of_any_size_completes_its_join_once_multi_thread() {
    a_fan_out_of_any_size_completes_its_join_once().await;
}

#[derive(Debug, Clone, Event)]
struct RoundDone(usize);

/// Three rounds of sizes 3, 0 and 2, all counts sent before any job: the round of 0 is ready
/// as soon as it is its turn, with no event of its own left to complete it.
struct Rounds {
    log: Mutex<Vec<String>>,
}

#[workflow]
impl Rounds {
    #[step(emits = [Job, Planned])]
    async fn plan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        for n in [3, 0, 2] {
            ctx.send_event(Planned(n));
        }
        for i in 1..=5 {
            ctx.send_event(Job(i));
        }
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Either<Planned, Job>) -> Option<RoundDone> {
        let jobs = ctx.collect_counted(ev, |p| p.0)?;
        let ids: Vec<u64> = jobs.iter().map(|j| j.0).collect();
        self.log.lock().unwrap().push(format!("round {ids:?}"));
        Some(RoundDone(jobs.len()))
    }

    #[step]
    async fn end(&self, ctx: &Context<Self>, ev: RoundDone) -> Option<StopEvent<Vec<usize>>> {
        let rounds = ctx.collect(ev, 3)?;
        let mut sizes: Vec<usize> = rounds.iter().map(|r| r.0).collect();
        sizes.sort_unstable();
        Some(StopEvent(sizes))
    }
}

async fn rounds_each_complete_once() {
    let runner = Rounds {
        log: Mutex::default(),
    }
    .runner()
    .timeout(Duration::from_secs(5));
    assert_eq!(runner.run(()).await.unwrap(), [0, 2, 3]);
    let log = runner.workflow().log.lock().unwrap().clone();
    // One step worker in FIFO order: the round of 3 takes jobs 1-3; its count of 0 comes next
    // and goes back to the step, behind the count of 2, which takes jobs 4 and 5.
    assert_eq!(log, ["round [1, 2, 3]", "round [4, 5]", "round []"]);
}

#[tokio::test(flavor = "current_thread")]
async fn rounds_each_complete_once_current_thread() {
    rounds_each_complete_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_each_complete_once_multi_thread() {
    rounds_each_complete_once().await;
}

/// `plan` tells 5 but sends 3 (or sends 3 and never tells): the run is stuck, and says which
/// join waits for what.
struct Short {
    tell: bool,
}

#[workflow]
impl Short {
    #[step(emits = [Job, Planned])]
    async fn plan(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        for i in 1..=3 {
            ctx.send_event(Job(i));
        }
        if self.tell {
            ctx.send_event(Planned(5));
        }
    }

    #[step]
    async fn join(&self, ctx: &Context<Self>, ev: Either<Planned, Job>) -> Option<StopEvent<()>> {
        ctx.collect_counted(ev, |p| p.0)?;
        Some(StopEvent(()))
    }
}

async fn a_join_short_of_its_told_count_is_named() {
    let error = Short { tell: true }.run(()).await.unwrap_err();
    assert!(matches!(error, WorkflowError::Stuck { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(
            "step `join` waits in `collect_counted` for 5 `collect_counted::Job` event(s) \
             (as its `collect_counted::Planned` told) and has 3"
        ),
        "{text}"
    );

    let error = Short { tell: false }.run(()).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(
            "step `join` waits in `collect_counted` for the `collect_counted::Planned` that \
             tells how many `collect_counted::Job` events make its set, and has 3"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_join_short_of_its_told_count_is_named_current_thread() {
    a_join_short_of_its_told_count_is_named().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_short_of_its_told_count_is_named_multi_thread() {
    a_join_short_of_its_told_count_is_named().await;
}

#[derive(Debug, thiserror::Error)]
#[error("the disk is full")]
struct DiskFull;

/// The join retries: it fails once right after being handed the set (so the retry must get the
/// same set), and once after buffering job 2 (so the retry must not buffer it twice).
struct RetriedJoin {
    failed_on_set: std::sync::atomic::AtomicBool,
    failed_on_two: std::sync::atomic::AtomicBool,
    sets: Mutex<Vec<Vec<u64>>>,
}

#[workflow]
impl RetriedJoin {
    #[step(emits = [Job])]
    async fn plan(&self, ctx: &Context<Self>, ev: StartEvent<u64>) -> Planned {
        for i in 1..=ev.0 {
            ctx.send_event(Job(i));
        }
        Planned(ev.0 as usize)
    }

    #[step(retry = RetryPolicy::fixed(3, Duration::from_millis(1)))]
    async fn join(
        &self,
        ctx: &Context<Self>,
        ev: Either<Planned, Job>,
    ) -> Result<Option<StopEvent<u64>>, DiskFull> {
        use std::sync::atomic::Ordering::SeqCst;
        let two = matches!(ev, Either::Right(Job(2)));
        let set = ctx.collect_counted(ev, |p| p.0);
        if two && set.is_none() && !self.failed_on_two.swap(true, SeqCst) {
            return Err(DiskFull);
        }
        let Some(set) = set else { return Ok(None) };
        let ids: Vec<u64> = set.iter().map(|j| j.0).collect();
        self.sets.lock().unwrap().push(ids.clone());
        if !self.failed_on_set.swap(true, SeqCst) {
            return Err(DiskFull);
        }
        Ok(Some(StopEvent(ids.iter().sum())))
    }
}

async fn a_retried_counted_join_sees_the_same_set() {
    let runner = RetriedJoin {
        failed_on_set: Default::default(),
        failed_on_two: Default::default(),
        sets: Mutex::default(),
    }
    .runner()
    .timeout(Duration::from_secs(5));
    assert_eq!(runner.run(4).await.unwrap(), 10, "1 + 2 + 3 + 4, each once");
    let sets = runner.workflow().sets.lock().unwrap().clone();
    assert_eq!(
        sets,
        [[1, 2, 3, 4], [1, 2, 3, 4]],
        "the set, then the same set again"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_retried_counted_join_sees_the_same_set_current_thread() {
    a_retried_counted_join_sees_the_same_set().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_counted_join_sees_the_same_set_multi_thread() {
    a_retried_counted_join_sees_the_same_set().await;
}
