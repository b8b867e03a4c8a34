//! Modular dependency chains (iGSM-lite): variables defined by operations mod p, with
//! distractors; the query asks for one variable.
//!
//! ```text
//! chains mod 23: q=5, k=3, b=q+k, m=b*q, z=4, e=m-k, f=z*z; find e     <- prompt
//! b=q+k=5+3=8                        <- one step per needed operation, in dependency order:
//! m=b*q=8*5=17                          definition, operand values, result (mod p)
//! e=m-k=17-3=14
//! Answer: 14
//! ```
//!
//! Every step is exactly right or wrong: its definition matches the prompt and its operand
//! values and result are the true ones. The search style writes a depth-first goal stack
//! (`e=m-k?` opens a goal whose operands are not known yet); definitions are unambiguous, so
//! that stream has no dead ends. The retry style writes wrong computations followed by `back`.
//! The difficulty level is the number of operations the query needs. Chance level is 1/p.

use std::collections::HashMap;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::task::{Task, TaskError, TaskRng, TraceStyle};
use crate::trace::{Problem, Trace};

pub const NAME: &str = "chains";
const NAMES: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
/// The line that retracts the previous step.
pub const BACK: &str = "back";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainsConfig {
    /// The modulus p (iGSM uses 23).
    pub modulus: u64,
    /// Operations the query needs: the difficulty level.
    pub operations: u32,
    /// Constants defined in the prompt.
    pub constants: u32,
    /// Operations defined in the prompt that the query does not need.
    pub distractors: u32,
    /// 0 lists definitions in dependency order, 1 shuffles them fully; in between, that
    /// fraction of definitions is moved.
    pub shuffle: f64,
    /// Operations used, from `+ - *`.
    pub ops: String,
}

impl Default for ChainsConfig {
    fn default() -> Self {
        ChainsConfig {
            modulus: 23,
            operations: 4,
            constants: 3,
            distractors: 2,
            shuffle: 0.0,
            ops: "+-*".into(),
        }
    }
}

impl ChainsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=1000).contains(&self.modulus) {
            return Err(format!("modulus: must be 2 to 1000, not {}", self.modulus));
        }
        if self.operations == 0 || self.constants == 0 {
            return Err("operations: operations and constants must be at least 1".into());
        }
        let total = self.operations + self.constants + self.distractors;
        if total > NAMES.len() as u32 {
            return Err(format!(
                "distractors: operations + constants + distractors is {total}, at most 26 variables fit"
            ));
        }
        if !(0.0..=1.0).contains(&self.shuffle) {
            return Err(format!("shuffle: must be in [0, 1], not {}", self.shuffle));
        }
        if self.ops.is_empty() || !self.ops.chars().all(|c| "+-*".contains(c)) {
            return Err(format!("ops: must be made of + - *, not `{}`", self.ops));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Definition {
    Constant(u64),
    Operation(char, char, char), // left operand, op, right operand
}

/// A parsed chains prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    modulus: u64,
    /// Definitions in prompt order.
    definitions: Vec<(char, Definition)>,
    query: char,
}

fn apply(op: char, a: u64, b: u64, p: u64) -> u64 {
    match op {
        '+' => (a + b) % p,
        '-' => (a + p - b % p) % p,
        _ => (a * b) % p,
    }
}

impl Instance {
    pub fn prompt(&self) -> String {
        let defs: Vec<String> = self
            .definitions
            .iter()
            .map(|(v, d)| match d {
                Definition::Constant(c) => format!("{v}={c}"),
                Definition::Operation(x, op, y) => format!("{v}={x}{op}{y}"),
            })
            .collect();
        format!(
            "chains mod {}: {}; find {}\n",
            self.modulus,
            defs.join(", "),
            self.query
        )
    }

