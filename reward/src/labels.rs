//! Step-label makers. `ground-truth`: the task's exact labels. `monte-carlo` (Math-Shepherd):
//! from each step prefix, N policy rollouts to the end; the hard label says whether any
//! reached a right answer, the soft label is the fraction that did. Rollouts are batched
//! through the policy; the outcome of every single rollout is kept, so labels for any smaller
//! N come from the same run.

use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::{GenRequest, Policy, Sampling, Stop};
use serde::{Deserialize, Serialize};

use crate::RewardError;

/// How step labels are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelSource {
    GroundTruth,
    MonteCarlo,
}

/// Exact labels (1.0 right, 0.0 wrong) of a trace's steps.
pub fn ground_truth(task: &dyn Task, problem: &Problem, trace: &Trace) -> Result<Vec<f32>, RewardError> {
    Ok(task
        .check_steps(problem, &trace.steps)?
        .into_iter()
        .map(|l| f32::from(u8::from(l)))
        .collect())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonteCarloSettings {
    /// Rollouts per step prefix.
    pub rollouts: usize,
    pub max_tokens: usize,
    pub temperature: f32,
    pub seed: u64,
    /// Requests per policy call.
    pub batch: usize,
}

impl Default for MonteCarloSettings {
    fn default() -> Self {
        MonteCarloSettings {
            rollouts: 8,
            max_tokens: 128,
            temperature: 1.0,
            seed: 0,
            batch: 1024,
        }
    }
}

/// Per trace, per step, per rollout: did the rollout from that step's prefix end right?
pub type RolloutOutcomes = Vec<Vec<Vec<bool>>>;

/// Rolls out `settings.rollouts` continuations from every step prefix of every trace.
/// Returns the outcomes and the tokens generated.
pub async fn monte_carlo_rollouts(
    policy: &dyn Policy,
    task: &dyn Task,
    items: &[(Problem, Trace)],
    settings: &MonteCarloSettings,
) -> Result<(RolloutOutcomes, u64), RewardError> {
    // (trace, step, rollout) for every request, in order.
    let mut index: Vec<(usize, usize)> = Vec::new();
    let mut requests: Vec<GenRequest> = Vec::new();
    let sampling = Sampling {
        temperature: settings.temperature,
        ..Sampling::default()
    };
    for (t, (problem, trace)) in items.iter().enumerate() {
        for s in 0..trace.steps.len() {
            let context = format!("{}{}", problem.prompt, trace.render_prefix(s + 1));
            for r in 0..settings.rollouts {
                let seed = settings.seed ^ ((t as u64) << 32) ^ ((s as u64) << 16) ^ r as u64;
                requests.push(GenRequest::new(
                    context.clone(),
                    Stop::TraceEnd,
                    settings.max_tokens,
                    sampling,
                    seed,
                ));
                index.push((t, s));
            }
        }
    }
    let mut outcomes: RolloutOutcomes = items
        .iter()
        .map(|(_, trace)| vec![Vec::with_capacity(settings.rollouts); trace.steps.len()])
        .collect();
    let mut tokens = 0u64;
    for (chunk, idx) in requests
        .chunks(settings.batch.max(1))
        .zip(index.chunks(settings.batch.max(1)))
    {
        let generations = policy.generate(chunk).await?;
        for (g, &(t, s)) in generations.iter().zip(idx) {
            tokens += g.tokens() as u64;
            let (problem, trace) = &items[t];
            let mut steps = trace.steps[..=s].to_vec();
            let rest = Trace::parse(&g.text);
            steps.extend(rest.steps);
            let full = Trace {
                steps,
                answer: rest.answer,
            };
            outcomes[t][s].push(task.verify(problem, &full)?.correct);
        }
    }
    Ok((outcomes, tokens))
}

/// Labels from the first `n` rollouts of each step: hard (any right) or soft (the share).
pub fn labels_from_rollouts(outcomes: &[Vec<bool>], n: usize, soft: bool) -> Vec<f32> {
    outcomes
        .iter()
        .map(|rollouts| {
            let used = &rollouts[..n.min(rollouts.len())];
            let right = used.iter().filter(|&&r| r).count();
            if soft {
                right as f32 / used.len().max(1) as f32
            } else {
                f32::from(u8::from(right > 0))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_and_soft_labels_from_prefixes_of_the_rollouts() {
        let outcomes = vec![vec![false, true, true, false], vec![false, false, false, false]];
        assert_eq!(labels_from_rollouts(&outcomes, 1, false), vec![0.0, 0.0]);
        assert_eq!(labels_from_rollouts(&outcomes, 2, false), vec![1.0, 0.0]);
        assert_eq!(labels_from_rollouts(&outcomes, 4, true), vec![0.5, 0.0]);
    }
}
