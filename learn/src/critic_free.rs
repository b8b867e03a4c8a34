//! The update every critic-free policy-gradient learner shares (GRPO, DAPO, GSPO,
//! REINFORCE++): the batch's samples as token sequences, an advantage per sample from the
//! learner's own rule, the sampling policy's and the reference's log-probabilities, one
//! [`TokenTerms`] per sample, shuffled minibatches, and the token loss.

use ponder_policy_init::optim::OptimConfig;
use ponder_policy_init::trainer::Progress;

use crate::objective::minibatches;
use crate::token_loss::{LossSettings, TokenTerms};
use crate::{Experience, LearnResult, LearnStats, Learner, TrainablePolicy, reference_logprobs, update_logprobs};

/// What one critic-free learner is, besides the update they share: its name, learning rate
/// and loss settings, and advantage rule. [`CriticFreeLearner`] makes it a [`Learner`].
pub trait CriticFree: Clone + Send + Sync + 'static {
    fn describe(&self) -> String;
    fn update(&self) -> CriticFreeUpdate;
    /// The advantage of each sample given each sample's `(group, reward)` and completion
    /// length in tokens; `None` leaves a sample out.
    fn advantages(&self, rewards: &[(usize, f32)], lengths: &[usize]) -> Vec<Option<f32>>;

    /// Whether groups whose rewards are all equal are left out and replaced by other problems'
    /// ([`Learner::refills_uniform_groups`]).
    fn refills_uniform_groups(&self) -> bool {
        false
    }

    /// One message per bad setting, each starting with the field name: by default the
    /// update's ([`CriticFreeUpdate::problems`]).
    fn validate(&self) -> Vec<String> {
        self.update().problems()
    }
}

/// A critic-free learner: its settings and the seed that shuffles its minibatches.
#[derive(Clone, Debug)]
pub struct CriticFreeLearner<S> {
    pub settings: S,
    pub seed: u64,
}

impl<S: CriticFree> Learner for CriticFreeLearner<S> {
    fn describe(&self) -> String {
        self.settings.describe()
    }

    fn optim(&self) -> OptimConfig {
        crate::fine_tuning_optim(self.settings.update().lr, Some(0.0))
    }

    fn refills_uniform_groups(&self) -> bool {
        self.settings.refills_uniform_groups()
    }

    fn learn(&mut self, policy: &mut TrainablePolicy, batch: &Experience, progress: &dyn Progress) -> LearnResult {
        critic_free_update(policy, batch, progress, &self.settings, &mut self.seed)
    }
}

/// How one critic-free update trains, besides the advantages.
#[derive(Clone, Copy, Debug)]
pub struct CriticFreeUpdate {
    pub lr: f64,
    pub loss: LossSettings,
    pub minibatch: usize,
    pub epochs: usize,
    /// Every token of the batch counts the same (Dr. GRPO, DAPO); otherwise every sequence
    /// does, its tokens sharing its weight (GRPO, GSPO).
    pub token_level: bool,
}

