//! A policy served by any OpenAI-compatible `/v1/completions` endpoint (vLLM, SGLang,
//! llama.cpp server, `ponder serve`): the way rollouts scale beyond one machine. Requests are
//! spread over a pool of base URLs, retried on failure, and identical requests are sent once
//! with `n`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use ponder_datagen::ANSWER_PREFIX;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::PolicyError;
use crate::policy::{Finish, GenRequest, Generation, Policy, Sampling, Stop};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// Base URLs, e.g. `http://gpu1:8000/v1`; requests go round-robin.
    pub endpoints: Vec<String>,
    /// The `model` field sent with each request.
    pub model: String,
    /// The name of an environment variable holding a bearer token (never the token itself).
    pub api_key_env: Option<String>,
    pub timeout_seconds: f64,
    /// HTTP requests in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Attempts per request (on connection errors and 5xx answers).
    pub attempts: usize,
    /// Parameters of the served model, when known (for FLOPs estimates).
    pub params: Option<usize>,
    /// Ask for the sampled token ids (vLLM's `return_tokens_as_token_ids`, which `ponder
    /// serve` also takes) so that every generation carries them beside its log-probs, and
    /// finish a trace in one call (cut after its answer line here) rather than two: what an RL
    /// update needs to train on exactly what was sampled.
    pub token_ids: bool,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            endpoints: vec!["http://127.0.0.1:8000/v1".into()],
            model: "default".into(),
            api_key_env: None,
            timeout_seconds: 120.0,
            concurrency: 16,
            attempts: 3,
            params: None,
            token_ids: false,
        }
    }
}

impl RemoteConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push("endpoints: give at least one base URL".into());
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                problems.push(format!("endpoints: `{e}` is not an http(s) URL"));
            }
        }
        if self.concurrency == 0 || self.attempts == 0 {
            problems.push("concurrency: concurrency and attempts must be at least 1".into());
        }
        problems
    }
}

pub struct RemotePolicy {
    config: RemoteConfig,
    client: reqwest::Client,
    api_key: Option<String>,
    next: AtomicUsize,
    generated: AtomicU64,
    /// Prompt and completion tokens the servers report (`usage`), or the tokens they sent back
    /// where they report none: what they computed.
    served: AtomicU64,
    /// For `token_ids`: the served model's tokenizer, which gives each token's text.
    tokenizer: Option<crate::Tokenizer>,
}

impl std::fmt::Debug for RemotePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemotePolicy({:?})", self.config.endpoints)
    }
}

#[derive(Debug, Deserialize)]
struct CompletionResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    index: usize,
    text: String,
    #[serde(default)]
    logprobs: Option<Logprobs>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Logprobs {
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    token_logprobs: Vec<Option<f32>>,
    #[serde(default)]
    text_offset: Vec<usize>,
}

/// One choice of an answer: its text, each token's log-prob, with `token_ids` the sampled ids
/// and their character offsets in the text, and whether it stopped (rather than ran out of
/// tokens).
#[derive(Debug, Default)]
struct Completed {
    text: String,
    logprobs: Vec<f32>,
    token_ids: Vec<u32>,
    offsets: Vec<usize>,
    stopped: bool,
}

/// The end of a trace's answer line: the byte after the newline that ends the first line
/// starting with `Answer:`.
fn answer_line_end(text: &str) -> Option<usize> {
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        if line.ends_with('\n') && line.trim_start().starts_with(ANSWER_PREFIX) {
            return Some(end);
        }
        start = end;
    }
    None
}

/// One HTTP request: a prompt, its parameters and how many samples.
struct Call {
    /// Ask the server to stop after the answer line (ponder serve's extension).
    stop_after_answer: bool,
    prompt: String,
    max_tokens: usize,
    sampling: Sampling,
    stop: Vec<String>,
    seed: u64,
    n: usize,
}

