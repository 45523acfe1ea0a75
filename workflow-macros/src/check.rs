//! The graph rules the macro can judge from tokens alone. Every other rule (is an event
//! produced, consumed, is a step reachable, can it stop) is about type identity, which tokens
//! cannot settle (`crate::events::Draft` and a `type D = Draft;` alias are one event): those are
//! generated as constants that rustc evaluates, see `expand.rs`.

use syn::ItemImpl;
use syn::spanned::Spanned;

use crate::ast::{Model, last_segment_is, type_span};
use crate::attr::Errors;

/// What the token checks learned, for the code generation.
pub(crate) struct Shape<'a> {
    /// The start event types, as written, in step order (then those of malformed steps).
    pub(crate) starts: Vec<&'a syn::Type>,
    /// The stop event types, as written, in step order (then those of malformed steps).
    pub(crate) stops: Vec<&'a syn::Type>,
}

pub(crate) fn check<'a>(item: &ItemImpl, model: &'a Model, errors: &mut Errors) -> Shape<'a> {
    // Rejects `impl<T> Flow<T> { .. }`: the graph checks are constants, which cannot be generic.
    if !item.generics.params.is_empty() {
        errors.add(
            item.generics.span(),
            "`#[workflow]` does not support generic impl blocks yet",
        );
    }
    // A step with a malformed signature is already reported and missing from the model: the
    // whole-workflow rules would only add follow-on errors ("no step takes a `StartEvent`"
    // when the broken step was the one taking it).
    let whole = !model.incomplete;
    // Rejects `#[workflow] impl Flow { fn helper(&self) {} }` with no step at all.
    if whole && model.steps.is_empty() {
        errors.add(
            type_span(&item.self_ty),
            "`#[workflow]` impl has no `#[step]` methods: mark the workflow's async methods with `#[step]`",
        );
        return Shape {
            starts: Vec::new(),
            stops: Vec::new(),
        };
    }
    let starts: Vec<_> = model
        .steps
        .iter()
        .flat_map(|s| &s.accepts)
        .chain(&model.broken)
        .filter(|ty| last_segment_is(ty, "StartEvent"))
        .collect();
    let stops: Vec<_> = model
        .steps
        .iter()
        .flat_map(|s| &s.emits)
        .chain(&model.broken)
        .filter(|ty| last_segment_is(ty, "StopEvent"))
        .collect();
    // Rejects a workflow where no step has `ev: StartEvent<_>`: nothing could ever run.
    if whole && starts.is_empty() {
        errors.add(
            type_span(&item.self_ty),
            "no step takes a `StartEvent`: a workflow needs one step whose event is `StartEvent<Input>`\n\
             help: let the first step take `ev: StartEvent<Input>`, where `Input` is what `run` is given",
        );
    }
    // Rejects a workflow where no step returns `StopEvent<_>`: no run could ever finish.
    if whole && stops.is_empty() {
        errors.add(
            type_span(&item.self_ty),
            "no step returns a `StopEvent`: a workflow needs one step that can emit `StopEvent<Output>`\n\
             help: let the last step return `StopEvent<Output>` (or `Either<Next, StopEvent<Output>>`), where `Output` is what `run` returns",
        );
    }
    // Rejects `async fn after(&self, ev: StopEvent<u8>)`: the stop event ends the run.
    for step in &model.steps {
        for ty in &step.accepts {
            if last_segment_is(ty, "StopEvent") {
                errors.add(
                    type_span(ty),
                    format!(
                        "step `{}` accepts the `StopEvent`: the stop event ends the run and no step can take it\n\
                         help: return an event of your own for this step to take, and the `StopEvent` from the step that finishes",
                        step.ident
                    ),
                );
            }
        }
    }
    Shape { starts, stops }
}
