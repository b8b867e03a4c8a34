//! GSPO (Zheng et al., 2025, arXiv 2507.18071): GRPO's group-normalised advantages with one
//! importance ratio per sequence, `s = (π(y|x) / π_old(y|x))^(1/|y|)` (the geometric mean of its
//! tokens' ratios), clipped per sequence to `[1 − clip_low, 1 + clip_high]` (3e-4 and 4e-4, the
//! paper's ranges: a sequence ratio moves far less than a token's), each sequence counting
//! once. No KL term by default.

use serde::{Deserialize, Serialize};

use crate::critic_free::{CriticFree, CriticFreeLearner, CriticFreeUpdate, check_update_settings};
use crate::grpo::group_advantages;
use crate::token_loss::LossSettings;

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

pub type Gspo = CriticFreeLearner<GspoSettings>;

impl CriticFree for GspoSettings {
    fn describe(&self) -> String {
        format!("GSPO (sequence ratio, clip {}/{})", self.clip_low, self.clip_high)
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn update(&self) -> CriticFreeUpdate {
        CriticFreeUpdate {
            loss: LossSettings {
                clip: Some(self.clip_low),
                clip_high: Some(self.clip_high),
                sequence_ratio: true,
                kl_coef: self.kl,
                entropy_coef: self.entropy,
                ..LossSettings::default()
            },
            minibatch: self.minibatch,
            epochs: self.epochs,
            token_level: false,
        }
    }

    fn advantages(&self, rewards: &[(usize, f32)], _: &[usize]) -> Vec<Option<f32>> {
        group_advantages(rewards, true).into_iter().map(Some).collect()
    }
}
