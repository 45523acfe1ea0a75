//! Pause and resume across processes: a durable run parks waiting for a human, its process
//! exits, and a new process loads it from an SQLite file, answers, and gets the result.
//!
//! ```sh
//! cargo run --example pause_resume                               # the whole story, end to end
//! cargo run --example pause_resume -- start runs.db              # process 1: start, park, exit
//! cargo run --example pause_resume -- answer runs.db approve     # process 2: answer, finish
//! cargo run --example pause_resume -- answer runs.db reject
//! cargo run --example pause_resume -- resume runs.db             # after a crash: go on
//! ```
//!
//! With no arguments the example runs both halves as two child processes of itself, on a
//! database in a fresh temporary directory, and tells what happens at each stage.
//!
//! What makes it work: `#[workflow(durable)]` (every event, the state, the input and the
//! output are serde types), a runner with a store (`Runner::store`) that journals each run
//! started with `start_durable`, and `evict_when_waiting(true)`: a run parked only on
//! unanswered requests is saved as waiting and leaves memory. `Runner::answer(key, response)`
//! loads it back from the store, wherever and whenever, and delivers the answer.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, SqliteStore, Store};

/// The key of the run in the store (one per expense report, in a real application).
const KEY: &str = "expense-42";

/// An expense report to approve.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Expense {
    who: String,
    what: String,
    cents: u64,
}

/// The report, checked against the policy.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Checked {
    expense: Expense,
    note: String,
}

/// Asks a manager to approve; answered by an [`Approval`].
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(request = Approval)]
struct ApprovalRequest {
    summary: String,
}

/// The manager's answer.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
#[event(response)]
struct Approval {
    approved: bool,
    by: String,
}

/// What the run remembers between the request and the answer (it is in the snapshot).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Ledger {
    expense: Option<Expense>,
}

struct Expenses;

#[workflow(state = Ledger, durable)]
impl Expenses {
    /// Checks the report against the policy.
    #[step]
    async fn check(&self, ev: StartEvent<Expense>) -> Checked {
        let expense = ev.into_inner();
        let note = if expense.cents > 50_000 {
            "over 500.00: needs a manager".to_string()
        } else {
            "within policy".to_string()
        };
        say(&format!("step `check`: {note}"));
        Checked { expense, note }
    }

    /// Asks for approval: the run parks here until the answer comes, in this process or
    /// another one.
    #[step]
    async fn ask(&self, ctx: &Context<Self>, ev: Checked) -> ApprovalRequest {
        let summary = format!(
            "{} spent {}.{:02} on {} ({})",
            ev.expense.who,
            ev.expense.cents / 100,
            ev.expense.cents % 100,
            ev.expense.what,
            ev.note
        );
        ctx.update_state(|ledger| ledger.expense = Some(ev.expense));
        say(&format!("step `ask`: requesting approval for: {summary}"));
        ApprovalRequest { summary }
    }

    /// Settles the report with the answer.
    #[step]
    async fn settle(&self, ctx: &Context<Self>, ev: Approval) -> StopEvent<String> {
        let expense = ctx
            .update_state(|ledger| ledger.expense.clone())
            .expect("`ask` recorded the expense");
        say(&format!("step `settle`: answer from {}", ev.by));
        StopEvent(if ev.approved {
            format!(
                "reimbursed {}.{:02} to {}",
                expense.cents / 100,
                expense.cents % 100,
                expense.who
            )
        } else {
            format!("declined the expense of {}", expense.who)
        })
    }
}

/// Prints a line tagged with this process's id, so the two processes are told apart.
fn say(line: &str) {
    println!("  [pid {}] {line}", std::process::id());
}

fn runner(db: &Path) -> Result<Runner<Expenses>, WorkflowError> {
    let store = SqliteStore::open(db)?;
    Ok(Expenses
        .runner()
        .store(Arc::new(store))
        .evict_when_waiting(true))
}

