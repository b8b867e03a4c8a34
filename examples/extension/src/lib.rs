//! A third-party extension of ponder: the `sorting` task, the `adaptive-consistency`
//! searcher ([`adaptive`]), the `short-orm` reward model ([`short_orm`]) and the `reinforce`
//! learner ([`reinforce`]), added with an explicit [`register`] call from this crate's own
//! binary (`ponder-extended`). `configs/adaptive.toml` runs the whole pipeline with the new
//! searcher in its search evaluation; `configs/sweep.toml` compares it with the built-ins.
//!
//! ```text
//! sort 7 2 9 2          <- prompt
//! take 2 so 2           <- each step moves the smallest number left to the output
//! take 2 so 2 2
//! take 7 so 2 2 7
//! take 9 so 2 2 7 9
//! Answer: 2 2 7 9
//! ```

pub mod adaptive;
pub mod reinforce;
pub mod short_orm;

use ponder_datagen::{Problem, Task, TaskError, TaskRng, Trace, TraceStyle};
use ponder_runtime::registry::{Kind, Registry, TaskCategory};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const NAME: &str = "sorting";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SortingConfig {
    /// How many numbers: the difficulty level.
    pub length: u32,
    pub max_value: u32,
}

impl Default for SortingConfig {
    fn default() -> Self {
        SortingConfig {
            length: 5,
            max_value: 9,
        }
    }
}

impl Kind<TaskCategory> for SortingConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=20).contains(&self.length) {
            problems.push(format!("length: must be 1 to 20, not {}", self.length));
        }
        problems
    }

    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Task>> {
        Ok(Box::new(Sorting { config: self.clone() }))
    }
}

#[derive(Debug)]
pub struct Sorting {
    config: SortingConfig,
}

fn numbers(problem: &Problem) -> Result<Vec<u32>, TaskError> {
    problem
        .prompt
        .trim_end()
        .strip_prefix("sort ")
        .and_then(|rest| rest.split(' ').map(|n| n.parse().ok()).collect())
        .ok_or_else(|| TaskError::BadPrompt {
            task: NAME.into(),
            id: problem.id.clone(),
            reason: "expected `sort N N ...`".into(),
        })
}

fn render(numbers: &[u32]) -> String {
    numbers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" ")
}

impl Task for Sorting {
    fn name(&self) -> &str {
        NAME
    }

    fn styles(&self) -> Vec<&'static str> {
        vec!["optimal"]
    }

    fn sample(&self, rng: &mut TaskRng, difficulty: Option<u32>) -> Result<Problem, TaskError> {
        let length = difficulty.unwrap_or(self.config.length).max(1);
        let values: Vec<u32> = (0..length)
            .map(|_| rng.random_range(0..=self.config.max_value))
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        Ok(Problem::new(
            NAME,
            format!("sort {}\n", render(&values)),
            render(&sorted),
            length,
            serde_json::Value::Null,
        ))
    }

    fn check_answer(&self, problem: &Problem, answer: &str) -> Result<bool, TaskError> {
        let mut sorted = numbers(problem)?;
        sorted.sort_unstable();
        Ok(answer.trim() == render(&sorted))
    }

    fn check_steps(&self, problem: &Problem, steps: &[String]) -> Result<Vec<bool>, TaskError> {
        let mut sorted = numbers(problem)?;
        sorted.sort_unstable();
        Ok(steps
            .iter()
            .enumerate()
            .map(|(i, s)| i < sorted.len() && *s == format!("take {} so {}", sorted[i], render(&sorted[..=i])))
            .collect())
    }

    fn expert_trace(&self, problem: &Problem, style: TraceStyle, _rng: &mut TaskRng) -> Result<Trace, TaskError> {
        if style != TraceStyle::Optimal {
            return Err(TaskError::UnsupportedStyle {
                task: NAME.into(),
                style: style.to_string(),
            });
        }
        let mut sorted = numbers(problem)?;
        sorted.sort_unstable();
        let steps = (0..sorted.len())
            .map(|i| format!("take {} so {}", sorted[i], render(&sorted[..=i])))
            .collect();
        Ok(Trace::new(steps, render(&sorted)))
    }

    fn answer_key(&self, _problem: &Problem, answer: &str) -> Option<String> {
        let parsed: Option<Vec<u32>> = answer.split_whitespace().map(|n| n.parse().ok()).collect();
        parsed.map(|v| render(&v))
    }

    fn chance_level(&self, problem: &Problem) -> f64 {
        // A random permutation of the numbers is sorted with probability 1/n! at worst.
        let n = numbers(problem).map_or(1, |v| v.len());
        1.0 / (1..=n).map(|k| k as f64).product::<f64>()
    }
}

/// Adds this crate's kinds to a registry.
pub fn register(registry: &mut Registry) -> anyhow::Result<()> {
    registry.tasks.add::<SortingConfig>(
        NAME,
        "sort a list of digits, one `take` step per number",
        env!("CARGO_PKG_NAME"),
    )?;
    registry.searchers.add::<adaptive::AdaptiveConsistencySettings>(
        adaptive::NAME,
        "self-consistency that stops sampling once the majority is decided (Beta posterior)",
        env!("CARGO_PKG_NAME"),
    )?;
    registry.rewards.add::<short_orm::ShortOrmSettings>(
        short_orm::NAME,
        "the trained ORM minus a penalty per step",
        env!("CARGO_PKG_NAME"),
    )?;
    registry.learners.add::<reinforce::ReinforceSettings>(
        reinforce::NAME,
        "REINFORCE with a batch-mean baseline",
        env!("CARGO_PKG_NAME"),
    )?;
    Ok(())
}
