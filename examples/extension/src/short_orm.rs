//! The `short-orm` reward kind: ponder's trained outcome reward model minus a penalty per
//! step, so that among right-looking traces the shorter wins. It asks the reward stage for the
//! ORM through its capabilities and loads it from the run directory.

use async_trait::async_trait;
use ponder_datagen::{Problem, Trace};
use ponder_reward::learned::LearnedReward;
use ponder_reward::training::RewardWeights;
use ponder_reward::{Granularity, OutcomeRewardSettings, RewardError, RewardModel, StepScores};
use ponder_runtime::registry::{Kind, RewardCapabilities, RewardCategory, RewardContext, RewardTraining};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "short-orm";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShortOrmSettings {
    /// Subtracted from the ORM's score for every step of the trace.
    pub per_step: f32,
}

impl Default for ShortOrmSettings {
    fn default() -> Self {
        ShortOrmSettings { per_step: 0.01 }
    }
}

impl Kind<RewardCategory> for ShortOrmSettings {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.per_step) {
            problems.push(format!("per_step: must be in [0, 1], not {}", self.per_step));
        }
        problems
    }

    fn build(&self, context: &RewardContext) -> anyhow::Result<Box<dyn RewardModel>> {
        let Some(run) = &context.run_dir else {
            anyhow::bail!("{NAME} needs a run directory with a trained reward/orm");
        };
        let (weights, tokenizer) = RewardWeights::load(&run.join("reward").join("orm"))?;
        Ok(Box::new(ShortOrm {
            orm: LearnedReward::new(&weights, tokenizer),
            per_step: self.per_step,
        }))
    }

    fn capabilities(&self) -> RewardCapabilities {
        RewardCapabilities {
            trained: Some(RewardTraining::Outcome(OutcomeRewardSettings::default())),
        }
    }
}

pub struct ShortOrm {
    orm: LearnedReward,
    per_step: f32,
}

#[async_trait]
impl RewardModel for ShortOrm {
    fn describe(&self) -> String {
        format!("{} minus {} per step", self.orm.describe(), self.per_step)
    }

    fn granularity(&self) -> Granularity {
        Granularity::Outcome
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        let mut scores = self.orm.score(problem, traces).await?;
        for (s, t) in scores.iter_mut().zip(traces) {
            if let Some(a) = s.answer.as_mut() {
                *a = (*a - self.per_step * t.steps.len() as f32).max(0.0);
            }
        }
        Ok(scores)
    }

    fn calls(&self) -> u64 {
        self.orm.calls()
    }

    fn flops(&self) -> f64 {
        self.orm.flops()
    }
}
