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
    let mut krate = quote!(::workflow_core);
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let path: syn::Path = meta.value()?.parse::<syn::LitStr>()?.parse()?;
                krate = quote!(#path);
                Ok(())
            } else {
                Err(meta.error("unknown `#[event]` option; expected `crate = \"path\"`"))
            }
        })?;
    }
    let ident = &input.ident;
    let name = ident.to_string();
    Ok(quote! {
        #[automatically_derived]
        impl #krate::__private::Event for #ident {
            const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", #name);
        }
    })
}
