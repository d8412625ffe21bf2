//! `POST /v1/completions` and `POST /v1/chat/completions`.
//!
//! A request is parsed ([`super::openai`]), validated
//! ([`super::validation`]), tokenized on the blocking pool, checked against
//! the context length, given the checkpoint's sampling defaults, and
//! submitted to the scheduler — which may refuse it at once (429). Every
//! error up to here is a plain HTTP error. Then either the whole answer is
//! collected into one JSON response, or it is streamed as server-sent
//! events ([`super::stream`]).
//!
//! Cancellation is by drop: when the client disconnects, hyper drops the
//! handler future (non-streaming) or the response body (streaming), the
//! scheduler [`Handle`] goes with it, and the worker stops at the next
//! token.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{
    AppState,
    choices::{Choices, finish_reason},
    error::{ApiError, bad_json, to_api_error, worker_vanished},
    openai::{
        AssistantMessage, ChatChoice, ChatRequest, ChatResponse, CompletionChoice,
        CompletionRequest, CompletionResponse, Usage,
    },
    stream::{self, Kind},
    tools::{ToolCallParser, ToolOutput},
    validation::{self, DEFAULT_COMPLETION_MAX_TOKENS, Input, Validated},
};
use crate::{
    engine::{Engine, EngineError, GenerateRequest, TokenLogprobs, grammar::Constraint},
    scheduler::{Event, Finish, Job},
};

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let Json(body) = body.map_err(bad_json)?;
    let req: CompletionRequest = validation::parse_body(body, validation::completion_fields())?;
    let request = validation::completion(req, &state.model_name)?;
    let id = random_id("cmpl");
    let (return_ids, streaming) = (request.return_token_ids, request.stream);
    let (include_usage, logprobs) = (request.include_usage, request.logprobs.is_some());
    let started = start(
        &state,
        request,
        &id,
        arrived,
        |_| DEFAULT_COMPLETION_MAX_TOKENS,
        false,
    )
    .await?;
    let created = crate::errors::unix_now();
    if streaming {
        return Ok(started.stream(
            &state,
            Kind::Completion,
            id,
            created,
            include_usage,
            return_ids,
            logprobs,
            None,
        ));
    }
    let (engine, prompt) = (Arc::clone(&started.engine), started.prompt.clone());
    let out = started.collect().await?;
    let usage = usage(&prompt, &out);
    let prompt_ids = return_ids.then(|| prompt.clone());
    let choices = out
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = match logprobs {
                true => Some(
                    super::logprobs::completion(engine.tokenizer(), &c.logprobs, 0)
                        .map_err(|e| ApiError::Internal(e.to_string()))?
                        .0,
                ),
                false => None,
            };
            Ok(CompletionChoice {
                index: i as u32,
                text: c.text,
                logprobs,
                finish_reason: c.finish.as_str(),
                prompt_token_ids: prompt_ids.clone(),
                token_ids: return_ids.then_some(c.tokens),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
        created,
        model: state.model_name.clone(),
        usage,
        choices,
        prompt_token_ids: prompt_ids,
    })
    .into_response())
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let Json(body) = body.map_err(bad_json)?;
    let req: ChatRequest = validation::parse_body(body, validation::chat_fields())?;
    let request = validation::chat(req, &state.model_name)?;
    let id = random_id("chatcmpl");
    let (return_ids, streaming) = (request.return_token_ids, request.stream);
    let (include_usage, logprobs) = (request.include_usage, request.logprobs.is_some());
    // Chat without `max_tokens`: the checkpoint's `max_new_tokens`, else the rest of the context
    // (vLLM's defaults).
    let engine = state.engine.get().cloned().ok_or(ApiError::ModelLoading)?;
    let configured = engine.generation_defaults().max_new_tokens;
    let tools = match &request.tools {
        Some(t) => t.output(tool_call_parser(&state, &engine))?,
        None => None,
    };
    let keep_special = tools.as_ref().is_some_and(ToolOutput::keep_special_tokens);
    let started = start(
        &state,
        request,
        &id,
        arrived,
        |room| configured.unwrap_or(room),
        keep_special,
    )
    .await?;
    let created = crate::errors::unix_now();
    if streaming {
        return Ok(started.stream(
            &state,
            Kind::Chat,
            id,
            created,
            include_usage,
            return_ids,
            logprobs,
            tools,
        ));
    }
    let prompt = started.prompt.clone();
    let out = started.collect().await?;
    let usage = usage(&prompt, &out);
    let choices = out
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = match logprobs {
                true => Some(
                    super::logprobs::chat(engine.tokenizer(), &c.logprobs)
                        .map_err(|e| ApiError::Internal(e.to_string()))?,
                ),
                false => None,
            };
            let (content, tool_calls, called) = match &tools {
                None => (Some(c.text), Vec::new(), false),
                Some(tools) => {
                    let mut parse = tools.stream();
                    let mut pieces = parse.push(&c.text);
                    pieces.extend(parse.finish());
                    let (content, calls) = super::tools::gather(pieces);
                    (content, calls, parse.called())
                }
            };
            Ok(ChatChoice {
                index: i as u32,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                logprobs,
                finish_reason: finish_reason(c.finish, called),
                token_ids: return_ids.then_some(c.tokens),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created,
        model: state.model_name.clone(),
        usage,
        prompt_token_ids: return_ids.then_some(prompt),
        choices,
    })
    .into_response())
}

