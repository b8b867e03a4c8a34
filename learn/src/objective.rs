//! The trainer objective every learner hands its per-token terms to: one minibatch per
//! optimizer step; the CPU training path computes the exact gradient, burn's autodiff (other
//! devices) the same gradient through a surrogate loss.

use std::sync::Mutex;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ponder_policy_init::PolicyError;
use ponder_policy_init::model::Transformer;
use ponder_policy_init::native_train::{NativeModel, ScalarHead};
use ponder_policy_init::trainer::{Objective, StepInfo};

use crate::token_loss::{LossSettings, TokenLoss, TokenStats, TokenTerms, k3, sequence_gradients};

/// Per-token terms served in minibatches, one per optimizer step from `start`.
pub struct TermsObjective {
    pub template: Transformer,
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
    /// Called before each step with the minibatch, to refresh terms that depend on the current
    /// parameters (DPO's pair coefficients).
    #[allow(clippy::type_complexity)]
    pub refresh: Option<Box<dyn FnMut(&[Tensor<2>], &[usize], &mut [TokenTerms]) -> Result<(), PolicyError>>>,
}

impl TermsObjective {
    pub fn new(
        template: Transformer,
        terms: Vec<TokenTerms>,
        minibatches: Vec<Vec<usize>>,
        start: usize,
        settings: LossSettings,
        value_head: bool,
    ) -> TermsObjective {
        TermsObjective {
            template,
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

    fn minibatch(&mut self, params: &[Tensor<2>], step: usize) -> Result<Vec<TokenTerms>, PolicyError> {
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

    fn head(&self, params: &[Tensor<2>]) -> Option<ScalarHead> {
        if !self.value_head {
            return None;
        }
        let n = self.template.params.len();
        let read = |t: &Tensor<2>| {
            t.clone()
                .inner()
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap_or_default()
        };
        Some(ScalarHead {
            weight: read(&params[n]),
            bias: read(&params[n + 1]).first().copied().unwrap_or(0.0),
        })
    }
}

impl Objective for TermsObjective {
    /// burn's autodiff: the surrogate `Σ w·g·log π(a)` (g from the host), the entropy bonus
    /// and the value loss, in tensor operations.
    fn loss(&mut self, params: &[Tensor<2>], step: usize) -> Result<(Tensor<1>, StepInfo), PolicyError> {
        let picked = self.minibatch(params, step)?;
        let n = self.template.params.len();
        let model = self.template.with_params(params[..n].to_vec());
        let device = model.device();
        let len = picked.iter().map(|t| t.tokens.len() - 1).max().unwrap_or(1);
        let batch = picked.len();
        let mut inputs = vec![0i32; batch * len];
        let mut targets = vec![0i32; batch * len];
        for (b, t) in picked.iter().enumerate() {
            for p in 0..t.tokens.len() - 1 {
                inputs[b * len + p] = t.tokens[p] as i32;
                targets[b * len + p] = t.tokens[p + 1] as i32;
            }
        }
        let hidden = model.forward_hidden(&inputs, batch, len);
        let head_slot = model.layout.lm_head.unwrap_or(model.layout.embed);
        let logits = hidden.clone().matmul(params[head_slot].clone().transpose());
        let logp = log_softmax(logits, 1);
        let chosen = logp.clone().gather(
            1,
            Tensor::<2, Int>::from_data(TensorData::new(targets, [batch * len, 1]), &device),
        );
        let chosen_host: Vec<f32> = chosen.clone().inner().into_data().try_into_vec_as().unwrap_or_default();
        let mut coef = vec![0.0f32; batch * len];
        let mut ent_w = vec![0.0f32; batch * len];
        let mut value_w = vec![0.0f32; batch * len];
        let mut value_t = vec![0.0f32; batch * len];
        let mut loss_value = 0.0f64;
        let mut tokens = 0;
        // The same statistics the CPU training path gathers (entropy and value error below).
        let mut step_stats = TokenStats::default();
        let (mut completion_positions, mut value_positions) = (Vec::new(), Vec::new());
        for (b, t) in picked.iter().enumerate() {
            tokens += t.tokens.len() - 1;
            let position = |k: usize| b * len + t.first + k - 1;
            let logprobs: Vec<f32> = (0..t.completion_len()).map(|k| chosen_host[position(k)]).collect();
            for (k, (g, l, clipped)) in sequence_gradients(&self.settings, t, &logprobs).into_iter().enumerate() {
                let p = position(k);
                completion_positions.push(p);
                step_stats.tokens += 1.0;
                step_stats.clipped += f64::from(u8::from(clipped));
                if let Some(&r) = t.ref_logprobs.get(k) {
                    step_stats.kl += f64::from(k3(r, logprobs[k]));
                }
                coef[p] = t.weight * g;
                ent_w[p] = t.weight * self.settings.entropy_coef;
                loss_value += f64::from(t.weight * l);
                if let Some(&r) = t.returns.get(k) {
                    value_positions.push(p);
                    value_w[p] = t.weight * self.settings.value_coef;
                    value_t[p] = r;
                }
            }
        }
        let tensor = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [batch * len, 1]), &device);
        let entropy = (logp.clone().exp() * logp).sum_dim(1).neg();
        let host = |t: &Tensor<2>| -> Vec<f32> { t.clone().inner().into_data().try_into_vec_as().unwrap_or_default() };
        let entropy_host = host(&entropy);
        step_stats.entropy = (completion_positions.iter())
            .map(|&p| f64::from(entropy_host.get(p).copied().unwrap_or(0.0)))
            .sum();
        let mut loss = (chosen * tensor(coef)).sum() - (entropy * tensor(ent_w)).sum();
        if self.value_head {
            let values = hidden.matmul(params[n].clone().transpose()) + params[n + 1].clone();
            let err = values - tensor(value_t);
            let err_host = host(&err);
            step_stats.value_error = (value_positions.iter())
                .map(|&p| f64::from(err_host.get(p).map_or(0.0, |e| e * e)))
                .sum();
            loss = loss + (err.clone() * err * tensor(value_w)).sum();
        }
        let _ = loss_value;
        if let Ok(mut all) = self.stats.lock() {
            all.add(&step_stats);
        }
        Ok((
            loss,
            StepInfo {
                tokens,
                scalars: Vec::new(),
            },
        ))
    }

    fn host_step(
        &mut self,
        params: &[Tensor<2>],
        step: usize,
    ) -> Option<Result<(f64, Vec<Tensor<2>>, StepInfo), PolicyError>> {
        if params.first()?.device() != Device::flex() {
            return None;
        }
        let picked = match self.minibatch(params, step) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let n = self.template.params.len();
        let weights = self.template.with_params(params[..n].to_vec()).to_host();
        let head = self.head(params);
        let refs: Vec<&TokenTerms> = picked.iter().collect();
        let loss = TokenLoss {
            terms: &refs,
            settings: self.settings,
            stats: Mutex::new(TokenStats::default()),
        };
        let inputs: Vec<&[u32]> = picked.iter().map(|t| &t.tokens[..t.tokens.len() - 1]).collect();
        let model = NativeModel::new(&weights, head.as_ref(), true);
        let (value, grads) = model.loss_and_gradients(&inputs, &loss, rayon::current_num_threads());
        if let (Ok(mut all), Ok(step_stats)) = (self.stats.lock(), loss.stats.lock()) {
            all.add(&step_stats);
        }
        let device = params[0].device();
        let mut tensors: Vec<Tensor<2>> = grads
            .tensors
            .into_iter()
            .zip(params)
            .map(|(g, p)| Tensor::from_data(TensorData::new(g, p.dims()), &device))
            .collect();
        if let Some(h) = grads.head {
            let d = h.weight.len();
            tensors.push(Tensor::from_data(TensorData::new(h.weight, [1, d]), &device));
            tensors.push(Tensor::from_data(TensorData::new(vec![h.bias], [1, 1]), &device));
        }
        let tokens = inputs.iter().map(|i| i.len()).sum();
        Some(Ok((
            value,
            tensors,
            StepInfo {
                tokens,
                scalars: Vec::new(),
            },
        )))
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
