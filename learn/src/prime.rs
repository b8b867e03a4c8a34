//! PRIME's implicit process reward model (Cui et al., arXiv 2502.01456): a language model
//! `π_φ` whose log-ratio to a frozen reference `π_ref` is the reward. A trace's implicit
//! reward up to token `t` is `q_t = β · Σ_{i ≤ t} (log π_φ(y_i) − log π_ref(y_i))`; trained with
//! outcome labels only, `σ(q)` at the last token estimates the chance the answer is right and,
//! read at each step's end, `σ(q_t)` is a process score with no step labels behind it.
//!
//! - Both start from the initialised policy, so every score starts at `σ(0) = 0.5`.
//! - During RL it learns online: each iteration's rollouts, with their verified outcomes, give
//!   one or more minibatch steps on the cross-entropy `−[y log σ(q_T) + (1 − y) log(1 − σ(q_T))]`.
//!   The gradient of `q_T` is `β` times each completion token's `∇ log π_φ`, so a step
//!   weights each token's log-likelihood by `β (y − σ(q_T))` (exact, re-linearised at every
//!   step, as DPO's pairs are).
//! - Step scores are `σ(q)` at each step's last token, in [0, 1] like a trained PRM's, so PPO's
//!   step rewards (score differences) and every searcher read it as they read a PRM.
//! - Its compute counts the two forward passes of every scored token and the update's passes.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::backend::Backend;
use ponder_policy_init::checkpoint::Checkpointer;
use ponder_policy_init::metrics::MetricsLog;
use ponder_policy_init::trainer::Silent;
use ponder_policy_init::{HostWeights, Tokenizer};
use ponder_reward::training::encode_trace;
use ponder_reward::{Granularity, OnlineUpdate, OutcomeExample, RewardError, RewardModel, StepScores, sigmoid};
use serde::{Deserialize, Serialize};

use crate::objective::{TermsObjective, minibatches};
use crate::token_loss::{LossSettings, TokenTerms};
use crate::{TrainablePolicy, sequence_logprobs};

/// `[reward] kind = "prime"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimeSettings {
    /// The implicit reward's scale `β` (PRIME's 0.05).
    pub beta: f32,
    /// Learning rate of the online updates.
    pub lr: f64,
    /// Passes over each iteration's rollouts.
    pub epochs: usize,
    /// Rollouts per optimizer step.
    pub minibatch: usize,
    /// The weights to start from (a Hugging Face folder); default: the run's initialised policy.
    pub from: Option<String>,
}

impl Default for PrimeSettings {
    fn default() -> Self {
        PrimeSettings {
            beta: 0.05,
            lr: 1e-4,
            epochs: 1,
            minibatch: 64,
            from: None,
        }
    }
}

impl PrimeSettings {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            problems.push(format!("beta: must be positive, not {}", self.beta));
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            problems.push(format!("lr: must be in (0, 1), not {}", self.lr));
        }
        if self.epochs == 0 || self.minibatch == 0 {
            problems.push("epochs and minibatch: must be at least 1".into());
        }
        problems
    }
}

/// The implicit PRM: `π_φ` in a trainer of its own, `π_ref` frozen (the trainer's reference).
pub struct ImplicitPrm {
    settings: PrimeSettings,
    state: Mutex<TrainablePolicy>,
    params: f64,
    calls: AtomicU64,
    /// Tokens of forward-only passes (scoring: `π_φ` and `π_ref` each) and of training passes.
    forward_tokens: AtomicU64,
    train_tokens: AtomicU64,
}

