//! Code generation: the `Workflow` impl, the graph constant, and the graph checks as constants
//! that rustc evaluates, each spanned on the user's token.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{ItemImpl, Type};

use crate::ast::{self, Model, Step, last_segment_is, type_span};
use crate::attr::{Errors, WorkflowOptions, parse_workflow_options};
use crate::check::{self, Shape};

pub(crate) fn workflow(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[workflow]` goes on an `impl` block whose async methods are `#[step]`s",
            );
            let error = error.to_compile_error();
            return quote!(#error #input);
        }
    };
    let mut errors = Errors::default();
    let options = parse_workflow_options(args, &mut errors);
    let model = ast::parse(&mut item, &mut errors);
    let shape = check::check(&item, &model, &mut errors);
    if !errors.is_empty() {
        // The user's impl is still emitted (without the `#[step]` markers) so rust-analyzer
        // and the rest of the crate keep working, with a stand-in `Workflow` impl so that code
        // calling `.run(..)` does not add follow-on errors to the real ones.
        let fallback = fallback(&item, &options, &shape);
        let errors = errors.into_compile_errors();
        return quote!(#item #fallback #errors);
    }
    let generated = generate(&item, &options, &model, &shape);
    quote! {
        #item
        #generated
    }
}

pub(crate) fn stray_step(input: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        Span::call_site(),
        "`#[step]` only works on a method of an `impl` block marked `#[workflow]`",
    )
    .to_compile_error();
    quote!(#error #input)
}

