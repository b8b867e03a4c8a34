//! Multi-digit arithmetic with a scratchpad: the fast smoke-test task.
//!
//! ```text
//! add 4821+0937         mul 482*7                  <- prompts (addends zero-padded)
//! 1+7+0=08              2*7+0=14                   <- one step per digit, least significant
//! 2+3+0=05              8*7+1=57                      first: the digits, the carry in and
//! 8+9+0=17              4*7+5=33                      the two-digit sum (tens: next carry)
//! 4+0+1=05              Answer: 3374
//! Answer: 5758
//! ```
//!
//! Every step has the same width and the addends the same length, so the digits a step needs
//! and the step a digit of the answer comes from sit at fixed distances: a small transformer
//! with rotary positions learns the procedure in a couple of CPU minutes (a growing "result so
//! far" made those distances vary and it did not). The answer is the last sum's tens digit
//! (when not zero) followed by the units digits, most significant first.
//!
//! The procedure is deterministic, so a step is right exactly when it is the expected step at
//! its position; `back` retracts a wrong step (retry style). The difficulty level is the number
//! of digits of the first operand. There is no search style.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::task::{Task, TaskError, TaskRng, TraceStyle};
use crate::trace::{Problem, Trace};

pub const NAME: &str = "arithmetic";
pub const BACK: &str = "back";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Add,
    Mul,
    /// Half addition, half multiplication.
    Mixed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArithmeticConfig {
    pub operation: Operation,
    /// Digits of the first operand (the second has 1 to this many for addition, 1 for
    /// multiplication): the difficulty level.
    pub digits: u32,
}

