//! SVG: a small layered layout (longest-path layers, barycentre ordering with virtual nodes
//! for long edges, priority placement) and its drawing. Pure Rust, no dependency.
//!
//! Why our own: the graphs are small (tens of nodes), the shapes and annotations are ours
//! (event kinds, loops, answers, trace notes), and the output must be byte-for-byte stable;
//! a general layout engine would add a dependency and its own styling for a few hundred lines.

use std::fmt::Write;

use super::model::{EdgeKind, Model, NodeKind};
use super::text::{edge_label, label};
use super::{NodeState, Overlay, Palette};

const FONT_SIZE: f64 = 13.0;
/// Average advance of a character of the sans-serif font, in pixels at [`FONT_SIZE`]
/// (generous: identifiers with capitals).
const CHAR_WIDTH: f64 = 7.6;
const LINE_HEIGHT: f64 = 16.0;
const PAD_X: f64 = 14.0;
const PAD_Y: f64 = 8.0;
const LAYER_GAP: f64 = 56.0;
const NODE_GAP: f64 = 28.0;
const MARGIN: f64 = 24.0;
const TITLE_HEIGHT: f64 = 30.0;

/// A node to place: a real node of the model, or a virtual one on a long edge.
#[derive(Debug, Clone)]
struct Slot {
    width: f64,
    height: f64,
    layer: usize,
    x: f64,
}

struct Layout {
    slots: Vec<Slot>,
    /// For each model edge: the slots it passes through, source to target (forward edges).
    routes: Vec<Vec<usize>>,
    layer_y: Vec<f64>,
    width: f64,
    height: f64,
}

fn lines(text: &str) -> Vec<&str> {
    text.split('\n').collect()
}

fn text_width(text: &str) -> f64 {
    lines(text)
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0) as f64
        * CHAR_WIDTH
}

