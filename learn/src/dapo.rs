//! DAPO (Yu et al., 2025, arXiv 2503.14476): GRPO's group-normalised advantages without the
//! KL term, with
//! - clip-higher: the ratio bounded to `[1 − clip_low, 1 + clip_high]` (0.2 and 0.28), so
//!   unlikely tokens that earn reward can rise faster than likely ones can fall;
//! - token-level loss normalisation: every token of the minibatch counts the same, so a long
//!   response's tokens are not discounted against a short one's;
//! - dynamic sampling: a group whose samples all earned the same reward carries no signal and
//!   is left out of the update (the stats count what was left out), and the RL stage refills
//!   the batch: it samples fresh problems for the missing groups, up to
//!   `pipeline.rl.refill_rounds` more rounds, counting their compute. The reward compared is
//!   the shaped one, not correctness alone as in the paper: all-wrong samples that differ in
//!   the verifier's format reward (0.1) or in their overlong penalty still carry a signal and
//!   stay (the refill judges the verifier's reward, before overlong shaping);
//! - overlong reward shaping: a completion within `overlong_buffer` tokens of `max_length`
//!   loses reward linearly up to 1, and one longer than `max_length` loses 1 (off with
//!   `max_length = 0`, the default: set it to the RL stage's token limit).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::critic_free::{CriticFree, CriticFreeLearner, CriticFreeUpdate};
use crate::grpo::group_advantages;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DapoSettings {
    pub lr: f64,
    pub clip_low: f32,
    pub clip_high: f32,
    pub entropy: f32,
    pub epochs: usize,
    pub minibatch: usize,
    /// Leave out groups whose samples all earned the same reward.
    pub dynamic_sampling: bool,
    /// The completion length (tokens) past which a sample loses the whole reward penalty;
    /// 0: no overlong shaping.
    pub max_length: usize,
    /// The tokens before `max_length` over which the penalty grows from 0 to 1.
    pub overlong_buffer: usize,
}

impl Default for DapoSettings {
    fn default() -> Self {
        DapoSettings {
            lr: 1e-4,
            clip_low: 0.2,
            clip_high: 0.28,
            entropy: 0.0,
            epochs: 1,
            minibatch: 64,
            dynamic_sampling: true,
            max_length: 0,
            overlong_buffer: 0,
        }
    }
}

/// DAPO's overlong penalty for a completion of `length` tokens: 0 up to `max_length −
/// buffer`, then falling linearly to −1 at `max_length`, and −1 beyond (0 when `max_length`
/// is 0).
pub fn overlong_penalty(length: usize, max_length: usize, buffer: usize) -> f32 {
    if max_length == 0 || length + buffer <= max_length {
        0.0
    } else if length > max_length {
        -1.0
    } else {
        ((max_length - buffer) as f32 - length as f32) / buffer.max(1) as f32
    }
}

/// Whether each sample's group holds at least two different rewards.
pub fn informative(rewards: &[(usize, f32)]) -> Vec<bool> {
    let mut range: HashMap<usize, (f32, f32)> = HashMap::new();
    for &(g, r) in rewards {
        let e = range.entry(g).or_insert((r, r));
        e.0 = e.0.min(r);
        e.1 = e.1.max(r);
    }
    rewards.iter().map(|(g, _)| range[g].0 < range[g].1).collect()
}

/// DAPO's advantages: shaped rewards, normalised per group; `None` for the samples of groups
/// dynamic sampling leaves out.
pub fn dapo_advantages(settings: &DapoSettings, rewards: &[(usize, f32)], lengths: &[usize]) -> Vec<Option<f32>> {
    let shaped: Vec<(usize, f32)> = (rewards.iter().zip(lengths))
        .map(|(&(g, r), &len)| {
            (
                g,
                r + overlong_penalty(len, settings.max_length, settings.overlong_buffer),
            )
        })
        .collect();
    let keep = informative(&shaped);
    let kept: Vec<(usize, f32)> = (shaped.iter().zip(&keep))
        .filter(|(_, k)| **k || !settings.dynamic_sampling)
        .map(|(x, _)| *x)
        .collect();
    let mut advantages = group_advantages(&kept, true).into_iter();
    keep.iter()
        .map(|&k| (k || !settings.dynamic_sampling).then(|| advantages.next().unwrap_or(0.0)))
        .collect()
}

