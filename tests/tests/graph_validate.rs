//! Run-time parity: `Graph::validate` reports the same rule violations as the compile-time
//! checks, on graphs mirroring the `ui/fail` cases, and accepts the `ui/pass` shapes.

use tidewater::graph::{Graph, GraphError, StepSpec};
use tidewater::prelude::*;
use tidewater::{Event, EventMeta};

#[derive(Debug, Clone, Event)]
struct Draft;

#[derive(Debug, Clone, Event)]
struct Review;

#[derive(Debug, Clone, Event)]
struct Polish;

#[derive(Debug, Clone, Event)]
struct Proofread;

type Start = StartEvent<String>;
type Stop = StopEvent<String>;

const START: EventMeta = EventMeta::of::<Start>();
const STOP: EventMeta = EventMeta::of::<Stop>();
const DRAFT: EventMeta = EventMeta::of::<Draft>();
const REVIEW: EventMeta = EventMeta::of::<Review>();
const POLISH: EventMeta = EventMeta::of::<Polish>();
const PROOFREAD: EventMeta = EventMeta::of::<Proofread>();

/// A step as `#[workflow]` writes it, one worker, checks on.
const fn step(
    name: &'static str,
    accepts: &'static [EventMeta],
    emits: &'static [EventMeta],
) -> StepSpec {
    StepSpec {
        name,
        accepts,
        emits,
        num_workers: 1,
        skip_graph_checks: false,
    }
}

const fn graph(steps: &'static [StepSpec]) -> Graph {
    Graph {
        workflow: "Flow",
        steps,
    }
}

fn errors(graph: &Graph) -> Vec<GraphError> {
    graph.validate().expect_err("the graph breaks a rule")
}

#[test]
fn no_start_event() {
    const G: Graph = graph(&[step("finish", &[DRAFT], &[STOP])]);
    let errors = errors(&G);
    assert_eq!(errors[0], GraphError::NoStart);
    assert_eq!(
        errors[0].to_string(),
        "no step takes a `StartEvent`: a workflow needs one step whose event is `StartEvent<Input>`"
    );
}

#[test]
fn several_start_events() {
    const G: Graph = graph(&[
        step("write", &[START], &[DRAFT]),
        step("count", &[EventMeta::of::<StartEvent<u32>>()], &[DRAFT]),
        step("finish", &[DRAFT], &[STOP]),
    ]);
    assert_eq!(errors(&G), [GraphError::SeveralStarts]);
}

#[test]
fn no_stop_event() {
    const G: Graph = graph(&[
        step("write", &[START], &[DRAFT]),
        step("finish", &[DRAFT], &[]),
    ]);
    assert_eq!(errors(&G), [GraphError::NoStop]);
    assert_eq!(
        GraphError::NoStop.to_string(),
        "no step returns a `StopEvent`: a workflow needs one step that can emit `StopEvent<Output>`"
    );
}

#[test]
fn several_stop_events() {
    const G: Graph = graph(&[
        step(
            "write",
            &[START],
            &[DRAFT, EventMeta::of::<StopEvent<usize>>()],
        ),
        step("finish", &[DRAFT], &[STOP]),
    ]);
    assert_eq!(errors(&G), [GraphError::SeveralStops]);
}

#[test]
fn step_accepts_stop_event() {
    const G: Graph = graph(&[
        step("write", &[START], &[STOP]),
        step("after", &[STOP], &[DRAFT]),
    ]);
    let errors = errors(&G);
    assert!(
        errors.contains(&GraphError::AcceptsStop { step: "after" }),
        "{errors:?}"
    );
    assert_eq!(
        GraphError::AcceptsStop { step: "after" }.to_string(),
        "step `after` accepts the `StopEvent`: the stop event ends the run and no step can take it"
    );
}

