//! `GET /workflows/{name}/representation`: the workflow's graph in the shape of Python's
//! `workflows.representation.WorkflowGraph` (step and event nodes, edges event -> step ->
//! event).

use serde_json::{Value, json};
use tidewater::EventKind;
use tidewater::serve::{ServedWorkflow, short_name};

pub(crate) fn representation(wf: &dyn ServedWorkflow) -> Value {
    let graph = wf.graph();
    let schemas = wf.event_schemas();
    let mut nodes: Vec<Value> = Vec::new();
    let mut edges: Vec<Value> = Vec::new();
    let mut events: Vec<&'static str> = Vec::new();
    let mut event_node = |name: &'static str, kind: EventKind, nodes: &mut Vec<Value>| {
        if events.contains(&name) {
            return;
        }
        events.push(name);
        let short = short_name(name);
        let mut types = vec![short.to_string()];
        match kind {
            EventKind::Request => types.push("InputRequiredEvent".into()),
            EventKind::Response => types.push("HumanResponseEvent".into()),
            _ => {}
        }
        types.push("Event".into());
        let schema = schemas
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone());
        nodes.push(json!({
            "id": short,
            "label": short,
            "node_type": "event",
            "event_type": short,
            "event_types": types,
            "event_schema": schema,
        }));
    };
    for step in graph.steps {
        nodes.push(json!({ "id": step.name, "label": step.name, "node_type": "step" }));
        for ev in step.accepts {
            event_node(ev.name, ev.kind, &mut nodes);
            edges.push(json!({ "source": short_name(ev.name), "target": step.name }));
        }
        for ev in step.emits {
            event_node(ev.name, ev.kind, &mut nodes);
            edges.push(json!({ "source": step.name, "target": short_name(ev.name) }));
        }
    }
    json!({ "name": graph.workflow, "nodes": nodes, "edges": edges })
}
