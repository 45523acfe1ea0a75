//! Language models for `tidewater` steps: one [`Llm`] trait, a client for every
//! OpenAI-compatible server ([`OpenAiClient`]: OpenAI, Ollama, vLLM, llama.cpp), a scriptable
//! [`MockLlm`] for offline tests, a function-calling [`agent`] written as a workflow, structured
//! output checked against a JSON [`schema`], and in-memory [`retrieval`] for RAG.
//!
//! ```
//! use std::sync::Arc;
//! use tidewater::prelude::*;
//! use tidewater_llm::{Llm, LlmExt, MockLlm};
//!
//! struct Haiku {
//!     llm: Arc<dyn Llm>,
//! }
//!
//! #[workflow]
//! impl Haiku {
//!     #[step]
//!     async fn write(&self, ev: StartEvent<String>) -> Result<StopEvent<String>, tidewater_llm::LlmError> {
//!         let poem = self.llm.complete(format!("A haiku about {}", ev.0)).await?;
//!         Ok(StopEvent(poem))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mock = MockLlm::new().reply("Rust never sleeps / the borrow checker watches / memory stays safe");
//! let poem = Haiku { llm: Arc::new(mock.clone()) }.run("rust".into()).await.unwrap();
//! assert!(poem.starts_with("Rust never sleeps"));
//! mock.assert_last_user_message("A haiku about rust");
//! # }
//! ```
//!
//! The guide chapter is `docs/llm.md` of the repository.

mod error;
mod http;
mod llm;
mod mock;
mod openai;
mod sse;
mod telemetry;
mod types;

pub mod agent;
pub mod retrieval;
pub mod schema;

pub use error::{LlmError, Result};
pub use llm::{ChatStream, Llm, LlmExt, StreamEvent};
pub use mock::MockLlm;
pub use openai::{DEFAULT_BASE_URL, DEFAULT_MODEL, OpenAiClient, OpenAiEmbedder, RetryPolicy};
pub use types::{
    ChatRequest, ChatResponse, FinishReason, JsonMode, JsonOutput, Message, Role, ToolCall,
    ToolChoice, ToolSpec, Usage,
};

pub use serde_json;
pub use tidewater;

/// What a workflow that talks to a model needs, free of clashes with
/// [`tidewater::prelude`]: both glob imports together compile, and `Result` and `RetryPolicy`
/// keep meaning the standard `Result` and tidewater's step retry policy (the HTTP client's
/// [`RetryPolicy`] and this crate's [`Result`] are left out).
///
/// ```
/// use tidewater::prelude::*;
/// use tidewater_llm::prelude::*;
///
/// let retry: RetryPolicy = RetryPolicy::exponential(3); // tidewater's, for `#[step(retry = ..)]`
/// let parsed: Result<u8, std::num::ParseIntError> = "7".parse(); // std's
/// let model = MockLlm::new();
/// # let _ = (retry, parsed, model);
/// ```
pub mod prelude {
    pub use crate::{
        ChatRequest, ChatResponse, Llm, LlmError, LlmExt, Message, MockLlm, OpenAiClient, Role,
        StreamEvent, model_from_env_or,
    };
}

use std::sync::Arc;

/// Does the environment name a real model? True when `OPENAI_API_KEY` or `OPENAI_BASE_URL`
/// is set (a local server such as Ollama needs no key).
pub fn env_names_a_model() -> bool {
    ["OPENAI_API_KEY", "OPENAI_BASE_URL"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
}

/// The model the environment names ([`OpenAiClient::from_env`]), or, when it names none, the
/// offline stand-in `stand_in()`, announcing the choice on stderr either way. The examples
/// start with it, so they run on a fresh machine and on a real model alike.
///
/// ```
/// use tidewater_llm::{MockLlm, model_from_env_or};
/// # // SAFETY: doc tests run as their own process, with no other thread reading the environment.
/// # unsafe { std::env::remove_var("OPENAI_API_KEY"); std::env::remove_var("OPENAI_BASE_URL"); }
/// let llm = model_from_env_or(|| MockLlm::named("offline-echo").reply("hi")).unwrap();
/// assert_eq!(llm.model(), "offline-echo");
/// ```
///
/// # Errors
/// When the environment names a model but the configuration is broken (a bad URL, https
/// without the `tls` feature): a loud failure, never a silent fall-back to the stand-in.
pub fn model_from_env_or<L: Llm + 'static>(stand_in: impl FnOnce() -> L) -> Result<Arc<dyn Llm>> {
    if env_names_a_model() {
        let client = OpenAiClient::from_env()?;
        eprintln!("using model `{}` at {}", client.model(), client.url());
        Ok(Arc::new(client))
    } else {
        let llm = stand_in();
        eprintln!(
            "no OPENAI_API_KEY or OPENAI_BASE_URL set: using the offline stand-in model `{}`",
            llm.model()
        );
        Ok(Arc::new(llm))
    }
}