#[test]
fn event_never_produced() {
    const G: Graph = graph(&[
        step("write", &[START], &[DRAFT, STOP]),
        step("edit", &[DRAFT], &[STOP]),
        step("finish", &[REVIEW], &[STOP]),
    ]);
    let expected = GraphError::NotProduced {
        event: <Review as Event>::NAME,
        step: "finish",
    };
    assert_eq!(errors(&G), std::slice::from_ref(&expected));
    assert_eq!(
        expected.to_string(),
        "event `graph_validate::Review` is consumed by step `finish` but no step produces it"
    );
}

#[test]
fn event_never_consumed() {
    const G: Graph = graph(&[
        step("write", &[START], &[DRAFT, REVIEW]),
        step("finish", &[DRAFT], &[STOP]),
    ]);
    let expected = GraphError::NotConsumed {
        event: <Review as Event>::NAME,
        step: "write",
    };
    assert_eq!(errors(&G), std::slice::from_ref(&expected));
    assert_eq!(
        expected.to_string(),
        "event `graph_validate::Review` is produced by step `write` but no step consumes it"
    );
}

#[test]
fn unreachable_steps() {
    const G: Graph = graph(&[
        step("write", &[START], &[STOP]),
        step("polish", &[POLISH], &[PROOFREAD, STOP]),
        step("proofread", &[PROOFREAD], &[POLISH]),
    ]);
    assert_eq!(
        errors(&G),
        [
            GraphError::Unreachable { step: "polish" },
            GraphError::Unreachable { step: "proofread" },
        ]
    );
    assert_eq!(
        GraphError::Unreachable { step: "polish" }.to_string(),
        "step `polish` can never run: no path from the `StartEvent` reaches it"
    );
}

#[test]
fn dead_end_step() {
    const G: Graph = graph(&[
        step("write", &[START], &[DRAFT, STOP]),
        step("archive", &[DRAFT], &[]),
    ]);
    assert_eq!(errors(&G), [GraphError::DeadEnd { step: "archive" }]);
    assert_eq!(
        GraphError::DeadEnd { step: "archive" }.to_string(),
        "step `archive` is a dead end: no event it emits can lead to a `StopEvent`"
    );
}

#[test]
fn loop_without_exit() {
    const G: Graph = graph(&[
        step("write", &[START], &[DRAFT, STOP]),
        step("edit", &[DRAFT], &[REVIEW]),
        step("review", &[REVIEW], &[DRAFT]),
    ]);
    assert_eq!(
        errors(&G),
        [
            GraphError::LoopWithoutExit { step: "edit" },
            GraphError::LoopWithoutExit { step: "review" },
        ]
    );
    assert_eq!(
        GraphError::LoopWithoutExit { step: "edit" }.to_string(),
        "step `edit` is part of a loop with no exit: no event on the loop can lead to a `StopEvent`"
    );
}

/// Mirrors `ui/fail/several_graph_mistakes.rs`: every violation, in one report.
#[test]
fn several_graph_mistakes() {
    #[derive(Debug, Clone, Event)]
    struct Orphan;
    #[derive(Debug, Clone, Event)]
    struct Unused;
    #[derive(Debug, Clone, Event)]
    struct Archive;
    #[derive(Debug, Clone, Event)]
    struct Ping;
    #[derive(Debug, Clone, Event)]
    struct Pong;
    const ARCHIVE: EventMeta = EventMeta::of::<Archive>();
    const PING: EventMeta = EventMeta::of::<Ping>();
    const PONG: EventMeta = EventMeta::of::<Pong>();
    const G: Graph = graph(&[
        step("write", &[START], &[DRAFT, ARCHIVE, PING]),
        step("finish", &[DRAFT], &[STOP, EventMeta::of::<Unused>()]),
        step("orphan", &[EventMeta::of::<Orphan>()], &[STOP]),
        step("archive", &[ARCHIVE], &[]),
        step("ping", &[PING], &[PONG]),
        step("pong", &[PONG], &[PING]),
    ]);
    assert_eq!(
        errors(&G),
        [
            GraphError::NotConsumed {
                event: <Unused as Event>::NAME,
                step: "finish",
            },
            GraphError::NotProduced {
                event: <Orphan as Event>::NAME,
                step: "orphan",
            },
            GraphError::DeadEnd { step: "archive" },
            GraphError::LoopWithoutExit { step: "ping" },
            GraphError::LoopWithoutExit { step: "pong" },
        ]
    );
}

