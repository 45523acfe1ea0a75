//! Pictures of a workflow (feature `viz`): its graph straight from [`Workflow::GRAPH`], with no
//! run, as Mermaid, Graphviz DOT or SVG text, and what one run did ([`Trace`]) drawn on it.
//!
//! Steps are boxes; events are rounded pills, the start event a bold green ellipse, the stop
//! event a red double ellipse, a request to a human an orange hexagon and its response a
//! parallelogram, joined by a dashed `human` edge; a step's emits are numbered in the order of
//! its signature when it has several; edges that close a loop are dashed and say `loop`; a step
//! with several workers says how many. The same graph always gives the same text, byte for
//! byte, so pictures can be checked in and diffed.
//!
//! ```
//! use tidewater::prelude::*;
//! use tidewater::viz;
//!
//! #[derive(Debug, Clone, Event)]
//! struct Joke(String);
//!
//! struct JokeFlow;
//!
//! #[workflow]
//! impl JokeFlow {
//!     #[step]
//!     async fn write(&self, ev: StartEvent<String>) -> Joke { Joke(ev.0) }
//!     #[step]
//!     async fn critique(&self, ev: Joke) -> StopEvent<String> { StopEvent(ev.0) }
//! }
//!
//! let mermaid = viz::mermaid(JokeFlow::graph());
//! assert!(mermaid.contains("s0[\"write\"]:::step"));
//! assert!(mermaid.contains("e0 --> s0"));
//! let svg = viz::svg(JokeFlow::graph());
//! assert!(svg.starts_with("<svg") && svg.contains("data-step=\"critique\""));
//! assert_eq!(viz::render(JokeFlow::graph(), viz::Format::Dot), viz::dot(JokeFlow::graph()));
//! ```
//!
//! [`Workflow::GRAPH`]: crate::Workflow::GRAPH
//! [`Trace`]: crate::trace::Trace

mod model;
mod svg;
mod text;
mod trace;

use crate::graph::Graph;
use crate::trace::Trace;
use model::{Model, NodeKind};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// Mermaid flowchart text (renders on most forges inside a ```` ```mermaid ```` block).
    Mermaid,
    /// Graphviz DOT text (`dot -Tpng`).
    Dot,
    /// A standalone SVG image, laid out here (no Graphviz needed).
    Svg,
}

impl Format {
    /// Every format, in a stable order.
    pub const ALL: [Format; 3] = [Format::Mermaid, Format::Dot, Format::Svg];

    /// The usual file extension: `mmd`, `dot`, `svg`.
    ///
    /// ```
    /// use tidewater::viz::Format;
    /// assert_eq!(Format::from_extension("svg"), Some(Format::Svg));
    /// assert_eq!(Format::Svg.extension(), "svg");
    /// ```
    pub fn extension(self) -> &'static str {
        match self {
            Format::Mermaid => "mmd",
            Format::Dot => "dot",
            Format::Svg => "svg",
        }
    }

    /// The format of a file extension (`mmd`/`mermaid`/`md`, `dot`/`gv`, `svg`).
    pub fn from_extension(extension: &str) -> Option<Format> {
        match extension.to_ascii_lowercase().as_str() {
            "mmd" | "mermaid" | "md" => Some(Format::Mermaid),
            "dot" | "gv" => Some(Format::Dot),
            "svg" => Some(Format::Svg),
            _ => None,
        }
    }
}

/// The graph as a Mermaid flowchart.
pub fn mermaid(graph: &Graph) -> String {
    text::mermaid(&Model::new(graph), None)
}

/// The graph as Graphviz DOT.
pub fn dot(graph: &Graph) -> String {
    text::dot(&Model::new(graph), None)
}

/// The graph as a standalone SVG image. Each step is a `<g class="node step ..."
/// data-step="name">` and each event a `<g class="node event ..." data-event="Name">`, so a
/// page can find and highlight them.
pub fn svg(graph: &Graph) -> String {
    svg::svg(&Model::new(graph), None)
}

