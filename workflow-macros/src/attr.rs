//! The options of `#[workflow(...)]` and `#[step(...)]`.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, Lit, Path, Token, Type};

/// `#[workflow(state = S, crate = "path", skip_graph_checks)]`.
pub(crate) struct WorkflowOptions {
    pub(crate) durable: bool,
    pub(crate) state: Option<Type>,
    pub(crate) krate: Option<Path>,
    pub(crate) skip_graph_checks: bool,
    /// `serve = "name"`: registered for `tidewater-server` under that name.
    pub(crate) serve: Option<syn::LitStr>,
}

/// `#[step(num_workers = N, emits = [A, B], skip_graph_checks)]`.
#[derive(Default)]
pub(crate) struct StepOptions {
    pub(crate) num_workers: Option<usize>,
    pub(crate) emits: Vec<Type>,
    pub(crate) skip_graph_checks: bool,
    /// `retry = <expr of type RetryPolicy>`.
    pub(crate) retry: Option<Expr>,
    /// `timeout = <expr of type Duration>`.
    pub(crate) timeout: Option<Expr>,
}

/// Collects errors instead of stopping at the first.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn add(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn into_compile_errors(self) -> TokenStream {
        self.0.map(|e| e.to_compile_error()).unwrap_or_default()
    }
}

pub(crate) fn parse_workflow_options(args: TokenStream, errors: &mut Errors) -> WorkflowOptions {
    let mut options = WorkflowOptions {
        durable: false,
        state: None,
        krate: None,
        skip_graph_checks: false,
        serve: None,
    };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("state") {
            options.state = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("crate") {
            let lit: syn::LitStr = meta.value()?.parse()?;
            options.krate = Some(lit.parse()?);
        } else if meta.path.is_ident("skip_graph_checks") {
            options.skip_graph_checks = true;
        } else if meta.path.is_ident("durable") {
            options.durable = true;
        } else if meta.path.is_ident("serve") {
            options.serve = Some(meta.value()?.parse()?);
        } else {
            return Err(meta.error(format!(
                "unknown `#[workflow]` option `{}`; expected `state`, `durable`, `serve`, `crate` or `skip_graph_checks`",
                path_name(&meta.path)
            )));
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        errors.push(error);
    }
    options
}

pub(crate) fn parse_step_options(attr: &syn::Attribute, errors: &mut Errors) -> StepOptions {
    let mut options = StepOptions::default();
    if matches!(attr.meta, syn::Meta::Path(_)) {
        return options;
    }
    let result = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("num_workers") {
            let expr: Expr = meta.value()?.parse()?;
            let n = match &expr {
                Expr::Lit(lit) => match &lit.lit {
                    Lit::Int(int) => int.base10_parse::<usize>().ok(),
                    _ => None,
                },
                _ => None,
            };
            match n {
                Some(0) => errors.add(
                    expr_span(&expr),
                    "`num_workers` must be at least 1",
                ),
                Some(n) => options.num_workers = Some(n),
                None => errors.add(
                    expr_span(&expr),
                    "`num_workers` takes an integer literal, e.g. `num_workers = 4`",
                ),
            }
        } else if meta.path.is_ident("emits") {
            let content;
            let value = meta.value()?;
            syn::bracketed!(content in value);
            let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
            options.emits.extend(types);
        } else if meta.path.is_ident("skip_graph_checks") {
            options.skip_graph_checks = true;
        } else if meta.path.is_ident("retry") {
            options.retry = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("timeout") {
            options.timeout = Some(meta.value()?.parse()?);
        } else {
            return Err(meta.error(format!(
                "unknown `#[step]` option `{}`; expected `num_workers`, `emits`, `retry`, `timeout` or `skip_graph_checks`",
                path_name(&meta.path)
            )));
        }
        Ok(())
    });
    if let Err(error) = result {
        errors.push(error);
    }
    options
}

fn expr_span(expr: &Expr) -> Span {
    use syn::spanned::Spanned;
    expr.span()
}

fn path_name(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
