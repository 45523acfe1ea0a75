//! A trace drawn on the graph: counts, times, failures, the edges events took.

use super::model::{EdgeKind, Model, NodeKind, short};
use super::{EdgeOverlay, NodeOverlay, NodeState, Overlay};
use crate::graph::Graph;
use crate::trace::{Trace, TraceEvent, human};

pub(super) fn overlay(model: &Model, graph: &Graph, trace: &Trace) -> Overlay {
    let mut nodes: Vec<NodeOverlay> = model
        .nodes
        .iter()
        .map(|_| NodeOverlay {
            state: NodeState::Idle,
            note: None,
        })
        .collect();
    let mut edges: Vec<EdgeOverlay> = model
        .edges
        .iter()
        .map(|_| EdgeOverlay {
            taken: false,
            note: None,
        })
        .collect();
    // Events by short name; several types may share one, then every match counts.
    let event_nodes = |name: &str| -> Vec<usize> {
        model
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.kind != NodeKind::Step && n.name == short(name))
            .map(|(i, _)| i)
            .collect()
    };
    let step_node = |name: &str| -> Option<usize> {
        graph
            .step_index(name)
            .and_then(|s| model.steps.get(s).copied())
    };
    let mut edge_counts = vec![0u32; model.edges.len()];
    let mut event_counts = vec![0u32; model.nodes.len()];
    let mut waits = 0u32;
    for entry in &trace.entries {
        match &entry.what {
            TraceEvent::Began { event } => {
                for e in event_nodes(event) {
                    event_counts[e] += 1;
                }
            }
            TraceEvent::StepStarted {
                step,
                input,
                attempt: 1,
                ..
            } => {
                // The event went along the edge into the step.
                if let Some(s) = step_node(step) {
                    for e in event_nodes(input) {
                        if let Some(i) = model.edges.iter().position(|edge| {
                            edge.kind == EdgeKind::Accepts && edge.from == e && edge.to == s
                        }) {
                            edge_counts[i] += 1;
                        }
                    }
                }
            }
            TraceEvent::StepFinished { step, emitted, .. } => {
                if let Some(s) = step_node(step) {
                    for name in emitted {
                        for e in event_nodes(name) {
                            event_counts[e] += 1;
                            if let Some(i) = model.edges.iter().position(|edge| {
                                edge.kind == EdgeKind::Emits && edge.from == s && edge.to == e
                            }) {
                                edge_counts[i] += 1;
                            }
                        }
                    }
                }
            }
            TraceEvent::EventSent { event, .. } => {
                for e in event_nodes(event) {
                    event_counts[e] += 1;
                }
            }
            TraceEvent::HumanWait { .. } => waits += 1,
            TraceEvent::HumanAnswer { response } => {
                for e in event_nodes(response) {
                    event_counts[e] += 1;
                    for (i, edge) in model.edges.iter().enumerate() {
                        if edge.kind == EdgeKind::Answer && edge.to == e {
                            edge_counts[i] += 1;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (index, step) in graph.steps.iter().enumerate() {
        let node = model.steps[index];
        let runs = trace.invocations(step.name);
        if runs == 0 {
            continue;
        }
        let stats = trace.stats(step.name);
        let mut note = format!("ran {runs}× · {}", human(stats.busy_us));
        if stats.retried > 0 {
            note.push_str(&format!(" · {} retried", stats.retried));
        }
        if stats.failed > 0 {
            note.push_str(&format!(" · {} failed", stats.failed));
        }
        nodes[node] = NodeOverlay {
            state: if stats.failed > 0 {
                NodeState::Failed
            } else {
                NodeState::Ran
            },
            note: Some(note),
        };
    }
    for (index, node) in model.nodes.iter().enumerate() {
        if node.kind == NodeKind::Step || event_counts[index] == 0 {
            continue;
        }
        let mut note = format!("{}×", event_counts[index]);
        if node.kind == NodeKind::Request && waits > 0 {
            note = format!("{waits}× asked");
        }
        nodes[index] = NodeOverlay {
            state: NodeState::Ran,
            note: Some(note),
        };
    }
    for (index, count) in edge_counts.into_iter().enumerate() {
        if count > 0 {
            edges[index] = EdgeOverlay {
                taken: true,
                note: Some(format!("{count}×")),
            };
        }
    }
    let outcome = trace.outcome().unwrap_or("still running");
    let end = trace.entries.last().map_or(0, |e| e.at_us);
    Overlay {
        title: Some(format!(
            "run {} of {}: {} after {}",
            trace.run_id,
            model.workflow,
            outcome.split(':').next().unwrap_or(outcome),
            human(end)
        )),
        nodes,
        edges,
    }
}
