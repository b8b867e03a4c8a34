//! # ponder-learn
//!
//! The last part of the recipe: turning what sampling and search found into a better policy.
//! The [`Learner`] trait and its kinds — behaviour cloning and expert iteration ([`bc`]),
//! [`dpo`], [`ppo`] (a value head, GAE, clipped ratio, KL to the reference, entropy bonus,
//! optional per-step process rewards) and [`grpo`] (group-normalised advantages, Dr. GRPO
//! variant), DAPO, GSPO and REINFORCE++ — all on one token-level loss ([`token_loss`]) and the
//! policy trainer's machinery; and [`prime`], PRIME's implicit process reward model, which
//! learns online during RL through the same loss.

pub mod bc;
pub mod critic_free;
pub mod dapo;
pub mod dpo;
pub mod grpo;
pub mod gspo;
pub mod objective;
pub mod ppo;
pub mod prime;
pub mod reinforce_pp;
pub mod token_loss;

use ponder_policy_init::backend::Backend;
use ponder_policy_init::cpu::ScalarHead;
use ponder_policy_init::optim::OptimConfig;
use ponder_policy_init::trainer::{Objective, Progress, TrainSummary, Trainer, TrainerConfig};
use ponder_policy_init::weights::HostTensor;
use ponder_policy_init::{HostWeights, ModelConfig, PolicyError, Tokenizer};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Config(String),
}

/// One sampled completion and what is known of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The text the policy was conditioned on (problem prompt, and any context).
    pub prompt: String,
    /// What it generated (steps and answer line), as generated.
    pub completion: String,
    /// The token ids the policy sampled for `completion`; when given, the on-policy learners
    /// (GRPO, PPO) train on exactly these tokens rather than on the text encoded anew. Empty:
    /// the text is encoded (demonstrations, a search's chosen trace, a remote policy).
    #[serde(default)]
    pub completion_tokens: Vec<u32>,
    /// The sampling policy's log-probability of each of `completion_tokens`; when the two have
    /// the same length these are the old policy's log-probs of the update (no recomputation).
    pub logprobs: Vec<f32>,
    /// The outcome reward (verifier, or an outcome model).
    pub reward: f32,
    /// Per-step process rewards (a PRM's step scores), one per completed step; may be empty.
    pub step_rewards: Vec<f32>,
    /// Whether the answer is right (for filtering and statistics).
    pub correct: bool,
    /// Samples of the same prompt share a group (GRPO's baseline, DPO's pairs).
    pub group: usize,
}

/// A preference pair (DPO).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preference {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// What one learning step works from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Experience {
    /// Sampled completions with rewards (PPO, GRPO; BC filters the right ones; DPO pairs them).
    pub samples: Vec<Sample>,
    /// Demonstrations: prompt and completion (behaviour cloning).
    pub demonstrations: Vec<(String, String)>,
    /// Preference pairs (DPO).
    pub preferences: Vec<Preference>,
    /// The samples came from an older policy snapshot than the one being trained
    /// (asynchronous rollouts): the update then corrects with truncated importance sampling,
    /// this being the cap on each token's weight ([`StaleCorrection`]). `None`: on-policy.
    #[serde(default)]
    pub truncated_is: Option<f32>,
}

/// What one learning step did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnStats {
    pub loss: f64,
    /// Mean per-token KL estimate to the reference policy.
    pub kl: f64,
    /// Mean per-token entropy of the policy.
    pub entropy: f64,
    /// Share of tokens whose ratio was clipped.
    pub clip_fraction: f64,
    pub optimizer_steps: usize,
    /// Tokens processed by training (for compute accounting).
    pub tokens: u64,
    /// Tokens of forward-only passes: the old policy's and the reference policy's log-probs,
    /// the critic's values (for compute accounting: about 2 * params FLOPs each).
    pub scored_tokens: u64,
    pub sequences: usize,
    pub extra: Vec<(String, f64)>,
}

/// The policy being trained: its parameters and optimizer (in the shared trainer), a value head
/// when the learner needs one, and the frozen reference policy.
pub struct TrainablePolicy {
    /// The policy's architecture: its parameters are the trainer's first ones.
    pub config: ModelConfig,
    pub trainer: Trainer,
    pub tokenizer: Tokenizer,
    pub reference: HostWeights,
    pub value_head: bool,
}

impl std::fmt::Debug for TrainablePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrainablePolicy(step {})", self.trainer.step)
    }
}

/// The optimizer every learner fine-tunes with: a short warmup, its own learning rate and
/// weight decay, the rest as in policy initialisation.
pub fn fine_tuning_optim(lr: f64, weight_decay: Option<f64>) -> OptimConfig {
    let base = OptimConfig::default();
    OptimConfig {
        lr,
        warmup_steps: 5,
        weight_decay: weight_decay.unwrap_or(base.weight_decay),
        ..base
    }
}