pub type Dapo = CriticFreeLearner<DapoSettings>;

impl CriticFree for DapoSettings {
    fn describe(&self) -> String {
        let dynamic = if self.dynamic_sampling {
            ", dynamic sampling"
        } else {
            ""
        };
        format!(
            "DAPO (clip {}/{}, token-level loss{dynamic})",
            self.clip_low, self.clip_high
        )
    }

    /// No KL term; every token counts the same.
    fn update(&self) -> CriticFreeUpdate {
        let s = self;
        CriticFreeUpdate::clipped(s.lr, s.clip_low, 0.0, s.entropy, s.minibatch, s.epochs, true).clip_high(s.clip_high)
    }

    fn refills_uniform_groups(&self) -> bool {
        self.dynamic_sampling
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = self.update().problems();
        if self.max_length > 0 && self.overlong_buffer > self.max_length {
            problems.push(format!(
                "overlong_buffer: must be at most max_length ({}), not {}",
                self.max_length, self.overlong_buffer
            ));
        }
        problems
    }

    fn advantages(&self, rewards: &[(usize, f32)], lengths: &[usize]) -> Vec<Option<f32>> {
        dapo_advantages(self, rewards, lengths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlong_penalty_is_dapos_piecewise_line() {
        // max 100, buffer 20: free up to 80, -0.5 at 90, -1 at 100, -1 beyond.
        assert_eq!(overlong_penalty(80, 100, 20), 0.0);
        assert!((overlong_penalty(90, 100, 20) + 0.5).abs() < 1e-6);
        assert!((overlong_penalty(100, 100, 20) + 1.0).abs() < 1e-6);
        assert_eq!(overlong_penalty(101, 100, 20), -1.0);
        assert_eq!(overlong_penalty(5000, 0, 20), 0.0, "off");
    }

    #[test]
    fn uniform_groups_are_left_out_and_the_rest_normalised_per_group() {
        // Group 0: rewards 1, 0 (informative); group 1: 1, 1 (left out); group 2: 0, 1, 1.
        let rewards = [(0, 1.0), (0, 0.0), (1, 1.0), (1, 1.0), (2, 0.0), (2, 1.0), (2, 1.0)];
        let lengths = [10; 7];
        let a = dapo_advantages(&DapoSettings::default(), &rewards, &lengths);
        assert_eq!(a[2], None);
        assert_eq!(a[3], None);
        // Group 0: mean 0.5, std 0.5: advantages ±1 (within the 1e-4 guard).
        assert!((a[0].unwrap_or(0.0) - 1.0).abs() < 1e-3 && (a[1].unwrap_or(0.0) + 1.0).abs() < 1e-3);
        // Group 2: mean 2/3, std sqrt(2)/3: 0 -> -sqrt(2), 1 -> 1/sqrt(2).
        assert!((a[4].unwrap_or(0.0) + 2f32.sqrt()).abs() < 1e-3, "{a:?}");
        assert!((a[5].unwrap_or(0.0) - 1.0 / 2f32.sqrt()).abs() < 1e-3, "{a:?}");
        // Without dynamic sampling every sample stays (a uniform group's advantage is 0).
        let all = dapo_advantages(
            &DapoSettings {
                dynamic_sampling: false,
                ..DapoSettings::default()
            },
            &rewards,
            &lengths,
        );
        assert!(all.iter().all(Option::is_some));
        assert_eq!(all[2], Some(0.0));
    }

    #[test]
    fn overlong_shaping_can_make_a_uniform_group_informative() {
        // Both right, one of them 95 tokens long with max 100 and buffer 20: 1 - 0.75 = 0.25.
        let settings = DapoSettings {
            max_length: 100,
            overlong_buffer: 20,
            ..DapoSettings::default()
        };
        let a = dapo_advantages(&settings, &[(0, 1.0), (0, 1.0)], &[10, 95]);
        let (short, long) = (a[0].unwrap_or(0.0), a[1].unwrap_or(0.0));
        assert!(short > 0.9 && long < -0.9, "{a:?}");
    }
}
