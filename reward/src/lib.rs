//! # ponder-reward
//!
//! Reward design: the [`RewardModel`] trait shared by search and learning, and its kinds —
//! the task's [`verifier`], exact per-step labels ([`oracle`]), trained outcome and process
//! reward models ([`learned`], trained by [`training`]), a [`remote`] scoring endpoint —
//! with step-label makers ([`labels`]: ground truth, Monte-Carlo rollouts), quality metrics
//! against exact truth ([`quality`]) and Hugging Face-shaped datasets ([`datasets`]).

pub mod datasets;
pub mod labels;
pub mod learned;
pub mod oracle;
pub mod quality;
pub mod remote;
pub mod training;
pub mod verifier;

use async_trait::async_trait;
use ponder_datagen::{Problem, Trace};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error(transparent)]
    Task(#[from] ponder_datagen::TaskError),
    #[error(transparent)]
    Policy(#[from] ponder_policy_init::PolicyError),
    #[error("{0}")]
    Format(String),
    #[error("remote reward model: {0}")]
    Remote(String),
    #[error("{path}:{line}: {message}")]
    Line {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
}

/// The logistic function: a score's logit to the score.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `score_many` for a model that scores a flat list of (problem, trace) pairs in one pass:
/// flattens `items`, scores them with `score_pairs`, and groups the scores back by problem.
pub fn score_grouped(
    items: &[(&Problem, &[Trace])],
    score_pairs: impl FnOnce(&[(&Problem, &Trace)]) -> Result<Vec<StepScores>, RewardError>,
) -> Result<Vec<Vec<StepScores>>, RewardError> {
    let pairs: Vec<(&Problem, &Trace)> = items
        .iter()
        .flat_map(|(p, traces)| traces.iter().map(move |t| (*p, t)))
        .collect();
    let mut scores = score_pairs(&pairs)?.into_iter();
    Ok(items
        .iter()
        .map(|(_, traces)| scores.by_ref().take(traces.len()).collect())
        .collect())
}

/// What a reward model says about one (possibly unfinished) trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepScores {
    /// One score per step, in [0, 1] (process models); empty for outcome models.
    pub steps: Vec<f32>,
    /// The score of the whole trace at its answer line (outcome models, verifiers, and process
    /// models on finished traces).
    pub answer: Option<f32>,
}

/// How a process model's step scores become one score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// The last score (Snell et al. found it best).
    #[default]
    Last,
    Min,
    Product,
    Mean,
}

impl Aggregation {
    pub const ALL: [Aggregation; 4] = [
        Aggregation::Last,
        Aggregation::Min,
        Aggregation::Product,
        Aggregation::Mean,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Last => "last",
            Aggregation::Min => "min",
            Aggregation::Product => "product",
            Aggregation::Mean => "mean",
        }
    }
}

impl StepScores {
    /// Every score in order: the steps, then the answer's.
    pub fn all(&self) -> impl Iterator<Item = f32> + '_ {
        self.steps.iter().copied().chain(self.answer)
    }

    /// One score for the trace. An empty score list scores 0.
    pub fn aggregate(&self, how: Aggregation) -> f32 {
        let mut all = self.all().peekable();
        if all.peek().is_none() {
            return 0.0;
        }
        match how {
            Aggregation::Last => self.all().last().unwrap_or(0.0),
            Aggregation::Min => self.all().fold(f32::INFINITY, f32::min),
            Aggregation::Product => self.all().product(),
            Aggregation::Mean => {
                let n = self.all().count() as f32;
                self.all().sum::<f32>() / n
            }
        }
    }
}

/// Whether a model judges steps or only outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    Outcome,
    Process,
}

/// Scores traces of one problem. Batched: search passes every candidate of a round at once.
#[async_trait]
pub trait RewardModel: Send + Sync {
    fn describe(&self) -> String;

    fn granularity(&self) -> Granularity;

