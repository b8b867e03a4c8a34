//! Exact per-step labels from the task (`Task::check_steps`) as a process reward: the upper
//! bound every learned reward model is measured against.

use std::sync::Arc;

use async_trait::async_trait;
use ponder_datagen::{Problem, Task, Trace};

use crate::{Aggregation, Granularity, RewardError, RewardModel, StepScores};

pub struct OracleProcessReward {
    task: Arc<dyn Task>,
    aggregation: Aggregation,
}

impl OracleProcessReward {
    pub fn new(task: Arc<dyn Task>, aggregation: Aggregation) -> OracleProcessReward {
        OracleProcessReward { task, aggregation }
    }
}

#[async_trait]
impl RewardModel for OracleProcessReward {
    fn describe(&self) -> String {
        format!("oracle process labels ({})", self.task.name())
    }

    fn granularity(&self) -> Granularity {
        Granularity::Process
    }

    fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        traces
            .iter()
            .map(|t| {
                let labels = self.task.check_steps(problem, &t.steps)?;
                let answer = match &t.answer {
                    Some(_) => Some(f32::from(u8::from(self.task.verify(problem, t)?.correct))),
                    None => None,
                };
                Ok(StepScores {
                    steps: labels.into_iter().map(|l| f32::from(u8::from(l))).collect(),
                    answer,
                })
            })
            .collect()
    }
}
