//! `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;
use syn::spanned::Spanned;

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    // Rejects `#[derive(Event)] struct Wrapper<T>(T);`: an event's id is a constant of its
    // name, which cannot include the type arguments yet.
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "`#[derive(Event)]` does not support generic types yet: wrap the data in a concrete type",
        ));
    }
    let mut krate = quote!(::tidewater);
    let mut request: Option<syn::Type> = None;
    let mut response = false;
    let mut correlate: Option<syn::Member> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let path: syn::Path = meta.value()?.parse::<syn::LitStr>()?.parse()?;
                krate = quote!(#path);
            } else if meta.path.is_ident("request") {
                request = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("response") {
                response = true;
            } else if meta.path.is_ident("correlate") {
                correlate = Some(meta.value()?.parse()?);
            } else {
                return Err(meta.error(
                    "unknown `#[event]` option; expected `request = ResponseType`, `correlate = field`, `response` or `crate = \"path\"`",
                ));
            }
            Ok(())
        })?;
    }
    let ident = &input.ident;
    let name = ident.to_string();
    let private = quote!(#krate::__private);
    // Rejects `#[event(request = A, response)]`: one event cannot be both.
    if let (Some(ty), true) = (&request, response) {
        return Err(syn::Error::new(
            ty.span(),
            "an event is either a request (`request = Response`) or a `response`, not both",
        ));
    }
    // Rejects `#[event(response, correlate = id)]`: only a request names the field its answer
    // shares with it.
    if let (Some(field), None) = (&correlate, &request) {
        return Err(syn::Error::new(
            field.span(),
            "`correlate` needs `request = Response`: it names the field a request shares with its response",
        ));
    }
    let kind = if request.is_some() {
        quote!(const KIND: #private::EventKind = #private::EventKind::Request;)
    } else if response {
        quote!(const KIND: #private::EventKind = #private::EventKind::Response;)
    } else {
        quote!()
    };
    let request_impl = request.as_ref().map(|ty| {
        quote! {
            #[automatically_derived]
            impl #private::Request for #ident {
                type Response = #ty;
            }
        }
    });
    let response_id = request.as_ref().map(|ty| {
        let response = crate::expand::type_name(ty);
        let unanswered = format!(
            "request `{name}` is emitted but no step accepts its response `{response}`\n\
             help: add a step taking `ev: {response}`: the answer sent from outside would have \
             nowhere to go"
        );
        quote! {
            const RESPONSE: ::core::option::Option<#private::EventId> =
                ::core::option::Option::Some(<#ty as #private::Event>::ID);
            const UNANSWERED: &'static str = #unanswered;
        }
    });
    // The answer to this request is the response whose field equals this request's.
    let answered_by = match (&request, &correlate) {
        (Some(ty), Some(field)) => Some(quote! {
            fn __answered_by(&self, response: &dyn ::core::any::Any) -> bool {
                match response.downcast_ref::<#ty>() {
                    ::core::option::Option::Some(response) => response.#field == self.#field,
                    ::core::option::Option::None => false,
                }
            }
        }),
        _ => None,
    };
    Ok(quote! {
        #[automatically_derived]
        impl #private::Event for #ident {
            const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", #name);
            #kind
            #response_id
            #answered_by

            // Serde and schemars are optional for an event: the probes pick their impls when
            // this type has them, and `None` when it does not.
            fn __to_json(
                &self,
            ) -> ::core::option::Option<::core::result::Result<#private::serde_json::Value, #private::String>> {
                use #private::probe::{NoSerde as _, ViaSerde as _};
                (&&#private::probe::Probe::<Self>::NEW).to_json(self)
            }

            fn __from_json(
                value: #private::serde_json::Value,
            ) -> ::core::option::Option<::core::result::Result<Self, #private::String>> {
                use #private::probe::{NoSerde as _, ViaSerde as _};
                (&&#private::probe::Probe::<Self>::NEW).decode_json(value)
            }

            fn __schema() -> ::core::option::Option<#private::serde_json::Value> {
                use #private::probe::{NoSchema as _, ViaSchema as _};
                (&&#private::probe::Probe::<Self>::NEW).schema()
            }
        }
        #request_impl
    })
}
