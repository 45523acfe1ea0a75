//! Code generation: the `Workflow` impl, the graph constant, and the graph checks as constants
//! that rustc evaluates, each spanned on the user's token.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
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
    let (output, same_stop, output_span) = output_type(model);
    // Spanned where a stop event mismatch is reported, so that rustc's complaint about
    // `Self::Output` here is the same error, shown once.
    let output_fn = respan(
        quote! {
            fn __output(
                stop: #private::DynEvent,
            ) -> ::core::result::Result<Self::Output, #private::DynEvent> {
                #private::take_output::<Self::Output>(stop)
            }
        },
        output_span,
    );
    let events = EventAliases::new(&private, model);
    let aliases = &events.defs;

    let step_specs = model.steps.iter().map(|step| {
        let name = step.ident.to_string();
        let accepts = step.accepts.iter().map(|ty| meta(&private, &events.of(ty)));
        let emits = step.emits.iter().map(|ty| meta(&private, &events.of(ty)));
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
        .map(|(index, step)| invoke_arm(&private, &events, index, step));
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

    let durable = options
        .durable
        .then(|| durable_codec(&private, &events, model));
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
    let event_of = event_of_impls(&private, &events, self_ty, model, shape);
    let checks = graph_checks(&private, self_ty, options, model, shape);

    quote! {
        #[doc(hidden)]
        const _: () = {
            #(#aliases)*
            #same_stop

            #[automatically_derived]
            impl #private::Workflow for #self_ty {
                type Input = <#first_start as ::core::ops::Deref>::Target;
                type Output = #output;
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

                #output_fn
            }

            #steps_const
            #collects
            #(#event_of)*
            #checks
            #serve
        };
    }
}