impl TrainablePolicy {
    /// A trainable copy of `weights` (also the reference), trained on `backend` with a
    /// constant learning rate after warmup, and a fresh value head learning at
    /// `value_head_lr` when one is given.
    pub fn new(
        weights: &HostWeights,
        tokenizer: Tokenizer,
        backend: Backend,
        optim: OptimConfig,
        value_head_lr: Option<f64>,
    ) -> TrainablePolicy {
        let d = weights.config.d_model;
        let value_head = value_head_lr.is_some();
        let heads = match value_head {
            true => vec![
                (
                    "value_head.weight",
                    HostTensor {
                        shape: vec![1, d],
                        data: vec![0.0; d],
                    },
                ),
                (
                    "value_head.bias",
                    HostTensor {
                        shape: vec![1],
                        data: vec![0.0],
                    },
                ),
            ],
            false => Vec::new(),
        };
        let config = TrainerConfig {
            optim: OptimConfig {
                min_lr_ratio: 1.0,
                ..optim
            },
            steps: 0,
            checkpoint_every: usize::MAX,
            log_every: usize::MAX,
            divergence_floor: 1.0,
            // An RL step's snapshot would belong to another iteration's rollouts, and a skipped
            // minibatch would go unreported: the update fails instead.
            max_rewinds: 0,
            skip_spikes: 0,
            ..TrainerConfig::default()
        };
        let lr = config.optim.lr;
        let mut trainer = Trainer::for_weights_and_heads(config, weights, heads).with_backend(backend);
        if let Some(head_lr) = value_head_lr {
            let n = trainer.lr_scale.len();
            trainer.lr_scale[n - 2..].fill(head_lr / lr);
        }
        TrainablePolicy {
            trainer,
            config: weights.config.clone(),
            tokenizer,
            reference: weights.clone(),
            value_head,
        }
    }

    /// Whether `[bos] prompt completion` (as [`encode_sample`] or [`sample_tokens`] give it)
    /// fits the policy's context and has at least one completion token to learn from.
    pub fn fits(&self, (tokens, first): &(Vec<u32>, usize)) -> bool {
        tokens.len() <= self.config.max_seq_len + 1 && *first < tokens.len()
    }

    /// The samples the policy can learn from, with their token sequences ([`sample_tokens`]);
    /// the others (too long, or with an empty completion) are left out.
    pub fn trainable_samples<'a>(&self, samples: &'a [Sample]) -> (Vec<&'a Sample>, Vec<(Vec<u32>, usize)>) {
        samples
            .iter()
            .map(|x| (x, sample_tokens(&self.tokenizer, x)))
            .filter(|(_, sequence)| self.fits(sequence))
            .unzip()
    }

    fn policy_params(&self) -> usize {
        ponder_policy_init::weights::Layout::tensor_count(&self.config)
    }

    /// The current policy weights.
    pub fn weights(&self) -> HostWeights {
        HostWeights {
            config: self.config.clone(),
            tensors: self.trainer.params[..self.policy_params()].to_vec(),
        }
    }

    /// The current value head, if there is one.
    pub fn value_head(&self) -> Option<ScalarHead> {
        if !self.value_head {
            return None;
        }
        let n = self.policy_params();
        Some(ScalarHead {
            weight: self.trainer.params[n].data.clone(),
            bias: self.trainer.params[n + 1].data.first().copied().unwrap_or(0.0),
        })
    }

    /// Trains `steps` minibatches of per-token terms and reports the learner's statistics
    /// (with no extra figures) beside the raw token statistics.
    pub fn train_terms(
        &mut self,
        terms: Vec<crate::token_loss::TokenTerms>,
        batches: Vec<Vec<usize>>,
        settings: crate::token_loss::LossSettings,
        steps: usize,
        progress: &dyn Progress,
    ) -> Result<(LearnStats, crate::token_loss::TokenStats), LearnError> {
        let sequences = terms.len();
        let tokens_before = self.trainer.tokens;
        let mut objective = crate::objective::TermsObjective::new(
            self.config.clone(),
            terms,
            batches,
            self.trainer.step,
            settings,
            self.value_head,
        );
        let summary = self.train(&mut objective, steps, progress)?;
        let stats = objective.stats.lock().map(|s| *s).unwrap_or_default();
        let (kl, entropy, clip_fraction) = crate::objective::per_token(&stats);
        let out = LearnStats {
            loss: summary.final_loss,
            kl,
            entropy,
            clip_fraction,
            optimizer_steps: steps,
            tokens: self.trainer.tokens - tokens_before,
            sequences,
            scored_tokens: 0,
            extra: Vec::new(),
        };
        Ok((out, stats))
    }

    /// Runs `steps` more optimizer steps on `objective`.
    pub fn train(
        &mut self,
        objective: &mut dyn Objective,
        steps: usize,
        progress: &dyn Progress,
    ) -> Result<TrainSummary, PolicyError> {
        self.trainer.config.steps = self.trainer.step + steps;
        self.trainer.run(objective, progress, &|_| Ok(()))
    }
}

