//! A function-calling agent, written as a workflow: the model answers or asks for tools; the
//! tools run in parallel; their results go back to the model; and so on until it answers, or
//! until the iteration limit, which is an error, never a quiet half-answer (unless
//! [`Agent::answer_on_last_turn`] asks the model for an answer without tools on its last turn,
//! which the answer then says: [`AgentAnswer::tools_cut_off`]).
//!
//! ```text
//! StartEvent<String> ─► begin ─► ModelTurn ─► think ─┬─► StopEvent<AgentAnswer>
//!                                    ▲               └─► ToolCallRequest × n ─► act (parallel)
//!                                    └──── observe (all n results in) ◄── ToolCallResult × n
//! ```
//!
//! Tools are typed Rust functions: their argument type gives the JSON schema the model sees,
//! and the arguments the model writes are validated and deserialized before the function runs.
//!
//! ```
//! use std::sync::Arc;
//! use serde::Deserialize;
//! use tidewater::prelude::*;
//! use tidewater_llm::agent::{Agent, Tool};
//! use tidewater_llm::schema::{JsonSchema, ObjectSchema};
//! use tidewater_llm::{MockLlm, ToolCall};
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! impl JsonSchema for Add {
//!     fn json_schema() -> serde_json::Value {
//!         ObjectSchema::new().field::<i64>("a", "").field::<i64>("b", "").build()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let add = Tool::sync("add", "Adds two integers", |x: Add| Ok::<_, String>(x.a + x.b));
//! let llm = MockLlm::new()
//!     .tool_calls(vec![ToolCall::new("1", "add", r#"{"a": 2, "b": 3}"#)])
//!     .reply("2 + 3 = 5");
//! let answer = Agent::new(Arc::new(llm.clone()), vec![add]).run("What is 2 + 3?".into()).await.unwrap();
//! assert_eq!(answer.text, "2 + 3 = 5");
//! assert_eq!(answer.model_calls, 2);
//! // The tool's result went back to the model:
//! assert_eq!(llm.requests()[1].messages.last().unwrap().content, "5");
//! # }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tidewater::prelude::*;

use crate::error::LlmError;
use crate::llm::Llm;
use crate::schema::{self, JsonSchema};
use crate::types::{ChatRequest, Message, ToolCall, ToolChoice, ToolSpec, Usage};

type ToolFn = dyn Fn(Value) -> BoxFuture<'static, Result<String, String>> + Send + Sync;

/// A tool the model may call: a typed Rust function with a name and a description.
#[derive(Clone)]
pub struct Tool {
    spec: ToolSpec,
    run: Arc<ToolFn>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.spec.name)
            .finish()
    }
}

fn output_text<O: Serialize>(output: &O) -> Result<String, String> {
    match serde_json::to_value(output) {
        Ok(Value::String(s)) => Ok(s),
        Ok(other) => Ok(other.to_string()),
        Err(e) => Err(format!("the tool's output cannot be serialized: {e}")),
    }
}

impl Tool {
    /// A tool from an async function of its typed arguments. What it returns is sent to the
    /// model as JSON text (a string as is); an `Err` is sent as `error: <message>`, so the
    /// model can react.
    pub fn new<A, O, E, F, Fut>(name: &str, description: &str, f: F) -> Tool
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize,
        E: Display,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let run = move |args: Value| -> BoxFuture<'static, Result<String, String>> {
            match serde_json::from_value::<A>(args) {
                Ok(args) => {
                    let fut = f(args);
                    Box::pin(async move {
                        match fut.await {
                            Ok(output) => output_text(&output),
                            Err(e) => Err(e.to_string()),
                        }
                    })
                }
                Err(e) => Box::pin(async move { Err(format!("bad arguments: {e}")) }),
            }
        };
        Tool {
            spec: ToolSpec {
                name: name.to_string(),
                description: description.to_string(),
                parameters: A::json_schema(),
            },
            run: Arc::new(run),
        }
    }

    /// A tool from a plain (non-async) function.
    pub fn sync<A, O, E, F>(name: &str, description: &str, f: F) -> Tool
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(A) -> Result<O, E> + Send + Sync + 'static,
    {
        Tool::new(name, description, move |args: A| {
            std::future::ready(f(args))
        })
    }

    /// What the model is told about the tool.
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    /// Runs the tool on the arguments the model wrote: parses them, validates them against
    /// the schema, deserializes them and calls the function.
    ///
    /// # Errors
    /// A message for the model: bad JSON, the schema violations, or the tool's own error.
    pub async fn call(&self, arguments: &str) -> Result<String, String> {
        let text = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("the arguments are not valid JSON: {e}"))?;
        if let Err(errors) = schema::validate(&self.spec.parameters, &value) {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(format!("bad arguments: {}", list.join("; ")));
        }
        (self.run)(value).await
    }
}

