//! `POST /update_weights_from_disk` (SGLang's protocol, on with `serve.weight_updates`): the
//! server loads a policy directory it can read (`config.json`, `model.safetensors`, the
//! tokenizer, as ponder saves them) and serves it from the next batch on: each model call
//! already queued runs with the old weights (a request of many calls, such as a search, may
//! see both). This is how an RL trainer hands its weights to a rollout server, which it does
//! between sampling rounds. The new policy must have the served one's architecture and
//! tokenizer.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use ponder_policy_init::{Tokenizer, TransformerPolicy};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

/// SGLang's request; its other fields (such as the weights' version) are accepted and left
/// unread.
#[derive(Debug, Deserialize)]
struct UpdateRequest {
    model_path: PathBuf,
    /// SGLang's field; ponder reads its own format only (`auto` or absent).
    #[serde(default)]
    load_format: Option<String>,
}

fn same_tokenizer(a: &Tokenizer, b: &Tokenizer) -> bool {
    a.vocab_size() == b.vocab_size() && (0..a.vocab_size() as u32).all(|i| a.piece(i) == b.piece(i))
}

pub(super) async fn update_weights_from_disk(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = state.clone();
    // No request timeout: loading a policy may take longer than a model call, and a timeout
    // would answer 504 while the server goes on to serve the new weights.
    guarded_with_limit(&state, "update_weights_from_disk", &headers, None, async move {
        update(s, body).await
    })
    .await
}

async fn update(state: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    if !state.settings.weight_updates {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "weight_updates_off",
            "this server does not take weight updates; start it with --set serve.weight_updates=true",
        ));
    }
    let r: UpdateRequest = parse(body)?;
    if state.policy_config.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "policy_takes_no_weights",
            "this server's policy is not a transformer of its own (a remote one): it takes no weights",
        ));
    }
    if let Some(format) = r.load_format.as_deref().filter(|f| *f != "auto") {
        return Err(ApiError::bad_request(
            format!("load_format `{format}`: ponder reads its own policy directories only (`auto`)"),
            Some("load_format"),
        ));
    }
    // Loaded, checked and handed to the model worker in a task of its own, which runs to its
    // end even when the client goes away: the server serves either the old weights or the new
    // ones, never a load cut short.
    let path = r.model_path;
    let task = tokio::spawn(async move {
        let s = state.clone();
        let from = path.clone();
        let policy = tokio::task::spawn_blocking(move || load_checked(&s, &from))
            .await
            .map_err(|e| ApiError::internal("load_failed", e))??;
        state
            .batcher
            .reload(policy)
            .await
            .map_err(|e| ApiError::internal("load_failed", e))?;
        eprintln!("ponder serve: now serving the weights in {}", path.display());
        Ok::<_, ApiError>(path)
    });
    let path = task.await.map_err(|e| ApiError::internal("load_failed", e))??;
    Ok(Json(json!({
        "success": true,
        "message": format!("loaded {}", path.display()),
        "num_paused_requests": 0,
    })))
}

/// The policy in `path`, built on the server's backend, if it has the served policy's
/// architecture and tokenizer.
fn load_checked(state: &AppState, path: &std::path::Path) -> Result<Arc<dyn ponder_policy_init::Policy>, ApiError> {
    let (weights, tokenizer) = ponder_policy_init::hf::load_pretrained(path).map_err(|e| {
        ApiError::bad_request(
            format!("model_path {}: cannot load a policy: {e}", path.display()),
            Some("model_path"),
        )
    })?;
    if Some(&weights.config) != state.policy_config.as_ref() || !same_tokenizer(&tokenizer, &state.tokenizer) {
        return Err(ApiError::bad_request(
            format!(
                "model_path {}: its architecture or tokenizer differs from the served policy's",
                path.display()
            ),
            Some("model_path"),
        ));
    }
    Ok(Arc::new(TransformerPolicy::on_backend(
        &weights,
        tokenizer,
        &state.backend,
    )))
}
