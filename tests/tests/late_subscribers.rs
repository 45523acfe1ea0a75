//! Issue 10.6: a subscriber that comes late loses nothing the history holds. It asks for
//! everything so far or for what came after a number it saw, gets it without gap or
//! duplicate, then the live items, and always the terminal outcome, on both runtimes.

use std::time::Duration;

use futures_util::StreamExt;
use tidewater::prelude::*;
use tidewater::{Outcome, Since};

#[derive(Debug, Clone, Event)]
struct Tick(u32);

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Go;

/// Writes `n` ticks, waits for `Go`, writes `n` more, stops.
struct Gate;

#[workflow]
impl Gate {
    #[step]
    async fn run(
        &self,
        ctx: &Context<Self>,
        ev: StartEvent<u32>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        for n in 0..ev.0 {
            ctx.write_event_to_stream(Tick(n));
        }
        ctx.wait_for::<Go>().await?;
        for n in ev.0..2 * ev.0 {
            ctx.write_event_to_stream(Tick(n));
        }
        Ok(StopEvent(2 * ev.0))
    }
}

async fn collect(mut stream: tidewater::EventStream) -> (Vec<(u64, u32)>, Vec<Outcome>, u64) {
    let mut ticks = Vec::new();
    let mut ends = Vec::new();
    while let Some(item) = stream.next().await {
        let seq = stream.last_sequence().unwrap();
        match item {
            StreamItem::Event(ev) => ticks.push((seq, ev.downcast::<Tick>().unwrap().0)),
            StreamItem::End(outcome) => ends.push(outcome),
            other => panic!("unexpected {other:?}"),
        }
    }
    (ticks, ends, stream.lagged())
}

async fn wait_finished(handler: &Handler<Gate>) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !handler.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the run ends");
}

async fn late_subscribers_mid_run_and_after_the_end() {
    let handler = Gate.start(3);
    // Let it write its first three ticks and park on the wait.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let everything = handler.subscribe_from(Since::Start);
    let after_one = handler.subscribe_from(Since::After(1));
    let live = handler.subscribe();
    handler.send_response(Go);
    wait_finished(&handler).await;

    let (ticks, ends, lagged) = collect(everything).await;
    assert_eq!(
        ticks,
        (0..6).map(|n| (n as u64, n)).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
    assert_eq!((ends, lagged), (vec![Outcome::Stopped], 0));
    let (ticks, ends, _) = collect(after_one).await;
    assert_eq!(
        ticks.iter().map(|t| t.1).collect::<Vec<_>>(),
        vec![2, 3, 4, 5]
    );
    assert_eq!(ends, vec![Outcome::Stopped]);
    let (ticks, _, _) = collect(live).await;
    assert_eq!(ticks.iter().map(|t| t.1).collect::<Vec<_>>(), vec![3, 4, 5]);

    // Long after the end: still everything, and the end.
    let (ticks, ends, _) = collect(handler.subscribe_from(Since::Start)).await;
    assert_eq!(ticks.len(), 6);
    assert_eq!(ends, vec![Outcome::Stopped]);
    let (ticks, ends, _) = collect(handler.subscribe_from(Since::After(5))).await;
    assert!(ticks.is_empty());
    assert_eq!(ends, vec![Outcome::Stopped]);
    assert_eq!(handler.await.unwrap(), 6);
}

#[tokio::test(flavor = "current_thread")]
async fn late_subscribers_current_thread() {
    late_subscribers_mid_run_and_after_the_end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscribers_multi_thread() {
    late_subscribers_mid_run_and_after_the_end().await;
}

async fn bounded_history_counts_what_it_dropped() {
    let handler = Gate.runner().stream_capacity(4).start(5);
    handler.send_response(Go);
    wait_finished(&handler).await;
    // 10 ticks, the history keeps the last 4: 6 were dropped, the end is always there.
    let (ticks, ends, lagged) = collect(handler.subscribe_from(Since::Start)).await;
    assert_eq!(
        ticks.iter().map(|t| t.1).collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    assert_eq!((ends, lagged), (vec![Outcome::Stopped], 6));
}

#[tokio::test(flavor = "current_thread")]
async fn bounded_history_current_thread() {
    bounded_history_counts_what_it_dropped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_history_multi_thread() {
    bounded_history_counts_what_it_dropped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_tells_a_late_subscriber_it_was_cancelled() {
    let handler = Gate.start(2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    handler.cancel();
    wait_finished(&handler).await;
    let (ticks, ends, _) = collect(handler.subscribe_from(Since::Start)).await;
    assert_eq!(ticks.len(), 2);
    assert_eq!(ends, vec![Outcome::Cancelled]);
}