/// The tool-call format for `tool_choice: auto`: the flag's, else the one
/// the chat template teaches.
fn tool_call_parser(state: &AppState, engine: &Engine) -> Option<ToolCallParser> {
    state.tool_call_parser.or_else(|| {
        engine
            .chat_template_source()
            .and_then(ToolCallParser::detect)
    })
}

/// A request admitted by the scheduler, all its choices submitted.
struct Started {
    choices: Choices,
    engine: Arc<Engine>,
    prompt: Vec<u32>,
    /// The request field the prompt came from, named by errors.
    param: &'static str,
}

impl Started {
    /// Answers with server-sent events; dropping the body cancels.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        self,
        state: &AppState,
        kind: Kind,
        id: String,
        created: u64,
        include_usage: bool,
        return_token_ids: bool,
        logprobs: bool,
        tools: Option<ToolOutput>,
    ) -> Response {
        stream::respond(stream::Stream {
            kind,
            id,
            created,
            model: state.model_name.clone(),
            choices: self.choices,
            engine: self.engine,
            prompt: self.prompt,
            include_usage,
            return_token_ids,
            logprobs,
            tools,
            param: self.param,
        })
    }

    /// Gathers every choice's whole generation from the events.
    async fn collect(mut self) -> Result<Vec<Outcome>, ApiError> {
        let mut out: Vec<Outcome> = (0..self.choices.n)
            .map(|_| Outcome {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                text: String::new(),
                finish: Finish::Length,
                cached_tokens: 0,
            })
            .collect();
        let mut open = self.choices.n;
        while open > 0 {
            match self.choices.next().await {
                Some((
                    i,
                    Event::Text {
                        text,
                        tokens,
                        logprobs,
                    },
                )) => {
                    out[i].text.push_str(&text);
                    out[i].tokens.extend(tokens);
                    out[i].logprobs.extend(logprobs);
                }
                Some((
                    i,
                    Event::Finished {
                        reason,
                        cached_tokens,
                        ..
                    },
                )) => {
                    out[i].finish = reason;
                    out[i].cached_tokens = cached_tokens;
                    open -= 1;
                }
                Some((_, Event::Failed(e))) => return Err(to_api_error(e, self.param)),
                None => return Err(worker_vanished()),
            }
        }
        Ok(out)
    }
}

