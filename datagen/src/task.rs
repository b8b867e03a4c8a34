//! The `Task` trait: a family of verifiable problems, and the RL environment.

use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::trace::{Problem, Trace};

/// Every stochastic choice a task makes is drawn from this seeded generator.
pub type TaskRng = ChaCha8Rng;

/// How an expert trace is written.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "style")]
pub enum TraceStyle {
    /// A clean solution: only the steps that lead to the answer.
    Optimal,
    /// A depth-first search stream: attempts, dead ends and explicit backtracking
    /// (Stream of Search). Its length depends on the problem, never on a fixed count.
    Search,
    /// A clean solution in which, before each step, with probability `rate` a wrong step is
    /// written and then retracted by a `back` line (Physics of Language Models 2.2).
    Retry { rate: f64 },
    /// Sequential revision data: up to `attempts` wrong attempts (each followed by a `revise`
    /// line, as context the model is not trained on), then a clean solution.
    Revision { attempts: u32 },
}

impl TraceStyle {
    pub const NAMES: [&'static str; 4] = ["optimal", "search", "retry", "revision"];
    /// The retry rate used when `retry` is given without one.
    pub const DEFAULT_RETRY_RATE: f64 = 0.2;

    pub fn name(&self) -> &'static str {
        match self {
            TraceStyle::Optimal => "optimal",
            TraceStyle::Search => "search",
            TraceStyle::Retry { .. } => "retry",
            TraceStyle::Revision { .. } => "revision",
        }
    }
}

impl fmt::Display for TraceStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceStyle::Retry { rate } => write!(f, "retry:{rate}"),
            TraceStyle::Revision { attempts } => write!(f, "revision:{attempts}"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for TraceStyle {
    type Err = String;

    /// `optimal`, `search`, `retry`, `retry:RATE` with RATE in [0, 1], `revision` or
    /// `revision:ATTEMPTS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rate) = match s.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        match (name, rate) {
            ("optimal", None) => Ok(TraceStyle::Optimal),
            ("search", None) => Ok(TraceStyle::Search),
            ("retry", None) => Ok(TraceStyle::Retry {
                rate: Self::DEFAULT_RETRY_RATE,
            }),
            ("retry", Some(r)) => match r.parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(TraceStyle::Retry { rate }),
                _ => Err(format!("retry rate `{r}` is not a number in [0, 1]")),
            },
            ("revision", None) => Ok(TraceStyle::Revision { attempts: 2 }),
            ("revision", Some(a)) => match a.parse::<u32>() {
                Ok(attempts) if (1..=8).contains(&attempts) => Ok(TraceStyle::Revision { attempts }),
                _ => Err(format!("revision attempts `{a}` is not a number from 1 to 8")),
            },
            _ => Err(format!(
                "unknown trace style `{s}`: expected one of optimal, search, retry, retry:RATE, revision, revision:ATTEMPTS"
            )),
        }
    }
}

/// What a verifier says about a finished attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The answer is right.
    pub correct: bool,
    /// The trace ended with an answer line the task can read (right or wrong).
    pub well_formed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TaskError {
    #[error("problem {id}: the prompt is not a {task} prompt: {reason}")]
    BadPrompt { task: String, id: String, reason: String },
    #[error("task {task} cannot write `{style}` traces")]
    UnsupportedStyle { task: String, style: String },
    #[error("task {task}: {reason}")]
    BadSettings { task: String, reason: String },
}

impl TaskError {
    /// `problem`'s prompt is not a `task` prompt, for `reason`.
    pub fn bad_prompt(task: &str, problem: &Problem, reason: &str) -> TaskError {
        TaskError::BadPrompt {
            task: task.into(),
            id: problem.id.clone(),
            reason: reason.into(),
        }
    }
}

/// A family of verifiable problems. Implementations are deterministic given the RNG, and every
/// method that reads model output accepts any text without panicking.
pub trait Task: Send + Sync {
    /// The kind name, as written in TOML and in every problem's `task` field.
    fn name(&self) -> &str;

    /// Samples one problem. `difficulty` overrides the configured level (what a level means is
    /// task-specific and documented per task); `None` uses the configured one.
    fn sample(&self, rng: &mut TaskRng, difficulty: Option<u32>) -> Result<Problem, TaskError>;

    /// Whether `answer` (the text after `Answer:`) is a right answer to `problem`.
    fn check_answer(&self, problem: &Problem, answer: &str) -> Result<bool, TaskError>;

    /// Exact per-step labels: `true` where the step is right (for countdown: where the target
    /// is still reachable after it). One label per step.
    fn check_steps(&self, problem: &Problem, steps: &[String]) -> Result<Vec<bool>, TaskError>;

    /// An expert trace in the given style; it always ends with a right answer.
    fn expert_trace(&self, problem: &Problem, style: TraceStyle, rng: &mut TaskRng) -> Result<Trace, TaskError>;

    /// The canonical form of an answer for voting (equal keys are the same answer), or `None`
    /// where the task cannot read it.
    fn answer_key(&self, problem: &Problem, answer: &str) -> Option<String>;

    /// The family a problem belongs to, for splitting: problems of one family go to the same
    /// side of the train/validation/test split, so a held-out problem is never a training
    /// problem in another guise. By default every problem is its own family.
    fn family(&self, problem: &Problem) -> String {
        problem.id.clone()
    }

    /// The probability that a uniformly random well-formed answer is right: the floor every
    /// accuracy on this task should be read against.
    fn chance_level(&self, problem: &Problem) -> f64;

    /// The styles this task can write.
    fn styles(&self) -> Vec<&'static str> {
        TraceStyle::NAMES.to_vec()
    }

    /// A plausible wrong attempt (well formed, consistent in itself, wrong answer) for revision
    /// data; `None` if the task cannot write one.
    fn wrong_attempt(&self, _problem: &Problem, _rng: &mut TaskRng) -> Result<Option<Trace>, TaskError> {
        Ok(None)
    }

    /// Verdict on a whole attempt.
    fn verify(&self, problem: &Problem, trace: &Trace) -> Result<Verdict, TaskError> {
        let Some(answer) = &trace.answer else {
            return Ok(Verdict {
                correct: false,
                well_formed: false,
            });
        };
        let well_formed = self.answer_key(problem, answer).is_some();
        let correct = well_formed && self.check_answer(problem, answer)?;
        Ok(Verdict { correct, well_formed })
    }
}

impl fmt::Debug for dyn Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Task({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_names_parse() {
        assert_eq!("optimal".parse(), Ok(TraceStyle::Optimal));
        assert_eq!("search".parse(), Ok(TraceStyle::Search));
        assert_eq!("retry".parse(), Ok(TraceStyle::Retry { rate: 0.2 }));
        assert_eq!("retry:0.5".parse(), Ok(TraceStyle::Retry { rate: 0.5 }));
        assert!("retry:2".parse::<TraceStyle>().is_err());
        assert!("greedy".parse::<TraceStyle>().is_err());
        assert_eq!(TraceStyle::Retry { rate: 0.5 }.to_string(), "retry:0.5");
    }
}
