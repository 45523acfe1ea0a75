//! `Runner::verbose(true)` prints step activity to stderr, one whole line per fact, and says
//! when a run starts waiting for a human. The run happens in a child process (this test binary
//! re-executed with `TW_VERBOSE_CHILD` set) whose stderr the test reads.

use std::process::Command;

use futures_util::StreamExt;
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
#[event(request = Verdict)]
struct Review(String);

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Verdict(bool);

struct Ask;

#[workflow]
impl Ask {
    #[step]
    async fn propose(&self, ev: StartEvent<String>) -> Review {
        Review(ev.0)
    }

    #[step]
    async fn decide(&self, ev: Verdict) -> StopEvent<bool> {
        StopEvent(ev.0)
    }
}

#[test]
fn verbose_child() {
    if std::env::var("TW_VERBOSE_CHILD").is_err() {
        return; // run as a test: nothing to do
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut run = Ask.runner().verbose(true).start("post".into());
        let mut events = run.events();
        while let Some(item) = events.next().await {
            if let Some(review) = item.event::<Review>() {
                assert_eq!(review.0, "post");
                run.send_response(Verdict(true));
            }
        }
        assert!(run.await.unwrap());
    });
}

#[test]
fn verbose_prints_whole_lines_and_the_wait_for_a_human() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "verbose_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TW_VERBOSE_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("[run "))
        .map(|l| l.split_once("] ").expect("a run prefix").1)
        .collect();
    assert_eq!(
        lines,
        [
            "step `propose` started (worker 0, attempt 1)",
            "step `propose` finished (worker 0)",
            "waiting for a human: Review",
            "step `decide` started (worker 0, attempt 1)",
            "step `decide` finished (worker 0)",
        ],
        "{stderr}"
    );
}
