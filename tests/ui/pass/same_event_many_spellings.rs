// Guards type identity handed to rustc: `crate::events::Draft`, `Draft`, `events::Draft` and
// the alias `D` are one event, so the graph checks pass, the routing works and
// `ctx.send_event` accepts every spelling.

mod events {
    use tidewater::prelude::*;

    #[derive(Debug, Clone, Event)]
    pub struct Draft(pub String);

    #[derive(Debug, Clone, Event)]
    pub struct Review(pub String);
}

use events::Draft;
use tidewater::prelude::*;

type D = Draft;

struct Writer;

#[workflow]
impl Writer {
    #[step]
    async fn write(&self, ev: StartEvent<String>) -> crate::events::Draft {
        crate::events::Draft(ev.0)
    }

    #[step(emits = [events::Review])]
    async fn review(&self, ctx: &Context<Self>, ev: Draft) {
        ctx.send_event(events::Review(format!("{} (reviewed)", ev.0)));
    }

    #[step]
    async fn revise(&self, ev: events::Review) -> Either<D, StopEvent<String>> {
        if ev.0.matches("reviewed").count() < 2 {
            Either::Left(D::from_review(ev))
        } else {
            Either::Right(StopEvent(ev.0))
        }
    }
}

impl Draft {
    fn from_review(review: events::Review) -> Draft {
        Draft(review.0)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(Writer.run("text".to_string())).unwrap();
    assert_eq!(out, "text (reviewed) (reviewed)");
    assert!(Writer::graph().validate().is_ok());
}