    pub fn parse(problem: &Problem) -> Result<Instance, TaskError> {
        let bad = |reason: &str| TaskError::bad_prompt(NAME, problem, reason);
        let line = problem.prompt.trim_end_matches('\n');
        let rest = line
            .strip_prefix("chains mod ")
            .ok_or_else(|| bad("it does not start with `chains mod `"))?;
        let (modulus, rest) = rest.split_once(": ").ok_or_else(|| bad("no `: `"))?;
        let modulus: u64 = modulus
            .parse()
            .ok()
            .filter(|m| (2..=1000).contains(m))
            .ok_or_else(|| bad("the modulus is not a number from 2 to 1000"))?;
        let (defs, query) = rest.split_once("; find ").ok_or_else(|| bad("no `; find `"))?;
        let query = single_char(query).ok_or_else(|| bad("the query is not one variable"))?;
        let mut definitions = Vec::new();
        for def in defs.split(", ") {
            let (v, body) = def.split_once('=').ok_or_else(|| bad("a definition has no `=`"))?;
            let v = single_char(v).ok_or_else(|| bad("a variable name is not one letter"))?;
            let d = if let Ok(c) = body.parse::<u64>() {
                Definition::Constant(c % modulus)
            } else {
                let chars: Vec<char> = body.chars().collect();
                match chars[..] {
                    [x, op, y] if "+-*".contains(op) => Definition::Operation(x, op, y),
                    _ => return Err(bad("a definition is neither `v=N` nor `v=x+y`")),
                }
            };
            if definitions.iter().any(|(w, _)| *w == v) {
                return Err(bad("a variable is defined twice"));
            }
            definitions.push((v, d));
        }
        let instance = Instance {
            modulus,
            definitions,
            query,
        };
        instance
            .values()
            .ok_or_else(|| bad("the definitions are circular or use undefined variables"))?;
        Ok(instance)
    }

    fn definition(&self, v: char) -> Option<&Definition> {
        self.definitions.iter().find(|(w, _)| *w == v).map(|(_, d)| d)
    }

    /// The value of every variable, `None` if the definitions are circular or incomplete.
    fn values(&self) -> Option<HashMap<char, u64>> {
        let mut values = HashMap::new();
        // Repeated passes resolve any order; n passes suffice for an acyclic definition set.
        for _ in 0..=self.definitions.len() {
            for (v, d) in &self.definitions {
                if values.contains_key(v) {
                    continue;
                }
                match d {
                    Definition::Constant(c) => {
                        values.insert(*v, *c);
                    }
                    Definition::Operation(x, op, y) => {
                        if let (Some(&a), Some(&b)) = (values.get(x), values.get(y)) {
                            values.insert(*v, apply(*op, a, b, self.modulus));
                        }
                    }
                }
            }
        }
        (values.len() == self.definitions.len() && values.contains_key(&self.query)).then_some(values)
    }

    /// The operations the query needs, in dependency order (operands before their users).
    fn needed(&self) -> Vec<char> {
        let mut order = Vec::new();
        self.visit(self.query, &mut order, 0);
        order
    }

    fn visit(&self, v: char, order: &mut Vec<char>, depth: usize) {
        if order.contains(&v) || depth > NAMES.len() {
            return;
        }
        if let Some(Definition::Operation(x, _, y)) = self.definition(v) {
            self.visit(*x, order, depth + 1);
            self.visit(*y, order, depth + 1);
            if !order.contains(&v) {
                order.push(v);
            }
        }
    }

    fn step(&self, v: char, values: &HashMap<char, u64>) -> Option<String> {
        let Some(Definition::Operation(x, op, y)) = self.definition(v) else {
            return None;
        };
        Some(format!(
            "{v}={x}{op}{y}={}{op}{}={}",
            values.get(x)?,
            values.get(y)?,
            values.get(&v)?
        ))
    }
}

fn single_char(s: &str) -> Option<char> {
    let mut chars = s.chars();
    let c = chars.next()?;
    (chars.next().is_none() && c.is_ascii_lowercase()).then_some(c)
}

#[derive(Debug)]
pub struct Chains {
    config: ChainsConfig,
}

impl Chains {
    pub fn new(config: ChainsConfig) -> Result<Self, TaskError> {
        config.validate().map_err(|reason| TaskError::BadSettings {
            task: NAME.into(),
            reason,
        })?;
        Ok(Chains { config })
    }