/// One update of the policy from experience.
pub trait Learner: Send {
    fn describe(&self) -> String;

    /// The learning rate of the value head (PPO's critic) when the learner needs one.
    fn value_head_lr(&self) -> Option<f64> {
        None
    }

    /// The optimizer settings this learner trains with.
    fn optim(&self) -> OptimConfig;

    /// Whether the learner leaves out groups whose samples all earned the same reward and
    /// wants the batch refilled with other problems' groups (DAPO's dynamic sampling); the RL
    /// stage then samples more problems, up to `pipeline.rl.refill_rounds` times.
    fn refills_uniform_groups(&self) -> bool {
        false
    }

    fn learn(&mut self, policy: &mut TrainablePolicy, batch: &Experience, progress: &dyn Progress) -> LearnResult;
}

/// What [`Learner::learn`] returns.
pub type LearnResult = Result<LearnStats, LearnError>;

impl std::fmt::Debug for dyn Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Learner({})", self.describe())
    }
}

/// Log-probabilities of each completion token under `weights`, batched on `backend`.
pub fn completion_logprobs(
    weights: &HostWeights,
    tokenizer: &Tokenizer,
    pairs: &[(&str, &str)],
    backend: &Backend,
) -> Vec<Vec<f32>> {
    let policy =
        ponder_policy_init::TransformerPolicy::on_backend(weights, tokenizer.clone(), backend).with_prefix_cache(0);
    pairs.chunks(256).flat_map(|chunk| policy.score(chunk)).collect()
}

/// Log-probabilities of the tokens from `first` on of each token sequence under `weights`,
/// batched on `backend`.
pub fn sequence_logprobs(
    weights: &HostWeights,
    tokenizer: &Tokenizer,
    sequences: &[(Vec<u32>, usize)],
    backend: &Backend,
) -> Vec<Vec<f32>> {
    let policy =
        ponder_policy_init::TransformerPolicy::on_backend(weights, tokenizer.clone(), backend).with_prefix_cache(0);
    sequences
        .chunks(256)
        .flat_map(|chunk| policy.score_tokens(chunk))
        .collect()
}

/// `[bos] prompt completion` as the policy sampled it, and where the completion starts: the
/// sampled token ids when the sample has them, else the completion text encoded.
pub fn sample_tokens(tokenizer: &Tokenizer, sample: &Sample) -> (Vec<u32>, usize) {
    if sample.completion_tokens.is_empty() {
        return encode_sample(tokenizer, &sample.prompt, &sample.completion);
    }
    let (mut tokens, first) = encode_sample(tokenizer, &sample.prompt, "");
    tokens.extend(&sample.completion_tokens);
    (tokens, first)
}

/// The old policy's log-probs of each sequence's completion: the behaviour log-probs recorded
/// at sampling where a sample has one per sampled token, else computed under the current
/// weights. Returns them with the tokens computed (a forward pass over each whole sequence).
pub fn old_logprobs(
    policy: &TrainablePolicy,
    samples: &[&Sample],
    sequences: &[(Vec<u32>, usize)],
) -> (Vec<Vec<f32>>, u64) {
    let recorded = |x: &Sample| !x.completion_tokens.is_empty() && x.logprobs.len() == x.completion_tokens.len();
    let missing: Vec<(Vec<u32>, usize)> = samples
        .iter()
        .zip(sequences)
        .filter(|(x, _)| !recorded(x))
        .map(|(_, s)| s.clone())
        .collect();
    let computed_tokens = missing.iter().map(|(t, _)| t.len() as u64).sum();
    let mut computed = if missing.is_empty() {
        Vec::new()
    } else {
        sequence_logprobs(&policy.weights(), &policy.tokenizer, &missing, &policy.trainer.backend)
    }
    .into_iter();
    let old = samples
        .iter()
        .map(|x| {
            if recorded(x) {
                x.logprobs.clone()
            } else {
                computed.next().unwrap_or_default()
            }
        })
        .collect();
    (old, computed_tokens)
}

