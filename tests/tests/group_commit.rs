//! Group commit: durable runs hand their checkpoints to the store's writer thread, which
//! writes what every run handed over since its last commit in one `Store::write_batch`.
//! Checked here, on both tokio runtimes: the store is never written from a tokio worker, runs
//! in flight share commits, a step is polled only once the checkpoint recording the completion
//! before it is durable, and a refused write fails its own run only (that a batch is fenced
//! write by write is `tidewater::store::conformance`'s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::process::runtime;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::snapshot::EventRecord;
use tidewater::store::{
    Claim, Lease, MemoryStore, Owner, RunRecord, RunStatus, Store, StoreError, StoreErrorKind,
    Write,
};

/// A store in memory whose commits are slow (the disk), that says which runs each commit
/// held, what is durable, and whether it was ever written from a tokio runtime's thread.
#[derive(Default)]
struct SlowDisk {
    inner: MemoryStore,
    /// Per commit, the keys of the runs it wrote (one per write).
    batches: Mutex<Vec<Vec<String>>>,
    /// Per run, the steps completed in its last durable checkpoint.
    durable: Mutex<HashMap<String, u64>>,
    /// Writes made on a tokio runtime's thread (a run's task blocking a worker).
    on_runtime: AtomicU64,
    /// Writes of this run are refused as if another owner had taken it over.
    fenced_key: Option<String>,
}

impl SlowDisk {
    fn durable_completed(&self, key: &str) -> Option<u64> {
        self.durable.lock().unwrap().get(key).copied()
    }
}

impl Store for SlowDisk {
    fn acquire(&self, key: &str, owner: &Owner, claim: Claim) -> Result<Lease, StoreError> {
        self.inner.acquire(key, owner, claim)
    }
    fn save(&self, key: &str, lease: &Lease, record: &RunRecord) -> Result<(), StoreError> {
        let mut results = self.write_batch(&[Write::Save { key, lease, record }]);
        results.pop().unwrap()
    }
    fn release(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(key, lease)
    }
    fn load(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        self.inner.load(key)
    }
    fn append_event(
        &self,
        key: &str,
        lease: &Lease,
        seq: u64,
        event: &EventRecord,
    ) -> Result<(), StoreError> {
        self.inner.append_event(key, lease, seq, event)
    }
    fn events(&self, key: &str) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.inner.events(key)
    }
    fn keys(&self, status: RunStatus) -> Result<Vec<String>, StoreError> {
        self.inner.keys(status)
    }
    fn write_batch(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.on_runtime.fetch_add(1, Ordering::SeqCst);
        }
        // The disk: a commit takes a while, whatever it holds.
        std::thread::sleep(Duration::from_millis(15));
        let keys = writes
            .iter()
            .map(|w| match *w {
                Write::Save { key, .. } | Write::Event { key, .. } => key.to_string(),
            })
            .collect();
        self.batches.lock().unwrap().push(keys);
        let mut results = Vec::new();
        for write in writes {
            let key = match *write {
                Write::Save { key, .. } | Write::Event { key, .. } => key,
            };
            if self.fenced_key.as_deref() == Some(key) {
                results.push(Err(StoreError::of(
                    StoreErrorKind::Fenced,
                    format!("run `{key}` was taken over"),
                )));
                continue;
            }
            let result = self
                .inner
                .write_batch(std::slice::from_ref(write))
                .remove(0);
            if let (Ok(()), Write::Save { record, .. }) = (&result, write) {
                self.durable
                    .lock()
                    .unwrap()
                    .insert(key.to_string(), record.snapshot.completed);
            }
            results.push(result);
        }
        results
    }
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct One(u64);

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Two(u64);

/// (run key, step number, steps durable when it started), per step started.
type Seen = Arc<Mutex<Vec<(String, u64, Option<u64>)>>>;

/// Three steps; each checks, when it starts, that the completions before it are durable.
struct Checked {
    disk: Arc<SlowDisk>,
    seen: Seen,
}

impl Checked {
    fn note(&self, ctx: &Context<Self>, step: u64) {
        // "<run key>/<step>/<n>"
        let key = ctx.invocation_key();
        let run = key.split('/').next().unwrap().to_string();
        let durable = self.disk.durable_completed(&run);
        self.seen.lock().unwrap().push((run, step, durable));
    }
}

#[workflow(durable)]
impl Checked {
    #[step]
    async fn first(&self, ctx: &Context<Self>, ev: StartEvent<u64>) -> One {
        self.note(ctx, 0);
        One(ev.0 + 1)
    }

    #[step]
    async fn second(&self, ctx: &Context<Self>, ev: One) -> Two {
        self.note(ctx, 1);
        Two(ev.0 + 1)
    }

