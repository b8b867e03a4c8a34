//! `POST /v1/chat/completions`: the problem in the last user message, a hidden chain of
//! thought searched as `reasoning_effort` asks, the answer alone in the reply (streamed on
//! request).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use ponder_datagen::Problem;
use ponder_policy_init::Sampling;
use ponder_search::{Budget, SearchEnv};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

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
    pub(super) fn problem(&self, text: &str) -> Result<Problem, ApiError> {
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
        let outcome = effort
            .searcher
            .search(problem, &env, &budget)
            .await
            .map_err(|e| ApiError::internal("search_failed", e))?;
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

pub(super) async fn chat_completions(
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

pub(super) async fn chat(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
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
    let effort = match request.reasoning_effort.as_deref() {
        None => &state.default_effort,
        Some(name) => state.efforts.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = state.efforts.keys().map(String::as_str).collect();
            known.sort_unstable();
            ApiError::bad_request(
                format!("reasoning_effort `{name}` is not one of {}", known.join(", ")),
                Some("reasoning_effort"),
            )
        })?,
    };
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