/// The tool whose call the text only starts (`functions.NAME:` with no parsable arguments),
/// when it is an offered tool and the text is not a call already.
/// What the agent says to the model on its last turn ([`Agent::answer_on_last_turn`]).
const LAST_TURN: &str =
    "Answer the question now from the tool results above, without calling any tool.";

/// How a server that leaks a tool call as text starts it.
const LEAK_PREFIX: &str = "functions.";

fn leaked_call(text: &str, offered: &[ToolSpec]) -> Option<String> {
    let rest = text.trim().strip_prefix(LEAK_PREFIX)?;
    let name = rest.split(':').next().unwrap_or(rest).trim();
    let is_offered = offered.iter().any(|t| t.name == name);
    (is_offered && ToolCall::from_text(text, offered).is_empty()).then(|| name.to_string())
}

/// Why an agent run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The model still wanted tools after its last allowed turn.
    #[error("the agent reached its limit of {limit} model turns without a final answer (it still wanted: {})", .wanted.join(", "))]
    MaxIterations {
        /// The limit.
        limit: u32,
        /// The tools the model asked for in its last turn.
        wanted: Vec<String>,
    },
    /// A model call failed.
    #[error("a model call failed")]
    Llm(#[from] LlmError),
}

impl AgentError {
    /// Finds the agent's error inside a failed run's error.
    ///
    /// ```
    /// # use tidewater_llm::agent::AgentError;
    /// # use tidewater::WorkflowError;
    /// fn explain(err: &WorkflowError) -> String {
    ///     match AgentError::of(err) {
    ///         Some(AgentError::MaxIterations { limit, .. }) => format!("gave up after {limit} turns"),
    ///         _ => err.to_string(),
    ///     }
    /// }
    /// # assert_eq!(explain(&WorkflowError::Cancelled), "the run was cancelled");
    /// ```
    pub fn of(error: &WorkflowError) -> Option<&AgentError> {
        let mut source = std::error::Error::source(error);
        while let Some(e) = source {
            if let Some(agent) = e.downcast_ref::<AgentError>() {
                return Some(agent);
            }
            source = e.source();
        }
        None
    }
}

/// Carries an [`AgentError`] out of a step so that [`AgentError::of`] finds it.
///
/// Why: the core wraps a step's error in a type whose `source()` skips the error itself and
/// returns the error's own source; this wrapper makes the agent error that source. Harmless
/// once the core exposes the step's error directly (`of` walks the whole chain).
#[derive(Debug)]
struct Reported(AgentError);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Reported {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl<E: Into<AgentError>> From<E> for Reported {
    fn from(error: E) -> Reported {
        Reported(error.into())
    }
}

/// The agent's final answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentAnswer {
    /// The model's answer.
    pub text: String,
    /// How many times the model was called (a turn whose call leaked as text and was asked
    /// again counts twice).
    pub model_calls: u32,
    /// The model was asked to answer without tools because its last allowed turn had come
    /// ([`Agent::answer_on_last_turn`]): the answer rests on the tool results it had by then.
    pub tools_cut_off: bool,
    /// Every tool call made, with its result, in order.
    pub tool_calls: Vec<ToolCallResult>,
    /// Tokens used over all model calls, when the server reported usage for every one of
    /// them; `None` when it did not (never made-up zeros).
    pub usage: Option<Usage>,
    /// When the server reported usage for some model calls but not all (llama-cpp-python
    /// reports none in streams): the tokens of those that did. `None` otherwise.
    pub partial_usage: Option<Usage>,
    /// How many model calls reported no usage.
    pub unreported_calls: u32,
    /// The whole conversation.
    pub messages: Vec<Message>,
}

impl AgentAnswer {
    /// Did the model answer without calling any tool? Then the answer rests on the model's
    /// own knowledge only, which an agent built on tools should say plainly.
    pub fn used_no_tool(&self) -> bool {
        self.tool_calls.is_empty()
    }

