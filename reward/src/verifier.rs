//! The task's answer check as a reward: 1.0 for a right answer, 0.1 for a well-formed wrong
//! one, 0.0 otherwise (TinyZero's defaults; configurable).

use std::sync::Arc;

use async_trait::async_trait;
use ponder_datagen::{Problem, Task, Trace};
use serde::{Deserialize, Serialize};

use crate::{Granularity, RewardError, RewardModel, StepScores};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierSettings {
    pub correct: f32,
    /// A readable but wrong answer.
    pub well_formed: f32,
    /// No answer, or one the task cannot read.
    pub wrong: f32,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        VerifierSettings {
            correct: 1.0,
            well_formed: 0.1,
            wrong: 0.0,
        }
    }
}

pub struct VerifierReward {
    task: Arc<dyn Task>,
    settings: VerifierSettings,
}

impl VerifierReward {
    pub fn new(task: Arc<dyn Task>, settings: VerifierSettings) -> VerifierReward {
        VerifierReward { task, settings }
    }

    pub fn reward(&self, problem: &Problem, trace: &Trace) -> Result<f32, RewardError> {
        let v = self.task.verify(problem, trace)?;
        Ok(if v.correct {
            self.settings.correct
        } else if v.well_formed {
            self.settings.well_formed
        } else {
            self.settings.wrong
        })
    }
}

#[async_trait]
impl RewardModel for VerifierReward {
    fn describe(&self) -> String {
        format!("verifier ({})", self.task.name())
    }

    fn granularity(&self) -> Granularity {
        Granularity::Outcome
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        traces
            .iter()
            .map(|t| {
                Ok(StepScores {
                    steps: Vec::new(),
                    answer: Some(self.reward(problem, t)?),
                })
            })
            .collect()
    }
}