    /// Whether a step line is exactly right: `v=x op y=A op B=R` with the prompt's definition
    /// of v and the true values, or a goal line `v=x op y?` with the prompt's definition.
    fn step_is_right(instance: &Instance, values: &HashMap<char, u64>, line: &str) -> bool {
        let line = line.trim();
        if let Some(goal) = line.strip_suffix('?') {
            let chars: Vec<char> = goal.chars().collect();
            return match chars[..] {
                [v, '=', x, op, y] => instance.definition(v) == Some(&Definition::Operation(x, op, y)),
                _ => false,
            };
        }
        let Some((head, rest)) = line.split_once('=') else {
            return false;
        };
        let Some(v) = single_char(head) else {
            return false;
        };
        instance.step(v, values).as_deref() == Some(line) && rest.len() < 64
    }
}

impl Task for Chains {
    fn name(&self) -> &str {
        NAME
    }

    fn sample(&self, rng: &mut TaskRng, difficulty: Option<u32>) -> Result<Problem, TaskError> {
        let c = &self.config;
        let operations = difficulty.unwrap_or(c.operations).max(1);
        if operations + c.constants + c.distractors > NAMES.len() as u32 {
            return Err(TaskError::BadSettings {
                task: NAME.into(),
                reason: format!("{operations} operations do not fit in 26 variables"),
            });
        }
        let ops: Vec<char> = c.ops.chars().collect();
        let mut names: Vec<char> = NAMES.iter().map(|&b| b as char).collect();
        names.shuffle(rng);
        let mut names = names.into_iter();
        let mut next_name = || names.next().unwrap_or('z');
        // Dependency order: constants, then the needed chain (each operation uses the one
        // before it, so all are needed), then distractors built on anything earlier.
        let mut definitions: Vec<(char, Definition)> = Vec::new();
        for _ in 0..c.constants {
            definitions.push((next_name(), Definition::Constant(rng.random_range(0..c.modulus))));
        }
        let mut previous: Option<char> = None;
        for _ in 0..operations {
            let pick = |rng: &mut TaskRng, defs: &[(char, Definition)]| defs[rng.random_range(0..defs.len())].0;
            let x = previous.unwrap_or_else(|| pick(rng, &definitions));
            let y = pick(rng, &definitions);
            let (x, y) = if rng.random_bool(0.5) { (x, y) } else { (y, x) };
            let op = ops[rng.random_range(0..ops.len())];
            let v = next_name();
            definitions.push((v, Definition::Operation(x, op, y)));
            previous = Some(v);
        }
        let query = previous.unwrap_or('a');
        let needed_len = definitions.len();
        for _ in 0..c.distractors {
            let x = definitions[rng.random_range(0..definitions.len())].0;
            let y = definitions[rng.random_range(0..definitions.len())].0;
            let op = ops[rng.random_range(0..ops.len())];
            definitions.push((next_name(), Definition::Operation(x, op, y)));
        }
        // Interleave distractors with the needed definitions while keeping dependency order.
        let (needed, extra) = definitions.split_at(needed_len);
        let mut ordered: Vec<(char, Definition)> = needed.to_vec();
        for d in extra {
            let (x, y) = match d.1 {
                Definition::Operation(x, _, y) => (x, y),
                Definition::Constant(_) => ('?', '?'),
            };
            let earliest = ordered
                .iter()
                .rposition(|(w, _)| *w == x || *w == y)
                .map_or(0, |i| i + 1);
            let at = rng.random_range(earliest..=ordered.len());
            ordered.insert(at, d.clone());
        }
        // Move a `shuffle` fraction of definitions among themselves.
        let chosen: Vec<usize> = (0..ordered.len()).filter(|_| rng.random_bool(c.shuffle)).collect();
        let mut moved: Vec<(char, Definition)> = chosen.iter().map(|&i| ordered[i].clone()).collect();
        moved.shuffle(rng);
        for (&i, d) in chosen.iter().zip(moved) {
            ordered[i] = d;
        }
        let instance = Instance {
            modulus: c.modulus,
            definitions: ordered,
            query,
        };
        let values = instance.values().ok_or_else(|| TaskError::BadSettings {
            task: NAME.into(),
            reason: "generated definitions do not resolve (a bug)".into(),
        })?;
        let answer = values.get(&query).copied().unwrap_or(0).to_string();
        let meta = serde_json::json!({ "operations": operations, "modulus": c.modulus });
        Ok(Problem::new(NAME, instance.prompt(), answer, operations, meta))
    }

