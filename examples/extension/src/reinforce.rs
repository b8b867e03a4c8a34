//! The `reinforce` learner: REINFORCE with the batch's mean reward as the baseline, no
//! clipping and no KL, on the tokens the policy sampled.

use ponder_learn::objective::minibatches;
use ponder_learn::token_loss::{LossSettings, TokenTerms};
use ponder_learn::{Experience, LearnResult, LearnStats, Learner, TrainablePolicy, fine_tuning_optim};
use ponder_policy_init::optim::OptimConfig;
use ponder_policy_init::trainer::Progress;
use ponder_runtime::registry::{Kind, LearnCategory};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "reinforce";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReinforceSettings {
    pub lr: f64,
    /// Sequences per optimizer step.
    pub minibatch: usize,
}

impl Default for ReinforceSettings {
    fn default() -> Self {
        ReinforceSettings {
            lr: 1e-4,
            minibatch: 32,
        }
    }
}

impl Kind<LearnCategory> for ReinforceSettings {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1e-7..=1.0).contains(&self.lr) {
            problems.push(format!("lr: must be in [1e-7, 1], not {}", self.lr));
        }
        if self.minibatch == 0 {
            problems.push("minibatch: must be at least 1".into());
        }
        problems
    }

    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(Reinforce {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

#[derive(Debug)]
pub struct Reinforce {
    settings: ReinforceSettings,
    seed: u64,
}

impl Learner for Reinforce {
    fn describe(&self) -> String {
        "REINFORCE (batch-mean baseline)".into()
    }

    fn optim(&self) -> OptimConfig {
        fine_tuning_optim(self.settings.lr, None)
    }

    fn learn(&mut self, policy: &mut TrainablePolicy, batch: &Experience, progress: &dyn Progress) -> LearnResult {
        let (samples, sequences) = policy.trainable_samples(&batch.samples);
        if samples.is_empty() {
            return Ok(LearnStats::default());
        }
        let baseline = samples.iter().map(|x| x.reward).sum::<f32>() / samples.len() as f32;
        let terms: Vec<TokenTerms> = samples
            .iter()
            .zip(sequences)
            .map(|(x, (tokens, first))| TokenTerms::uniform(tokens, first, x.reward - baseline, 1.0))
            .collect();
        self.seed = self.seed.wrapping_add(1);
        let batches = minibatches(terms.len(), self.settings.minibatch, 1, self.seed);
        let steps = batches.len();
        // No clipping, no KL, no entropy bonus, no critic: advantage times log-likelihood.
        let settings = LossSettings::default();
        let (stats, _) = policy.train_terms(terms, batches, settings, steps, progress)?;
        Ok(stats)
    }
}