    /// The usage line: `"N tokens in, M out"`; when only some calls reported usage, the same
    /// over those calls, saying how many; `"usage not reported by the server"` when none did.
    ///
    /// ```
    /// # use tidewater_llm::{Usage, agent::AgentAnswer};
    /// let mut answer = AgentAnswer {
    ///     text: String::new(), model_calls: 3, tools_cut_off: false, tool_calls: vec![],
    ///     usage: None, partial_usage: None, unreported_calls: 3, messages: vec![],
    /// };
    /// assert_eq!(answer.usage_line(), "usage not reported by the server");
    /// answer.partial_usage = Some(Usage { input_tokens: 80, output_tokens: 9 });
    /// answer.unreported_calls = 1;
    /// assert_eq!(
    ///     answer.usage_line(),
    ///     "80 tokens in, 9 out over 2 of 3 model calls (the server reported no usage for the other)"
    /// );
    /// answer.usage = Some(Usage { input_tokens: 120, output_tokens: 14 });
    /// answer.partial_usage = None;
    /// answer.unreported_calls = 0;
    /// assert_eq!(answer.usage_line(), "120 tokens in, 14 out");
    /// ```
    pub fn usage_line(&self) -> String {
        match (self.usage, self.partial_usage) {
            (Some(u), _) => format!("{} tokens in, {} out", u.input_tokens, u.output_tokens),
            (None, Some(u)) => {
                let reported = self.model_calls.saturating_sub(self.unreported_calls);
                let others = if self.unreported_calls == 1 {
                    "the other"
                } else {
                    "the others"
                };
                format!(
                    "{} tokens in, {} out over {reported} of {} model calls (the server \
                     reported no usage for {others})",
                    u.input_tokens, u.output_tokens, self.model_calls
                )
            }
            (None, None) => "usage not reported by the server".to_string(),
        }
    }
}

/// Asks the model for its next move (internal to the agent's graph).
#[derive(Debug, Clone, Event)]
pub struct ModelTurn;

/// One tool call to run; also written to the run's stream when it starts.
#[derive(Debug, Clone, Event)]
pub struct ToolCallRequest {
    /// Its position among the calls of one model turn.
    pub index: usize,
    /// The call.
    pub call: ToolCall,
}

/// The result of one tool call; also written to the run's stream.
#[derive(Debug, Clone, PartialEq, Event)]
pub struct ToolCallResult {
    /// Its position among the calls of one model turn.
    pub index: usize,
    /// The call.
    pub call: ToolCall,
    /// What goes back to the model.
    pub content: String,
    /// Whether the tool failed (or did not exist, or got bad arguments).
    pub is_error: bool,
}

/// A piece of the model's text, written to the run's stream as it is generated.
#[derive(Debug, Clone, Event)]
pub struct AgentToken(pub String);

/// The agent's per-run state.
#[derive(Debug, Default)]
pub struct AgentState {
    messages: Vec<Message>,
    /// Model turns (`think` steps) so far.
    turns: u32,
    model_calls: u32,
    usage: Usage,
    /// Model calls whose answer carried no usage.
    unreported: u32,
    pending: Vec<Option<ToolCallResult>>,
    done: Vec<ToolCallResult>,
}

/// A function-calling agent. Run it like any workflow: `agent.run(question).await`, or
/// `agent.start(question)` to watch [`AgentToken`]s and tool calls on the stream.
pub struct Agent {
    llm: Arc<dyn Llm>,
    tools: Vec<Tool>,
    system: Option<String>,
    max_iterations: u32,
    first_choice: ToolChoice,
    max_tokens: Option<u32>,
    answer_on_last_turn: bool,
}

impl Agent {
    /// The default limit of model calls per run.
    pub const DEFAULT_MAX_ITERATIONS: u32 = 10;

    /// An agent asking `llm`, with these tools.
    pub fn new(llm: Arc<dyn Llm>, tools: Vec<Tool>) -> Agent {
        Agent {
            llm,
            tools,
            system: None,
            max_iterations: Agent::DEFAULT_MAX_ITERATIONS,
            first_choice: ToolChoice::Auto,
            max_tokens: None,
            answer_on_last_turn: false,
        }
    }

    /// The system prompt.
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Agent {
        self.system = Some(prompt.into());
        self
    }

    /// The most model turns one run may take; a run that needs more fails with
    /// [`AgentError::MaxIterations`]. A turn is one answer of the model: when a server leaks a
    /// tool call as text (`functions.get_weather:`) and the agent asks again for the call, the
    /// two calls are one turn (both count in [`AgentAnswer::model_calls`]).
    pub fn max_iterations(mut self, limit: u32) -> Agent {
        self.max_iterations = limit.max(1);
        self
    }

