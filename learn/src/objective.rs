//! The trainer objective every learner hands its per-token terms to: one minibatch per
//! optimizer step, its loss ([`TokenLoss`]) on whichever backend the trainer runs.

use std::sync::Mutex;

use ponder_policy_init::backend::{Backend, PassModel};
use ponder_policy_init::cpu::ScalarHead;
use ponder_policy_init::trainer::{Objective, StepInfo, StepOutput};
use ponder_policy_init::weights::HostTensor;
use ponder_policy_init::{ModelConfig, PolicyError};

use crate::token_loss::{LossSettings, TokenLoss, TokenStats, TokenTerms};

/// Refreshes, before each step, the terms of a minibatch that depend on the current
/// parameters (DPO's pair coefficients).
pub type Refresh = Box<dyn FnMut(&[HostTensor], &[usize], &mut [TokenTerms]) -> Result<(), PolicyError>>;

/// Per-token terms served in minibatches, one per optimizer step from `start`.
pub struct TermsObjective {
    /// The policy's architecture: its `policy_params` parameters are the trainer's first.
    pub config: ModelConfig,
    pub policy_params: usize,
    pub terms: Vec<TokenTerms>,
    pub minibatches: Vec<Vec<usize>>,
    /// The trainer step of the first minibatch.
    pub start: usize,
    pub settings: LossSettings,
    pub value_head: bool,
    /// Rescale weights so that each minibatch's token weights sum to 1.
    pub normalize: bool,
    /// Statistics summed over the steps run so far.
    pub stats: Mutex<TokenStats>,
    /// Called before each step with the minibatch.
    pub refresh: Option<Refresh>,
}

impl TermsObjective {
    pub fn new(
        config: ModelConfig,
        terms: Vec<TokenTerms>,
        minibatches: Vec<Vec<usize>>,
        start: usize,
        settings: LossSettings,
        value_head: bool,
    ) -> TermsObjective {
        TermsObjective {
            policy_params: ponder_policy_init::weights::Layout::tensor_count(&config),
            config,
            terms,
            minibatches,
            start,
            settings,
            value_head,
            normalize: true,
            stats: Mutex::new(TokenStats::default()),
            refresh: None,
        }
    }

    fn minibatch(&mut self, params: &[HostTensor], step: usize) -> Result<Vec<TokenTerms>, PolicyError> {
        let index = step
            .checked_sub(self.start)
            .ok_or_else(|| PolicyError::Config("step before the first minibatch".into()))?;
        let members = self
            .minibatches
            .get(index % self.minibatches.len().max(1))
            .cloned()
            .ok_or_else(|| PolicyError::Config("no minibatches".into()))?;
        if let Some(refresh) = &mut self.refresh {
            refresh(params, &members, &mut self.terms)?;
        }
        let mut picked: Vec<TokenTerms> = members.iter().map(|&i| self.terms[i].clone()).collect();
        if self.normalize {
            let total: f32 = picked.iter().map(|t| t.weight * t.completion_len() as f32).sum();
            for t in &mut picked {
                t.weight /= total.max(f32::MIN_POSITIVE);
            }
        }
        Ok(picked)
    }
}

impl Objective for TermsObjective {
    fn step(&mut self, params: &[HostTensor], step: usize, backend: &Backend) -> Result<StepOutput, PolicyError> {
        let picked = self.minibatch(params, step)?;
        let n = self.policy_params;
        let head = self.value_head.then(|| ScalarHead {
            weight: params[n].data.clone(),
            bias: params[n + 1].data.first().copied().unwrap_or(0.0),
        });
        let refs: Vec<&TokenTerms> = picked.iter().collect();
        let loss = TokenLoss {
            terms: &refs,
            settings: self.settings,
            stats: Mutex::new(TokenStats::default()),
        };
        let inputs: Vec<&[u32]> = picked.iter().map(|t| &t.tokens[..t.tokens.len() - 1]).collect();
        let model = PassModel {
            config: &self.config,
            tensors: &params[..n],
            head: head.as_ref(),
            lm: true,
        };
        let (value, grads) = backend.loss_and_gradients(model, &inputs, &loss);
        if let (Ok(mut all), Ok(step_stats)) = (self.stats.lock(), loss.stats.lock()) {
            all.add(&step_stats);
        }
        let mut gradients = grads.tensors;
        if let Some(h) = grads.head {
            gradients.push(h.weight);
            gradients.push(vec![h.bias]);
        }
        Ok(StepOutput {
            loss: value,
            gradients,
            info: StepInfo {
                tokens: inputs.iter().map(|i| i.len()).sum(),
                scalars: Vec::new(),
            },
        })
    }
}

/// Minibatches of about `size` sequences over `epochs` passes, shuffled by `seed`.
pub fn minibatches(count: usize, size: usize, epochs: usize, seed: u64) -> Vec<Vec<usize>> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..epochs.max(1) {
        let mut order: Vec<usize> = (0..count).collect();
        order.shuffle(&mut rng);
        out.extend(order.chunks(size.max(1)).map(|c| c.to_vec()));
    }
    out
}

/// Summary statistics per token from summed statistics.
pub fn per_token(stats: &TokenStats) -> (f64, f64, f64) {
    let n = stats.tokens.max(1.0);
    (stats.kl / n, stats.entropy / n, stats.clipped / n)
}
