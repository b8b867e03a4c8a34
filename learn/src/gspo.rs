//! GSPO (Zheng et al., 2025, arXiv 2507.18071): GRPO's group-normalised advantages with one
//! importance ratio per sequence, `s = (π(y|x) / π_old(y|x))^(1/|y|)` (the geometric mean of its
//! tokens' ratios), clipped per sequence to `[1 − clip_low, 1 + clip_high]` (3e-4 and 4e-4, the
//! paper's ranges: a sequence ratio moves far less than a token's), each sequence counting
//! once. No KL term by default.

use ponder_policy_init::optim::OptimConfig;
use ponder_policy_init::trainer::Progress;
use serde::{Deserialize, Serialize};

use crate::critic_free::{CriticFreeUpdate, check_update_settings, critic_free_update};
use crate::grpo::group_advantages;
use crate::token_loss::LossSettings;
use crate::{Experience, LearnError, LearnStats, Learner, TrainablePolicy};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GspoSettings {
    pub lr: f64,
    pub clip_low: f32,
    pub clip_high: f32,
    pub kl: f32,
    pub entropy: f32,
    pub epochs: usize,
    pub minibatch: usize,
}

impl Default for GspoSettings {
    fn default() -> Self {
        GspoSettings {
            lr: 1e-4,
            clip_low: 3e-4,
            clip_high: 4e-4,
            kl: 0.0,
            entropy: 0.0,
            epochs: 1,
            minibatch: 64,
        }
    }
}

impl GspoSettings {
    /// One message per bad setting, each starting with the field name.
    pub fn validate(&self) -> Vec<String> {
        check_update_settings(
            self.lr,
            self.clip_low,
            Some(self.clip_high),
            self.minibatch,
            self.epochs,
        )
    }
}

#[derive(Debug)]
pub struct Gspo {
    pub settings: GspoSettings,
    pub seed: u64,
}

impl Learner for Gspo {
    fn describe(&self) -> String {
        format!(
            "GSPO (sequence ratio, clip {}/{})",
            self.settings.clip_low, self.settings.clip_high
        )
    }

    fn optim(&self) -> OptimConfig {
        crate::fine_tuning_optim(self.settings.lr, Some(0.0))
    }

    fn learn(
        &mut self,
        policy: &mut TrainablePolicy,
        batch: &Experience,
        progress: &dyn Progress,
    ) -> Result<LearnStats, LearnError> {
        let s = self.settings.clone();
        let update = CriticFreeUpdate {
            loss: LossSettings {
                clip: Some(s.clip_low),
                clip_high: Some(s.clip_high),
                sequence_ratio: true,
                kl_coef: s.kl,
                entropy_coef: s.entropy,
                ..LossSettings::default()
            },
            minibatch: s.minibatch,
            epochs: s.epochs,
            token_level: false,
        };
        critic_free_update(policy, batch, progress, update, &mut self.seed, &|samples, _| {
            let rewards: Vec<(usize, f32)> = samples.iter().map(|x| (x.group, x.reward)).collect();
            group_advantages(&rewards, true).into_iter().map(Some).collect()
        })
    }
}