    fn check_answer(&self, problem: &Problem, answer: &str) -> Result<bool, TaskError> {
        let instance = Instance::parse(problem)?;
        let values = instance.values().unwrap_or_default();
        Ok(answer.trim().parse::<u64>().ok() == values.get(&instance.query).copied())
    }

    fn check_steps(&self, problem: &Problem, steps: &[String]) -> Result<Vec<bool>, TaskError> {
        let instance = Instance::parse(problem)?;
        let values = instance.values().unwrap_or_default();
        let mut labels: Vec<bool> = Vec::with_capacity(steps.len());
        let mut retractable = false; // the previous step was wrong and not yet retracted
        for step in steps {
            let label = if step.trim() == BACK {
                std::mem::take(&mut retractable)
            } else {
                let right = Self::step_is_right(&instance, &values, step);
                retractable = !right;
                right
            };
            labels.push(label);
        }
        Ok(labels)
    }

    fn expert_trace(&self, problem: &Problem, style: TraceStyle, rng: &mut TaskRng) -> Result<Trace, TaskError> {
        let instance = Instance::parse(problem)?;
        let values = instance.values().unwrap_or_default();
        let answer = values.get(&instance.query).copied().unwrap_or(0).to_string();
        let mut steps = Vec::new();
        match style {
            TraceStyle::Optimal | TraceStyle::Retry { .. } | TraceStyle::Revision { .. } => {
                let rate = match style {
                    TraceStyle::Retry { rate } => rate.clamp(0.0, 1.0),
                    _ => 0.0,
                };
                for v in instance.needed() {
                    let Some(step) = instance.step(v, &values) else {
                        continue;
                    };
                    if rate > 0.0 && rng.random_bool(rate) {
                        steps.push(wrong_step(&step, instance.modulus, rng));
                        steps.push(BACK.to_string());
                    }
                    steps.push(step);
                }
            }
            TraceStyle::Search => {
                let mut done = Vec::new();
                goal_stack(&instance, &values, instance.query, &mut done, &mut steps, 0);
            }
        }
        Ok(Trace::new(steps, answer))
    }

    fn wrong_attempt(&self, problem: &Problem, rng: &mut TaskRng) -> Result<Option<Trace>, TaskError> {
        let instance = Instance::parse(problem)?;
        let Some(truth) = instance.values() else {
            return Ok(None);
        };
        let needed = instance.needed();
        if needed.is_empty() {
            return Ok(None);
        }
        // One computation goes wrong; every later step builds on the wrong value.
        for _ in 0..20 {
            let mut values = truth.clone();
            let broken = needed[rng.random_range(0..needed.len())];
            let mut steps = Vec::new();
            for &v in &needed {
                if let Some(Definition::Operation(x, op, y)) = instance.definition(v) {
                    let (a, b) = (values.get(x).copied().unwrap_or(0), values.get(y).copied().unwrap_or(0));
                    let mut r = apply(*op, a, b, instance.modulus);
                    if v == broken {
                        r = (r + rng.random_range(1..instance.modulus)) % instance.modulus;
                    }
                    values.insert(v, r);
                    steps.push(format!("{v}={x}{op}{y}={a}{op}{b}={r}"));
                }
            }
            let answer = values.get(&instance.query).copied().unwrap_or(0);
            if Some(&answer) != truth.get(&instance.query) {
                return Ok(Some(Trace::new(steps, answer.to_string())));
            }
        }
        Ok(None)
    }

    fn answer_key(&self, problem: &Problem, answer: &str) -> Option<String> {
        let modulus = Instance::parse(problem).map(|i| i.modulus).unwrap_or(u64::MAX);
        let n: u64 = answer.trim().parse().ok()?;
        (n < modulus).then(|| n.to_string())
    }

