//! `ponder serve --run runs/NAME`: the trained reasoner behind the OpenAI API.
//!
//! - `POST /v1/chat/completions`: the last user message is the problem; the model thinks in a
//!   hidden chain of thought, searching as `reasoning_effort` (low, medium, high: a searcher
//!   and budget from `[serve.efforts]`; without one, the run's `[search]` searcher at
//!   `serve.default_budget`) asks, and returns only the answer. Usage reports the
//!   hidden tokens as `completion_tokens_details.reasoning_tokens`. `n`, `seed`,
//!   `max_completion_tokens`, `temperature`, streaming (server-sent events).
//! - `POST /v1/completions`: plain continuations with `stop`, `n`, `seed`, `logprobs`,
//!   `echo` — what ponder's remote policy (and any OpenAI-style client) needs.
//! - `POST /v1/score`: the run's reward model (the protocol of ponder's remote reward kind).
//! - `GET /v1/models`, `GET /metrics` (Prometheus).
//! - `POST /update_weights_from_disk` with `serve.weight_updates`: new weights from a policy
//!   directory, SGLang's protocol (how RL hands its weights to a rollout server).
//!
//! The policy is the run's trained transformer, or what `[policy]` builds without weights: with
//! `kind = "remote"` this server searches over another OpenAI-compatible server's samples.
//! Requests from concurrent clients are batched into the model (`batching.rs`). Limits: an
//! optional bearer token, body size, prompt and token limits, a concurrency limit with a
//! bounded queue (429 beyond it), a timeout (504). Every bad request gets the OpenAI error
//! object with a 4xx status; the server shuts down gracefully on Ctrl-C or SIGTERM.

pub mod batching;
mod chat;
mod completions;
pub mod metrics;
mod weights;

use chat::chat_completions;
use completions::{completions, score};
use weights::update_weights_from_disk;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ponder_datagen::Task;
use ponder_policy_init::{Policy, Tokenizer, TransformerPolicy};
use ponder_reward::RewardModel;
use ponder_search::Searcher;
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

    /// A 500: the model or the server failed, not the request.
    fn internal(code: &'static str, message: impl ToString) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            code,
            message.to_string(),
        )
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
    /// The served policy's architecture, which new weights must have (none: a configured
    /// policy such as a remote one, which takes no weights).
    policy_config: Option<ponder_policy_init::ModelConfig>,
    backend: ponder_policy_init::backend::Backend,
    efforts: HashMap<String, Effort>,
    /// For requests without `reasoning_effort`: the run's `[search]` at `serve.default_budget`.
    default_effort: Effort,
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
    let per_generation = crate::stages::common::tokens_per_generation(init.get("results"), max_trace);
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
    let default_effort = Effort {
        searcher: config.search.build(&())?,
        budget: settings.default_budget.max(1),
    };
    let api_key = match &settings.api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| anyhow::anyhow!("serve.api_key_env: {var} is not set"))?),
        None => None,
    };
    let backend = ponder_policy_init::backend::Backend::from_names(&config.run.backend, &config.run.device)?;
    // The run's trained weights (RL's, else initialisation's), or a policy `[policy]` builds
    // without them: `remote`, searching here over an OpenAI-compatible server's samples.
    let (policy, tokenizer, served): (Arc<dyn Policy>, Tokenizer, Option<ponder_policy_init::ModelConfig>) =
        if config.policy.capabilities().trainable.is_some() {
            let policy_dir = ["rl", "init"]
                .iter()
                .map(|n| run_dir.join("policy").join(n))
                .find(|d| d.join("config.json").exists())
                .ok_or_else(|| {
                    anyhow::anyhow!("{} holds no trained policy: run its pipeline first", run_dir.display())
                })?;
            let (weights, tokenizer) = ponder_policy_init::hf::load_pretrained(&policy_dir)?;
            let policy = TransformerPolicy::on_backend(&weights, tokenizer.clone(), &backend);
            (Arc::new(policy), tokenizer, Some(weights.config))
        } else {
            let context = crate::registry::PolicyContext {
                trained: None,
                seed: config.run.seed,
                backend: backend.clone(),
            };
            (Arc::from(config.policy.build(&context)?), Tokenizer::chars(), None)
        };
    let batcher = Batcher::start(policy, reward, Duration::from_millis(settings.batch_window_ms));
    Ok(AppState {
        model: settings
            .model
            .clone()
            .unwrap_or_else(|| format!("ponder-{}", config.run.name)),
        task,
        batcher,
        tokenizer,
        policy_config: served,
        backend,
        efforts,
        default_effort,
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
        .route("/update_weights_from_disk", post(update_weights_from_disk))
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
    let limit = Duration::try_from_secs_f64(state.settings.timeout_seconds.max(0.001)).unwrap_or(Duration::MAX);
    guarded_with_limit(state, endpoint, headers, Some(limit), work).await
}

/// [`guarded`] with a time limit of its own (`None`: none).
async fn guarded_with_limit<F, T>(
    state: &AppState,
    endpoint: &str,
    headers: &HeaderMap,
    limit: Option<Duration>,
    work: F,
) -> Response
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
                    let r = match tokio::time::timeout(limit.unwrap_or(Duration::MAX), work).await {
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