/// The decoupled correction for samples of an older policy snapshot (asynchronous RL; Fu et
/// al., AReaL, arXiv 2505.24298): the current weights are the proximal policy the clipped ratio
/// is taken against, and each token's advantage is multiplied by its truncated importance
/// weight `min(π_prox / π_behaviour, cap)` against the behaviour log-probs recorded at
/// sampling. The surrogate is linear in the advantage, so scaling it is exactly weighting the
/// token's loss.
pub struct StaleCorrection {
    /// The current policy's log-probs: the ratio's denominator.
    pub proximal: Vec<Vec<f32>>,
    /// Per token, `log π_prox − log π_behaviour`.
    pub log_ratios: Vec<Vec<f32>>,
    pub cap: f32,
    /// Tokens the proximal pass computed.
    pub tokens: u64,
}

impl StaleCorrection {
    /// For `sequences` whose behaviour log-probs are `behaviour`, under the current weights.
    pub fn new(
        policy: &TrainablePolicy,
        sequences: &[(Vec<u32>, usize)],
        behaviour: &[Vec<f32>],
        cap: f32,
    ) -> StaleCorrection {
        let proximal = sequence_logprobs(&policy.weights(), &policy.tokenizer, sequences, &policy.trainer.backend);
        let log_ratios = proximal
            .iter()
            .zip(behaviour)
            .map(|(p, b)| p.iter().zip(b).map(|(p, b)| p - b).collect())
            .collect();
        StaleCorrection {
            proximal,
            log_ratios,
            cap,
            tokens: sequences.iter().map(|(t, _)| t.len() as u64).sum(),
        }
    }

    /// Per sequence, each token's truncated weight; with one ratio per sequence (GSPO, which
    /// reads a sequence's advantage from its first token), the sequence's
    /// `min(exp(mean(log π_prox − log π_behaviour)), cap)` on every token.
    pub fn weights(&self, sequence_ratio: bool) -> Vec<Vec<f32>> {
        self.log_ratios
            .iter()
            .map(|r| {
                if sequence_ratio {
                    let mean = r.iter().sum::<f32>() / r.len().max(1) as f32;
                    vec![mean.exp().min(self.cap); r.len()]
                } else {
                    r.iter().map(|d| d.exp().min(self.cap)).collect()
                }
            })
            .collect()
    }

    /// Multiplies each token's advantage by its weight ([`StaleCorrection::weights`]); returns
    /// the mean weight and the share of weights at the cap, for the iteration's metrics.
    pub fn weigh(&self, terms: &mut [token_loss::TokenTerms], sequence_ratio: bool) -> Vec<(String, f64)> {
        let weights = self.weights(sequence_ratio);
        for (t, w) in terms.iter_mut().zip(&weights) {
            for (a, w) in t.advantages.iter_mut().zip(w) {
                *a *= w;
            }
        }
        let all: Vec<f32> = weights.into_iter().flatten().collect();
        let n = all.len().max(1) as f64;
        vec![
            (
                "tis_weight_mean".into(),
                all.iter().map(|&w| f64::from(w)).sum::<f64>() / n,
            ),
            (
                "tis_capped".into(),
                all.iter().filter(|&&w| w >= self.cap).count() as f64 / n,
            ),
        ]
    }
}

/// Old log-probs for an update: the behaviour log-probs ([`old_logprobs`]), or, for a stale
/// batch, the proximal ones with the correction that goes with them.
pub fn update_logprobs(
    policy: &TrainablePolicy,
    batch: &Experience,
    samples: &[&Sample],
    sequences: &[(Vec<u32>, usize)],
) -> (Vec<Vec<f32>>, Option<StaleCorrection>, u64) {
    let (old, old_tokens) = old_logprobs(policy, samples, sequences);
    match batch.truncated_is {
        Some(cap) => {
            let correction = StaleCorrection::new(policy, sequences, &old, cap);
            let tokens = old_tokens + correction.tokens;
            (correction.proximal.clone(), Some(correction), tokens)
        }
        None => (old, None, old_tokens),
    }
}

/// The reference policy's log-probs of each sequence's completion (empty when the KL term is
/// off), with the tokens computed.
pub fn reference_logprobs(policy: &TrainablePolicy, sequences: &[(Vec<u32>, usize)], kl: f32) -> (Vec<Vec<f32>>, u64) {
    if kl == 0.0 {
        return (vec![Vec::new(); sequences.len()], 0);
    }
    let tokens = sequences.iter().map(|(t, _)| t.len() as u64).sum();
    (
        sequence_logprobs(&policy.reference, &policy.tokenizer, sequences, &policy.trainer.backend),
        tokens,
    )
}

/// `[bos] prompt completion` as tokens, and where the completion starts.
pub fn encode_sample(tokenizer: &Tokenizer, prompt: &str, completion: &str) -> (Vec<u32>, usize) {
    let mut tokens: Vec<u32> = tokenizer.bos_id.into_iter().collect();
    tokens.extend(tokenizer.encode(prompt));
    let first = tokens.len();
    tokens.extend(tokenizer.encode(completion));
    (tokens, first)
}