/// Tokenizes, checks and submits; every failure is an HTTP error.
async fn start(
    state: &AppState,
    request: Validated,
    id: &str,
    arrived: Instant,
    default_max_tokens: impl FnOnce(usize) -> usize,
    keep_special_tokens: bool,
) -> Result<Started, ApiError> {
    let engine = state.engine.get().cloned().ok_or(ApiError::ModelLoading)?;
    let param = request.input.param();
    let prompt = {
        let engine = Arc::clone(&engine);
        let input = request.input;
        match tokio::task::spawn_blocking(move || encode(&engine, input)).await {
            Ok(result) => result.map_err(|e| to_api_error(e, param))?,
            Err(e) => return Err(ApiError::Internal(format!("tokenization task failed: {e}"))),
        }
    };
    let max_model_len = engine.max_model_len();
    validation::check_prompt(&prompt, param, max_model_len, engine.spec().vocab_size)?;
    let room = max_model_len - prompt.len();
    let max_new_tokens = request
        .max_tokens
        .unwrap_or_else(|| default_max_tokens(room))
        .min(room);
    let sampling = engine.generation_defaults().resolve(&request.sampling);
    // One matcher per choice, compiled off the async threads.
    let constraints: Vec<Option<Box<Constraint>>> = match request.constraint.clone() {
        None => (0..request.n).map(|_| None).collect(),
        Some((spec, field)) => {
            let (engine, n) = (Arc::clone(&engine), request.n);
            let compiled = tokio::task::spawn_blocking(move || {
                (0..n)
                    .map(|_| engine.compile_constraint(&spec).map(|c| Some(Box::new(c))))
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|e| ApiError::Internal(format!("grammar compilation task failed: {e}")))?;
            compiled.map_err(|e| ApiError::invalid(format!("`{field}`: {e}"), Some(field)))?
        }
    };
    let job = |choice: usize, constraint: Option<Box<Constraint>>| {
        let mut sampling = sampling.clone();
        // vLLM's rule: choice i of a seeded request samples with `seed + i`, so the choices
        // differ from each other and each is repeatable.
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(choice as u64));
        Job {
            id: if choice == 0 {
                id.to_owned()
            } else {
                format!("{id}-{choice}")
            },
            request: GenerateRequest {
                prompt: prompt.clone(),
                max_new_tokens,
                sampling,
                ignore_eos: request.ignore_eos,
                logprobs: request.logprobs,
                constraint,
            },
            stop: request.stop.clone(),
            keep_special_tokens,
            arrived,
        }
    };
    let submit = |job: Job| {
        state
            .scheduler
            .submit(job)
            .map_err(|e| match ApiError::from(e) {
                ApiError::InvalidRequest { message, .. } => ApiError::invalid(message, Some(param)),
                other => other,
            })
    };
    let mut constraints = constraints.into_iter().enumerate();
    let (_, constraint) = constraints.next().expect("n >= 1");
    let mut first = submit(job(0, constraint))?;
    let mut handles = Vec::with_capacity(request.n);
    if request.n > 1 {
        // The other choices start once the first has computed the prompt (its first event
        // comes after its first sampled token): its KV blocks are then in the prefix cache,
        // and n choices cost one prefill plus n decodes instead of n prefills. Submitted
        // together, they would all be prefilled in the same step.
        let early = first.next().await;
        handles.push((first, early));
        for (choice, constraint) in constraints {
            handles.push((submit(job(choice, constraint))?, None));
        }
    } else {
        handles.push((first, None));
    }
    Ok(Started {
        choices: Choices::new(handles),
        engine,
        prompt,
        param,
    })
}

/// One finished choice.
struct Outcome {
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
    text: String,
    finish: Finish,
    cached_tokens: usize,
}

/// The prompt counts once; the choices' tokens add up. Cached tokens are
/// the first choice's: the others reuse its blocks by design.
fn usage(prompt: &[u32], choices: &[Outcome]) -> Usage {
    Usage::new(
        prompt.len(),
        choices.iter().map(|c| c.tokens.len()).sum(),
        choices.first().map_or(0, |c| c.cached_tokens),
    )
}

fn encode(engine: &Engine, input: Input) -> Result<Vec<u32>, EngineError> {
    match input {
        Input::Tokens(ids) => Ok(ids),
        // As vLLM: completion prompts get the tokenizer's special tokens.
        Input::Text(text) => Ok(engine.tokenizer().encode(&text, true)?),
        Input::Chat { messages, tools } => engine.encode_chat(&messages, tools.as_ref(), true),
    }
}

/// `<prefix>-` and 32 hex digits, unique per process and unpredictable
/// enough for log correlation (not a secret).
fn random_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = RandomState::new().hash_one((n, SystemTime::now()));
    let b = RandomState::new().hash_one(n);
    format!("{prefix}-{a:016x}{b:016x}")
}
