//! `ponder serve --run runs/NAME`: the trained reasoner behind the OpenAI API.
//!
//! - `POST /v1/chat/completions`: the last user message is the problem; the model thinks in a
//!   hidden chain of thought, searching as `reasoning_effort` (low, medium, high: a searcher
//!   and budget from `[serve.efforts]`) asks, and returns only the answer. Usage reports the
//!   hidden tokens as `completion_tokens_details.reasoning_tokens`. `n`, `seed`,
//!   `max_completion_tokens`, `temperature`, streaming (server-sent events).
//! - `POST /v1/completions`: plain continuations with `stop`, `n`, `seed`, `logprobs`,
//!   `echo` — what ponder's remote policy (and any OpenAI-style client) needs.
//! - `POST /v1/score`: the run's reward model (the protocol of ponder's remote reward kind).
//! - `GET /v1/models`, `GET /metrics` (Prometheus).
//!
//! Requests from concurrent clients are batched into the model (`batching.rs`). Limits: an
//! optional bearer token, body size, prompt and token limits, a concurrency limit with a
//! bounded queue (429 beyond it), a timeout (504). Every bad request gets the OpenAI error
//! object with a 4xx status; the server shuts down gracefully on Ctrl-C or SIGTERM.

pub mod batching;
pub mod metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::{GenRequest, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};
use ponder_reward::RewardModel;
use ponder_search::{Budget, SearchEnv, Searcher};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use self::batching::Batcher;
use self::metrics::Metrics;
use crate::config::{Layers, RunConfig, ServeSection};
use crate::registry::{Registry, RewardContext};

/// An OpenAI-style error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: Some(code),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

struct Effort {
    searcher: Box<dyn Searcher>,
    budget: usize,
}

/// Everything the handlers share.
pub struct AppState {
    model: String,
    task: Arc<dyn Task>,
    batcher: Batcher,
    tokenizer: Tokenizer,
    efforts: HashMap<String, Effort>,
    settings: ServeSection,
    api_key: Option<String>,
    metrics: Metrics,
    slots: Semaphore,
    waiting: AtomicU64,
    tokens_per_generation: usize,
    max_step_tokens: usize,
    max_trace_tokens: usize,
    next_seed: AtomicU64,
    next_id: AtomicU64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the run directory (its `config.toml`, with the environment's `PONDER_…` variables and
/// `overrides` as `key=value` on top) and builds the server state.
pub fn state_from_run(run_dir: &Path, registry: &Registry, overrides: &[String]) -> anyhow::Result<AppState> {
    let config: RunConfig = Layers::from_file(&run_dir.join("config.toml"))
        .and_then(|l| l.with_process_env().with_overrides(overrides).load(registry))
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    let task: Arc<dyn Task> = Arc::from(config.task.build(&())?);
    let policy_dir = ["rl", "init"]
        .iter()
        .map(|n| run_dir.join("policy").join(n))
        .find(|d| d.join("config.json").exists())
        .ok_or_else(|| anyhow::anyhow!("{} holds no trained policy: run its pipeline first", run_dir.display()))?;
    let (weights, tokenizer) = ponder_policy_init::hf::load_pretrained(&policy_dir)?;
    let reward: Arc<dyn RewardModel> = match config.reward.build(&RewardContext {
        task: task.clone(),
        run_dir: Some(run_dir.to_path_buf()),
    }) {
        Ok(r) => Arc::from(r),
        Err(e) => {
            eprintln!("ponder serve: no usable reward model ({e}); searches score answers with the task's verifier");
            Arc::new(ponder_reward::verifier::VerifierReward::new(
                task.clone(),
                Default::default(),
            ))
        }
    };
    let init = std::fs::read_to_string(run_dir.join("stages/init.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or(Value::Null);
    let max_trace = init["results"]["max_new_tokens"].as_u64().unwrap_or(256) as usize;
    let per_generation = init["results"]["eval"]["mean_trace_tokens"]
        .as_f64()
        .unwrap_or(max_trace as f64 / 2.0)
        .max(1.0) as usize;
    let mut efforts = HashMap::new();
    for (name, spec, budget) in &config.efforts {
        efforts.insert(
            name.clone(),
            Effort {
                searcher: spec.build(&())?,
                budget: *budget,
            },
        );
    }
    let settings = config.serve.clone();
    let api_key = match &settings.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| anyhow::anyhow!("serve.api_key_env: {var} is not set"))?),
        None => None,
    };
    let policy = Arc::new(TransformerPolicy::new(&weights, tokenizer.clone()));
    let batcher = Batcher::start(policy, reward, Duration::from_millis(settings.batch_window_ms));
    Ok(AppState {
        model: settings
            .model
            .clone()
            .unwrap_or_else(|| format!("ponder-{}", config.run.name)),
        task,
        batcher,
        tokenizer,
        efforts,
        slots: Semaphore::new(settings.concurrency.max(1)),
        settings,
        api_key,
        metrics: Metrics::default(),
        waiting: AtomicU64::new(0),
        tokens_per_generation: per_generation,
        max_step_tokens: max_trace,
        max_trace_tokens: max_trace,
        next_seed: AtomicU64::new(1),
        next_id: AtomicU64::new(1),
    })
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/score", post(score))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until Ctrl-C or SIGTERM; prints the bound address.
pub async fn serve(
    run_dir: &Path,
    registry: &Registry,
    overrides: &[String],
    host: &str,
    port: u16,
) -> anyhow::Result<()> {
    let state = Arc::new(state_from_run(run_dir, registry, overrides)?);
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    eprintln!("ponder: serving {} on http://{}", state.model, listener.local_addr()?);
    serve_on(listener, state, shutdown_signal()).await?;
    eprintln!("ponder: shut down");
    Ok(())
}

/// Serves on a bound listener until `shutdown` completes, then finishes the requests in flight.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    eprintln!("ponder: shutting down");
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "no such endpoint",
    )
}

