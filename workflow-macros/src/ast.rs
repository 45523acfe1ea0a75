//! Parsing: the `#[workflow]` impl block into a typed model of its steps, keeping every span.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ImplItem, ItemImpl, PathArguments, ReturnType, Type};

use crate::attr::{Errors, StepOptions, parse_step_options};

/// One `#[step]` method.
pub(crate) struct Step {
    pub(crate) ident: syn::Ident,
    pub(crate) has_self: bool,
    /// Position of the context parameter among the non-receiver parameters, if any.
    pub(crate) ctx_position: Option<usize>,
    /// Position of the event parameter among the non-receiver parameters.
    pub(crate) event_position: usize,
    /// The event parameter's type, as written (`A` or `Either<A, B>`).
    pub(crate) input: Type,
    /// The event types the step accepts (`Either` unfolded).
    pub(crate) accepts: Vec<Type>,
    /// The event types the step may emit: its return type unfolded, then `emits = [..]`.
    pub(crate) emits: Vec<Type>,
    /// The return type as written (`()` when left out).
    pub(crate) output: Type,
    /// The return type's span (the name's, for `-> ()` left out), for rustc's errors on it.
    pub(crate) output_span: Span,
    /// The types of the tuples its body collects with `collect_each::<(..)>` (written with a
    /// turbofish), each checked against `input` by rustc.
    pub(crate) collected: Vec<Type>,
    pub(crate) options: StepOptions,
}

/// The model of a `#[workflow]` impl block.
pub(crate) struct Model {
    pub(crate) steps: Vec<Step>,
    /// Some `#[step]` had a malformed signature (already reported) and is missing from `steps`,
    /// so the whole-workflow rules (a start, a stop, any step at all) cannot be judged.
    pub(crate) incomplete: bool,
    /// The event types the malformed steps still name (their event parameter, `Either`
    /// unfolded, and their return type), so the stand-in `Workflow` impl emitted beside the
    /// errors has the input and output the user meant and code calling `.run(..)` adds no
    /// follow-on error.
    pub(crate) broken: Vec<Type>,
}

/// Is `ty` a path whose last segment is `name` (`StartEvent`, `crate::StartEvent<T>`, ...)?
pub(crate) fn last_segment_is(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|seg| seg.ident == name)
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

fn type_args(segment: &syn::PathSegment) -> Vec<&Type> {
    match &segment.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The span to point at for a type: its last path segment's name, where it has one.
pub(crate) fn type_span(ty: &Type) -> Span {
    last_segment(ty).map_or_else(|| ty.span(), |seg| seg.ident.span())
}

/// The types of the tuples collected by `collect_each::<(A, B, ..)>` calls in `body` (at any
/// depth), in order. Only the turbofish form is seen: a call whose tuple type is inferred is
/// checked at run time only (an event of a type the tuple does not hold is left alone).
fn collected_types(body: impl Iterator<Item = proc_macro2::TokenStream>, out: &mut Vec<Type>) {
    use proc_macro2::TokenTree;
    for stream in body {
        let tokens: Vec<TokenTree> = stream.into_iter().collect();
        for (i, token) in tokens.iter().enumerate() {
            match token {
                TokenTree::Group(group) => {
                    collected_types(std::iter::once(group.stream()), out);
                }
                TokenTree::Ident(ident) if ident == "collect_each" => {
                    let rest: proc_macro2::TokenStream = tokens[i + 1..].iter().cloned().collect();
                    let turbofish = |input: syn::parse::ParseStream<'_>| {
                        let args = syn::AngleBracketedGenericArguments::parse_turbofish(input)?;
                        input.parse::<proc_macro2::TokenStream>()?;
                        Ok(args)
                    };
                    let Ok(args) = syn::parse::Parser::parse2(turbofish, rest) else {
                        continue;
                    };
                    if let Some(GenericArgument::Type(Type::Tuple(tuple))) = args.args.first() {
                        out.extend(tuple.elems.iter().cloned());
                    }
                }
                _ => {}
            }
        }
    }
}

/// Removes the `#[step]` attributes of `item` and returns the model of its steps.
pub(crate) fn parse(item: &mut ItemImpl, errors: &mut Errors) -> Model {
    let mut steps = Vec::new();
    let mut incomplete = false;
    let mut broken = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let mut step_attrs = Vec::new();
        method.attrs.retain(|attr| {
            if attr.path().is_ident("step") {
                step_attrs.push(attr.clone());
                false
            } else {
                true
            }
        });
        let Some(attr) = step_attrs.first() else {
            continue;
        };
        if let Some(extra) = step_attrs.get(1) {
            errors.add(extra.span(), "`#[step]` is given twice on one method");
        }
        let options = parse_step_options(attr, errors);
        match parse_step(&method.sig, options, errors) {
            Ok(mut step) => {
                collected_types(
                    method
                        .block
                        .stmts
                        .iter()
                        .map(quote::ToTokens::to_token_stream),
                    &mut step.collected,
                );
                steps.push(step)
            }
            Err(mut named) => {
                incomplete = true;
                broken.append(&mut named);
            }
        }
    }
    Model {
        steps,
        incomplete,
        broken,
    }
}