    /// On the last allowed turn (once some tool has answered), ask the model to answer from
    /// the tool results it has instead of asking for more (small local models often repeat a
    /// call they already made): the request sends `tool_choice: none` and ends with a user
    /// message saying so, which stays in the conversation. The answer says so
    /// ([`AgentAnswer::tools_cut_off`]). Off by default:
    /// then a model that still wants tools on its last turn fails the run with
    /// [`AgentError::MaxIterations`]; that is also what happens when the server ignores `none`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tidewater_llm::{MockLlm, agent::Agent};
    /// let agent = Agent::new(Arc::new(MockLlm::new()), vec![])
    ///     .max_iterations(6)
    ///     .answer_on_last_turn(true);
    /// # let _ = agent;
    /// ```
    pub fn answer_on_last_turn(mut self, enabled: bool) -> Agent {
        self.answer_on_last_turn = enabled;
        self
    }

    /// The `tool_choice` of the first model call: [`ToolChoice::Auto`] (the default: the
    /// model decides), [`ToolChoice::Required`] (it must call some tool) or
    /// [`ToolChoice::Tool`] (it must call this one). Later calls send `Auto`, so the model can
    /// answer once it has the tools' results.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tidewater_llm::{MockLlm, ToolChoice, agent::Agent};
    /// let agent = Agent::new(Arc::new(MockLlm::new()), vec![]).tool_choice(ToolChoice::Required);
    /// # let _ = agent;
    /// ```
    pub fn tool_choice(mut self, first_turn: ToolChoice) -> Agent {
        self.first_choice = first_turn;
        self
    }

    /// The most tokens each model call may generate.
    pub fn max_tokens(mut self, limit: u32) -> Agent {
        self.max_tokens = Some(limit);
        self
    }

    /// The tools' specs, as sent to the model.
    pub fn tool_specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.spec.clone()).collect()
    }
}