/// Authentication, the concurrency limit with its queue, the timeout and the metrics around
/// one request.
async fn guarded<F, T>(state: &AppState, endpoint: &str, headers: &HeaderMap, work: F) -> Response
where
    F: std::future::Future<Output = Result<T, ApiError>>,
    T: IntoResponse,
{
    let started = Instant::now();
    let response = match authorise(state, headers) {
        Err(e) => e.into_response(),
        Ok(()) => {
            // A free slot at once; else a place in the queue, if there is one.
            let permit = match state.slots.try_acquire() {
                Ok(p) => Some(p),
                Err(_) => {
                    let queued = state.waiting.fetch_add(1, Ordering::SeqCst);
                    state.metrics.queued.fetch_add(1, Ordering::Relaxed);
                    let p = if queued as usize >= state.settings.queue {
                        None
                    } else {
                        state.slots.acquire().await.ok()
                    };
                    state.waiting.fetch_sub(1, Ordering::SeqCst);
                    state.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                    p
                }
            };
            match permit {
                None => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "queue_full",
                    "the server is at capacity; retry later",
                )
                .into_response(),
                Some(_permit) => {
                    state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                    let limit =
                        Duration::try_from_secs_f64(state.settings.timeout_seconds.max(0.001)).unwrap_or(Duration::MAX);
                    let r = match tokio::time::timeout(limit, work).await {
                        Ok(Ok(v)) => v.into_response(),
                        Ok(Err(e)) => e.into_response(),
                        Err(_) => ApiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "timeout_error",
                            "timeout",
                            "the request took too long",
                        )
                        .into_response(),
                    };
                    state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                    r
                }
            }
        }
    };
    state
        .metrics
        .request(endpoint, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

fn authorise(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison.
    let equal = given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if equal {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "missing or wrong bearer token",
        ))
    }
}

/// Parses a JSON body into `T`, naming the offending field on error.
fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                "the request body is too large",
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"), None)
        }
    })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}"), None))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!("{path}: {}", e.inner()), Some(&path))
    })
}

fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model == state.model {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model `{model}` does not exist; this server has `{}`", state.model),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        })
    }
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let s = state.clone();
    guarded(&state, "models", &headers, async move {
        Ok::<_, ApiError>(Json(
            json!({"object": "list", "data": [{"id": s.model, "object": "model", "created": 0, "owned_by": "ponder"}]}),
        ))
    })
    .await
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.batcher.counters);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    reasoning_effort: Option<String>,
    n: Option<u32>,
    seed: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
}

/// One answer of a chat completion.
struct Answer {
    content: String,
    finish: &'static str,
    hidden: u64,
    visible: u64,
}

impl AppState {
    fn problem(&self, text: &str) -> Result<Problem, ApiError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ApiError::bad_request(
                "the last user message is empty",
                Some("messages"),
            ));
        }
        if text.chars().count() > self.settings.max_prompt_chars {
            return Err(ApiError::bad_request(
                format!("the prompt has more than {} characters", self.settings.max_prompt_chars),
                Some("messages"),
            ));
        }
        let problem = Problem::new(self.task.name(), format!("{text}\n"), String::new(), 0, Value::Null);
        // The task must be able to read the problem: check_answer parses the prompt.
        self.task
            .check_answer(&problem, "0")
            .map_err(|e| ApiError::bad_request(format!("not a {} problem: {e}", self.task.name()), Some("messages")))?;
        Ok(problem)
    }

    /// One search at an effort; the answer without its chain of thought.
    async fn answer(
        &self,
        problem: &Problem,
        effort: &Effort,
        seed: u64,
        temperature: f32,
        token_limit: usize,
    ) -> Result<Answer, ApiError> {
        let env = SearchEnv {
            policy: &self.batcher,
            reward: &self.batcher,
            task: self.task.as_ref(),
            seed,
            max_step_tokens: self.max_step_tokens.min(token_limit),
            max_trace_tokens: self.max_trace_tokens.min(token_limit),
            sampling: Sampling {
                temperature,
                ..Sampling::default()
            },
            record: false,
        };
        let tokens_per_generation = self.tokens_per_generation.min(token_limit.max(1));
        let mut budget = Budget {
            generations: effort.budget,
            tokens_per_generation,
        };
        // The budget never exceeds the token limit.
        budget.generations = budget
            .generations
            .min((token_limit / tokens_per_generation.max(1)).max(1));
        let outcome = effort.searcher.search(problem, &env, &budget).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "search_failed",
                e.to_string(),
            )
        })?;
        let content = outcome.answer.clone().unwrap_or_default();
        let visible = self.tokenizer.encode(&content).len() as u64;
        let hidden = outcome.cost.generated_tokens.saturating_sub(visible);
        self.metrics
            .answer(hidden, visible, outcome.cost.policy_calls, outcome.cost.reward_traces);
        Ok(Answer {
            finish: if outcome.answer.is_some() { "stop" } else { "length" },
            content,
            hidden,
            visible,
        })
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = state.clone();
    guarded(
        &state,
        "chat.completions",
        &headers,
        async move { chat(&s, body).await },
    )
    .await
}