/// Trains `policy` on `batch` once as `settings` say: samples longer than the model's context
/// are skipped, the rest weighted by the settings' advantages (one for all of a sample's
/// tokens). The stats' `extra` counts the samples the rule left out
/// (`left_out`), when it left any.
/// `seed` shuffles the minibatches; it moves on by one for every update that trains.
pub fn critic_free_update(
    policy: &mut TrainablePolicy,
    batch: &Experience,
    progress: &dyn Progress,
    settings: &impl CriticFree,
    seed: &mut u64,
) -> LearnResult {
    let update = settings.update();
    let (samples, sequences) = policy.trainable_samples(&batch.samples);
    let lengths: Vec<usize> = sequences.iter().map(|(tokens, first)| tokens.len() - first).collect();
    let rewards: Vec<(usize, f32)> = samples.iter().map(|x| (x.group, x.reward)).collect();
    let chosen = settings.advantages(&rewards, &lengths);
    let left_out = chosen.iter().filter(|a| a.is_none()).count();
    let (mut kept, mut kept_sequences, mut advantages) = (Vec::new(), Vec::new(), Vec::new());
    for ((x, sequence), a) in samples.into_iter().zip(sequences).zip(chosen) {
        if let Some(a) = a {
            kept.push(x);
            kept_sequences.push(sequence);
            advantages.push(a);
        }
    }
    let (samples, sequences) = (kept, kept_sequences);
    let with_left_out = |mut stats: LearnStats| {
        if left_out > 0 {
            stats.extra.push(("left_out".into(), left_out as f64));
        }
        stats
    };
    if samples.is_empty() {
        return Ok(with_left_out(LearnStats::default()));
    }
    let (old, stale, old_tokens) = update_logprobs(policy, batch, &samples, &sequences);
    let (reference, reference_tokens) = reference_logprobs(policy, &sequences, update.loss.kl_coef);
    let mut terms: Vec<TokenTerms> = sequences
        .into_iter()
        .zip(advantages)
        .zip(old.into_iter().zip(reference))
        .map(|(((tokens, first), a), (old, reference))| {
            let weight = if update.token_level {
                1.0
            } else {
                1.0 / (tokens.len() - first) as f32
            };
            TokenTerms {
                old_logprobs: old,
                ref_logprobs: reference,
                ..TokenTerms::uniform(tokens, first, a, weight)
            }
        })
        .collect();
    let stale_stats = stale
        .as_ref()
        .map(|c| c.weigh(&mut terms, update.loss.sequence_ratio))
        .unwrap_or_default();
    *seed = seed.wrapping_add(1);
    let batches = minibatches(terms.len(), update.minibatch, update.epochs, *seed);
    let steps = batches.len();
    let (mut out, _) = policy.train_terms(terms, batches, update.loss, steps, progress)?;
    out.scored_tokens = old_tokens + reference_tokens;
    out.extra.extend(stale_stats);
    Ok(with_left_out(out))
}

impl CriticFreeUpdate {
    /// The ratio clipped to `[1 − clip, 1 + clip]`, a KL penalty to the reference and an
    /// entropy bonus; every token counting the same (`token_level`) or every sequence.
    pub fn clipped(
        lr: f64,
        clip: f32,
        kl: f32,
        entropy: f32,
        minibatch: usize,
        epochs: usize,
        token_level: bool,
    ) -> Self {
        CriticFreeUpdate {
            lr,
            loss: LossSettings {
                clip: Some(clip),
                kl_coef: kl,
                entropy_coef: entropy,
                ..LossSettings::default()
            },
            minibatch,
            epochs,
            token_level,
        }
    }

    /// The upper clip range set apart from the lower one (`clip_low`, `clip_high`).
    pub fn clip_high(mut self, high: f32) -> Self {
        self.loss.clip_high = Some(high);
        self
    }

    /// One message per problem, each starting with the settings' field name: `lr` in
    /// [1e-8, 1], the lower clip range in [0, 1) (`clip_low`, or `clip` without an upper one),
    /// the upper one at least 0, a minibatch and an epoch.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let lr = self.lr;
        if !(1e-8..=1.0).contains(&lr) {
            problems.push(format!("lr: must be in [1e-8, 1], not {lr}"));
        }
        let (clip_low, clip_high) = (self.loss.clip.unwrap_or(0.0), self.loss.clip_high);
        let low = if clip_high.is_some() { "clip_low" } else { "clip" };
        if !(0.0..1.0).contains(&clip_low) {
            problems.push(format!("{low}: must be in [0, 1), not {clip_low}"));
        }
        if let Some(high) = clip_high.filter(|h| *h < 0.0) {
            problems.push(format!("clip_high: must be at least 0, not {high}"));
        }
        if self.minibatch == 0 || self.epochs == 0 {
            problems.push("minibatch: it and epochs must be at least 1".into());
        }
        problems
    }
}
