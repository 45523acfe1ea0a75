//! The drawing model shared by every output format: the graph's events and steps as nodes, in a
//! stable order, and the edges between them.

use crate::event::{EventKind, EventMeta};
use crate::graph::Graph;

/// What a node of the picture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Step,
    Event,
    Start,
    Stop,
    Request,
    Response,
    Failure,
}

impl NodeKind {
    fn of(kind: EventKind) -> NodeKind {
        match kind {
            EventKind::Regular => NodeKind::Event,
            EventKind::Start => NodeKind::Start,
            EventKind::Stop => NodeKind::Stop,
            EventKind::Failure => NodeKind::Failure,
            EventKind::Request => NodeKind::Request,
            EventKind::Response => NodeKind::Response,
        }
    }

    /// The class name used by Mermaid, DOT comments and SVG.
    pub(crate) fn class(self) -> &'static str {
        match self {
            NodeKind::Step => "step",
            NodeKind::Event => "event",
            NodeKind::Start => "start",
            NodeKind::Stop => "stop",
            NodeKind::Request => "request",
            NodeKind::Response => "response",
            NodeKind::Failure => "failure",
        }
    }
}

/// One node: a step or an event type.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// `s0`, `s1`.. for steps (declaration order), `e0`, `e1`.. for events (first appearance).
    pub(crate) id: String,
    /// The step's name or the event type's short name.
    pub(crate) name: String,
    pub(crate) kind: NodeKind,
    /// For steps: `num_workers`.
    pub(crate) workers: usize,
}

/// What an edge means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    /// An event goes to a step that accepts it.
    Accepts,
    /// A step emits an event (in the order of its signature).
    Emits,
    /// A request is answered from outside by its response type.
    Answer,
}

/// One edge between two nodes (indices into [`Model::nodes`]).
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) kind: EdgeKind,
    /// The edge closes a loop (it goes back to a node that leads to its source).
    pub(crate) back: bool,
}

/// The graph as nodes and edges, in a stable order: events by first appearance (the start
/// event first), steps in declaration order, edges step by step (accepts, then emits in
/// signature order), answers last.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) workflow: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) edges: Vec<Edge>,
    /// Node index of each step, by step index.
    pub(crate) steps: Vec<usize>,
}

/// The last path segment of a stable name (`app::events::Draft` -> `Draft`).
pub(crate) fn short(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

impl Model {
    pub(crate) fn new(graph: &Graph) -> Model {
        let mut nodes: Vec<Node> = Vec::new();
        let mut event_ids: Vec<(u64, usize)> = Vec::new();
        let mut event_node = |meta: &EventMeta, nodes: &mut Vec<Node>| -> usize {
            if let Some(&(_, index)) = event_ids.iter().find(|(id, _)| *id == meta.id.raw()) {
                return index;
            }
            let index = nodes.len();
            let count = event_ids.len();
            event_ids.push((meta.id.raw(), index));
            nodes.push(Node {
                id: format!("e{count}"),
                name: short(meta.name).to_string(),
                kind: NodeKind::of(meta.kind),
                workers: 0,
            });
            index
        };
        // The start event first, whichever step takes it.
        for step in graph.steps {
            for meta in step.accepts.iter().filter(|m| m.kind == EventKind::Start) {
                event_node(meta, &mut nodes);
            }
        }
        let mut steps = Vec::new();
        let mut edges = Vec::new();
        for (index, step) in graph.steps.iter().enumerate() {
            let node = nodes.len();
            steps.push(node);
            nodes.push(Node {
                id: format!("s{index}"),
                name: step.name.to_string(),
                kind: NodeKind::Step,
                workers: step.num_workers,
            });
            for meta in step.accepts {
                let from = event_node(meta, &mut nodes);
                edges.push(Edge {
                    from,
                    to: node,
                    kind: EdgeKind::Accepts,
                    back: false,
                });
            }
            for meta in step.emits {
                let to = event_node(meta, &mut nodes);
                edges.push(Edge {
                    from: node,
                    to,
                    kind: EdgeKind::Emits,
                    back: false,
                });
            }
        }
        // A request is answered by its response type, from outside the run.
        for step in graph.steps {
            for meta in step.emits {
                let Some(response) = meta.response else {
                    continue;
                };
                let from = event_ids.iter().find(|(id, _)| *id == meta.id.raw());
                let to = event_ids.iter().find(|(id, _)| *id == response.raw());
                if let (Some(&(_, from)), Some(&(_, to))) = (from, to) {
                    if !edges
                        .iter()
                        .any(|e| e.kind == EdgeKind::Answer && e.from == from && e.to == to)
                    {
                        edges.push(Edge {
                            from,
                            to,
                            kind: EdgeKind::Answer,
                            back: false,
                        });
                    }
                }
            }
        }
        let mut model = Model {
            workflow: short(graph.workflow).to_string(),
            nodes,
            edges,
            steps,
        };
        model.mark_back_edges();
        model
    }

    /// Marks the edges that close a loop: a depth-first walk from the entry nodes (the start
    /// event first), in node order; an edge to a node still on the walk's path goes back.
    fn mark_back_edges(&mut self) {
        let n = self.nodes.len();
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut has_in = vec![false; n];
        for (index, edge) in self.edges.iter().enumerate() {
            out[edge.from].push(index);
            has_in[edge.to] = true;
        }
        // 0: unseen, 1: on the path, 2: done.
        let mut state = vec![0u8; n];
        let roots: Vec<usize> = (0..n)
            .filter(|&v| !has_in[v])
            .chain(0..n)
            .collect::<Vec<_>>();
        for root in roots {
            if state[root] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            state[root] = 1;
            while let Some(top) = stack.last_mut() {
                let (node, next) = *top;
                if next < out[node].len() {
                    top.1 += 1;
                    let edge = out[node][next];
                    let to = self.edges[edge].to;
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            stack.push((to, 0));
                        }
                        1 => self.edges[edge].back = true,
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
    }
}
