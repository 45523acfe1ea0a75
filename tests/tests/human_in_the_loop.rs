//! Human-in-the-loop: typed request/response pairs through the graph, and inline waits.

use std::time::Duration;

use futures_util::StreamExt;
use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
#[event(request = Verdict)]
struct Review {
    draft: String,
    round: u32,
}

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Verdict {
    approved: bool,
    feedback: String,
}

#[derive(Debug, Clone, Event)]
struct Draft {
    text: String,
    round: u32,
}

#[derive(Debug, Default, Clone)]
struct Rounds {
    round: u32,
}

struct Approval;

#[workflow(state = Rounds)]
impl Approval {
    #[step]
    async fn propose(&self, ev: StartEvent<String>) -> Draft {
        Draft {
            text: format!("a post about {}", ev.0),
            round: 1,
        }
    }

    /// A completed step that emits a request: the run parks until the outside answers.
    #[step]
    async fn ask(&self, ctx: &Context<Self>, ev: Draft) -> Review {
        ctx.update_state(|s| s.round = ev.round);
        Review {
            draft: ev.text,
            round: ev.round,
        }
    }

    #[step]
    async fn decide(&self, ctx: &Context<Self>, ev: Verdict) -> Either<Draft, StopEvent<String>> {
        let round = ctx.update_state(|s| s.round);
        if ev.approved {
            Either::Right(StopEvent(format!("published after {round} round(s)")))
        } else {
            Either::Left(Draft {
                text: format!("a post, revised for {:?}", ev.feedback),
                round: round + 1,
            })
        }
    }
}

#[tokio::test]
async fn a_request_is_published_and_the_run_waits_for_its_typed_response() {
    let mut run = Approval.start("rust".to_string());
    let mut events = run.events();
    let mut reviews = Vec::new();
    while let Some(item) = events.next().await {
        if let Some(review) = item.event::<Review>() {
            reviews.push((review.round, review.draft.clone()));
            let approved = review.round == 2;
            run.send_event(Verdict {
                approved,
                feedback: "shorter".into(),
            });
        }
    }
    assert_eq!(
        reviews,
        [
            (1, "a post about rust".to_string()),
            (2, "a post, revised for \"shorter\"".to_string())
        ]
    );
    assert_eq!(run.await.unwrap(), "published after 2 round(s)");
}

#[tokio::test(start_paused = true)]
async fn a_run_waiting_for_a_response_is_not_stuck_and_times_out_if_configured() {
    let run = Approval
        .timeout(Duration::from_secs(60))
        .start("x".to_string());
    let error = run.await.unwrap_err();
    assert!(
        matches!(error, WorkflowError::TimedOut { ref active, .. } if active.is_empty()),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Inline waits.

#[derive(Debug, Clone, Event)]
struct Ask {
    id: u32,
}

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Reply {
    id: u32,
    text: String,
}

#[derive(Debug, Clone, Event)]
struct Answered {
    id: u32,
    text: String,
}

struct Panel {
    people: u32,
}

#[workflow]
impl Panel {
    #[step(emits = [Ask])]
    async fn fan_out(&self, ctx: &Context<Self>, _ev: StartEvent<()>) {
        for id in 0..self.people {
            ctx.send_event(Ask { id });
        }
    }

    /// N concurrent waiters, each matched on its own id.
    #[step(num_workers = 8)]
    async fn interview(&self, ctx: &Context<Self>, ev: Ask) -> Result<Answered, WorkflowError> {
        let id = ev.id;
        let reply = ctx
            .wait_for::<Reply>()
            .publishing(Ask { id })
            .matching(move |r| r.id == id)
            .timeout(Duration::from_secs(5))
            .await?;
        Ok(Answered {
            id,
            text: reply.text,
        })
    }

    #[step]
    async fn gather(&self, ctx: &Context<Self>, ev: Answered) -> Option<StopEvent<Vec<String>>> {
        let mut all = ctx.collect(ev, self.people as usize)?;
        all.sort_by_key(|a| a.id);
        Some(StopEvent(
            all.into_iter()
                .map(|a| format!("{}={}", a.id, a.text))
                .collect(),
        ))
    }
}

#[tokio::test]
async fn concurrent_waiters_each_receive_exactly_their_own_answer() {
    let mut run = Panel { people: 6 }.start(());
    let mut events = run.events();
    let mut asked = Vec::new();
    while let Some(item) = events.next().await {
        if let Some(ask) = item.event::<Ask>() {
            asked.push(ask.id);
            if asked.len() == 6 {
                // Answer in reverse order: each waiter still gets its own.
                for id in asked.iter().rev() {
                    run.send_response(Reply {
                        id: *id,
                        text: format!("answer-{id}"),
                    });
                }
            }
        }
    }
    assert_eq!(
        run.await.unwrap(),
        (0..6)
            .map(|i| format!("{i}=answer-{i}"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn an_inline_wait_times_out_with_a_clear_error() {
    let run = Panel { people: 1 }.start(());
    let error = run.await.unwrap_err();
    let WorkflowError::StepFailed { step, source, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*step, "interview");
    assert_eq!(
        source.to_string(),
        "no `human_in_the_loop::Reply` arrived within 5s"
    );
}

#[derive(Debug, Clone, Event)]
#[event(response)]
struct Token(u32);

struct Claimed {
    seen: std::sync::Mutex<Vec<u32>>,
}

#[workflow]
impl Claimed {
    #[step]
    async fn wait(
        &self,
        ctx: &Context<Self>,
        _ev: StartEvent<()>,
    ) -> Result<StopEvent<u32>, WorkflowError> {
        let token = ctx.wait_for::<Token>().matching(|t| t.0 == 1).await?;
        Ok(StopEvent(token.0))
    }

    /// Also accepts `Token`: but a token taken by a waiter must not reach it.
    #[step]
    async fn observe(&self, ev: Token) -> Option<StopEvent<u32>> {
        self.seen.lock().unwrap().push(ev.0);
        None
    }
}

#[tokio::test]
async fn an_answer_taken_by_a_waiter_is_not_delivered_to_other_steps() {
    let runner = Claimed {
        seen: std::sync::Mutex::new(Vec::new()),
    }
    .runner();
    let run = runner.start(());
    tokio::task::yield_now().await;
    run.send_event(Token(2)); // nobody waits for 2: it goes to `observe`
    run.send_event(Token(1)); // the waiter takes it
    assert_eq!(run.await.unwrap(), 1);
    assert_eq!(*runner.workflow().seen.lock().unwrap(), [2]);
}

#[tokio::test]
async fn an_answer_that_arrives_before_the_wait_is_kept_for_it() {
    let run = Panel { people: 1 }.start(());
    // Sent at once, likely before `interview` registers its waiter: kept, not lost.
    run.send_response(Reply {
        id: 0,
        text: "early".into(),
    });
    assert_eq!(run.await.unwrap(), ["0=early"]);
}