fn layout(model: &Model, overlay: Option<&Overlay>) -> Layout {
    let n = model.nodes.len();
    // Longest-path layers over the forward edges (back edges close loops and are drawn aside).
    let mut layer = vec![0usize; n];
    let mut indegree = vec![0usize; n];
    for edge in model.edges.iter().filter(|e| !e.back) {
        indegree[edge.to] += 1;
    }
    let mut ready: Vec<usize> = (0..n).filter(|&v| indegree[v] == 0).collect();
    let mut cursor = 0;
    while cursor < ready.len() {
        let v = ready[cursor];
        cursor += 1;
        for edge in model.edges.iter().filter(|e| !e.back && e.from == v) {
            layer[edge.to] = layer[edge.to].max(layer[v] + 1);
            indegree[edge.to] -= 1;
            if indegree[edge.to] == 0 {
                ready.push(edge.to);
            }
        }
    }
    let mut slots: Vec<Slot> = (0..n)
        .map(|v| {
            let text = label(model, overlay, v);
            let count = lines(&text).len() as f64;
            let extra = match model.nodes[v].kind {
                NodeKind::Request | NodeKind::Response | NodeKind::Failure => 24.0,
                NodeKind::Start | NodeKind::Stop => 16.0,
                _ => 0.0,
            };
            Slot {
                width: (text_width(&text) + 2.0 * PAD_X + extra).max(60.0),
                height: count * LINE_HEIGHT + 2.0 * PAD_Y,
                layer: layer[v],
                x: 0.0,
            }
        })
        .collect();
    // Long forward edges pass through a virtual slot on each layer they cross.
    let mut routes = Vec::with_capacity(model.edges.len());
    for edge in &model.edges {
        let mut route = vec![edge.from];
        if !edge.back {
            for l in layer[edge.from] + 1..layer[edge.to] {
                slots.push(Slot {
                    width: 8.0,
                    height: 0.0,
                    layer: l,
                    x: 0.0,
                });
                route.push(slots.len() - 1);
            }
        }
        route.push(edge.to);
        routes.push(route);
    }
    let depth = slots.iter().map(|s| s.layer + 1).max().unwrap_or(0);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (index, slot) in slots.iter().enumerate() {
        layers[slot.layer].push(index);
    }
    // Neighbours between adjacent layers, from the routes.
    let mut up: Vec<Vec<usize>> = vec![Vec::new(); slots.len()];
    let mut down: Vec<Vec<usize>> = vec![Vec::new(); slots.len()];
    for (route, edge) in routes.iter().zip(&model.edges) {
        if edge.back {
            continue;
        }
        for pair in route.windows(2) {
            down[pair[0]].push(pair[1]);
            up[pair[1]].push(pair[0]);
        }
    }
    // Barycentre ordering, a few sweeps down and up; ties keep the current order.
    let mut position = vec![0.0f64; slots.len()];
    let reposition = |layers: &Vec<Vec<usize>>, position: &mut Vec<f64>| {
        for layer in layers {
            for (i, &s) in layer.iter().enumerate() {
                position[s] = i as f64;
            }
        }
    };
    reposition(&layers, &mut position);
    for sweep in 0..8 {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> = if downward {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let neighbours = if downward { &up } else { &down };
            let mut keyed: Vec<(f64, usize)> = layers[l]
                .iter()
                .map(|&s| {
                    let ns = &neighbours[s];
                    let key = if ns.is_empty() {
                        position[s]
                    } else {
                        ns.iter().map(|&m| position[m]).sum::<f64>() / ns.len() as f64
                    };
                    (key, s)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            layers[l] = keyed.into_iter().map(|(_, s)| s).collect();
            for (i, &s) in layers[l].iter().enumerate() {
                position[s] = i as f64;
            }
        }
    }
    // Placement: pack each layer, then pull nodes towards their neighbours' centres while
    // keeping order and gaps.
    for layer in &layers {
        let mut x = 0.0;
        for &s in layer {
            slots[s].x = x + slots[s].width / 2.0;
            x += slots[s].width + NODE_GAP;
        }
    }
    for round in 0..6 {
        let downward = round % 2 == 0;
        let order: Vec<usize> = if downward {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let neighbours = if downward { &up } else { &down };
            let desired: Vec<f64> = layers[l]
                .iter()
                .map(|&s| {
                    let ns = &neighbours[s];
                    if ns.is_empty() {
                        slots[s].x
                    } else {
                        ns.iter().map(|&m| slots[m].x).sum::<f64>() / ns.len() as f64
                    }
                })
                .collect();
            place_row(&mut slots, &layers[l], &desired);
        }
    }
    // Shift everything right of the margin.
    let min_x = slots
        .iter()
        .map(|s| s.x - s.width / 2.0)
        .fold(f64::INFINITY, f64::min);
    let shift = MARGIN - if min_x.is_finite() { min_x } else { 0.0 };
    for slot in &mut slots {
        slot.x += shift;
    }
    let mut layer_y = Vec::with_capacity(depth);
    let mut y = MARGIN + TITLE_HEIGHT;
    for layer in &layers {
        let height = layer
            .iter()
            .map(|&s| slots[s].height)
            .fold(0.0, f64::max)
            .max(8.0);
        layer_y.push(y + height / 2.0);
        y += height + LAYER_GAP;
    }
    let back_edges = model.edges.iter().filter(|e| e.back).count() as f64;
    let right = slots
        .iter()
        .map(|s| s.x + s.width / 2.0)
        .fold(0.0, f64::max);
    let title_width = 2.0 * MARGIN + text_width(&title(model, overlay));
    Layout {
        width: (right + MARGIN + back_edges * 18.0 + if back_edges > 0.0 { 40.0 } else { 0.0 })
            .max(title_width)
            .ceil(),
        height: (y - LAYER_GAP + MARGIN).ceil(),
        slots,
        routes,
        layer_y,
    }
}

/// Places the slots of one layer as near `desired` as their order and gaps allow: left to
/// right, then right to left, averaged.
fn place_row(slots: &mut [Slot], row: &[usize], desired: &[f64]) {
    if row.is_empty() {
        return;
    }
    let gap = |a: &Slot, b: &Slot| (a.width + b.width) / 2.0 + NODE_GAP;
    let mut left = desired.to_vec();
    for i in 1..row.len() {
        let min = left[i - 1] + gap(&slots[row[i - 1]], &slots[row[i]]);
        left[i] = left[i].max(min);
    }
    let mut right = desired.to_vec();
    for i in (0..row.len() - 1).rev() {
        let max = right[i + 1] - gap(&slots[row[i]], &slots[row[i + 1]]);
        right[i] = right[i].min(max);
    }
    let mut placed: Vec<f64> = left
        .iter()
        .zip(&right)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    for i in 1..row.len() {
        let min = placed[i - 1] + gap(&slots[row[i - 1]], &slots[row[i]]);
        placed[i] = placed[i].max(min);
    }
    for (i, &s) in row.iter().enumerate() {
        slots[s].x = placed[i];
    }
}

fn title(model: &Model, overlay: Option<&Overlay>) -> String {
    match overlay.and_then(|o| o.title.as_deref()) {
        Some(title) => title.to_string(),
        None => format!("workflow {}", model.workflow),
    }
}

fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A number with one decimal, stable across platforms.
fn f(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded == rounded.trunc() {
        format!("{}", rounded as i64)
    } else {
        format!("{rounded:.1}")
    }
}

fn shape(kind: NodeKind, x: f64, y: f64, w: f64, h: f64, palette: &Palette) -> String {
    let (l, r, t, b) = (x - w / 2.0, x + w / 2.0, y - h / 2.0, y + h / 2.0);
    let width = if kind == NodeKind::Start {
        "2.5"
    } else {
        "1.5"
    };
    let paint = format!(
        "fill=\"{}\" stroke=\"{}\" stroke-width=\"{width}\"",
        palette.fill, palette.stroke
    );
    match kind {
        NodeKind::Step => format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\" {paint}/>",
            f(l),
            f(t),
            f(w),
            f(h)
        ),
        NodeKind::Event => format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{}\" {paint}/>",
            f(l),
            f(t),
            f(w),
            f(h),
            f(h / 2.0)
        ),
        NodeKind::Start => format!(
            "<ellipse cx=\"{}\" cy=\"{}\" rx=\"{}\" ry=\"{}\" {paint}/>",
            f(x),
            f(y),
            f(w / 2.0),
            f(h / 2.0)
        ),
        NodeKind::Stop => format!(
            "<ellipse cx=\"{}\" cy=\"{}\" rx=\"{}\" ry=\"{}\" {paint}/><ellipse cx=\"{}\" cy=\"{}\" rx=\"{}\" ry=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
            f(x),
            f(y),
            f(w / 2.0),
            f(h / 2.0),
            f(x),
            f(y),
            f(w / 2.0 - 4.0),
            f(h / 2.0 - 4.0),
            palette.stroke
        ),
        NodeKind::Request => {
            let k = h / 2.0;
            format!(
                "<polygon points=\"{},{} {},{} {},{} {},{} {},{} {},{}\" {paint}/>",
                f(l),
                f(y),
                f(l + k),
                f(t),
                f(r - k),
                f(t),
                f(r),
                f(y),
                f(r - k),
                f(b),
                f(l + k),
                f(b)
            )
        }
        NodeKind::Response => {
            let k = 10.0;
            format!(
                "<polygon points=\"{},{} {},{} {},{} {},{}\" {paint}/>",
                f(l + k),
                f(t),
                f(r),
                f(t),
                f(r - k),
                f(b),
                f(l),
                f(b)
            )
        }
        NodeKind::Failure => format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" {paint} stroke-dasharray=\"5 3\"/>",
            f(l),
            f(t),
            f(w),
            f(h)
        ),
    }
}

