//! Where search-eval's policy comes from: the run's trained weights, or a policy `[policy]`
//! builds without them (a remote server).

use ponder_policy_init::{HostWeights, Policy, Tokenizer};

use crate::registry::PolicyContext;
use crate::stages::Context;
use crate::stages::common::{current_policy, stage_policy};

/// Where search-eval's policy comes from: the run's trained weights, searched on this machine,
/// or a policy that `[policy]` builds without them (`remote`: an OpenAI-compatible server).
pub(super) enum PolicySource {
    Trained(HostWeights, Tokenizer),
    /// Its parameter count, as the built policy reports it (0 when unknown).
    Configured {
        params: usize,
    },
}

/// What building a configured policy gets: no trained weights.
fn untrained(ctx: &Context) -> PolicyContext {
    PolicyContext {
        trained: None,
        seed: ctx.seed("search-eval-policy"),
        backend: ctx.backend.clone(),
    }
}

impl PolicySource {
    pub(super) fn of(ctx: &Context) -> anyhow::Result<PolicySource> {
        if ctx.config.policy.capabilities().trainable.is_some() {
            let (weights, tokenizer) = current_policy(ctx)?;
            return Ok(PolicySource::Trained(weights, tokenizer));
        }
        let params = ctx.config.policy.build(&untrained(ctx))?.params().unwrap_or(0);
        Ok(PolicySource::Configured { params })
    }

    /// The tokenizer and context length that size token limits: the trained model's, or, for a
    /// configured policy, characters (ponder's own tokenizer) and a context no limit reaches.
    pub(super) fn tokenizer_and_context(&self) -> (Tokenizer, usize) {
        match self {
            PolicySource::Trained(weights, tokenizer) => (tokenizer.clone(), weights.config.max_seq_len),
            PolicySource::Configured { .. } => (Tokenizer::chars(), usize::MAX / 4),
        }
    }

    /// Parameters for FLOPs (0 when a configured policy does not say).
    pub(super) fn params(&self) -> usize {
        match self {
            PolicySource::Trained(weights, _) => weights.config.params(),
            PolicySource::Configured { params } => *params,
        }
    }

    /// A policy for one run: a fresh local one (empty prefix cache), or a fresh handle on the
    /// configured one.
    pub(super) fn policy(&self, ctx: &Context) -> anyhow::Result<Box<dyn Policy>> {
        match self {
            PolicySource::Trained(weights, tokenizer) => Ok(Box::new(stage_policy(ctx, weights, tokenizer))),
            PolicySource::Configured { .. } => Ok(ctx.config.policy.build(&untrained(ctx))?),
        }
    }
}