/// The step, or (when its signature is malformed, and reported) the event types it still names.
fn parse_step(
    sig: &syn::Signature,
    mut options: StepOptions,
    errors: &mut Errors,
) -> Result<Step, Vec<Type>> {
    let mut ok = true;
    if sig.asyncness.is_none() {
        errors.add(
            sig.fn_token.span,
            "a step must be an `async fn`: add `async` before `fn`",
        );
        ok = false;
    }
    if !sig.generics.params.is_empty() {
        errors.add(
            sig.generics.span(),
            "a step cannot have generic parameters: its event and return types make the graph",
        );
        ok = false;
    }
    let mut has_self = false;
    let mut ctx_position = None;
    let mut event = None;
    let mut position = 0;
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => {
                if receiver.reference.is_none() || receiver.mutability.is_some() {
                    // On `mut` of `&mut self`, on `self` of `self`: the token to change.
                    let span = receiver
                        .mutability
                        .map_or(receiver.self_token.span, |token| token.span);
                    errors.add(
                        span,
                        "a step takes `&self`: steps of one run may execute concurrently",
                    );
                    ok = false;
                }
                has_self = true;
            }
            FnArg::Typed(typed) => {
                let ty = &*typed.ty;
                if last_segment_is(ty, "Context") {
                    // Rejects `ctx: Context<Self>` (the habit from Python): the run keeps the
                    // context, a step borrows it. Still the context parameter, so the event
                    // parameter is not blamed.
                    errors.add(
                        type_span(ty),
                        "a step takes the context by reference\n\
                         help: write `ctx: &Context<Self>`",
                    );
                    ok = false;
                    ctx_position = Some(position);
                } else if is_context(ty) {
                    if ctx_position.is_some() {
                        errors.add(type_span(ty), "a step takes at most one context parameter");
                        ok = false;
                    }
                    ctx_position = Some(position);
                } else if event.is_some() {
                    errors.add(
                        type_span(ty),
                        "a step takes exactly one event parameter\n\
                         help: to accept several event types, take one `Either<A, B>`; to wait \
                         until several events have all arrived, take an `Either` of them and \
                         gather them with `ctx.collect_each`",
                    );
                    ok = false;
                } else if let Type::Reference(reference) = ty {
                    errors.add(
                        reference.and_token.span,
                        "a step takes its event by value: remove the `&`",
                    );
                    ok = false;
                    // Still the event parameter: no follow-on "no event parameter" error.
                    event = Some((position, (*reference.elem).clone()));
                } else {
                    event = Some((position, ty.clone()));
                }
                position += 1;
            }
        }
    }
    let Some((event_position, input)) = event else {
        errors.add(
            sig.ident.span(),
            format!(
                "step `{}` has no event parameter: a step takes exactly one event, e.g. \
                 `ev: StartEvent<Input>`",
                sig.ident
            ),
        );
        let mut named = Vec::new();
        if let ReturnType::Type(_, ty) = &sig.output {
            // A malformed return type is not reported here: the missing event parameter is
            // the mistake to fix first.
            let _ = unfold_output(ty, &mut named);
        }
        return Err(named);
    };
    let mut accepts = Vec::new();
    unfold_either(&input, &mut accepts);
    let mut emits = Vec::new();
    match &sig.output {
        ReturnType::Default => {}
        ReturnType::Type(_, ty) => {
            if let Err(error) = unfold_output(ty, &mut emits) {
                errors.push(error);
                ok = false;
            }
        }
    }
    emits.append(&mut options.emits);
    if !ok {
        accepts.append(&mut emits);
        return Err(accepts);
    }
    Ok(Step {
        ident: sig.ident.clone(),
        has_self,
        ctx_position,
        event_position,
        input,
        accepts,
        emits,
        collected: Vec::new(),
        output: match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => (**ty).clone(),
        },
        output_span: match &sig.output {
            ReturnType::Default => sig.ident.span(),
            ReturnType::Type(_, ty) => ty.span(),
        },
        options,
    })
}

/// `&Context<..>` (any path ending in `Context`) is the context parameter.
fn is_context(ty: &Type) -> bool {
    matches!(ty, Type::Reference(r) if last_segment_is(&r.elem, "Context"))
}

fn unfold_either(ty: &Type, out: &mut Vec<Type>) {
    if let Some(segment) = last_segment(ty) {
        let args = type_args(segment);
        if segment.ident == "Either" && args.len() == 2 {
            unfold_either(args[0], out);
            unfold_either(args[1], out);
            return;
        }
    }
    out.push(ty.clone());
}

/// Reads the events a return type carries: `E`, `Option<T>`, `Vec<T>`, `Either<L, R>`, `()`,
/// `Result<T, _>`.
fn unfold_output(ty: &Type, out: &mut Vec<Type>) -> syn::Result<()> {
    match ty {
        Type::Tuple(tuple) if tuple.elems.is_empty() => Ok(()),
        Type::Group(group) => unfold_output(&group.elem, out),
        Type::Paren(paren) => unfold_output(&paren.elem, out),
        Type::Path(path) if path.qself.is_none() => {
            let segment = path.path.segments.last().expect("a path has a segment");
            let args = type_args(segment);
            let name = segment.ident.to_string();
            match (name.as_str(), args.len()) {
                ("Result", 1 | 2) | ("Option" | "Vec", 1) => unfold_output(args[0], out),
                ("Either", 2) => {
                    unfold_output(args[0], out)?;
                    unfold_output(args[1], out)
                }
                _ => {
                    out.push(ty.clone());
                    Ok(())
                }
            }
        }
        _ => Err(syn::Error::new(
            ty.span(),
            "a step returns its events by value: an event, `Option<_>`, `Vec<_>`, \
             `Either<_, _>`, `()`, or a `Result` of one of those",
        )),
    }
}