/// The graph in `format`.
pub fn render(graph: &Graph, format: Format) -> String {
    render_model(&Model::new(graph), None, format)
}

/// What `trace` did, drawn on `graph` in `format`: the steps that ran with how many
/// invocations and how long, the failures and retries, the events that went along each edge,
/// the waits for a human; what did not run is greyed out. See [`Trace::timeline`] for the
/// order of things as text.
///
/// [`Trace::timeline`]: crate::trace::Trace::timeline
pub fn render_trace(graph: &Graph, trace: &Trace, format: Format) -> String {
    let model = Model::new(graph);
    let overlay = trace::overlay(&model, graph, trace);
    render_model(&model, Some(&overlay), format)
}

fn render_model(model: &Model, overlay: Option<&Overlay>, format: Format) -> String {
    match format {
        Format::Mermaid => text::mermaid(model, overlay),
        Format::Dot => text::dot(model, overlay),
        Format::Svg => svg::svg(model, overlay),
    }
}

/// How a node looks in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    /// Not seen in the run.
    Idle,
    /// Ran (a step) or went by (an event).
    Ran,
    /// A step whose invocation failed for good.
    Failed,
}

#[derive(Debug, Clone)]
struct NodeOverlay {
    state: NodeState,
    note: Option<String>,
}

#[derive(Debug, Clone)]
struct EdgeOverlay {
    taken: bool,
    note: Option<String>,
}

/// Per-node and per-edge annotations drawn over the graph.
#[derive(Debug, Clone)]
struct Overlay {
    title: Option<String>,
    nodes: Vec<NodeOverlay>,
    edges: Vec<EdgeOverlay>,
}

/// Fill and stroke of a node kind.
#[derive(Debug, Clone, Copy)]
struct Palette {
    fill: &'static str,
    stroke: &'static str,
}

impl Palette {
    const STEP: Palette = Palette {
        fill: "#dbeafe",
        stroke: "#1d4ed8",
    };
    const EVENT: Palette = Palette {
        fill: "#f3f4f6",
        stroke: "#4b5563",
    };
    const START: Palette = Palette {
        fill: "#dcfce7",
        stroke: "#15803d",
    };
    const STOP: Palette = Palette {
        fill: "#fee2e2",
        stroke: "#b91c1c",
    };
    const REQUEST: Palette = Palette {
        fill: "#ffedd5",
        stroke: "#c2410c",
    };
    const RESPONSE: Palette = Palette {
        fill: "#fef9c3",
        stroke: "#a16207",
    };
    const FAILURE: Palette = Palette {
        fill: "#fce7f3",
        stroke: "#be185d",
    };
    const IDLE: Palette = Palette {
        fill: "#f9fafb",
        stroke: "#d1d5db",
    };
    const FAILED: Palette = Palette {
        fill: "#fecaca",
        stroke: "#dc2626",
    };

    /// Every class with its palette, for Mermaid's `classDef`s.
    const ALL: [(&'static str, Palette); 9] = [
        ("step", Palette::STEP),
        ("event", Palette::EVENT),
        ("start", Palette::START),
        ("stop", Palette::STOP),
        ("request", Palette::REQUEST),
        ("response", Palette::RESPONSE),
        ("failure", Palette::FAILURE),
        ("idle", Palette::IDLE),
        ("failed", Palette::FAILED),
    ];

    fn of(kind: NodeKind) -> Palette {
        match kind {
            NodeKind::Step => Palette::STEP,
            NodeKind::Event => Palette::EVENT,
            NodeKind::Start => Palette::START,
            NodeKind::Stop => Palette::STOP,
            NodeKind::Request => Palette::REQUEST,
            NodeKind::Response => Palette::RESPONSE,
            NodeKind::Failure => Palette::FAILURE,
        }
    }
}