/// Process 1: starts the run, which parks waiting for the approval and leaves memory.
async fn start(db: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let runner = runner(db)?;
    // A key names one run: starting over a run that already ended would only be refused by the
    // store, so say what happened and what to do instead.
    if let Some(record) = SqliteStore::open(db)?.load(KEY)? {
        if record.status == RunStatus::Finished {
            return Err(format!(
                "run `{KEY}` already finished (output {:?}): not starting it again; \
                 use a new database to start a new run",
                runner.stored_output(KEY)?
            )
            .into());
        }
    }
    let expense = Expense {
        who: "Ada".into(),
        what: "a conference trip".into(),
        cents: 84_250,
    };
    let mut run = runner.start_durable(KEY, expense)?;
    let mut events = run.events();
    while let Some(item) = events.next().await {
        if let Some(request) = item.event::<ApprovalRequest>() {
            say(&format!("stream: request published: {:?}", request.summary));
        }
    }
    match run.await {
        Err(WorkflowError::Suspended { key }) => {
            say(&format!(
                "run `{key}` is waiting for an answer: saved, out of memory"
            ));
        }
        other => panic!("expected the run to park, got {other:?}"),
    }
    let store = SqliteStore::open(db)?;
    let record = store.load(KEY)?.expect("the run is in the store");
    say(&format!(
        "store: status {:?}, {} step(s) completed, {} pending request(s), checkpoint of {} bytes of JSON",
        record.status,
        record.snapshot.completed,
        record.snapshot.pending_requests.len(),
        record.snapshot.to_json().len()
    ));
    say("process 1 exits");
    Ok(())
}

/// Process 2: loads the waiting run from the store and answers it.
async fn answer(db: &Path, approved: bool) -> Result<(), WorkflowError> {
    let runner = runner(db)?;
    let store = SqliteStore::open(db)?;
    let waiting = store.keys(RunStatus::Waiting)?;
    say(&format!("store: runs waiting for an answer: {waiting:?}"));
    if let Some(record) = store.load(KEY)? {
        for request in &record.snapshot.pending_requests {
            say(&format!(
                "store: `{KEY}` waits on {}: {}",
                request.event, request.data
            ));
        }
    }
    let handler = runner.answer(
        KEY,
        Approval {
            approved,
            by: "Grace".into(),
        },
    )?;
    let result = handler.await?;
    say(&format!("result: {result}"));
    let status = store.load(KEY)?.expect("the run is in the store").status;
    say(&format!(
        "store: status {status:?}, output {:?}",
        runner.stored_output(KEY)?
    ));
    Ok(())
}

/// After a crash of process 1 or 2: the run goes on from its last checkpoint (steps that were
/// running are re-run; a run waiting for an answer parks again).
async fn resume(db: &Path) -> Result<(), WorkflowError> {
    let runner = runner(db)?;
    match runner.resume_stored(KEY)?.await {
        Ok(result) => say(&format!("result: {result}")),
        Err(WorkflowError::Suspended { key }) => say(&format!(
            "run `{key}` is waiting for an answer: run `answer`"
        )),
        Err(error) => return Err(error),
    }
    Ok(())
}

/// No arguments: both halves, each in a process of its own, on a fresh database.
fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("workflow-pause-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("runs.db");
    let me = std::env::current_exe()?;
    let stage = |title: &str, args: &[&str]| -> Result<(), Box<dyn std::error::Error>> {
        println!("\n== {title}");
        println!("   $ pause_resume {}", args.join(" "));
        let status = Command::new(&me).args(args).status()?;
        if !status.success() {
            return Err(format!("`pause_resume {}` failed: {status}", args.join(" ")).into());
        }
        Ok(())
    };
    println!("database: {}", db.display());
    let db_arg = db.to_string_lossy().into_owned();
    let result = stage(
        "process 1: start the run; it parks waiting for a manager",
        &["start", &db_arg],
    )
    .and_then(|()| {
        stage(
            "process 2 (later, anywhere): load the run, answer, finish",
            &["answer", &db_arg, "approve"],
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!("\ndone: the run outlived the process that started it");
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!("usage: pause_resume [start <db> | answer <db> <approve|reject> | resume <db>]");
    ExitCode::from(2)
}

/// The pictures of this example's workflows: `cargo run --example pause_resume -- --graph [DIR]`
/// writes them; the test keeps `docs/graphs/` current.
const PICTURES: examples::Pictures = &[("pause_resume", Expenses::GRAPH)];

#[test]
fn pictures_are_current() {
    examples::check_pictures(PICTURES);
}

#[tokio::main]
async fn main() -> ExitCode {
    examples::graph_flag(PICTURES);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result: Result<(), Box<dyn std::error::Error>> = match args.as_slice() {
        [] => demo(),
        ["start", db] => start(&PathBuf::from(db)).await,
        ["resume", db] => resume(&PathBuf::from(db)).await.map_err(Into::into),
        ["answer", db, verdict @ ("approve" | "reject")] => {
            answer(&PathBuf::from(db), *verdict == "approve")
                .await
                .map_err(Into::into)
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
