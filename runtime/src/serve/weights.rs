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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
    guarded(&state, "update_weights_from_disk", &headers, async move {
        update(&s, body).await
    })
    .await
}

async fn update(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    if !state.settings.weight_updates {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "weight_updates_off",
            "this server does not take weight updates; start it with --set serve.weight_updates=true",
        ));
    }
    let r: UpdateRequest = parse(body)?;
    let Some(served) = &state.policy_config else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "weight_updates_off",
            "this server's policy is not a transformer of its own (a remote one): it takes no weights",
        ));
    };
    if let Some(format) = r.load_format.as_deref().filter(|f| *f != "auto") {
        return Err(ApiError::bad_request(
            format!("load_format `{format}`: ponder reads its own policy directories only (`auto`)"),
            Some("load_format"),
        ));
    }
    let path = r.model_path.clone();
    let loaded = tokio::task::spawn_blocking(move || ponder_policy_init::hf::load_pretrained(&path))
        .await
        .map_err(|e| ApiError::internal("load_failed", e))?;
    let (weights, tokenizer) = loaded.map_err(|e| {
        ApiError::bad_request(
            format!("model_path {}: cannot load a policy: {e}", r.model_path.display()),
            Some("model_path"),
        )
    })?;
    if weights.config != *served || !same_tokenizer(&tokenizer, &state.tokenizer) {
        return Err(ApiError::bad_request(
            format!(
                "model_path {}: its architecture or tokenizer differs from the served policy's",
                r.model_path.display()
            ),
            Some("model_path"),
        ));
    }
    let policy = Arc::new(TransformerPolicy::on_backend(&weights, tokenizer, &state.backend));
    state
        .batcher
        .reload(policy)
        .await
        .map_err(|e| ApiError::internal("load_failed", e))?;
    eprintln!("ponder serve: now serving the weights in {}", r.model_path.display());
    Ok(Json(json!({
        "success": true,
        "message": format!("loaded {}", r.model_path.display()),
        "num_paused_requests": 0,
    })))
}