    /// How `score`s are turned into one number by default.
    fn aggregation(&self) -> Aggregation {
        Aggregation::Last
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError>;

    /// Scores the traces of several problems; a model that batches overrides this to make one
    /// pass over all of them.
    async fn score_many(&self, items: &[(&Problem, &[Trace])]) -> Result<Vec<Vec<StepScores>>, RewardError> {
        let mut out = Vec::with_capacity(items.len());
        for (problem, traces) in items {
            out.push(self.score(problem, traces).await?);
        }
        Ok(out)
    }

    /// Model evaluations (forward passes) so far, for compute accounting.
    fn calls(&self) -> u64 {
        0
    }

    /// Floating-point operations of every forward pass so far (about 2 per parameter and token
    /// computed; a cached prefix costs nothing), for compute accounting. 0 for a model that runs
    /// no network here (a rule, exact labels, or a remote server, whose cost is its own).
    fn flops(&self) -> f64 {
        0.0
    }

    /// Whether the model learns during RL from the outcomes of the rollouts (PRIME's implicit
    /// PRM); the RL stage then calls [`RewardModel::learn_outcomes`] each iteration before it
    /// scores the iteration's rollouts, and keeps the model's state with its checkpoints.
    fn learns_online(&self) -> bool {
        false
    }

    /// One online update from rollouts and their verified outcomes. A model that does not learn
    /// online does nothing.
    fn learn_outcomes(&self, _rollouts: &[OutcomeExample]) -> Result<OnlineUpdate, RewardError> {
        Ok(OnlineUpdate::default())
    }

    /// Writes what the model learned online under `dir` (beside a checkpoint of the run that
    /// trains it), so that a resumed run continues from the same state.
    fn save_online_state(&self, _dir: &std::path::Path) -> Result<(), RewardError> {
        Ok(())
    }

    /// Restores what [`RewardModel::save_online_state`] wrote.
    fn load_online_state(&self, _dir: &std::path::Path) -> Result<(), RewardError> {
        Ok(())
    }
}

/// A rollout an online reward model learns from: `[bos] prompt completion` token ids as the
/// policy sampled them, where the completion starts, and whether its answer was right.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeExample {
    pub tokens: Vec<u32>,
    pub first: usize,
    pub correct: bool,
}

/// What one online update did. Its compute is counted in [`RewardModel::flops`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OnlineUpdate {
    /// Mean loss over the update's examples before each optimizer step.
    pub loss: f64,
    pub optimizer_steps: usize,
    pub examples: usize,
    /// Share of the examples the model ranked right before the update (its implicit reward
    /// above zero for right answers, below for wrong ones).
    pub accuracy: f64,
}

impl std::fmt::Debug for dyn RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RewardModel({})", self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregations() {
        let s = StepScores {
            steps: vec![0.9, 0.5],
            answer: Some(0.8),
        };
        assert_eq!(s.aggregate(Aggregation::Last), 0.8);
        assert_eq!(s.aggregate(Aggregation::Min), 0.5);
        assert!((s.aggregate(Aggregation::Product) - 0.36).abs() < 1e-6);
        assert!((s.aggregate(Aggregation::Mean) - 2.2 / 3.0).abs() < 1e-6);
        assert_eq!(StepScores::default().aggregate(Aggregation::Min), 0.0);
    }
}

/// `[reward] kind = "prm"`: a process reward model trained on step labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessRewardSettings {
    /// Where step labels come from: `monte-carlo` (rollouts) or `ground-truth` (the task).
    pub labels: labels::LabelSource,
    /// Monte-Carlo rollouts per step prefix.
    pub rollouts: usize,
    /// Train on soft labels (the share of rollouts that succeed) instead of hard ones.
    pub soft: bool,
    pub aggregation: Aggregation,
    /// Add the backbone's own log-likelihood of the trace so far, times a learned weight, to
    /// the head's logit: training starts from the generator's ranking of steps instead of from
    /// chance. Off: a plain token classifier.
    pub likelihood: bool,
    /// A trained model folder to use instead of training one.
    pub from: Option<String>,
}

impl Default for ProcessRewardSettings {
    fn default() -> Self {
        ProcessRewardSettings {
            labels: labels::LabelSource::MonteCarlo,
            rollouts: 8,
            soft: false,
            aggregation: Aggregation::Last,
            likelihood: true,
            from: None,
        }
    }
}

impl ProcessRewardSettings {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.labels == labels::LabelSource::MonteCarlo && !(1..=256).contains(&self.rollouts) {
            problems.push(format!("rollouts: must be 1 to 256, not {}", self.rollouts));
        }
        problems
    }
}

/// `[reward] kind = "orm"`: an outcome reward model trained on verifier outcomes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomeRewardSettings {
    /// Add the backbone's own log-likelihood of the trace, times a learned weight, to the
    /// head's logit (as the PRM's setting of the same name).
    pub likelihood: bool,
    /// A trained model folder to use instead of training one.
    pub from: Option<String>,
}

impl Default for OutcomeRewardSettings {
    fn default() -> Self {
        OutcomeRewardSettings {
            likelihood: true,
            from: None,
        }
    }
}

/// `[reward] kind = "oracle-process"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OracleSettings {
    pub aggregation: Aggregation,
}
