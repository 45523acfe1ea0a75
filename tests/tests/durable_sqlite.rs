//! Durable runs on `SqliteStore`: a run parked for a human is evicted to the database file and
//! answered later through another store on the same file (another process, in real life), on
//! a multi-threaded runtime where the resumed run's task starts at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use workflow_core::prelude::*;
use workflow_core::store::{RunStatus, SqliteStore, Store};

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Decision)]
struct Proposal {
    text: String,
}

#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Decision {
    approved: bool,
}

struct Approve {
    proposals: Arc<AtomicU32>,
}

#[workflow(durable)]
impl Approve {
    #[step]
    async fn propose(&self, ev: StartEvent<String>) -> Proposal {
        // A side effect before the request: it happens once, whatever the evictions.
        self.proposals.fetch_add(1, Ordering::SeqCst);
        Proposal {
            text: format!("publish {}", ev.0),
        }
    }

    #[step]
    async fn decide(&self, ev: Decision) -> StopEvent<String> {
        StopEvent(if ev.approved { "published" } else { "dropped" }.to_string())
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "workflow-durable-sqlite-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Runner::answer` resumes the run in a new task and sends it the answer. On a multi-threaded
/// runtime that task may run before the answer is sent: it must not find the run "parked with
/// nothing to do" and evict it again, losing the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_run_answered_on_a_multi_threaded_runtime_takes_its_answer() {
    let scratch = Scratch::new("answer");
    let db = scratch.0.join("runs.db");
    let proposals = Arc::new(AtomicU32::new(0));
    for i in 0..20 {
        let key = format!("post-{i}");
        let runner = Approve {
            proposals: proposals.clone(),
        }
        .runner()
        .store(Arc::new(SqliteStore::open(&db).unwrap()))
        .evict_when_waiting(true);
        let error = runner
            .start_durable(&key, format!("news {i}"))
            .unwrap()
            .await
            .unwrap_err();
        assert!(
            matches!(&error, WorkflowError::Suspended { key: k } if *k == key),
            "{error:?}"
        );

        // "Another process": a new runner on a new connection to the same file.
        let other = Approve {
            proposals: proposals.clone(),
        }
        .runner()
        .store(Arc::new(SqliteStore::open(&db).unwrap()))
        .evict_when_waiting(true);
        let handler = other
            .answer(
                &key,
                Decision {
                    approved: i % 2 == 0,
                },
            )
            .unwrap();
        let output = tokio::time::timeout(Duration::from_secs(10), handler)
            .await
            .expect("the answered run ends");
        assert_eq!(
            output.unwrap_or_else(|e| panic!("run {i}: {e}")),
            if i % 2 == 0 { "published" } else { "dropped" },
            "run {i}"
        );
        assert_eq!(other.stored_output(&key).unwrap(), output_of(i));
    }
    assert_eq!(proposals.load(Ordering::SeqCst), 20, "one proposal per run");
    let store = SqliteStore::open(&db).unwrap();
    assert!(store.keys(RunStatus::Waiting).unwrap().is_empty());
    assert_eq!(store.keys(RunStatus::Finished).unwrap().len(), 20);
}

fn output_of(i: u32) -> &'static str {
    if i % 2 == 0 { "published" } else { "dropped" }
}