impl ImplicitPrm {
    /// `π_φ` and `π_ref` both start as `weights`; updates run on `backend`.
    pub fn new(weights: &HostWeights, tokenizer: Tokenizer, backend: Backend, settings: PrimeSettings) -> ImplicitPrm {
        let optim = crate::fine_tuning_optim(settings.lr, Some(0.0));
        ImplicitPrm {
            params: weights.params() as f64,
            state: Mutex::new(TrainablePolicy::new(weights, tokenizer, backend, optim, None)),
            settings,
            calls: AtomicU64::new(0),
            forward_tokens: AtomicU64::new(0),
            train_tokens: AtomicU64::new(0),
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, TrainablePolicy>, RewardError> {
        self.state
            .lock()
            .map_err(|_| RewardError::Format("the implicit PRM's state was poisoned by a failed update".into()))
    }

    /// `π_φ`'s current weights.
    pub fn weights(&self) -> Result<HostWeights, RewardError> {
        Ok(self.state()?.weights())
    }

    /// Per sequence, the completion tokens' log-probs under `π_φ` and under `π_ref` (two
    /// forward passes, counted).
    fn logprobs(&self, state: &TrainablePolicy, sequences: &[(Vec<u32>, usize)]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let backend = &state.trainer.backend;
        let current = sequence_logprobs(&state.weights(), &state.tokenizer, sequences, backend);
        let reference = sequence_logprobs(&state.reference, &state.tokenizer, sequences, backend);
        let tokens: u64 = sequences.iter().map(|(t, _)| t.len() as u64).sum();
        self.forward_tokens.fetch_add(2 * tokens, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        (current, reference)
    }

    /// Per sequence, the implicit reward after each completion token: `β · Σ log-ratio`.
    fn implicit_rewards(&self, sequences: &[(Vec<u32>, usize)]) -> Result<Vec<Vec<f32>>, RewardError> {
        let (current, reference) = self.logprobs(&*self.state()?, sequences);
        Ok(current
            .iter()
            .zip(&reference)
            .map(|(lp, lr)| {
                let mut sum = 0.0f32;
                lp.iter()
                    .zip(lr)
                    .map(|(a, b)| {
                        sum += self.settings.beta * (a - b);
                        sum
                    })
                    .collect()
            })
            .collect())
    }

    /// Step scores of traces: `σ(q)` at the last token of each step and of the answer line.
    pub fn score_pairs(&self, pairs: &[(&Problem, &Trace)]) -> Result<Vec<StepScores>, RewardError> {
        let tokenizer = self.state()?.tokenizer.clone();
        let encoded: Vec<_> = pairs.iter().map(|(p, t)| encode_trace(&tokenizer, p, t)).collect();
        // The completion starts after the prompt's last token.
        let sequences: Vec<(Vec<u32>, usize)> = encoded.iter().map(|e| (e.tokens.clone(), e.prompt_end + 1)).collect();
        let rewards = self.implicit_rewards(&sequences)?;
        Ok(encoded
            .iter()
            .zip(&rewards)
            .map(|(e, q)| {
                let at = |end: usize| {
                    end.checked_sub(e.prompt_end + 1)
                        .and_then(|i| q.get(i))
                        .map(|&x| sigmoid(x))
                };
                StepScores {
                    steps: e.step_ends.iter().filter_map(|&end| at(end)).collect(),
                    answer: e.answer_end.and_then(at),
                }
            })
            .collect())
    }
}

#[async_trait]
impl RewardModel for ImplicitPrm {
    fn describe(&self) -> String {
        format!(
            "PRIME implicit process reward model (beta {}, {:.2}M parameters, learning online)",
            self.settings.beta,
            self.params / 1e6
        )
    }

    fn granularity(&self) -> Granularity {
        Granularity::Process
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        let pairs: Vec<(&Problem, &Trace)> = traces.iter().map(|t| (problem, t)).collect();
        self.score_pairs(&pairs)
    }

    async fn score_many(&self, items: &[(&Problem, &[Trace])]) -> Result<Vec<Vec<StepScores>>, RewardError> {
        ponder_reward::score_grouped(items, |pairs| self.score_pairs(pairs))
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// 2 FLOPs per parameter for every forward token, 6 for every trained one.
    fn flops(&self) -> f64 {
        self.params
            * (2.0 * self.forward_tokens.load(Ordering::Relaxed) as f64
                + 6.0 * self.train_tokens.load(Ordering::Relaxed) as f64)
    }

    fn learns_online(&self) -> bool {
        true
    }

    fn learn_outcomes(&self, rollouts: &[OutcomeExample]) -> Result<OnlineUpdate, RewardError> {
        let rollouts: Vec<&OutcomeExample> = rollouts.iter().filter(|r| r.first < r.tokens.len()).collect();
        if rollouts.is_empty() {
            return Ok(OnlineUpdate::default());
        }
        let s = self.settings.clone();
        let sequences: Vec<(Vec<u32>, usize)> = rollouts.iter().map(|r| (r.tokens.clone(), r.first)).collect();
        let labels: Vec<f32> = rollouts.iter().map(|r| f32::from(u8::from(r.correct))).collect();
        let mut state = self.state()?;
        let (current, reference) = self.logprobs(&state, &sequences);
        let sum = |l: &Vec<f32>| l.iter().sum::<f32>();
        let reference: Vec<f32> = reference.iter().map(sum).collect();
        let accuracy = current
            .iter()
            .zip(&reference)
            .zip(&labels)
            .filter(|((lp, r), y)| (sum(lp) > **r) == (**y > 0.5))
            .count() as f64
            / rollouts.len() as f64;
        let terms: Vec<TokenTerms> = sequences
            .iter()
            .map(|(tokens, first)| TokenTerms::uniform(tokens.clone(), *first, 0.0, 1.0))
            .collect();
        // Shuffled by the optimizer step reached, which a saved state keeps: a resumed run
        // draws the minibatches the uninterrupted one did.
        let seed = 0x9e37_79b9 ^ state.trainer.step as u64;
        let batches = minibatches(terms.len(), s.minibatch, s.epochs, seed);
        let steps = batches.len();
        let losses = std::sync::Arc::new(Mutex::new(Vec::<f32>::new()));
        let loss_log = losses.clone();
        let (config, tokenizer, backend, beta) = (
            state.config.clone(),
            state.tokenizer.clone(),
            state.trainer.backend.clone(),
            s.beta,
        );
        let n_policy = ponder_policy_init::weights::Layout::tensor_count(&config);
        let all = sequences.clone();
        // Before each step: the current `q_T` of the minibatch's rollouts, and each token's
        // weight `β (y − σ(q_T)) / batch` (the loss's exact gradient through `log π_φ`).
        let refresh =
            move |params: &[ponder_policy_init::weights::HostTensor], members: &[usize], terms: &mut [TokenTerms]| {
                let weights = HostWeights {
                    config: config.clone(),
                    tensors: params[..n_policy].to_vec(),
                };
                let picked: Vec<(Vec<u32>, usize)> = members.iter().map(|&i| all[i].clone()).collect();
                let current = sequence_logprobs(&weights, &tokenizer, &picked, &backend);
                let batch = members.len().max(1) as f32;
                for (&i, lp) in members.iter().zip(&current) {
                    let q = beta * (lp.iter().sum::<f32>() - reference[i]);
                    let (p, y) = (sigmoid(q), labels[i]);
                    for a in &mut terms[i].advantages {
                        *a = beta * (y - p);
                    }
                    terms[i].weight = 1.0 / batch;
                    if let Ok(mut l) = loss_log.lock() {
                        l.push(-(y * p.max(1e-12).ln() + (1.0 - y) * (1.0 - p).max(1e-12).ln()));
                    }
                }
                Ok(())
            };
        let settings = LossSettings {
            clip: None,
            ..LossSettings::default()
        };
        let mut objective = TermsObjective::new(
            state.config.clone(),
            terms,
            batches.clone(),
            state.trainer.step,
            settings,
            false,
        );
        objective.normalize = false;
        objective.refresh = Some(Box::new(refresh));
        let trained_before = state.trainer.tokens;
        state.train(&mut objective, steps, &Silent)?;
        // Forward passes besides `logprobs`'s: `π_φ` over each minibatch before its step.
        let forward: u64 = batches.iter().flatten().map(|&i| sequences[i].0.len() as u64).sum();
        self.forward_tokens.fetch_add(forward, Ordering::Relaxed);
        self.train_tokens
            .fetch_add(state.trainer.tokens - trained_before, Ordering::Relaxed);
        let losses = losses.lock().map(|l| l.clone()).unwrap_or_default();
        Ok(OnlineUpdate {
            loss: f64::from(losses.iter().sum::<f32>()) / losses.len().max(1) as f64,
            optimizer_steps: steps,
            examples: rollouts.len(),
            accuracy,
        })
    }

    fn save_online_state(&self, dir: &Path) -> Result<(), RewardError> {
        let mut state = self.state()?;
        state
            .trainer
            .set_outputs(Checkpointer::new(dir, 1), MetricsLog::disabled("prime"));
        state.trainer.save_checkpoint(&|_| Ok(()))?;
        Ok(())
    }

    fn load_online_state(&self, dir: &Path) -> Result<(), RewardError> {
        let mut state = self.state()?;
        state
            .trainer
            .set_outputs(Checkpointer::new(dir, 1), MetricsLog::disabled("prime"));
        if state.trainer.resume()?.is_none() {
            return Err(RewardError::Format(format!(
                "{}: no saved state of the implicit PRM",
                dir.display()
            )));
        }
        Ok(())
    }
}