    fn chance_level(&self, problem: &Problem) -> f64 {
        Instance::parse(problem).map_or(0.0, |i| 1.0 / i.modulus as f64)
    }
}

/// The same step with one wrong number: the result, or one operand value.
fn wrong_step(step: &str, modulus: u64, rng: &mut TaskRng) -> String {
    let mut parts: Vec<String> = step.split('=').map(str::to_string).collect();
    // parts: [v, "x op y", "A op B", "R"]
    let last = parts.len() - 1;
    let r: u64 = parts[last].parse().unwrap_or(0);
    let shift = rng.random_range(1..modulus);
    parts[last] = ((r + shift) % modulus).to_string();
    parts.join("=")
}

/// Depth-first goal stack: open a goal for `v` when one of its operands is an operation not
/// computed yet, solve the operands, then compute `v`.
fn goal_stack(
    instance: &Instance,
    values: &HashMap<char, u64>,
    v: char,
    done: &mut Vec<char>,
    steps: &mut Vec<String>,
    depth: usize,
) {
    if done.contains(&v) || depth > NAMES.len() {
        return;
    }
    let Some(Definition::Operation(x, op, y)) = instance.definition(v).cloned() else {
        return;
    };
    let open = [x, y]
        .iter()
        .any(|o| matches!(instance.definition(*o), Some(Definition::Operation(..))) && !done.contains(o));
    if open {
        steps.push(format!("{v}={x}{op}{y}?"));
    }
    goal_stack(instance, values, x, done, steps, depth + 1);
    goal_stack(instance, values, y, done, steps, depth + 1);
    if let Some(step) = instance.step(v, values) {
        steps.push(step);
    }
    done.push(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn problem(prompt: &str) -> Problem {
        Problem::new(NAME, prompt.into(), String::new(), 2, serde_json::Value::Null)
    }

    #[test]
    fn steps_are_exactly_right_or_wrong() {
        let task = Chains::new(ChainsConfig::default()).expect("valid");
        let p = problem("chains mod 23: q=5, k=3, b=q+k, m=b*q, z=4, e=m-k; find e\n");
        let steps: Vec<String> = [
            "b=q+k=5+3=8",
            "m=b*q=8*5=18", // 40 mod 23 = 17
            "back",
            "m=b*q=8*5=17",
            "back", // retracts a right step: wrong
            "e=m-k=17-3=14",
            "e=m-k?",
            "e=k-m?",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let labels = task.check_steps(&p, &steps).expect("parses");
        assert_eq!(labels, vec![true, false, true, true, false, true, true, false]);
        assert_eq!(task.check_answer(&p, "14"), Ok(true));
        assert_eq!(task.check_answer(&p, "15"), Ok(false));
        assert_eq!(task.answer_key(&p, "30"), None);
        assert!((task.chance_level(&p) - 1.0 / 23.0).abs() < 1e-12);
    }

    #[test]
    fn circular_prompts_are_rejected() {
        let task = Chains::new(ChainsConfig::default()).expect("valid");
        let p = problem("chains mod 23: a=b+c, b=a+a, c=1; find a\n");
        assert!(task.check_answer(&p, "1").is_err());
    }

    #[test]
    fn shuffle_zero_keeps_dependency_order() {
        let task = Chains::new(ChainsConfig::default()).expect("valid");
        let mut rng = TaskRng::seed_from_u64(3);
        for _ in 0..100 {
            let p = task.sample(&mut rng, None).expect("samples");
            let instance = Instance::parse(&p).expect("parses");
            let mut seen = Vec::new();
            for (v, d) in &instance.definitions {
                if let Definition::Operation(x, _, y) = d {
                    assert!(seen.contains(x) && seen.contains(y), "{}", p.prompt);
                }
                seen.push(*v);
            }
            let trace = task.expert_trace(&p, TraceStyle::Search, &mut rng).expect("trace");
            assert!(task.check_steps(&p, &trace.steps).expect("ok").iter().all(|&l| l));
        }
    }
}