/// The workflow's `Output`: the payload of its stop event. When steps spell their stop events
/// differently (`StopEvent<usize>` in `write`, `StopEvent<String>` in `finish`), rustc decides
/// whether the spellings are one type (`type Out = String;` makes them one): `Output` is then
/// computed through a generated trait implemented only for `T: SameStop<T>`, whose message names
/// both steps. When the types differ, that is the one error, and `Output` is left unknown, so
/// code using the workflow's output adds no error of its own.
fn output_type(model: &Model) -> (TokenStream, TokenStream, Span) {
    let mut stops: Vec<(&syn::Ident, &Type)> = Vec::new();
    for step in &model.steps {
        for ty in &step.emits {
            if last_segment_is(ty, "StopEvent")
                && !stops
                    .iter()
                    .any(|(_, known)| type_name(known) == type_name(ty))
            {
                stops.push((&step.ident, ty));
            }
        }
    }
    let (first_step, first) = stops[0];
    let mut output = quote!(<#first as ::core::ops::Deref>::Target);
    let mut checks = Vec::new();
    let mut span = Span::call_site();
    for (k, (step, ty)) in stops.iter().enumerate().skip(1) {
        let name = if stops.len() == 2 {
            quote::format_ident!("__SameStopEvent")
        } else {
            quote::format_ident!("__SameStopEvent{k}")
        };
        let message = format!(
            "steps `{first_step}` and `{step}` return different stop events: `{{T}}` and `{{Self}}`\n\
             help: a workflow has one output type: let both steps return the same `StopEvent<_>`"
        );
        let label = format!("`{step}` returns this one, `{first_step}` returns `{{T}}`");
        checks.push(quote! {
            #[diagnostic::on_unimplemented(message = #message, label = #label)]
            trait #name<T> {
                type Output;
            }
            impl<T: ::core::ops::Deref<Target: ::core::marker::Sized>> #name<T> for T {
                type Output = T::Target;
            }
        });
        let same = quote_spanned!(type_span(ty)=> <#ty as #name<#first>>::Output);
        if k == 1 {
            output = same;
            span = type_span(ty);
        } else {
            checks.push(quote! {
                const _: ::core::marker::PhantomData<#same> = ::core::marker::PhantomData;
            });
        }
    }
    (output, quote!(#(#checks)*), span)
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
fn invoke_arm(
    private: &TokenStream,
    events: &EventAliases,
    index: usize,
    step: &Step,
) -> TokenStream {
    let ident = &step.ident;
    let input = events.of(&step.input);
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
    let emit = emit_output(private, events, &step.output);
    // `()`: nothing to push (and no variable for rustc to call unused).
    let emit = if emit.is_empty() {
        quote! {
            #call.await;
            let emitted = #private::Emitted::Nothing;
        }
    } else {
        quote! {
            let output = #call.await;
            let mut emitted = #private::Emitted::Nothing;
            #emit
        }
    };
    quote! {
        #index => {
            let event = match #private::take_input::<#input>(event) {
                ::core::result::Result::Ok(event) => event,
                ::core::result::Result::Err(error) => return ::core::result::Result::Err(error),
            };
            #emit
            ::core::result::Result::Ok(emitted)
        }
    }
}

/// The statements that push the events in `output` (of type `ty`, the step's return type or a
/// part of it) onto `emitted`, unfolded like the graph reads the type (`ast::unfold_output`):
/// `Either` and `Result` become a `match`, `Option` an `if let`, `Vec` a `for`, `()` nothing,
/// and each event one `DynEvent::new::<E>`. Each event is so checked on its own token: a type
/// that is not an event (`Either<Draft, String>`) is reported once, on `String`, and not once
/// more as a return type.
fn emit_output(private: &TokenStream, events: &EventAliases, ty: &Type) -> TokenStream {
    let parts = match ty {
        Type::Tuple(tuple) if tuple.elems.is_empty() => return TokenStream::new(),
        Type::Group(group) => return emit_output(private, events, &group.elem),
        Type::Paren(paren) => return emit_output(private, events, &paren.elem),
        Type::Path(path) if path.qself.is_none() => path.path.segments.last().map(|segment| {
            let args: Vec<&Type> = match &segment.arguments {
                syn::PathArguments::AngleBracketed(args) => args
                    .args
                    .iter()
                    .filter_map(|arg| match arg {
                        syn::GenericArgument::Type(ty) => Some(ty),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (segment.ident.to_string(), args)
        }),
        _ => None,
    };
    let Some((name, args)) = parts else {
        let ty = events.of(ty);
        return quote_spanned!(type_span(&ty)=> emitted.push(#private::DynEvent::new::<#ty>(output));
        );
    };
    match (name.as_str(), args.as_slice()) {
        ("Result", [ok] | [ok, _]) => {
            let ok_events = emit_output(private, events, ok);
            // Spanned on the error type (on `Result` for `io::Result<T>`): an error type that
            // does not convert is reported there.
            let error_span = type_span(args.get(1).copied().unwrap_or(ty));
            let error = quote_spanned!(error_span=> #private::step_error(error));
            let ok = bind(&ok_events);
            quote! {
                match output {
                    ::core::result::Result::Ok(#ok) => { #ok_events }
                    ::core::result::Result::Err(error) => {
                        return ::core::result::Result::Err(#error);
                    }
                }
            }
        }
        ("Option", [some]) => {
            let some_events = emit_output(private, events, some);
            let some = bind(&some_events);
            quote! {
                if let ::core::option::Option::Some(#some) = output { #some_events }
            }
        }
        ("Vec", [item]) => {
            let item_events = emit_output(private, events, item);
            let item = bind(&item_events);
            quote! {
                #private::start_batch(&mut emitted, output.len());
                for #item in output { #item_events }
            }
        }
        ("Either", [left, right]) => {
            let left_events = emit_output(private, events, left);
            let right_events = emit_output(private, events, right);
            let (left, right) = (bind(&left_events), bind(&right_events));
            quote! {
                match output {
                    #private::Either::Left(#left) => { #left_events }
                    #private::Either::Right(#right) => { #right_events }
                }
            }
        }
        _ => {
            let ty = events.of(ty);
            quote_spanned!(type_span(&ty)=> emitted.push(#private::DynEvent::new::<#ty>(output));)
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
fn durable_codec(private: &TokenStream, events: &EventAliases, model: &Model) -> TokenStream {
    let mut seen = std::collections::HashSet::new();
    let types: Vec<Type> = model
        .steps
        .iter()
        .flat_map(|s| s.accepts.iter().chain(&s.emits))
        .filter(|ty| !last_segment_is(ty, "StepFailure"))
        // By the type as written, not its last name: `a::Ping` and `b::Ping` are two events,
        // each with its own codec (one spelled twice only costs a branch never taken).
        .filter(|ty| seen.insert(type_name(ty)))
        .map(|ty| events.of(ty))
        .collect();
    let encode = types.iter().map(|ty| {
        quote_spanned! {type_span(ty)=>
            if let ::core::option::Option::Some(event) = event.downcast_ref::<#ty>() {
                return #private::snapshot::encode::<#ty>(event);
            }
        }
    });
    let decode = types.iter().map(|ty| {
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
    events: &EventAliases,
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
        .filter(|ty| seen.insert(last_name(ty)))
        .chain(shape.stops.first().copied())
        .map(|ty| {
            // Through the alias, so a type missing `#[derive(Event)]` is not reported again
            // here; but not for the library's own events: coherence cannot see through
            // `<StopEvent<String> as IsEvent>::Event` and would call two such impls overlapping.
            let ty = if ["StopEvent", "StepFailure"]
                .iter()
                .any(|name| last_segment_is(ty, name))
            {
                ty.into_token_stream()
            } else {
                events.of(ty).into_token_stream()
            };
            quote! {
                #[automatically_derived]
                impl #private::EventOf<#self_ty> for #ty {}
            }
        })
        .collect()
}

/// Every event type of the graph, by spelling, and the alias the generated code names it by:
/// `type __Event_Draft = <Draft as IsEvent>::Event;`, spanned on the spelling's first
/// occurrence. A type missing `#[derive(Event)]` then fails once, there, with one message
/// ("`Review` is not an event"), instead of once per use (graph, input, output, `EventOf`).
struct EventAliases {
    /// `(spelling, alias)`, in order of first occurrence.
    names: Vec<(String, syn::Ident)>,
    /// The `type` items.
    defs: Vec<TokenStream>,
}

impl EventAliases {
    fn new(private: &TokenStream, model: &Model) -> Self {
        let mut names: Vec<(String, syn::Ident)> = Vec::new();
        let mut defs = Vec::new();
        for ty in model
            .steps
            .iter()
            .flat_map(|s| s.accepts.iter().chain(&s.emits))
        {
            let spelling = type_name(ty);
            if names.iter().any(|(known, _)| *known == spelling) {
                continue;
            }
            let mut alias: String = format!("__Event_{}", last_name(ty))
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { '_' })
                .collect();
            while alias.ends_with('_') {
                alias.pop();
            }
            // `a::Ping` and `b::Ping`: two spellings with one last name.
            let taken = names
                .iter()
                .filter(|(_, a)| a.to_string().starts_with(&alias))
                .count();
            if taken > 0 {
                alias = format!("{alias}_{taken}");
            }
            let ident = syn::Ident::new(&alias, type_span(ty));
            defs.push(quote! {
                #[allow(non_camel_case_types)]
                type #ident = <#ty as #private::IsEvent>::Event;
            });
            names.push((spelling, ident));
        }
        EventAliases { names, defs }
    }

    /// `ty` with every event type in it replaced by its alias: `Either<Draft, StopEvent<u8>>`
    /// becomes `Either<__Event_Draft, __Event_StopEvent_u8>`.
    fn of(&self, ty: &Type) -> Type {
        let spelling = type_name(ty);
        if let Some((_, alias)) = self.names.iter().find(|(known, _)| *known == spelling) {
            return syn::parse_quote!(#alias);
        }
        match ty {
            Type::Path(path) if path.qself.is_none() => {
                let mut path = path.clone();
                if let Some(segment) = path.path.segments.last_mut()
                    && let syn::PathArguments::AngleBracketed(args) = &mut segment.arguments
                {
                    for arg in &mut args.args {
                        if let syn::GenericArgument::Type(inner) = arg {
                            *inner = self.of(inner);
                        }
                    }
                }
                Type::Path(path)
            }
            Type::Group(group) => self.of(&group.elem),
            Type::Paren(paren) => self.of(&paren.elem),
            _ => ty.clone(),
        }
    }
}

/// The pattern for a part of a return value: `output`, or `_` when `events` (the code that
/// pushes its events) does nothing with it, as for `()`.
fn bind(events: &TokenStream) -> TokenStream {
    if events.is_empty() {
        quote!(_)
    } else {
        quote!(output)
    }
}

/// `tokens`, every one of them spanned on `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    use proc_macro2::{Group, TokenTree};
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut other => {
                other.set_span(span);
                other
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
                 help: if a step sends it with `ctx.send_event`, mark that step \
                 `#[step(emits = [{0}])]`; otherwise return `{0}` from a step",
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
            // The same constant rejects a step returning `Ask` (`#[event(request = Answer)]`)
            // when no step takes `Answer`. Whether `Ask` is a request is said by its own derive,
            // which also writes that message (`EventMeta::unanswered`): this macro cannot see it.
            checks.push(quote_spanned! {type_span(ty)=>
                const _: () = match #graph.emit_check(#index, #slot) {
                    1 => ::core::panic!(#message),
                    2 => ::core::panic!("{}", #graph.steps[#index].emits[#slot].unanswered),
                    _ => {}
                };
            });
        }
    }

    if !options.skip_graph_checks {
        for (index, step) in model.steps.iter().enumerate() {
            let span = step.ident.span();
            let takes = step
                .accepts
                .iter()
                .map(|ty| format!("`{}`", type_name(ty)))
                .collect::<Vec<_>>()
                .join(" or ");
            let declare = match step.accepts.as_slice() {
                [one] => type_name(one),
                _ => "..".to_string(),
            };
            let unreachable = format!(
                "step `{0}` can never run: no path from the `StartEvent` reaches it\n\
                 help: the usual cause is a step that sends {takes} with `ctx.send_event` but does \
                 not declare it: mark that step `#[step(emits = [{declare}])]`; otherwise let a \
                 step that runs return {takes}",
                step.ident
            );
            // Rejects `a: A -> B` and `b: B -> A` when neither is fed from the start event; once
            // per such group, not for every step of it or after it. A step taking the start
            // event always runs.
            if !step
                .accepts
                .iter()
                .any(|ty| last_segment_is(ty, "StartEvent"))
            {
                checks.push(quote_spanned! {span=>
                    const _: () = if #graph.reports_unreachable(#index) {
                        ::core::panic!(#unreachable)
                    };
                });
            }
            let dead_end = format!(
                "step `{0}` is a dead end: no event it emits can lead to a `StopEvent`\n\
                 help: return an event that leads on, e.g. `Either<Next, StopEvent<_>>`; if \
                 `{0}` only has side effects (I/O, `ctx.write_event_to_stream`) and the run stops \
                 through another event, mark it `#[step(skip_graph_checks)]`: a run that reaches \
                 only this step would otherwise end as stuck, which is what this rule prevents",
                step.ident
            );
            // The way out suggested on the step's own return type, where one fits.
            let way_out = match (&step.output, shape.stops.first()) {
                (Type::Path(_), Some(stop))
                    if !["Result", "Option", "Vec"]
                        .iter()
                        .any(|name| last_segment_is(&step.output, name)) =>
                {
                    format!(
                        "return `Either<{}, {}>` from `{}` and stop when the work is done",
                        type_name(&step.output),
                        type_name(stop),
                        step.ident
                    )
                }
                _ => "return the way out from one step on the loop, e.g. \
                      `Either<Again, StopEvent<_>>`"
                    .to_string(),
            };
            let endless = format!(
                "step `{}` closes a loop with no exit: no step on the loop can lead to a `StopEvent`\n\
                 help: {way_out}",
                step.ident
            );
            // Rejects `a: Start -> B`, `b: B -> ()` (dead end) and `b: B -> C`, `c: C -> B`
            // (a loop with no exit) when nothing on the way emits the stop event. A loop is
            // reported once, on the return type of its last step. A step with a context that
            // emits nothing is not called a dead end while some event has no producer: it is
            // likely that event's sender, missing its `emits = [..]`, which that rule names.
            let dead_end_arm = if step.ctx_position.is_some() && step.emits.is_empty() {
                quote!(1 if !#graph.consumes_unproduced())
            } else {
                quote!(1)
            };
            checks.push(quote_spanned! {span=>
                const _: () = match #graph.step_stop_check(#index) {
                    #dead_end_arm => ::core::panic!(#dead_end),
                    _ => {}
                };
            });
            checks.push(quote_spanned! {step.output_span=>
                const _: () = if #graph.reports_endless_loop(#index) {
                    ::core::panic!(#endless)
                };
            });
        }
    }
    quote!(#(#checks)*)
}