#[workflow(state = AgentState)]
impl Agent {
    /// Opens the conversation.
    #[step]
    async fn begin(&self, ctx: &Context<Self>, ev: StartEvent<String>) -> ModelTurn {
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::system(system.clone()));
        }
        messages.push(Message::user(ev.into_inner()));
        ctx.update_state(|s| s.messages = messages);
        ModelTurn
    }

    /// Asks the model: it answers (the end) or asks for tools (run them all at once).
    #[step]
    async fn think(
        &self,
        ctx: &Context<Self>,
        _ev: ModelTurn,
    ) -> Result<Either<Vec<ToolCallRequest>, StopEvent<AgentAnswer>>, Reported> {
        let specs = self.tool_specs();
        let (messages, turn, cut_off) = ctx.update_state(|s| {
            s.model_calls += 1;
            s.turns += 1;
            let cut_off =
                self.answer_on_last_turn && s.turns >= self.max_iterations && !s.done.is_empty();
            if cut_off {
                // Small models imitate the calls in the conversation even when told `none`;
                // a plain request in words is what they follow.
                s.messages.push(Message::user(LAST_TURN));
            }
            (s.messages.clone(), s.turns, cut_off)
        });
        let choice = if cut_off {
            ToolChoice::None
        } else if turn == 1 {
            self.first_choice.clone()
        } else {
            ToolChoice::Auto
        };
        let mut request = ChatRequest::new(messages).tools(specs.clone());
        if !specs.is_empty() {
            request = request.tool_choice(choice);
        }
        if let Some(limit) = self.max_tokens {
            request = request.max_tokens(limit);
        }
        // Text that may be a tool call leaked as text (`functions.get_weather:`) is held back
        // until it is known not to be one.
        let mut held = String::new();
        let mut passing = false;
        let mut answer = self
            .llm
            .chat_stream(request.clone())
            .await?
            .for_each_text(|text| {
                if !passing {
                    held.push_str(text);
                    let start = held.trim_start();
                    if LEAK_PREFIX.starts_with(start) || start.starts_with(LEAK_PREFIX) {
                        return;
                    }
                    passing = true;
                    ctx.write_event_to_stream(AgentToken(std::mem::take(&mut held)));
                } else {
                    ctx.write_event_to_stream(AgentToken(text.to_string()));
                }
            })
            .await?;
        let leaked = leaked_call(answer.content(), &specs);
        if leaked.is_none() && !held.is_empty() && answer.calls().is_empty() {
            let calls = ToolCall::from_text(answer.content(), &specs);
            if calls.is_empty() {
                ctx.write_event_to_stream(AgentToken(held));
            }
        }
        if let (true, Some(name)) = (cut_off, &leaked) {
            // Asked for no tools, the server still leaked a call: the model still wants one.
            return Err(Reported(AgentError::MaxIterations {
                limit: self.max_iterations,
                wanted: vec![name.clone()],
            }));
        }
        if let Some(name) = leaked {
            // `functions.get_weather:` and nothing usable after it: the server leaked the
            // start of a call as text. Ask again, naming the tool, so it must write the call.
            tracing::warn!(tool = %name, "the model leaked a tool call as text; asking again for it");
            ctx.update_state(|s| {
                s.model_calls += 1;
                match answer.usage {
                    Some(usage) => s.usage += usage,
                    None => s.unreported += 1,
                }
            });
            answer = self
                .llm
                .chat_stream(request.tool_choice(ToolChoice::Tool(name)))
                .await?
                .into_response()
                .await?;
        }
        if answer.calls().is_empty() {
            // Some servers write the call as JSON text instead of `tool_calls`.
            let calls = ToolCall::from_text(answer.content(), &specs);
            if !calls.is_empty() {
                tracing::info!(
                    calls = calls.len(),
                    "the model wrote its tool calls as text; reading them as calls"
                );
                answer.message = Message::assistant_tool_calls("", calls);
            }
        }
        let calls = answer.calls().to_vec();
        let model_calls = ctx.update_state(|s| {
            s.messages.push(answer.message.clone());
            match answer.usage {
                Some(usage) => s.usage += usage,
                None => s.unreported += 1,
            }
            s.pending = vec![None; calls.len()];
            s.model_calls
        });
        if calls.is_empty() {
            if cut_off {
                tracing::warn!(
                    turn,
                    "the model answered without tools: its last turn had come"
                );
            }
            let answer = ctx.update_state(|s| AgentAnswer {
                text: answer.message.content,
                model_calls,
                tools_cut_off: cut_off,
                tool_calls: std::mem::take(&mut s.done),
                usage: (s.unreported == 0).then_some(s.usage),
                partial_usage: (s.unreported > 0 && s.unreported < model_calls).then_some(s.usage),
                unreported_calls: s.unreported,
                messages: std::mem::take(&mut s.messages),
            });
            if answer.used_no_tool() && !self.tools.is_empty() {
                tracing::warn!("the model answered without using any tool");
            }
            return Ok(Either::Right(StopEvent(answer)));
        }
        if turn >= self.max_iterations {
            return Err(Reported(AgentError::MaxIterations {
                limit: self.max_iterations,
                wanted: calls.into_iter().map(|c| c.name).collect(),
            }));
        }
        let requests: Vec<ToolCallRequest> = calls
            .into_iter()
            .enumerate()
            .map(|(index, call)| ToolCallRequest { index, call })
            .collect();
        for request in &requests {
            ctx.write_event_to_stream(request.clone());
        }
        Ok(Either::Left(requests))
    }

    /// Runs one tool call; several run at once.
    #[step(num_workers = 8)]
    async fn act(&self, ctx: &Context<Self>, ev: ToolCallRequest) -> ToolCallResult {
        let outcome = match self.tools.iter().find(|t| t.spec.name == ev.call.name) {
            Some(tool) => tool.call(&ev.call.arguments).await,
            None => Err(format!(
                "there is no tool `{}`; the tools are: {}",
                ev.call.name,
                self.tools
                    .iter()
                    .map(|t| t.spec.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        let (content, is_error) = match outcome {
            Ok(content) => (content, false),
            Err(message) => (format!("error: {message}"), true),
        };
        let result = ToolCallResult {
            index: ev.index,
            call: ev.call,
            content,
            is_error,
        };
        ctx.write_event_to_stream(result.clone());
        result
    }

    /// Collects the turn's tool results; once all are in, in the model's order, asks the
    /// model again.
    #[step]
    async fn observe(&self, ctx: &Context<Self>, ev: ToolCallResult) -> Option<ModelTurn> {
        ctx.update_state(|s| {
            let index = ev.index;
            if let Some(slot) = s.pending.get_mut(index) {
                *slot = Some(ev);
            }
            if s.pending.iter().any(Option::is_none) {
                return None;
            }
            for result in std::mem::take(&mut s.pending).into_iter().flatten() {
                s.messages.push(Message::tool_result(
                    result.call.id.clone(),
                    result.content.clone(),
                ));
                s.done.push(result);
            }
            Some(ModelTurn)
        })
    }
}