    #[step]
    async fn third(&self, ctx: &Context<Self>, ev: Two) -> StopEvent<u64> {
        self.note(ctx, 2);
        StopEvent(ev.0 + 1)
    }
}

const RUNS: u64 = 12;

fn runs_share_commits_and_act_only_on_durable_completions(multi: bool) {
    runtime(multi).block_on(async {
        let disk = Arc::new(SlowDisk::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runner = Checked {
            disk: disk.clone(),
            seen: seen.clone(),
        }
        .runner()
        .store(disk.clone());
        // A task that counts while the disk is busy: the runtime's threads are free.
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let handlers: Vec<_> = (0..RUNS)
            .map(|i| {
                (
                    i,
                    runner.start_durable(&format!("run-{i}"), i * 10).unwrap(),
                )
            })
            .collect();
        for (i, handler) in handlers {
            assert_eq!(handler.await.unwrap(), i * 10 + 3, "run {i}");
        }
        ticker.abort();

        assert_eq!(
            disk.on_runtime.load(Ordering::SeqCst),
            0,
            "the store was written from a tokio thread"
        );
        assert!(
            ticks.load(Ordering::SeqCst) > 5,
            "the runtime ran other tasks meanwhile"
        );
        // Every run: a checkpoint at its start, one after each of its first two steps, its
        // end; each step started only once the completion before it was durable.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len() as u64, RUNS * 3);
        for (run, step, durable) in &seen {
            assert_eq!(
                *durable,
                Some(*step),
                "run {run}: step {step} started with {durable:?} completions durable"
            );
        }
        for i in 0..RUNS {
            let key = format!("run-{i}");
            let completed: Vec<u64> = disk
                .inner
                .history(&key)
                .iter()
                .map(|s| s.completed)
                .collect();
            assert_eq!(completed, [0, 1, 2, 3], "checkpoints of {key}");
            let record = disk.load(&key).unwrap().unwrap();
            assert_eq!(record.status, RunStatus::Finished);
            assert_eq!(record.output, Some(serde_json::json!(i * 10 + 3)));
        }
        // 12 runs x 4 checkpoints, in far fewer commits: runs in flight share them.
        let batches = disk.batches.lock().unwrap().clone();
        let writes: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(writes as u64, RUNS * 4);
        let widest = batches
            .iter()
            .map(|keys| {
                let mut runs = keys.clone();
                runs.sort();
                runs.dedup();
                runs.len()
            })
            .max()
            .unwrap();
        assert!(
            widest >= 4,
            "at most {widest} runs in one commit: {batches:?}"
        );
        assert!(
            batches.len() < writes / 2,
            "{} commits for {writes} writes",
            batches.len()
        );
    });
}

#[test]
fn runs_share_commits_and_act_only_on_durable_completions_current_thread() {
    runs_share_commits_and_act_only_on_durable_completions(false);
}

#[test]
fn runs_share_commits_and_act_only_on_durable_completions_multi_thread() {
    runs_share_commits_and_act_only_on_durable_completions(true);
}

fn a_refused_write_fails_its_own_run_only(multi: bool) {
    runtime(multi).block_on(async {
        let disk = Arc::new(SlowDisk {
            fenced_key: Some("taken".into()),
            ..SlowDisk::default()
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runner = Checked {
            disk: disk.clone(),
            seen: seen.clone(),
        }
        .runner()
        .store(disk.clone());
        let taken = runner.start_durable("taken", 1).unwrap();
        let kept: Vec<_> = (0..4)
            .map(|i| runner.start_durable(&format!("kept-{i}"), i).unwrap())
            .collect();
        let error = taken.await.unwrap_err();
        match &error {
            WorkflowError::Store(error) => assert_eq!(error.kind, StoreErrorKind::Fenced),
            other => panic!("expected the store's refusal, got {other}"),
        }
        for (i, handler) in kept.into_iter().enumerate() {
            assert_eq!(handler.await.unwrap(), i as u64 + 3);
        }
        // The refused run never ran a step: its first checkpoint was refused.
        let seen = seen.lock().unwrap().clone();
        assert!(seen.iter().all(|(run, _, _)| run != "taken"), "{seen:?}");
        assert!(disk.load("taken").unwrap().is_none());
        // Its refusal reached it and no other run: the others' checkpoints are all durable.
        for i in 0..4 {
            let completed: Vec<u64> = disk
                .inner
                .history(&format!("kept-{i}"))
                .iter()
                .map(|s| s.completed)
                .collect();
            assert_eq!(completed, [0, 1, 2, 3], "checkpoints of kept-{i}");
        }
    });
}

#[test]
fn a_refused_write_fails_its_own_run_only_current_thread() {
    a_refused_write_fails_its_own_run_only(false);
}

#[test]
fn a_refused_write_fails_its_own_run_only_multi_thread() {
    a_refused_write_fails_its_own_run_only(true);
}
