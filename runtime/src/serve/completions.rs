//! `POST /v1/completions` (plain continuations with stops, log-probs and echo) and
//! `POST /v1/score` (the run's reward model).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use ponder_datagen::Trace;
use ponder_policy_init::{GenRequest, Policy, Sampling, Stop, Tokenizer};
use ponder_reward::RewardModel;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

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
    /// vLLM's extension: log-prob tokens as `token_id:N`, the ids sampled, token for token
    /// (an end-of-sequence token included when nothing was cut off); what an RL trainer
    /// needs to train on exactly what was sampled.
    return_tokens_as_token_ids: Option<bool>,
    /// ponder's extension: stop after the line that starts with `Answer:` (with its newline),
    /// as the pipeline's own sampling does; for a policy that never learned to end a trace.
    stop_after_answer_line: Option<bool>,
}

pub(super) async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s = state.clone();
    guarded(&state, "completions", &headers, async move { complete(&s, body).await }).await
}

pub(super) async fn complete(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
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
            let lps = state
                .batcher
                .logprobs("", prompt)
                .await
                .map_err(|e| ApiError::internal("model_failed", e))?;
            let ids = state.tokenizer.encode(prompt);
            let (pieces, offsets) = pieces_and_offsets(&state.tokenizer, &ids);
            let logprobs = r.logprobs.map(
                |_| json!({"tokens": pieces, "token_logprobs": lps, "top_logprobs": null, "text_offset": offsets}),
            );
            choices.push(json!({"index": choices.len(), "text": if echo { prompt.as_str() } else { "" }, "finish_reason": "length", "logprobs": logprobs}));
            continue;
        }
        let only_newline = stops.len() == 1 && stops[0] == "\n";
        let stop_mode = if r.stop_after_answer_line == Some(true) {
            Stop::TraceEnd
        } else if only_newline {
            Stop::StepEnd
        } else {
            Stop::Never
        };
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
        let generations = state
            .batcher
            .generate(&requests)
            .await
            .map_err(|e| ApiError::internal("model_failed", e))?;
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
            let as_ids = r.return_tokens_as_token_ids.unwrap_or(false);
            if as_ids && g.token_ids.len() != g.logprobs.len() {
                return Err(ApiError::bad_request(
                    "return_tokens_as_token_ids: this server's policy does not give the ids it sampled",
                    Some("return_tokens_as_token_ids"),
                ));
            }
            let ids = if as_ids {
                // The sampled ids whose text starts inside the returned text: all of them when
                // nothing was cut off.
                let (_, offsets) = pieces_and_offsets(&state.tokenizer, &g.token_ids);
                let kept = if text.len() < g.text.len() {
                    offsets.iter().take_while(|&&o| o < text.len()).count()
                } else {
                    g.token_ids.len()
                };
                g.token_ids[..kept].to_vec()
            } else {
                state.tokenizer.encode(&text)
            };
            let kept = ids.len().min(g.logprobs.len());
            completion_tokens += kept as u64;
            let logprobs = r.logprobs.map(|_| {
                let (mut pieces, offsets) = pieces_and_offsets(&state.tokenizer, &ids[..kept]);
                if as_ids {
                    pieces = ids[..kept].iter().map(|id| format!("token_id:{id}")).collect();
                }
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

/// Token texts and their byte offsets in the decoded text (each token's text is the decoded
/// text from its offset to the next token's).
pub(super) fn pieces_and_offsets(tokenizer: &Tokenizer, ids: &[u32]) -> (Vec<String>, Vec<usize>) {
    let (text, offsets) = tokenizer.decode_with_offsets(ids);
    let pieces = offsets
        .iter()
        .enumerate()
        .map(|(k, &start)| text[start..offsets.get(k + 1).copied().unwrap_or(text.len())].to_string())
        .collect();
    (pieces, offsets)
}

#[derive(Debug, Deserialize)]
struct ScoreRequest {
    prompt: String,
    traces: Vec<Trace>,
}

pub(super) async fn score(
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
        let scores = s
            .batcher
            .score(&problem, &r.traces)
            .await
            .map_err(|e| ApiError::internal("reward_failed", e))?;
        Ok(Json(json!({"scores": scores})))
    })
    .await
}
