//! The `Policy` trait: what search, reward labelling and RL ask of a language model.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

/// Where a generation stops (besides its token limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stop {
    /// After the next newline: one step (or the answer line).
    StepEnd,
    /// After the `Answer:` line's newline: the rest of the trace.
    TraceEnd,
    /// Only at the token limit or an end-of-sequence token.
    Never,
    /// Only at the token limit: an end-of-sequence token is generated like any other (a fixed
    /// number of tokens, as benchmarks decode).
    Length,
}

/// How the next token is drawn. `temperature == 0` is greedy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 keeps all).
    pub top_p: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling {
            temperature: 0.0,
            ..Sampling::default()
        }
    }
}

/// One continuation to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenRequest {
    /// The text to continue: a problem's prompt and any steps so far.
    pub prompt: String,
    pub max_tokens: usize,
    pub stop: Stop,
    pub sampling: Sampling,
    /// Seeds this request's own random stream: its tokens do not depend on the rest of
    /// the batch.
    pub seed: u64,
}

impl GenRequest {
    pub fn new(prompt: impl Into<String>, stop: Stop, max_tokens: usize, sampling: Sampling, seed: u64) -> Self {
        GenRequest {
            prompt: prompt.into(),
            max_tokens,
            stop,
            sampling,
            seed,
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finish {
    /// A step ended (newline) under [`Stop::StepEnd`].
    StepEnd,
    /// The answer line ended.
    Answer,
    /// The token limit (or the model's context) was reached.
    Length,
    /// The model produced its end-of-sequence token.
    EndOfSequence,
}

/// One generated continuation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    /// The generated token ids, in order (an end-of-sequence token included: `text` leaves it
    /// out), one per log-prob; empty where the policy cannot tell (a remote server).
    #[serde(default)]
    pub token_ids: Vec<u32>,
    /// The model's log-probability (temperature 1, untruncated) of each generated token.
    pub logprobs: Vec<f32>,
    pub finish: Finish,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens that had to be computed (the rest came from a cached prefix).
    pub computed_prompt_tokens: usize,
}

impl Generation {
    /// Tokens generated.
    pub fn tokens(&self) -> usize {
        self.logprobs.len()
    }
}

/// A language model that proposes continuations. Calls are batched: a transformer is only
/// fast on batches, so callers pass every request of a search round at once.
#[async_trait]
pub trait Policy: Send + Sync {
    /// A short description (kind and size) for logs and reports.
    fn describe(&self) -> String;

    /// Parameters, when known (for FLOPs estimates).
    fn params(&self) -> Option<usize>;

    /// The continuations of every request, in order.
    async fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>, PolicyError>;

    /// The log-probability of each token of `continuation` given `context`.
    async fn logprobs(&self, context: &str, continuation: &str) -> Result<Vec<f32>, PolicyError>;

    /// Tokens since the model was created: computed (every position run through the model,
    /// prompt and generated tokens alike, a reused prefix left out) and generated.
    fn compute_counters(&self) -> (u64, u64) {
        (0, 0)
    }

    /// The positions run through the model since it was created, what its FLOPs are counted
    /// from: the tokens computed, or those generated where a policy counts nothing else.
    fn forward_tokens(&self) -> u64 {
        match self.compute_counters() {
            (0, generated) => generated,
            (computed, _) => computed,
        }
    }
}

impl std::fmt::Debug for dyn Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Policy({})", self.describe())
    }
}
