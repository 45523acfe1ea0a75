//! The macros of `tidewater`: `#[workflow]`, `#[step]` and `#[derive(Event)]`.
//!
//! Use them through `tidewater` (`use tidewater::prelude::*;`), which re-exports them
//! and which the generated code refers to. The pipeline is parse (`ast`) -> options (`attr`) ->
//! token checks (`check`) -> code generation with the graph checks handed to rustc (`expand`).

mod ast;
mod attr;
mod check;
mod event;
mod expand;

use proc_macro::TokenStream;

/// Turns an `impl` block of `#[step]` methods into a workflow. See `tidewater`.
#[proc_macro_attribute]
pub fn workflow(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::workflow(args.into(), input.into()).into()
}

/// Marks a step of a `#[workflow]` impl. On its own (outside `#[workflow]`) it is an error.
#[proc_macro_attribute]
pub fn step(_args: TokenStream, input: TokenStream) -> TokenStream {
    expand::stray_step(input.into()).into()
}

/// Derives `tidewater::Event` with a stable name (`module::path::Type`).
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    event::derive(input.into()).into()
}