/// An HTTP client with a timeout, and the bearer token in the environment variable
/// `api_key_env` names (none without one); the error names a variable that is not set.
pub fn http_client(
    api_key_env: Option<&str>,
    timeout_seconds: f64,
) -> Result<(reqwest::Client, Option<String>), String> {
    let api_key = match api_key_env {
        Some(var) => {
            Some(std::env::var(var).map_err(|_| format!("api_key_env: environment variable {var} is not set"))?)
        }
        None => None,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(timeout_seconds.max(0.1)))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    Ok((client, api_key))
}

impl RemotePolicy {
    pub fn new(config: RemoteConfig) -> Result<RemotePolicy, PolicyError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(PolicyError::Config(problems.join("; ")));
        }
        let (client, api_key) =
            http_client(config.api_key_env.as_deref(), config.timeout_seconds).map_err(PolicyError::Config)?;
        Ok(RemotePolicy {
            config,
            client,
            api_key,
            next: AtomicUsize::new(0),
            generated: AtomicU64::new(0),
            served: AtomicU64::new(0),
            tokenizer: None,
        })
    }

    /// The served model's tokenizer, which `token_ids` needs: each sampled token's text is
    /// read from it (servers' own offsets differ in that mode).
    pub fn with_tokenizer(mut self, tokenizer: crate::Tokenizer) -> RemotePolicy {
        self.tokenizer = Some(tokenizer);
        self
    }

    async fn post(&self, body: serde_json::Value) -> Result<CompletionResponse, PolicyError> {
        let mut last_error = String::new();
        for attempt in 0..self.config.attempts {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.config.endpoints.len();
            let url = format!("{}/completions", self.config.endpoints[i].trim_end_matches('/'));
            let mut request = self.client.post(&url).json(&body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return response
                        .json::<CompletionResponse>()
                        .await
                        .map_err(|e| PolicyError::Remote(format!("{url}: unreadable answer: {e}")));
                }
                Ok(response) if response.status().is_server_error() => {
                    last_error = format!("{url}: {}", response.status());
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(PolicyError::Remote(format!("{url}: {status}: {text}")));
                }
                Err(e) => last_error = format!("{url}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
        }
        Err(PolicyError::Remote(format!(
            "gave up after {} attempts; last error: {last_error}",
            self.config.attempts
        )))
    }

    async fn complete(&self, call: &Call) -> Result<Vec<Completed>, PolicyError> {
        let mut body = json!({
            "model": self.config.model,
            "prompt": call.prompt,
            "max_tokens": call.max_tokens,
            "temperature": call.sampling.temperature,
            "top_p": call.sampling.top_p,
            "n": call.n,
            "seed": call.seed,
            "logprobs": 0,
        });
        if self.config.token_ids {
            body["return_tokens_as_token_ids"] = json!(true);
        }
        if call.stop_after_answer {
            // ponder serve's extension (other servers ignore it and stop at their end of
            // sequence): stop after the answer line, as a local policy does.
            body["stop_after_answer_line"] = json!(true);
        }
        if call.sampling.top_k > 0 {
            body["top_k"] = json!(call.sampling.top_k);
        }
        if !call.stop.is_empty() {
            body["stop"] = json!(call.stop);
        }
        let mut response = self.post(body).await?;
        // What the server computed: its own count, or where it gives none the tokens it sent
        // back, so the count only grows whichever servers of a pool report usage.
        let computed = match &response.usage {
            Some(usage) => usage.prompt_tokens + usage.completion_tokens,
            None => response
                .choices
                .iter()
                .map(|c| c.logprobs.as_ref().map_or(0, |l| l.token_logprobs.len() as u64))
                .sum(),
        };
        self.served.fetch_add(computed, Ordering::Relaxed);
        response.choices.sort_by_key(|c| c.index);
        if response.choices.len() != call.n {
            return Err(PolicyError::Remote(format!(
                "asked for {} choices, got {}",
                call.n,
                response.choices.len()
            )));
        }
        response
            .choices
            .into_iter()
            .map(|c| {
                let lp = c.logprobs.unwrap_or_default();
                let logprobs: Vec<f32> = lp.token_logprobs.into_iter().map(|l| l.unwrap_or(0.0)).collect();
                if !self.config.token_ids {
                    return Ok(Completed {
                        text: c.text,
                        logprobs,
                        token_ids: Vec::new(),
                        offsets: lp.text_offset,
                        stopped: c.finish_reason.as_deref() == Some("stop"),
                    });
                }
                let tokenizer = self.tokenizer.as_ref().ok_or_else(|| {
                    PolicyError::Config("token_ids needs the served model's tokenizer (RemotePolicy::with_tokenizer)".into())
                })?;
                let ids: Option<Vec<u32>> = lp
                    .tokens
                    .iter()
                    .map(|t| t.strip_prefix("token_id:").and_then(|n| n.parse().ok()))
                    .collect();
                let ids = match ids {
                    Some(ids) if ids.len() == logprobs.len() && (!ids.is_empty() || c.text.is_empty()) => ids,
                    _ => {
                        return Err(PolicyError::Remote(format!(
                            "{}: the answer does not give each sampled token's id and log-prob (`token_id:N` tokens, as vLLM's and ponder serve's return_tokens_as_token_ids do)",
                            self.config.model
                        )));
                    }
                };
                if let Some(id) = ids.iter().find(|&&id| id as usize >= tokenizer.vocab_size()) {
                    return Err(PolicyError::Remote(format!(
                        "{}: token id {id} is outside the tokenizer's {} tokens: the server runs another model",
                        self.config.model,
                        tokenizer.vocab_size()
                    )));
                }
                // The text is the sampled tokens' text as the tokenizer decodes it, each
                // token's offset where it starts.
                let (text, offsets) = tokenizer.decode_with_offsets(&ids);
                Ok(Completed {
                    text,
                    logprobs,
                    token_ids: ids,
                    offsets,
                    stopped: c.finish_reason.as_deref() == Some("stop"),
                })
            })
            .collect()
    }

    /// A whole trace in one call, with its sampled token ids: cut after the answer line (where
    /// a local policy stops), keeping the tokens that start before the cut.
    async fn generate_traces(&self, r: &GenRequest, n: usize) -> Result<Vec<Generation>, PolicyError> {
        let call = Call {
            stop_after_answer: true,
            prompt: r.prompt.clone(),
            max_tokens: r.max_tokens,
            sampling: r.sampling,
            stop: Vec::new(),
            seed: r.seed,
            n,
        };
        let mut out = Vec::with_capacity(n);
        for mut c in self.complete(&call).await? {
            let finish = match answer_line_end(&c.text) {
                Some(end) => {
                    let kept = c.offsets.iter().take_while(|&&o| o < end).count();
                    let cut = c.offsets.get(kept).copied().unwrap_or(c.text.len());
                    c.text.truncate(cut);
                    c.token_ids.truncate(kept);
                    c.logprobs.truncate(kept);
                    Finish::Answer
                }
                None if c.stopped => Finish::EndOfSequence,
                None => Finish::Length,
            };
            self.generated.fetch_add(c.logprobs.len() as u64, Ordering::Relaxed);
            out.push(Generation {
                text: c.text,
                token_ids: c.token_ids,
                logprobs: c.logprobs,
                finish,
                prompt_tokens: 0,
                computed_prompt_tokens: 0,
            });
        }
        Ok(out)
    }

    /// One group of identical requests: for `StepEnd` one call stopping at a newline; for
    /// `TraceEnd` a call stopping before `Answer:` and one finishing that line.
    async fn generate_group(&self, r: &GenRequest, n: usize) -> Result<Vec<Generation>, PolicyError> {
        if self.config.token_ids && r.stop == Stop::TraceEnd {
            return self.generate_traces(r, n).await;
        }
        let first_stop = match r.stop {
            Stop::StepEnd => vec!["\n".to_string()],
            Stop::TraceEnd => vec![ANSWER_PREFIX.to_string()],
            // An OpenAI-compatible server stops at its end-of-sequence token in both.
            Stop::Never | Stop::Length => vec![],
        };
        let call = Call {
            stop_after_answer: false,
            prompt: r.prompt.clone(),
            max_tokens: r.max_tokens,
            sampling: r.sampling,
            stop: first_stop,
            seed: r.seed,
            n,
        };
        let first = self.complete(&call).await?;
        let mut out = Vec::with_capacity(n);
        for (i, c) in first.into_iter().enumerate() {
            let (mut text, mut logprobs, stopped) = (c.text, c.logprobs, c.stopped);
            // Token ids cover the text only where nothing is added to it below.
            let mut token_ids = c.token_ids;
            let finish = match r.stop {
                Stop::StepEnd if stopped => {
                    text.push('\n');
                    token_ids.clear();
                    let line = text.rsplit('\n').nth(1).unwrap_or("");
                    if line.trim_start().starts_with(ANSWER_PREFIX) {
                        Finish::Answer
                    } else {
                        Finish::StepEnd
                    }
                }
                Stop::TraceEnd if stopped && logprobs.len() < r.max_tokens => {
                    text.push_str(ANSWER_PREFIX);
                    let rest = Call {
                        stop_after_answer: false,
                        prompt: format!("{}{}", r.prompt, text),
                        max_tokens: r.max_tokens.saturating_sub(logprobs.len()).max(1),
                        sampling: r.sampling,
                        stop: vec!["\n".to_string()],
                        seed: r.seed.wrapping_add(i as u64 + 1),
                        n: 1,
                    };
                    let tail = self.complete(&rest).await?.pop().unwrap_or_default();
                    text.push_str(&tail.text);
                    logprobs.extend(tail.logprobs);
                    token_ids.clear();
                    if tail.stopped {
                        text.push('\n');
                        Finish::Answer
                    } else {
                        Finish::Length
                    }
                }
                _ if stopped => Finish::EndOfSequence,
                _ => Finish::Length,
            };
            self.generated.fetch_add(logprobs.len() as u64, Ordering::Relaxed);
            out.push(Generation {
                text,
                token_ids,
                logprobs,
                finish,
                prompt_tokens: 0,
                computed_prompt_tokens: 0,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Policy for RemotePolicy {
    fn describe(&self) -> String {
        format!("remote {} at {}", self.config.model, self.config.endpoints.join(", "))
    }

    fn params(&self) -> Option<usize> {
        self.config.params
    }

    async fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>, PolicyError> {
        // Consecutive requests equal but for their seed go out as one call with `n`.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match groups.last_mut() {
                Some((start, len))
                    if {
                        let s = &requests[*start];
                        s.prompt == r.prompt
                            && s.stop == r.stop
                            && s.sampling == r.sampling
                            && s.max_tokens == r.max_tokens
                    } =>
                {
                    *len += 1
                }
                _ => groups.push((i, 1)),
            }
        }
        let calls: Vec<(GenRequest, usize)> = groups.iter().map(|&(start, n)| (requests[start].clone(), n)).collect();
        let results: Vec<Result<Vec<Generation>, PolicyError>> = stream::iter(calls)
            .map(|(request, n)| async move { self.generate_group(&request, n).await })
            .buffered(self.config.concurrency)
            .collect()
            .await;
        let mut out = Vec::with_capacity(requests.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    async fn logprobs(&self, context: &str, continuation: &str) -> Result<Vec<f32>, PolicyError> {
        let body = json!({
            "model": self.config.model,
            "prompt": format!("{context}{continuation}"),
            "max_tokens": 0,
            "echo": true,
            "logprobs": 0,
        });
        let response = self.post(body).await?;
        let choice = response
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| PolicyError::Remote("no choices in the echo answer".into()))?;
        let lp = choice.logprobs.unwrap_or_default();
        if lp.text_offset.len() != lp.token_logprobs.len() {
            return Err(PolicyError::Remote("echo answer without text offsets".into()));
        }
        Ok(lp
            .text_offset
            .iter()
            .zip(&lp.token_logprobs)
            .filter(|(offset, _)| **offset >= context.len())
            .map(|(_, l)| l.unwrap_or(0.0))
            .collect())
    }

    /// Computed: the prompt and completion tokens the servers report (the tokens handed back
    /// where they report none); generated: the tokens handed back.
    fn compute_counters(&self) -> (u64, u64) {
        (
            self.served.load(Ordering::Relaxed),
            self.generated.load(Ordering::Relaxed),
        )
    }
}
