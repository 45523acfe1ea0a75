//! Mermaid and Graphviz DOT text.

use std::fmt::Write;

use super::model::{EdgeKind, Model, NodeKind};
use super::{Overlay, Palette};

/// Mermaid's shape for a node kind, around the (already escaped) label.
fn mermaid_shape(kind: NodeKind, label: &str) -> String {
    match kind {
        NodeKind::Step => format!("[\"{label}\"]"),
        NodeKind::Event => format!("([\"{label}\"])"),
        NodeKind::Start => format!("((\"{label}\"))"),
        NodeKind::Stop => format!("(((\"{label}\")))"),
        NodeKind::Request => format!("{{{{\"{label}\"}}}}"),
        NodeKind::Response => format!("[/\"{label}\"/]"),
        NodeKind::Failure => format!("[/\"{label}\"\\]"),
    }
}

/// Escapes a label for a quoted Mermaid string.
fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '#' => out.push_str("#35;"),
            '\n' => out.push_str("<br/>"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a label for a quoted DOT string.
fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The label of node `index`: its name, its workers, and the overlay's note.
pub(super) fn label(model: &Model, overlay: Option<&Overlay>, index: usize) -> String {
    let node = &model.nodes[index];
    let mut label = node.name.clone();
    if node.kind == NodeKind::Step && node.workers > 1 {
        let _ = write!(label, "\n{} workers", node.workers);
    }
    if let Some(note) = overlay.and_then(|o| o.nodes[index].note.as_deref()) {
        label.push('\n');
        label.push_str(note);
    }
    label
}

/// The label of edge `index`: its place in the step's emits (when it emits several), `loop`,
/// `human`, and the overlay's note.
pub(super) fn edge_label(model: &Model, overlay: Option<&Overlay>, index: usize) -> String {
    let edge = &model.edges[index];
    let mut parts: Vec<String> = Vec::new();
    if edge.kind == EdgeKind::Emits {
        let siblings: Vec<usize> = model
            .edges
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EdgeKind::Emits && e.from == edge.from)
            .map(|(i, _)| i)
            .collect();
        if siblings.len() > 1 {
            let place = siblings.iter().position(|&i| i == index).unwrap_or(0) + 1;
            parts.push(place.to_string());
        }
    }
    if edge.kind == EdgeKind::Answer {
        parts.push("human".into());
    }
    if edge.back {
        parts.push("loop".into());
    }
    if let Some(note) = overlay.and_then(|o| o.edges[index].note.as_deref()) {
        parts.push(note.to_string());
    }
    parts.join(" · ")
}

pub(super) fn mermaid(model: &Model, overlay: Option<&Overlay>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---\ntitle: {}\n---",
        mermaid_escape(&title(model, overlay))
    );
    out.push_str("flowchart TD\n");
    for (index, node) in model.nodes.iter().enumerate() {
        let label = mermaid_escape(&label(model, overlay, index));
        let class = match overlay.map(|o| o.nodes[index].state) {
            Some(super::NodeState::Idle) => "idle".to_string(),
            Some(super::NodeState::Failed) => "failed".to_string(),
            _ => node.kind.class().to_string(),
        };
        let _ = writeln!(
            out,
            "    {}{}:::{}",
            node.id,
            mermaid_shape(node.kind, &label),
            class
        );
    }
    for (index, edge) in model.edges.iter().enumerate() {
        let (from, to) = (&model.nodes[edge.from].id, &model.nodes[edge.to].id);
        let label = mermaid_escape(&edge_label(model, overlay, index));
        let dotted = edge.back
            || edge.kind == EdgeKind::Answer
            || overlay.is_some_and(|o| !o.edges[index].taken);
        let arrow = match (dotted, label.is_empty()) {
            (false, true) => " --> ".to_string(),
            (false, false) => format!(" -->|\"{label}\"| "),
            (true, true) => " -.-> ".to_string(),
            (true, false) => format!(" -.->|\"{label}\"| "),
        };
        let _ = writeln!(out, "    {from}{arrow}{to}");
    }
    for (class, palette) in Palette::ALL {
        let _ = writeln!(
            out,
            "    classDef {class} fill:{},stroke:{},color:#111827",
            palette.fill, palette.stroke
        );
    }
    out
}

fn title(model: &Model, overlay: Option<&Overlay>) -> String {
    match overlay.and_then(|o| o.title.as_deref()) {
        Some(title) => title.to_string(),
        None => model.workflow.clone(),
    }
}

fn dot_shape(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Step => "shape=box, style=\"rounded,filled\"",
        NodeKind::Event => "shape=box, style=\"rounded,filled\", peripheries=1, height=0.3",
        NodeKind::Start => "shape=oval, style=\"filled,bold\"",
        NodeKind::Stop => "shape=oval, style=\"filled,bold\", peripheries=2",
        NodeKind::Request => "shape=hexagon, style=filled",
        NodeKind::Response => "shape=parallelogram, style=filled",
        NodeKind::Failure => "shape=box, style=\"dashed,filled\"",
    }
}

pub(super) fn dot(model: &Model, overlay: Option<&Overlay>) -> String {
    let mut out = String::new();
    let name = dot_escape(&title(model, overlay));
    let _ = writeln!(out, "digraph \"{name}\" {{");
    let _ = writeln!(
        out,
        "    graph [rankdir=TB, label=\"{name}\", labelloc=t, fontname=\"Helvetica\", nodesep=0.4, ranksep=0.45];"
    );
    out.push_str("    node [fontname=\"Helvetica\", fontsize=12, margin=\"0.15,0.05\"];\n");
    out.push_str("    edge [fontname=\"Helvetica\", fontsize=10, color=\"#4b5563\"];\n");
    for (index, node) in model.nodes.iter().enumerate() {
        let state = overlay.map(|o| o.nodes[index].state);
        let palette = match state {
            Some(super::NodeState::Idle) => Palette::IDLE,
            Some(super::NodeState::Failed) => Palette::FAILED,
            _ => Palette::of(node.kind),
        };
        let _ = writeln!(
            out,
            "    {} [label=\"{}\", {}, fillcolor=\"{}\", color=\"{}\"];",
            node.id,
            dot_escape(&label(model, overlay, index)),
            dot_shape(node.kind),
            palette.fill,
            palette.stroke
        );
    }
    for (index, edge) in model.edges.iter().enumerate() {
        let (from, to) = (&model.nodes[edge.from].id, &model.nodes[edge.to].id);
        let mut attrs: Vec<String> = Vec::new();
        let label = edge_label(model, overlay, index);
        if !label.is_empty() {
            attrs.push(format!("label=\"{}\"", dot_escape(&label)));
        }
        if edge.back || edge.kind == EdgeKind::Answer {
            attrs.push("style=dashed".into());
        }
        if overlay.is_some_and(|o| !o.edges[index].taken) {
            attrs.push("style=dotted".into());
            attrs.push("color=\"#d1d5db\"".into());
        }
        if edge.kind == EdgeKind::Answer {
            attrs.push("color=\"#c2410c\"".into());
        }
        if edge.back {
            attrs.push("constraint=false".into());
        }
        if attrs.is_empty() {
            let _ = writeln!(out, "    {from} -> {to};");
        } else {
            let _ = writeln!(out, "    {from} -> {to} [{}];", attrs.join(", "));
        }
    }
    out.push_str("}\n");
    out
}