impl Default for ArithmeticConfig {
    fn default() -> Self {
        ArithmeticConfig {
            operation: Operation::Add,
            digits: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Instance {
    mul: bool,
    a: u64,
    b: u64,
}

impl Instance {
    fn prompt(&self) -> String {
        if self.mul {
            format!("mul {}*{}\n", self.a, self.b)
        } else {
            let width = self.a.to_string().len().max(self.b.to_string().len());
            format!("add {:0width$}+{:0width$}\n", self.a, self.b)
        }
    }

    fn parse(problem: &Problem) -> Result<Instance, TaskError> {
        let bad = |reason: &str| TaskError::bad_prompt(NAME, problem, reason);
        let line = problem.prompt.trim_end_matches('\n');
        let (mul, rest, sep) = if let Some(r) = line.strip_prefix("add ") {
            (false, r, '+')
        } else if let Some(r) = line.strip_prefix("mul ") {
            (true, r, '*')
        } else {
            return Err(bad("it starts with neither `add ` nor `mul `"));
        };
        let (a, b) = rest.split_once(sep).ok_or_else(|| bad("no operator"))?;
        let parse = |s: &str| {
            s.parse::<u64>()
                .ok()
                .filter(|&n| n < 1_000_000_000_000)
                .ok_or_else(|| bad("an operand is not a whole number below 10^12"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if mul && b > 9 {
            return Err(bad("the multiplier must have one digit"));
        }
        Ok(Instance { mul, a, b })
    }

    fn result(&self) -> u64 {
        if self.mul { self.a * self.b } else { self.a + self.b }
    }

    /// The expected steps, in order: one per digit of the longer operand (of the first for
    /// multiplication), each `x+y+c=ss` or `x*m+c=ss` with a two-digit sum.
    fn steps(&self) -> Vec<String> {
        let digits = |n: u64| -> Vec<u64> { n.to_string().bytes().rev().map(|d| u64::from(d - b'0')).collect() };
        let (da, db) = (digits(self.a), digits(self.b));
        let mut steps = Vec::new();
        let mut carry = 0;
        let len = if self.mul { da.len() } else { da.len().max(db.len()) };
        for i in 0..len {
            let x = da.get(i).copied().unwrap_or(0);
            let (text, value) = if self.mul {
                let v = x * self.b + carry;
                (format!("{x}*{}+{carry}", self.b), v)
            } else {
                let y = db.get(i).copied().unwrap_or(0);
                let v = x + y + carry;
                (format!("{x}+{y}+{carry}"), v)
            };
            carry = value / 10;
            steps.push(format!("{text}={value:02}"));
        }
        steps
    }
}

#[derive(Debug)]
pub struct Arithmetic {
    config: ArithmeticConfig,
}

impl Arithmetic {
    pub fn new(config: ArithmeticConfig) -> Result<Self, TaskError> {
        if !(1..=12).contains(&config.digits) {
            return Err(TaskError::BadSettings {
                task: NAME.into(),
                reason: format!("digits: must be 1 to 12, not {}", config.digits),
            });
        }
        Ok(Arithmetic { config })
    }
}

fn random_digits(rng: &mut TaskRng, digits: u32) -> u64 {
    let low = if digits == 1 { 0 } else { 10u64.pow(digits - 1) };
    rng.random_range(low..10u64.pow(digits))
}

impl Task for Arithmetic {
    fn name(&self) -> &str {
        NAME
    }

    fn styles(&self) -> Vec<&'static str> {
        vec!["optimal", "retry", "revision"]
    }

    fn sample(&self, rng: &mut TaskRng, difficulty: Option<u32>) -> Result<Problem, TaskError> {
        let digits = difficulty.unwrap_or(self.config.digits);
        if !(1..=12).contains(&digits) {
            return Err(TaskError::BadSettings {
                task: NAME.into(),
                reason: format!("difficulty (digits) must be 1 to 12, not {digits}"),
            });
        }
        let mul = match self.config.operation {
            Operation::Add => false,
            Operation::Mul => true,
            Operation::Mixed => rng.random_bool(0.5),
        };
        let a = random_digits(rng, digits);
        let b = if mul {
            rng.random_range(2..10)
        } else {
            let b_digits = rng.random_range(1..=digits);
            random_digits(rng, b_digits)
        };
        let instance = Instance { mul, a, b };
        Ok(Problem::new(
            NAME,
            instance.prompt(),
            instance.result().to_string(),
            digits,
            serde_json::Value::Null,
        ))
    }

    fn check_answer(&self, problem: &Problem, answer: &str) -> Result<bool, TaskError> {
        let instance = Instance::parse(problem)?;
        Ok(answer.trim().parse::<u64>().ok() == Some(instance.result()))
    }

    fn check_steps(&self, problem: &Problem, steps: &[String]) -> Result<Vec<bool>, TaskError> {
        let expected = Instance::parse(problem)?.steps();
        let mut position = 0usize;
        let mut retractable = false;
        let mut labels = Vec::with_capacity(steps.len());
        for step in steps {
            let step = step.trim();
            let label = if step == BACK {
                let right = std::mem::take(&mut retractable);
                if right {
                    position -= 1;
                }
                right
            } else {
                let right = expected.get(position).is_some_and(|e| e == step);
                position += 1;
                retractable = !right;
                right
            };
            labels.push(label);
        }
        Ok(labels)
    }

    fn expert_trace(&self, problem: &Problem, style: TraceStyle, rng: &mut TaskRng) -> Result<Trace, TaskError> {
        let instance = Instance::parse(problem)?;
        let rate = match style {
            TraceStyle::Optimal | TraceStyle::Revision { .. } => 0.0,
            TraceStyle::Retry { rate } => rate.clamp(0.0, 1.0),
            TraceStyle::Search => {
                return Err(TaskError::UnsupportedStyle {
                    task: NAME.into(),
                    style: style.to_string(),
                });
            }
        };
        let mut steps = Vec::new();
        for step in instance.steps() {
            if rate > 0.0 && rng.random_bool(rate) {
                // A wrong step: the same step with its last digit changed.
                let mut wrong = step.clone();
                if let Some(last) = wrong.pop() {
                    let d = last.to_digit(10).unwrap_or(0);
                    let shifted = (d + rng.random_range(1..10)) % 10;
                    wrong.push(char::from(b'0' + shifted as u8));
                }
                steps.push(wrong);
                steps.push(BACK.to_string());
            }
            steps.push(step);
        }
        Ok(Trace::new(steps, instance.result().to_string()))
    }

    fn wrong_attempt(&self, problem: &Problem, rng: &mut TaskRng) -> Result<Option<Trace>, TaskError> {
        let instance = Instance::parse(problem)?;
        // The second operand misread: a consistent scratchpad for the wrong problem.
        for _ in 0..20 {
            let delta: i64 = [-2, -1, 1, 2][rng.random_range(0..4)];
            let b = instance.b as i64 + delta;
            let ok = if instance.mul { (2..=9).contains(&b) } else { b >= 0 };
            if !ok {
                continue;
            }
            let wrong = Instance {
                b: b as u64,
                ..instance
            };
            return Ok(Some(Trace::new(wrong.steps(), wrong.result().to_string())));
        }
        Ok(None)
    }

    /// The operation and its operands in either order (`a+b` and `b+a` are one family).
    fn family(&self, problem: &Problem) -> String {
        Instance::parse(problem).map_or_else(
            |_| problem.id.clone(),
            |i| {
                let (lo, hi) = (i.a.min(i.b), i.a.max(i.b));
                format!("{NAME} {} {lo} {hi}", if i.mul { "mul" } else { "add" })
            },
        )
    }

    fn answer_key(&self, _problem: &Problem, answer: &str) -> Option<String> {
        answer.trim().parse::<u64>().ok().map(|n| n.to_string())
    }

    fn chance_level(&self, problem: &Problem) -> f64 {
        // A uniformly random number with the right count of digits.
        Instance::parse(problem).map_or(0.0, |i| {
            let d = i.result().to_string().len() as u32;
            1.0 / (9.0 * 10f64.powi(d as i32 - 1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn problem(prompt: &str) -> Problem {
        Problem::new(NAME, prompt.into(), String::new(), 3, serde_json::Value::Null)
    }

    #[test]
    fn scratchpads_match_the_documented_format() {
        let p = problem("add 4821+937\n");
        let instance = Instance::parse(&p).expect("parses");
        assert_eq!(instance.prompt(), "add 4821+0937\n");
        assert_eq!(instance.steps(), vec!["1+7+0=08", "2+3+0=05", "8+9+0=17", "4+0+1=05"]);
        let p = problem("add 99+1\n");
        let instance = Instance::parse(&p).expect("parses");
        assert_eq!(instance.steps(), vec!["9+1+0=10", "9+0+1=10"]);
        assert_eq!(instance.result(), 100);
        let p = problem("mul 482*7\n");
        let steps = Instance::parse(&p).expect("parses").steps();
        assert_eq!(steps, vec!["2*7+0=14", "8*7+1=57", "4*7+5=33"]);
    }

    #[test]
    fn every_step_of_a_problem_has_the_same_width() {
        let task = Arithmetic::new(ArithmeticConfig {
            operation: Operation::Mixed,
            digits: 5,
        })
        .expect("valid");
        let mut rng = TaskRng::seed_from_u64(3);
        for _ in 0..200 {
            let p = task.sample(&mut rng, None).expect("samples");
            let trace = task.expert_trace(&p, TraceStyle::Optimal, &mut rng).expect("trace");
            assert!(trace.steps.iter().all(|s| s.len() == 8), "{:?}", trace.steps);
            assert!(task.verify(&p, &trace).expect("verifies").correct);
            let operands = p.prompt.trim_end()[4..]
                .split(['+', '*'])
                .map(str::len)
                .collect::<Vec<_>>();
            if p.prompt.starts_with("add") {
                assert_eq!(operands[0], operands[1], "{}", p.prompt);
            }
        }
    }

    #[test]
    fn back_retracts_only_wrong_steps() {
        let task = Arithmetic::new(ArithmeticConfig::default()).expect("valid");
        let p = problem("add 12+9\n");
        let steps: Vec<String> = ["2+9+0=12", "back", "2+9+0=11", "back", "1+0+1=02"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let labels = task.check_steps(&p, &steps).expect("parses");
        assert_eq!(labels, vec![false, true, true, false, true]);
    }
}