async fn chat(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let request: ChatRequest = parse(body)?;
    check_model(state, &request.model)?;
    let text = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.as_ref())
        .map(|c| match c {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
        })
        .ok_or_else(|| ApiError::bad_request("no user message with content", Some("messages")))?;
    let problem = state.problem(&text)?;
    let effort_name = request.reasoning_effort.as_deref().unwrap_or("medium");
    let effort = state.efforts.get(effort_name).ok_or_else(|| {
        let mut known: Vec<&str> = state.efforts.keys().map(String::as_str).collect();
        known.sort_unstable();
        ApiError::bad_request(
            format!("reasoning_effort `{effort_name}` is not one of {}", known.join(", ")),
            Some("reasoning_effort"),
        )
    })?;
    let n = request.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad_request("n must be 1 to 16", Some("n")));
    }
    let limit = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(state.settings.max_completion_tokens as u64);
    if limit == 0 || limit > state.settings.max_completion_tokens as u64 {
        return Err(ApiError::bad_request(
            format!(
                "max_completion_tokens must be 1 to {}",
                state.settings.max_completion_tokens
            ),
            Some("max_completion_tokens"),
        ));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "temperature must be in [0, 2]",
            Some("temperature"),
        ));
    }
    let seed = request.seed.unwrap_or_else(|| {
        state
            .next_seed
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    });
    let answers = futures::future::join_all((0..n).map(|i| {
        state.answer(
            &problem,
            effort,
            seed.wrapping_add(u64::from(i)),
            temperature,
            limit as usize,
        )
    }))
    .await;
    let answers: Vec<Answer> = answers.into_iter().collect::<Result<_, _>>()?;
    let prompt_tokens = state.tokenizer.encode(&problem.prompt).len() as u64;
    let hidden: u64 = answers.iter().map(|a| a.hidden).sum();
    let visible: u64 = answers.iter().map(|a| a.visible).sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": hidden + visible,
        "total_tokens": prompt_tokens + hidden + visible,
        "completion_tokens_details": {"reasoning_tokens": hidden},
    });
    let id = format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let created = now();
    if request.stream == Some(true) {
        let include_usage = request.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        let chunk = |choices: Value, usage: Option<&Value>| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": state.model, "choices": choices});
            if let Some(u) = usage {
                c["usage"] = u.clone();
            }
            Event::default().data(c.to_string())
        };
        let mut events = Vec::new();
        for (i, a) in answers.iter().enumerate() {
            events.push(chunk(
                json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                None,
            ));
            events.push(chunk(
                json!([{"index": i, "delta": {"content": a.content}, "finish_reason": null}]),
                None,
            ));
            events.push(chunk(
                json!([{"index": i, "delta": {}, "finish_reason": a.finish}]),
                None,
            ));
        }
        if include_usage {
            events.push(chunk(json!([]), Some(&usage)));
        }
        events.push(Event::default().data("[DONE]"));
        let stream = futures::stream::iter(events.into_iter().map(Ok::<Event, Infallible>));
        return Ok(Sse::new(stream).into_response());
    }
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"index": i, "message": {"role": "assistant", "content": a.content}, "finish_reason": a.finish, "logprobs": null}))
        .collect();
    Ok(Json(json!({"id": id, "object": "chat.completion", "created": created, "model": state.model, "choices": choices, "usage": usage})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: OneOrMany,
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    n: Option<u32>,
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    logprobs: Option<u32>,
    echo: Option<bool>,
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = state.clone();
    guarded(&state, "completions", &headers, async move { complete(&s, body).await }).await
}

async fn complete(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let r: CompletionRequest = parse(body)?;
    check_model(state, &r.model)?;
    let prompts = r.prompt.into_vec();
    if prompts.is_empty() || prompts.len() > 64 {
        return Err(ApiError::bad_request("prompt: give 1 to 64 prompts", Some("prompt")));
    }
    if prompts
        .iter()
        .any(|p| p.chars().count() > state.settings.max_prompt_chars * 4)
    {
        return Err(ApiError::bad_request("a prompt is too long", Some("prompt")));
    }
    let max_tokens = r.max_tokens.unwrap_or(16);
    if max_tokens > state.settings.max_completion_tokens as u64 {
        return Err(ApiError::bad_request(
            format!("max_tokens is at most {}", state.settings.max_completion_tokens),
            Some("max_tokens"),
        ));
    }
    let n = r.n.unwrap_or(1);
    if !(1..=64).contains(&n) {
        return Err(ApiError::bad_request("n must be 1 to 64", Some("n")));
    }
    let sampling = Sampling {
        temperature: r.temperature.unwrap_or(1.0),
        top_p: r.top_p.unwrap_or(1.0),
        top_k: r.top_k.unwrap_or(0) as usize,
    };
    if !(0.0..=2.0).contains(&sampling.temperature) || !(0.0..=1.0).contains(&sampling.top_p) || sampling.top_p == 0.0 {
        return Err(ApiError::bad_request(
            "temperature must be in [0, 2] and top_p in (0, 1]",
            Some("temperature"),
        ));
    }
    let stops: Vec<String> = r.stop.map(OneOrMany::into_vec).unwrap_or_default();
    let echo = r.echo.unwrap_or(false);
    let seed = r.seed.unwrap_or_else(|| {
        state
            .next_seed
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    });
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0u64, 0u64);
    for (pi, prompt) in prompts.iter().enumerate() {
        prompt_tokens += state.tokenizer.encode(prompt).len() as u64;
        if max_tokens == 0 {
            // Scoring: the prompt's own log-probabilities (with `echo`).
            let lps = state.batcher.logprobs("", prompt).await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "model_failed",
                    e.to_string(),
                )
            })?;
            let ids = state.tokenizer.encode(prompt);
            let (pieces, offsets) = pieces_and_offsets(&state.tokenizer, &ids);
            let logprobs = r.logprobs.map(
                |_| json!({"tokens": pieces, "token_logprobs": lps, "top_logprobs": null, "text_offset": offsets}),
            );
            choices.push(json!({"index": choices.len(), "text": if echo { prompt.as_str() } else { "" }, "finish_reason": "length", "logprobs": logprobs}));
            continue;
        }
        let only_newline = stops.len() == 1 && stops[0] == "\n";
        let stop_mode = if only_newline { Stop::StepEnd } else { Stop::Never };
        let requests: Vec<GenRequest> = (0..n)
            .map(|i| {
                GenRequest::new(
                    prompt.clone(),
                    stop_mode,
                    max_tokens as usize,
                    sampling,
                    seed.wrapping_add((pi as u64) << 32).wrapping_add(u64::from(i)),
                )
            })
            .collect();
        let generations = state.batcher.generate(&requests).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "model_failed",
                e.to_string(),
            )
        })?;
        for g in generations {
            let mut text = g.text.clone();
            let mut finish = match g.finish {
                ponder_policy_init::Finish::Length => "length",
                _ => "stop",
            };
            let stopped_at = stops
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min();
            if let Some(at) = stopped_at {
                text.truncate(at);
                finish = "stop";
            } else if only_newline && finish == "stop" {
                text = text.trim_end_matches('\n').to_string();
            }
            let ids = state.tokenizer.encode(&text);
            let kept = ids.len().min(g.logprobs.len());
            completion_tokens += kept as u64;
            let logprobs = r.logprobs.map(|_| {
                let (pieces, offsets) = pieces_and_offsets(&state.tokenizer, &ids[..kept]);
                let base = if echo { prompt.len() } else { 0 };
                json!({"tokens": pieces, "token_logprobs": g.logprobs[..kept], "top_logprobs": null,
                       "text_offset": offsets.iter().map(|o| o + base).collect::<Vec<_>>()})
            });
            let text = if echo { format!("{prompt}{text}") } else { text };
            choices.push(json!({"index": choices.len(), "text": text, "finish_reason": finish, "logprobs": logprobs}));
        }
    }
    Ok(Json(json!({
        "id": format!("cmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed)),
        "object": "text_completion",
        "created": now(),
        "model": state.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    })))
}

/// Token texts and their character offsets in the decoded text.
fn pieces_and_offsets(tokenizer: &Tokenizer, ids: &[u32]) -> (Vec<String>, Vec<usize>) {
    let mut offsets = Vec::with_capacity(ids.len());
    let mut pieces = Vec::with_capacity(ids.len());
    let mut at = 0;
    for &id in ids {
        let piece = tokenizer.piece(id).to_string();
        offsets.push(at);
        at += piece.len();
        pieces.push(piece);
    }
    (pieces, offsets)
}

#[derive(Debug, Deserialize)]
struct ScoreRequest {
    prompt: String,
    traces: Vec<Trace>,
}

async fn score(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = state.clone();
    guarded(&state, "score", &headers, async move {
        // `model` is accepted and ignored: the remote reward kind sends whatever its config
        // names, and this server has one reward model.
        let r: ScoreRequest = parse(body)?;
        if r.traces.len() > 256 {
            return Err(ApiError::bad_request("at most 256 traces", Some("traces")));
        }
        let problem = s.problem(&r.prompt)?;
        let scores = s.batcher.score(&problem, &r.traces).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "reward_failed",
                e.to_string(),
            )
        })?;
        Ok(Json(json!({"scores": scores})))
    })
    .await
}
