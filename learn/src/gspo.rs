//! GSPO (Zheng et al., 2025, arXiv 2507.18071): GRPO's group-normalised advantages with one
//! importance ratio per sequence, `s = (π(y|x) / π_old(y|x))^(1/|y|)` (the geometric mean of its
//! tokens' ratios), clipped per sequence to `[1 − clip_low, 1 + clip_high]` (3e-4 and 4e-4, the
//! paper's ranges: a sequence ratio moves far less than a token's), each sequence counting
//! once. No KL term by default.

use serde::{Deserialize, Serialize};

use crate::critic_free::{CriticFree, CriticFreeLearner, CriticFreeUpdate};
use crate::grpo::group_advantages;

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

pub type Gspo = CriticFreeLearner<GspoSettings>;

impl CriticFree for GspoSettings {
    fn describe(&self) -> String {
        format!("GSPO (sequence ratio, clip {}/{})", self.clip_low, self.clip_high)
    }

    /// One ratio per sequence, each sequence counting once.
    fn update(&self) -> CriticFreeUpdate {
        let s = self;
        let mut update = CriticFreeUpdate::clipped(s.lr, s.clip_low, s.kl, s.entropy, s.minibatch, s.epochs, false)
            .clip_high(s.clip_high);
        update.loss.sequence_ratio = true;
        update
    }

    fn advantages(&self, rewards: &[(usize, f32)], _: &[usize]) -> Vec<Option<f32>> {
        group_advantages(rewards, true).into_iter().map(Some).collect()
    }
}
