//! REINFORCE++ with a baseline (Hu et al., 2025, arXiv 2501.03262; the learner of ProRL v2):
//! each sample's advantage is its reward minus its group's mean reward, then normalised over
//! the whole batch's tokens (mean 0, standard deviation 1) rather than per group, so a group
//! whose rewards barely differ is not blown up; a clipped token ratio, a KL penalty to the
//! reference, no critic, every token counting the same.

use serde::{Deserialize, Serialize};

use crate::critic_free::{CriticFree, CriticFreeLearner, CriticFreeUpdate};
use crate::grpo::group_advantages;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReinforcePlusPlusSettings {
    pub lr: f64,
    pub clip: f32,
    pub kl: f32,
    pub entropy: f32,
    pub epochs: usize,
    pub minibatch: usize,
}

impl Default for ReinforcePlusPlusSettings {
    fn default() -> Self {
        ReinforcePlusPlusSettings {
            lr: 1e-4,
            clip: 0.2,
            kl: 1e-3,
            entropy: 0.0,
            epochs: 1,
            minibatch: 64,
        }
    }
}

/// Rewards minus their group's mean, then standardised over the batch's tokens (each sample
/// counting as many times as it has tokens).
pub fn batch_normalised_advantages(rewards: &[(usize, f32)], lengths: &[usize]) -> Vec<f32> {
    let centred = group_advantages(rewards, false);
    let tokens: f64 = lengths.iter().map(|&l| l as f64).sum::<f64>().max(1.0);
    let mean = (centred.iter().zip(lengths))
        .map(|(&a, &l)| f64::from(a) * l as f64)
        .sum::<f64>()
        / tokens;
    let var = (centred.iter().zip(lengths))
        .map(|(&a, &l)| (f64::from(a) - mean).powi(2) * l as f64)
        .sum::<f64>()
        / tokens;
    let std = var.sqrt();
    centred
        .iter()
        .map(|&a| ((f64::from(a) - mean) / (std + 1e-6)) as f32)
        .collect()
}

pub type ReinforcePlusPlus = CriticFreeLearner<ReinforcePlusPlusSettings>;

impl CriticFree for ReinforcePlusPlusSettings {
    fn describe(&self) -> String {
        "REINFORCE++ (group baseline, batch-normalised advantages)".into()
    }

    /// Every token counts the same.
    fn update(&self) -> CriticFreeUpdate {
        let s = self;
        CriticFreeUpdate::clipped(s.lr, s.clip, s.kl, s.entropy, s.minibatch, s.epochs, true)
    }

    fn advantages(&self, rewards: &[(usize, f32)], lengths: &[usize]) -> Vec<Option<f32>> {
        batch_normalised_advantages(rewards, lengths)
            .into_iter()
            .map(Some)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_group_centred_then_standardised_over_tokens() {
        // Group 0: rewards 1, 0 -> centred 0.5, -0.5; group 1: 1, 1, 0 -> 1/3, 1/3, -2/3.
        let rewards = [(0, 1.0), (0, 0.0), (1, 1.0), (1, 1.0), (1, 0.0)];
        let lengths = [2, 2, 1, 1, 2];
        let a = batch_normalised_advantages(&rewards, &lengths);
        // By hand: the token-weighted mean of the centred values is
        // (2·0.5 − 2·0.5 + 1/3 + 1/3 − 2·2/3) / 8 = −1/12; less it they are 7/12, −5/12, 5/12,
        // 5/12, −7/12, whose token-weighted variance is (2·49 + 2·25 + 25 + 25 + 2·49) / 144 / 8
        // = 37/144: the advantages are ±7/√37 and ±5/√37.
        let r = 37f32.sqrt();
        let expected = [7.0 / r, -5.0 / r, 5.0 / r, 5.0 / r, -7.0 / r];
        for (x, e) in a.iter().zip(expected) {
            assert!((x - e).abs() < 1e-4, "{a:?} vs {expected:?}");
        }
    }
}