pub(super) fn svg(model: &Model, overlay: Option<&Overlay>) -> String {
    let lay = layout(model, overlay);
    let mut out = String::new();
    let title = xml(&title(model, overlay));
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"tidewater-graph\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"{}\" role=\"img\" aria-label=\"{title}\">",
        f(FONT_SIZE),
        w = f(lay.width),
        h = f(lay.height)
    );
    let _ = writeln!(out, "<title>{title}</title>");
    out.push_str("<defs>\n");
    for (id, color) in [
        ("arrow", "#4b5563"),
        ("arrow-human", "#c2410c"),
        ("arrow-idle", "#d1d5db"),
    ] {
        let _ = writeln!(
            out,
            "<marker id=\"tw-{id}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{color}\"/></marker>"
        );
    }
    out.push_str("</defs>\n");
    let _ = writeln!(
        out,
        "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n<text x=\"{}\" y=\"{}\" font-size=\"15\" font-weight=\"bold\" fill=\"#111827\">{title}</text>",
        f(MARGIN),
        f(MARGIN + 6.0)
    );
    // Edges first, under the nodes.
    out.push_str("<g class=\"edges\" fill=\"none\">\n");
    let right_edge = lay
        .slots
        .iter()
        .map(|s| s.x + s.width / 2.0)
        .fold(0.0, f64::max);
    let mut back_index = 0.0;
    for (index, edge) in model.edges.iter().enumerate() {
        let taken = overlay.is_none_or(|o| o.edges[index].taken);
        let (color, marker) = if !taken {
            ("#d1d5db", "tw-arrow-idle")
        } else if edge.kind == EdgeKind::Answer {
            ("#c2410c", "tw-arrow-human")
        } else {
            ("#4b5563", "tw-arrow")
        };
        let dash = if edge.back || edge.kind == EdgeKind::Answer || !taken {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let class = match edge.kind {
            EdgeKind::Accepts => "accepts",
            EdgeKind::Emits => "emits",
            EdgeKind::Answer => "answer",
        };
        let (from, to) = (&model.nodes[edge.from], &model.nodes[edge.to]);
        let text = edge_label(model, overlay, index);
        let (path, label_at) = if edge.back {
            // Around the right side: out of the source's right, up, into the target's right.
            let (s, t) = (&lay.slots[edge.from], &lay.slots[edge.to]);
            let (sy, ty) = (lay.layer_y[s.layer], lay.layer_y[t.layer]);
            let (sx, tx) = (s.x + s.width / 2.0, t.x + t.width / 2.0);
            let lane = right_edge + 20.0 + back_index * 18.0;
            back_index += 1.0;
            (
                format!(
                    "M{},{} L{},{} Q{},{} {},{} L{},{} Q{},{} {},{} L{},{}",
                    f(sx),
                    f(sy),
                    f(lane - 10.0),
                    f(sy),
                    f(lane),
                    f(sy),
                    f(lane),
                    f(sy - 10.0),
                    f(lane),
                    f(ty + 10.0),
                    f(lane),
                    f(ty),
                    f(lane - 10.0),
                    f(ty),
                    f(tx + 1.0),
                    f(ty)
                ),
                (lane + 4.0, (sy + ty) / 2.0, "start"),
            )
        } else {
            let route = &lay.routes[index];
            let points: Vec<(f64, f64, f64)> = route
                .iter()
                .map(|&s| {
                    let slot = &lay.slots[s];
                    let half = slot.height / 2.0;
                    (slot.x, lay.layer_y[slot.layer], half)
                })
                .collect();
            let mut d = String::new();
            let (x0, y0, h0) = points[0];
            let _ = write!(d, "M{},{}", f(x0), f(y0 + h0));
            let mut label_at = (x0, y0, "start");
            for (i, pair) in points.windows(2).enumerate() {
                let (ax, ay, ah) = pair[0];
                let (bx, by, bh) = pair[1];
                let start_y = ay + if i == 0 { ah } else { 0.0 };
                let end_y = by - if i + 2 == points.len() { bh + 1.0 } else { 0.0 };
                let mid = (start_y + end_y) / 2.0;
                let _ = write!(
                    d,
                    " C{},{} {},{} {},{}",
                    f(ax),
                    f(mid),
                    f(bx),
                    f(mid),
                    f(bx),
                    f(end_y)
                );
                if i == 0 {
                    label_at = ((ax + bx) / 2.0 + 4.0, mid, "start");
                }
            }
            (d, label_at)
        };
        let _ = writeln!(
            out,
            "<path class=\"edge {class}\" data-from=\"{}\" data-to=\"{}\" d=\"{path}\" stroke=\"{color}\" stroke-width=\"1.4\"{dash} marker-end=\"url(#{marker})\"/>",
            xml(&from.name),
            xml(&to.name)
        );
        if !text.is_empty() {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\" text-anchor=\"{}\" stroke=\"#ffffff\" stroke-width=\"3\" paint-order=\"stroke\">{}</text>",
                f(label_at.0),
                f(label_at.1 + 4.0),
                label_at.2,
                xml(&text)
            );
        }
    }
    out.push_str("</g>\n<g class=\"nodes\">\n");
    for (index, node) in model.nodes.iter().enumerate() {
        let slot = &lay.slots[index];
        let y = lay.layer_y[slot.layer];
        let state = overlay.map(|o| o.nodes[index].state);
        let palette = match state {
            Some(NodeState::Idle) => Palette::IDLE,
            Some(NodeState::Failed) => Palette::FAILED,
            _ => Palette::of(node.kind),
        };
        let kind = if node.kind == NodeKind::Step {
            "step"
        } else {
            "event"
        };
        let state_class = match state {
            Some(NodeState::Idle) => " idle",
            Some(NodeState::Ran) => " ran",
            Some(NodeState::Failed) => " failed",
            None => "",
        };
        let data = if node.kind == NodeKind::Step {
            format!("data-step=\"{}\"", xml(&node.name))
        } else {
            format!("data-event=\"{}\"", xml(&node.name))
        };
        let _ = writeln!(
            out,
            "<g class=\"node {kind} {}{state_class}\" id=\"tw-{}\" {data}>",
            node.kind.class(),
            node.id
        );
        let what = match node.kind {
            NodeKind::Step => "step",
            NodeKind::Event => "event",
            NodeKind::Start => "start event",
            NodeKind::Stop => "stop event",
            NodeKind::Request => "request to a human",
            NodeKind::Response => "response from a human",
            NodeKind::Failure => "step failure",
        };
        let full = label(model, overlay, index);
        let _ = writeln!(
            out,
            "<title>{what} {}</title>",
            xml(&full.replace('\n', ", "))
        );
        out.push_str(&shape(
            node.kind,
            slot.x,
            y,
            slot.width,
            slot.height,
            &palette,
        ));
        out.push('\n');
        let text_lines = lines(&full);
        let top = y - (text_lines.len() as f64 - 1.0) * LINE_HEIGHT / 2.0 + 4.5;
        for (i, line) in text_lines.iter().enumerate() {
            let (weight, size) = if i == 0 {
                ("bold", "")
            } else {
                ("normal", " font-size=\"11\"")
            };
            let weight = if node.kind == NodeKind::Step {
                weight
            } else {
                "normal"
            };
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"{weight}\"{size} fill=\"#111827\">{}</text>",
                f(slot.x),
                f(top + i as f64 * LINE_HEIGHT),
                xml(line)
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</g>\n</svg>\n");
    out
}