/// Mirrors `ui/fail/same_name_different_types.rs`: identity is the type, not its last name.
#[test]
fn same_name_different_types() {
    mod a {
        #[derive(Debug, Clone, tidewater::Event)]
        pub(super) struct Draft;
    }
    mod b {
        #[derive(Debug, Clone, tidewater::Event)]
        pub(super) struct Draft;
    }
    const G: Graph = graph(&[
        step("write", &[START], &[EventMeta::of::<a::Draft>(), STOP]),
        step("finish", &[EventMeta::of::<b::Draft>()], &[STOP]),
    ]);
    assert_eq!(
        errors(&G),
        [
            GraphError::NotConsumed {
                event: <a::Draft as Event>::NAME,
                step: "write",
            },
            GraphError::NotProduced {
                event: <b::Draft as Event>::NAME,
                step: "finish",
            },
        ]
    );
}

#[test]
fn skip_graph_checks_island() {
    const G: Graph = graph(&[
        step("write", &[START], &[STOP]),
        StepSpec {
            skip_graph_checks: true,
            ..step("polish", &[POLISH], &[PROOFREAD])
        },
        StepSpec {
            skip_graph_checks: true,
            ..step("proofread", &[PROOFREAD], &[POLISH])
        },
    ]);
    assert_eq!(G.validate(), Ok(()));
}

#[test]
fn hand_built_pass_shapes() {
    const LOOP: Graph = graph(&[
        step("write", &[START], &[DRAFT]),
        step("edit", &[DRAFT], &[REVIEW, STOP]),
        step("review", &[REVIEW], &[DRAFT]),
    ]);
    const EITHER_INPUT: Graph = graph(&[
        step("write", &[START], &[DRAFT, REVIEW]),
        step("finish", &[DRAFT, REVIEW], &[STOP]),
    ]);
    assert_eq!(LOOP.validate(), Ok(()));
    assert_eq!(EITHER_INPUT.validate(), Ok(()));
}

mod events {
    #[derive(Debug, Clone, tidewater::Event)]
    pub(crate) struct Note(pub(crate) u32);
}

use events::Note;

type N = Note;

struct Spellings;

/// The generated graph of the pass shapes is valid at run time too: one event spelled three
/// ways, a loop with an exit, `emits`, and an island.
#[workflow]
impl Spellings {
    #[step]
    async fn begin(&self, ev: StartEvent<u32>) -> crate::events::Note {
        crate::events::Note(ev.0)
    }

    #[step(emits = [N])]
    async fn count(&self, ctx: &Context<Self>, ev: Note) -> Option<StopEvent<u32>> {
        if ev.0 == 0 {
            return Some(StopEvent(0));
        }
        ctx.send_event(N::from(ev.0 - 1));
        None
    }

    #[step(skip_graph_checks)]
    async fn island(&self, ev: Polish) -> Polish {
        ev
    }
}

impl From<u32> for Note {
    fn from(n: u32) -> Note {
        Note(n)
    }
}

struct Whole;

#[workflow(skip_graph_checks)]
impl Whole {
    #[step]
    async fn run(&self, ev: StartEvent<u32>) -> StopEvent<u32> {
        StopEvent(ev.0)
    }

    #[step]
    async fn polish(&self, ev: Polish) -> Proofread {
        let Polish = ev;
        Proofread
    }

    #[step]
    async fn proofread(&self, ev: Proofread) -> Polish {
        let Proofread = ev;
        Polish
    }
}

#[test]
fn generated_pass_shapes_validate() {
    assert_eq!(Spellings::graph().validate(), Ok(()));
    assert_eq!(Whole::graph().validate(), Ok(()));
}

#[tokio::test]
async fn generated_pass_shapes_run() {
    assert_eq!(Spellings.run(3).await.unwrap(), 0);
    assert_eq!(Whole.run(5).await.unwrap(), 5);
}
