//! LLM clients for `workflow-core` steps. (Thin for now: the client, mock and agent come next.)

pub use workflow_core;