/// A type as the user wrote it, for messages: `crate::events::Draft`, `StopEvent<String>`.
pub(crate) fn type_name(ty: &Type) -> String {
    let text = quote!(#ty).to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let next = chars.peek().copied().unwrap_or(' ');
            let prev = out.chars().last().unwrap_or(' ');
            if matches!(next, ':' | '<' | '>' | ',' | ')' | ']')
                || matches!(prev, ':' | '<' | '(' | '[' | '&')
            {
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn generate(
    item: &ItemImpl,
    options: &WorkflowOptions,
    model: &Model,
    shape: &Shape<'_>,
) -> TokenStream {
    let krate = options
        .krate
        .as_ref()
        .map_or_else(|| quote!(::tidewater), |path| quote!(#path));
    let private = quote!(#krate::__private);
    let self_ty = &item.self_ty;
    let workflow_name = type_name(self_ty);
    let state = options
        .state
        .as_ref()
        .map_or_else(|| quote!(()), |ty| quote!(#ty));
    let first_start = shape.starts[0];
    let first_stop = shape.stops[0];

    let step_specs = model.steps.iter().map(|step| {
        let name = step.ident.to_string();
        let accepts = step.accepts.iter().map(|ty| meta(&private, ty));
        let emits = step.emits.iter().map(|ty| meta(&private, ty));
        let workers = step.options.num_workers.unwrap_or(1);
        // `#[workflow(skip_graph_checks)]` marks every step, so `Graph::validate` agrees.
        let skip = step.options.skip_graph_checks || options.skip_graph_checks;
        quote! {
            #private::StepSpec {
                name: #name,
                accepts: &[#(#accepts),*],
                emits: &[#(#emits),*],
                num_workers: #workers,
                skip_graph_checks: #skip,
            }
        }
    });

    let arms = model
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| invoke_arm(&private, index, step));
    let config_arms: Vec<_> = model
        .steps
        .iter()
        .enumerate()
        .filter_map(|(index, step)| {
            let retry = step.options.retry.as_ref();
            let timeout = step.options.timeout.as_ref();
            if retry.is_none() && timeout.is_none() {
                return None;
            }
            let retry = retry.map_or_else(
                || quote!(::core::option::Option::None),
                |expr| quote_spanned!(expr_span(expr)=> ::core::option::Option::Some(#expr)),
            );
            let timeout = timeout.map_or_else(
                || quote!(::core::option::Option::None),
                |expr| quote_spanned!(expr_span(expr)=> ::core::option::Option::Some(#expr)),
            );
            Some(quote! {
                #index => #private::StepConfig { retry: #retry, timeout: #timeout },
            })
        })
        .collect();
    // Only steps with `retry` or `timeout` need a config; the trait's default covers the rest.
    let step_config = (!config_arms.is_empty()).then(|| {
        quote! {
            fn __step_config(step: usize) -> #private::StepConfig {
                match step {
                    #(#config_arms)*
                    _ => #private::StepConfig::default(),
                }
            }
        }
    });

    let durable = options.durable.then(|| durable_codec(&private, model));
    // `serve = "name"`: a registration `tidewater-server` finds through inventory.
    let serve = options.serve.as_ref().map(|name| {
        quote! {
            #private::inventory::submit! {
                #private::serve::Registration {
                    name: #name,
                    make: #private::serve::make_default::<#self_ty>,
                }
            }
        }
    });
    let steps_const = steps_const(&private, self_ty, model);
    let collects = collect_checks(&private, model);
    let event_of = event_of_impls(&private, self_ty, model, shape);
    let checks = graph_checks(&private, self_ty, options, model, shape);

    quote! {
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #private::Workflow for #self_ty {
                type Input = <#first_start as ::core::ops::Deref>::Target;
                type Output = <#first_stop as ::core::ops::Deref>::Target;
                type State = #state;

                const GRAPH: &'static #private::Graph = &#private::Graph {
                    workflow: #workflow_name,
                    steps: &[#(#step_specs),*],
                };

                fn __invoke(
                    self: #private::Arc<Self>,
                    ctx: #private::Context<Self>,
                    event: #private::DynEvent,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#private::Emitted, #private::BoxError>,
                > + ::core::marker::Send + 'static {
                    async move {
                        match ctx.step_index() {
                            #(#arms)*
                            _ => ::core::unreachable!("no such step"),
                        }
                    }
                }

                #step_config
                #durable

                fn __start_event(input: Self::Input) -> #private::DynEvent {
                    #private::start_event::<Self::Input>(input)
                }

                fn __output(
                    stop: #private::DynEvent,
                ) -> ::core::result::Result<Self::Output, #private::DynEvent> {
                    #private::take_output::<Self::Output>(stop)
                }
            }

            #steps_const
            #collects
            #(#event_of)*
            #checks
            #serve
        };
    }
}

/// The stand-in `Workflow` impl emitted beside errors: the right input and output types where
/// they are known, no steps, and code that is never run (the crate does not compile).
fn fallback(item: &ItemImpl, options: &WorkflowOptions, shape: &Shape<'_>) -> TokenStream {
    if !item.generics.params.is_empty() {
        return TokenStream::new();
    }
    let krate = options
        .krate
        .as_ref()
        .map_or_else(|| quote!(::tidewater), |path| quote!(#path));
    let private = quote!(#krate::__private);
    let self_ty = &item.self_ty;
    let payload = |ty: Option<&&Type>| {
        ty.map_or_else(
            || quote!(()),
            |ty| quote!(<#ty as ::core::ops::Deref>::Target),
        )
    };
    let input = payload(shape.starts.first());
    let output = payload(shape.stops.first());
    let state = options
        .state
        .as_ref()
        .map_or_else(|| quote!(()), |ty| quote!(#ty));
    let name = type_name(self_ty);
    quote! {
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #private::Workflow for #self_ty {
                type Input = #input;
                type Output = #output;
                type State = #state;
                const GRAPH: &'static #private::Graph =
                    &#private::Graph { workflow: #name, steps: &[] };
                fn __invoke(
                    self: #private::Arc<Self>,
                    _ctx: #private::Context<Self>,
                    _event: #private::DynEvent,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#private::Emitted, #private::BoxError>,
                > + ::core::marker::Send + 'static {
                    async { ::core::unreachable!("`#[workflow]` reported errors") }
                }
                fn __start_event(_input: Self::Input) -> #private::DynEvent {
                    ::core::unreachable!("`#[workflow]` reported errors")
                }
                fn __output(
                    stop: #private::DynEvent,
                ) -> ::core::result::Result<Self::Output, #private::DynEvent> {
                    ::core::result::Result::Err(stop)
                }
            }
        };
    }
}

fn expr_span(expr: &syn::Expr) -> Span {
    use syn::spanned::Spanned;
    expr.span()
}

fn meta(private: &TokenStream, ty: &Type) -> TokenStream {
    quote_spanned!(type_span(ty)=> #private::EventMeta::of::<#ty>())
}

/// One arm of the generated dispatch: take the input, call the method, collect its events.
fn invoke_arm(private: &TokenStream, index: usize, step: &Step) -> TokenStream {
    let ident = &step.ident;
    let input = &step.input;
    let arity = step.ctx_position.map_or(1, |_| 2);
    let args = (0..arity).map(|position| {
        if position == step.event_position {
            quote!(event)
        } else {
            quote!(&ctx)
        }
    });
    // `Self::step(&*self, ..)`, not `self.step(..)`: a step named like a `Workflow` method
    // (`start`, `run`) must still resolve to the inherent step.
    let call = if step.has_self {
        quote!(Self::#ident(&*self, #(#args),*))
    } else {
        quote!(Self::#ident(#(#args),*))
    };
    // Spanned on the return type: "`String` cannot be returned by a step" points there.
    let emit = quote_spanned!(step.output_span=> #private::emit(output));
    quote! {
        #index => {
            let event = match #private::take_input::<#input>(event) {
                ::core::result::Result::Ok(event) => event,
                ::core::result::Result::Err(error) => return ::core::result::Result::Err(error),
            };
            let output = #call.await;
            #emit
        }
    }
}

/// `collect_each::<(A, B)>` in a step: each collected type must be one the step accepts (else
/// the set can never complete), checked by rustc and spanned on the type in the turbofish.
fn collect_checks(private: &TokenStream, model: &Model) -> TokenStream {
    let checks = model.steps.iter().flat_map(|step| {
        let input = &step.input;
        step.collected
            .iter()
            .map(move |ty| quote_spanned!(syn::spanned::Spanned::span(ty)=> #private::step_collects::<#ty, #input, _>();))
    });
    let checks: Vec<TokenStream> = checks.collect();
    if checks.is_empty() {
        return TokenStream::new();
    }
    quote! {
        #[allow(dead_code)]
        fn __collect_each_checks() {
            #(#checks)*
        }
    }
}

/// `Flow::STEPS`: one typed `StepRef` per step, named like the step, for targeted sends that
/// rustc checks (`ctx.send_to(Self::STEPS.judge, ev)`: no such field, or a step that does not
/// accept the event, does not compile).
fn steps_const(private: &TokenStream, self_ty: &Type, model: &Model) -> TokenStream {
    let names: Vec<_> = model.steps.iter().map(|s| &s.ident).collect();
    let inputs: Vec<_> = model.steps.iter().map(|s| &s.input).collect();
    let indices = 0..model.steps.len();
    quote! {
        /// The steps of the workflow, for `send_to`.
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        pub struct __Steps {
            #(pub #names: #private::StepRef<#self_ty, #inputs>,)*
        }

        #[automatically_derived]
        impl #self_ty {
            /// Typed references to the workflow's steps, one field per step, for
            /// `ctx.send_to(Self::STEPS.step, event)`.
            #[allow(dead_code)]
            pub const STEPS: __Steps = __Steps {
                #(#names: #private::StepRef::new(#indices),)*
            };
        }
    }
}

/// `#[workflow(durable)]`: (de)serialization of every event of the graph, the state and the
/// output, so runs can be snapshotted and journaled. Each type must be `Serialize` and
/// `Deserialize`; rustc says so, spanned on the type, when one is not.
fn durable_codec(private: &TokenStream, model: &Model) -> TokenStream {
    let mut seen = std::collections::HashSet::new();
    let events: Vec<&Type> = model
        .steps
        .iter()
        .flat_map(|s| s.accepts.iter().chain(&s.emits))
        .filter(|ty| !last_segment_is(ty, "StepFailure"))
        // By the type as written, not its last name: `a::Ping` and `b::Ping` are two events,
        // each with its own codec (one spelled twice only costs a branch never taken).
        .filter(|ty| seen.insert(type_name(ty)))
        .collect();
    let encode = events.iter().map(|ty| {
        quote_spanned! {type_span(ty)=>
            if let ::core::option::Option::Some(event) = event.downcast_ref::<#ty>() {
                return #private::snapshot::encode::<#ty>(event);
            }
        }
    });
    let decode = events.iter().map(|ty| {
        quote_spanned! {type_span(ty)=>
            if name == <#ty as #private::Event>::NAME {
                return #private::snapshot::decode::<#ty>(data);
            }
        }
    });
    quote! {
        const DURABLE: bool = true;

        fn __encode_event(
            event: &#private::DynEvent,
        ) -> ::core::result::Result<#private::serde_json::Value, #private::String> {
            #(#encode)*
            ::core::result::Result::Err(#private::format!("`{}` is not an event of this workflow", event.name()))
        }

        fn __decode_event(
            name: &str,
            data: #private::serde_json::Value,
        ) -> ::core::result::Result<#private::DynEvent, #private::String> {
            #(#decode)*
            ::core::result::Result::Err(#private::format!("unknown event type `{}`", name))
        }

        fn __encode_state(
            state: &Self::State,
        ) -> ::core::result::Result<#private::serde_json::Value, #private::String> {
            #private::snapshot::to_value(state)
        }

        fn __decode_state(
            data: #private::serde_json::Value,
        ) -> ::core::result::Result<Self::State, #private::String> {
            #private::snapshot::from_value(data)
        }

        fn __encode_output(
            output: &Self::Output,
        ) -> ::core::result::Result<#private::serde_json::Value, #private::String> {
            #private::snapshot::to_value(output)
        }

        fn __decode_output(
            data: #private::serde_json::Value,
        ) -> ::core::result::Result<Self::Output, #private::String> {
            #private::snapshot::from_value(data)
        }
    }
}

/// `impl EventOf<Flow> for E` for every event a step accepts, and the stop event, so that
/// `ctx.send_event` only compiles for them (in a valid graph every other emitted event is
/// accepted somewhere). Emitted-only spellings are left out, and only the first stop event is
/// used, because two spellings of one type would give two impls (E0119): `Either<D, ..>` with
/// `type D = Draft;` beside `ev: Draft`. One impl per spelling's last segment, so `Draft` and
/// `crate::events::Draft` give one impl.
fn event_of_impls(
    private: &TokenStream,
    self_ty: &Type,
    model: &Model,
    shape: &Shape<'_>,
) -> Vec<TokenStream> {
    let mut seen = std::collections::HashSet::new();
    model
        .steps
        .iter()
        .flat_map(|s| &s.accepts)
        .filter(|ty| !last_segment_is(ty, "StartEvent"))
        .chain(shape.stops.first().copied())
        .filter(|ty| seen.insert(last_name(ty)))
        .map(|ty| {
            quote! {
                #[automatically_derived]
                impl #private::EventOf<#self_ty> for #ty {}
            }
        })
        .collect()
}

fn last_name(ty: &Type) -> String {
    let name = type_name(ty);
    let base = name.split('<').next().unwrap_or(&name);
    let last = base.rsplit("::").next().unwrap_or(base);
    format!("{last}{}", &name[base.len()..])
}

/// The graph rules, one constant per rule and site, each panicking (at compile time) with the
/// message the user sees, spanned on the user's token.
fn graph_checks(
    private: &TokenStream,
    self_ty: &Type,
    options: &WorkflowOptions,
    model: &Model,
    shape: &Shape<'_>,
) -> TokenStream {
    let graph = quote!(<#self_ty as #private::Workflow>::GRAPH);
    let mut checks = Vec::new();

    checks.push(quote! {
        const _: () = ::core::assert!(#graph.fits(), "a workflow has at most 128 steps");
    });

    // Rejects `async fn a(&self, ev: StartEvent<u8>)` beside `async fn b(&self, ev: StartEvent<u16>)`.
    for ty in &shape.starts[1..] {
        let first = shape.starts[0];
        checks.push(quote_spanned! {type_span(ty)=>
            const _: () = #private::same_start::<#ty, #first>();
        });
    }
    // Rejects one step returning `StopEvent<u8>` and another `StopEvent<String>`.
    for ty in &shape.stops[1..] {
        let first = shape.stops[0];
        checks.push(quote_spanned! {type_span(ty)=>
            const _: () = #private::same_stop::<#ty, #first>();
        });
    }

    // The ids are read back from `GRAPH`, not as `<#ty as Event>::ID`: a type that is not an
    // event is then reported once (where `GRAPH` names it), not once more per rule.
    for (index, step) in model.steps.iter().enumerate() {
        let step_name = step.ident.to_string();
        // Rejects `async fn b(&self, ev: Orphan)` when no step returns `Orphan`.
        for (slot, ty) in step.accepts.iter().enumerate() {
            if last_segment_is(ty, "StartEvent") || last_segment_is(ty, "StopEvent") {
                continue;
            }
            let message = format!(
                "event `{0}` is consumed by step `{step_name}` but no step produces it\n\
                 help: return `{0}` from a step, or send it with `ctx.send_event` from a step \
                 marked `#[step(emits = [{0}])]`",
                type_name(ty)
            );
            checks.push(quote_spanned! {type_span(ty)=>
                const _: () = if !#graph.is_produced(#graph.steps[#index].accepts[#slot].id) {
                    ::core::panic!(#message)
                };
            });
        }
        // Rejects `async fn a(..) -> Either<Unused, StopEvent<()>>` when no step takes `Unused`.
        for (slot, ty) in step.emits.iter().enumerate() {
            if last_segment_is(ty, "StopEvent") {
                continue;
            }
            let message = format!(
                "event `{0}` is produced by step `{step_name}` but no step consumes it\n\
                 help: add a step taking `ev: {0}`, or stop emitting it (progress for the caller \
                 goes to `ctx.write_event_to_stream`, not to the graph)",
                type_name(ty)
            );
            checks.push(quote_spanned! {type_span(ty)=>
                const _: () = if !#graph.is_consumed(#graph.steps[#index].emits[#slot].id) {
                    ::core::panic!(#message)
                };
            });
            // Rejects a step returning `Ask` (`#[event(request = Answer)]`) when no step takes
            // `Answer`: the outside's answer would have nowhere to go.
            let unanswered = format!(
                "request `{}` is emitted by step `{step_name}` but no step accepts its response\n\
                 help: add a step taking the response named by its `#[event(request = ..)]`",
                type_name(ty)
            );
            checks.push(quote_spanned! {type_span(ty)=>
                const _: () = if !#graph.request_is_answered(#graph.steps[#index].emits[#slot].response) {
                    ::core::panic!(#unanswered)
                };
            });
        }
    }

    if !options.skip_graph_checks {
        for (index, step) in model.steps.iter().enumerate() {
            let span = step.ident.span();
            let unreachable = format!(
                "step `{0}` can never run: no path from the `StartEvent` reaches it\n\
                 help: the events `{0}` takes come only from steps that cannot run either; if a \
                 step sends one with `ctx.send_event`, list it in that step's \
                 `#[step(emits = [..])]`, or let a step that runs return it",
                step.ident
            );
            // Rejects `a: A -> B` and `b: B -> A` when neither is fed from the start event.
            checks.push(quote_spanned! {span=>
                const _: () = if !#graph.step_is_reachable(#index) {
                    ::core::panic!(#unreachable)
                };
            });
            let dead_end = format!(
                "step `{0}` is a dead end: no event it emits can lead to a `StopEvent`\n\
                 help: return an event that leads on, e.g. `Either<Next, StopEvent<_>>`; if \
                 `{0}` only has side effects (I/O, `ctx.write_event_to_stream`) and the run stops \
                 through another event, mark it `#[step(skip_graph_checks)]`: a run that reaches \
                 only this step would otherwise end as stuck, which is what this rule prevents",
                step.ident
            );
            let endless = format!(
                "step `{}` is part of a loop with no exit: no event on the loop can lead to a `StopEvent`\n\
                 help: let one step on the loop return the way out, e.g. `Either<Again, StopEvent<_>>`",
                step.ident
            );
            // Rejects `a: Start -> B`, `b: B -> ()` (dead end) and `b: B -> C`, `c: C -> B`
            // (a loop with no exit) when nothing on the way emits the stop event.
            checks.push(quote_spanned! {span=>
                const _: () = match #graph.step_stop_check(#index) {
                    0 => {}
                    1 => ::core::panic!(#dead_end),
                    _ => ::core::panic!(#endless),
                };
            });
        }
    }
    quote!(#(#checks)*)
}
