//! Countdown: combine all the given numbers with `+ - * /` to reach the target.
//!
//! Format (see `docs/format.md`):
//!
//! ```text
//! countdown 3 7 9 target 21      <- prompt
//! 9-7=2 left 2 3                 <- a move: two numbers replaced by their result, then the
//! 3*2=6 left 6                      numbers left, sorted ascending
//! back to 3 7 9                  <- backtracking (search and retry styles)
//! 9+3=12 left 7 12
//! 12+7=19 ...
//! Answer: (9-7)*3+...            <- an expression that uses every number once
//! ```
//!
//! Subtraction must give a positive number and division must be exact. An exhaustive solver
//! knows, for every state (multiset of numbers left), whether the target is still reachable:
//! that is the exact step label, the value Monte-Carlo step labels estimate.
//! The difficulty level is how many numbers there are (3 to 5).

use std::collections::HashMap;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::task::{Task, TaskError, TaskRng, TraceStyle};
use crate::trace::{Problem, Trace};

pub const NAME: &str = "countdown";

/// How a problem's target is drawn from the values its numbers can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSampling {
    /// Every reachable value in range equally likely: rare targets (few solutions) are as
    /// common as easy ones. Harder.
    Uniform,
    /// The result of a uniformly random move sequence: a target is as likely as the share of
    /// move sequences that reach it. Easier.
    ByPaths,
}

/// The order in which the search style tries moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchOrder {
    /// Uniformly random: the stream's length is what a blind depth-first search needs.
    Random,
    /// Moves whose numbers come closest to the target first (ties broken at random).
    Heuristic,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountdownConfig {
    /// How many numbers a problem has (3 to 5): the difficulty level.
    pub numbers: u32,
    pub min_number: u64,
    pub max_number: u64,
    pub min_target: u64,
    pub max_target: u64,
    /// Keep only problems with at most this many solutions (ordered move sequences); 0 = any.
    pub max_solutions: u64,
    /// How targets are drawn: `uniform` over reachable values, or `by-paths`.
    pub targets: TargetSampling,
    /// Move order of `search`-style traces.
    pub search_order: SearchOrder,
}

impl Default for CountdownConfig {
    fn default() -> Self {
        CountdownConfig {
            numbers: 3,
            min_number: 1,
            max_number: 10,
            min_target: 1,
            max_target: 100,
            max_solutions: 0,
            targets: TargetSampling::Uniform,
            search_order: SearchOrder::Random,
        }
    }
}

impl CountdownConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=5).contains(&self.numbers) {
            return Err(format!("numbers: must be 2 to 5, not {}", self.numbers));
        }
        if self.min_number == 0 || self.min_number > self.max_number {
            return Err(format!(
                "min_number: need 1 <= min_number <= max_number, got {}..{}",
                self.min_number, self.max_number
            ));
        }
        if self.max_number > 1000 {
            return Err(format!("max_number: at most 1000, not {}", self.max_number));
        }
        if self.min_target > self.max_target {
            return Err(format!(
                "min_target: {} is above max_target {}",
                self.min_target, self.max_target
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Add, Op::Sub, Op::Mul, Op::Div];

    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }

    fn from_symbol(c: char) -> Option<Op> {
        match c {
            '+' => Some(Op::Add),
            '-' => Some(Op::Sub),
            '*' => Some(Op::Mul),
            '/' => Some(Op::Div),
            _ => None,
        }
    }

    /// The result under countdown's rules: positive differences and exact divisions only.
    pub fn apply(self, a: u64, b: u64) -> Option<u64> {
        match self {
            Op::Add => a.checked_add(b),
            Op::Sub => (a > b).then(|| a - b),
            Op::Mul => a.checked_mul(b),
            Op::Div => (b != 0 && a.is_multiple_of(b)).then(|| a / b),
        }
    }

    fn precedence(self) -> u8 {
        match self {
            Op::Add | Op::Sub => 1,
            Op::Mul | Op::Div => 2,
        }
    }
}

/// One move: `a op b = result`, written with the larger operand first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub a: u64,
    pub b: u64,
    pub op: Op,
    pub result: u64,
    /// The numbers left after the move, sorted ascending.
    pub next: Vec<u64>,
}

impl Move {
    pub fn render(&self) -> String {
        format!(
            "{}{}{}={} left {}",
            self.a,
            self.op.symbol(),
            self.b,
            self.result,
            join(&self.next)
        )
    }
}

fn join(numbers: &[u64]) -> String {
    numbers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" ")
}

fn remove_one(state: &[u64], value: u64) -> Option<Vec<u64>> {
    let pos = state.iter().position(|&x| x == value)?;
    let mut out = state.to_vec();
    out.remove(pos);
    Some(out)
}

/// Every distinct legal move from a sorted state (larger operand first; `a op b` for equal
/// operand values listed once).
pub fn moves(state: &[u64]) -> Vec<Move> {
    let mut out: Vec<Move> = Vec::new();
    for i in 0..state.len() {
        for j in (i + 1)..state.len() {
            let (small, large) = (state[i], state[j]);
            if out.iter().any(|m| m.a == large && m.b == small) {
                continue; // the same pair of values was already expanded
            }
            for op in Op::ALL {
                let Some(result) = op.apply(large, small) else {
                    continue;
                };
                let mut next: Vec<u64> = state
                    .iter()
                    .enumerate()
                    .filter(|&(k, _)| k != i && k != j)
                    .map(|(_, &x)| x)
                    .collect();
                next.push(result);
                next.sort_unstable();
                out.push(Move {
                    a: large,
                    b: small,
                    op,
                    result,
                    next,
                });
            }
        }
    }
    out
}

/// Exhaustive solver for one target, memoised over states.
#[derive(Debug)]
pub struct Solver {
    target: u64,
    reachable: HashMap<Vec<u64>, bool>,
    solutions: HashMap<Vec<u64>, u64>,
}

impl Solver {
    pub fn new(target: u64) -> Self {
        Solver {
            target,
            reachable: HashMap::new(),
            solutions: HashMap::new(),
        }
    }

    /// Whether the target can be reached from `state` (sorted) using every number.
    pub fn reachable(&mut self, state: &[u64]) -> bool {
        if state.len() == 1 {
            return state[0] == self.target;
        }
        if state.is_empty() {
            return false;
        }
        if let Some(&r) = self.reachable.get(state) {
            return r;
        }
        let r = moves(state).iter().any(|m| self.reachable(&m.next));
        self.reachable.insert(state.to_vec(), r);
        r
    }

    /// How many move sequences from `state` reach the target.
    pub fn solutions(&mut self, state: &[u64]) -> u64 {
        if state.len() <= 1 {
            return u64::from(state.first() == Some(&self.target));
        }
        if let Some(&n) = self.solutions.get(state) {
            return n;
        }
        let n = moves(state).iter().map(|m| self.solutions(&m.next)).sum::<u64>();
        self.solutions.insert(state.to_vec(), n);
        n
    }
}

/// How many move sequences from `state` there are in all (the denominator of chance level).
pub fn total_paths(state: &[u64]) -> u64 {
    if state.len() <= 1 {
        return 1;
    }
    moves(state).iter().map(|m| total_paths(&m.next)).sum()
}

/// Every value reachable from `state` using all of its numbers.
pub fn reachable_values(state: &[u64], out: &mut Vec<u64>) {
    if state.len() == 1 {
        out.push(state[0]);
        return;
    }
    for m in moves(state) {
        reachable_values(&m.next, out);
    }
}

/// A parsed countdown prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub numbers: Vec<u64>,
    pub target: u64,
}

impl Instance {
    pub fn prompt(&self) -> String {
        format!("countdown {} target {}\n", join(&self.numbers), self.target)
    }

    pub fn parse(problem: &Problem) -> Result<Instance, TaskError> {
        let bad = |reason: &str| TaskError::bad_prompt(NAME, problem, reason);
        let line = problem.prompt.trim_end_matches('\n');
        let rest = line
            .strip_prefix("countdown ")
            .ok_or_else(|| bad("it does not start with `countdown `"))?;
        let (nums, target) = rest.split_once(" target ").ok_or_else(|| bad("it has no ` target `"))?;
        let mut numbers = nums
            .split(' ')
            .map(|n| n.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("the numbers are not whole numbers"))?;
        if numbers.len() < 2 || numbers.len() > 5 || numbers.contains(&0) {
            return Err(bad("it needs 2 to 5 positive numbers"));
        }
        numbers.sort_unstable();
        let target = target
            .parse::<u64>()
            .map_err(|_| bad("the target is not a whole number"))?;
        Ok(Instance { numbers, target })
    }
}

/// One parsed step of model output.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StepLine {
    Move {
        a: u64,
        op: Op,
        b: u64,
        result: u64,
        left: Vec<u64>,
    },
    Back(Vec<u64>),
}

fn parse_numbers(text: &str) -> Option<Vec<u64>> {
    let numbers = text
        .split(' ')
        .map(|n| n.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?;
    (!numbers.is_empty()).then_some(numbers)
}

fn parse_step(line: &str) -> Option<StepLine> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("back to ") {
        return parse_numbers(rest).map(StepLine::Back);
    }
    let (equation, left) = line.split_once(" left ")?;
    let (lhs, result) = equation.split_once('=')?;
    let op_pos = lhs.find(|c: char| Op::from_symbol(c).is_some())?;
    let op = Op::from_symbol(lhs[op_pos..].chars().next()?)?;
    let a = lhs[..op_pos].parse().ok()?;
    let b = lhs[op_pos + 1..].parse().ok()?;
    Some(StepLine::Move {
        a,
        op,
        b,
        result: result.parse().ok()?,
        left: parse_numbers(left)?,
    })
}

/// An arithmetic expression over whole numbers, for answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Num(u64),
    Bin(Op, Box<Expr>, Box<Expr>),
}

impl Expr {
    fn precedence(&self) -> u8 {
        match self {
            Expr::Num(_) => 3,
            Expr::Bin(op, _, _) => op.precedence(),
        }
    }

    /// Renders with the fewest parentheses that keep the left-to-right value.
    pub fn render(&self) -> String {
        match self {
            Expr::Num(n) => n.to_string(),
            Expr::Bin(op, l, r) => {
                let p = op.precedence();
                let left = if l.precedence() < p {
                    format!("({})", l.render())
                } else {
                    l.render()
                };
                let right_needs = r.precedence() < p || (r.precedence() == p && matches!(op, Op::Sub | Op::Div));
                let right = if right_needs {
                    format!("({})", r.render())
                } else {
                    r.render()
                };
                format!("{left}{}{right}", op.symbol())
            }
        }
    }

    /// A canonical, fully parenthesised form: operands of `+` and `*` sorted, so that answers
    /// equal up to commutativity vote together.
    pub fn canonical(&self) -> String {
        match self {
            Expr::Num(n) => n.to_string(),
            Expr::Bin(op, l, r) => {
                let (mut a, mut b) = (l.canonical(), r.canonical());
                if matches!(op, Op::Add | Op::Mul) && a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                format!("({a}{}{b})", op.symbol())
            }
        }
    }

    /// The value in signed integers, `None` on inexact division, division by zero or overflow.
    pub fn eval(&self) -> Option<i128> {
        match self {
            Expr::Num(n) => Some(i128::from(*n)),
            Expr::Bin(op, l, r) => {
                let (a, b) = (l.eval()?, r.eval()?);
                match op {
                    Op::Add => a.checked_add(b),
                    Op::Sub => a.checked_sub(b),
                    Op::Mul => a.checked_mul(b),
                    Op::Div => (b != 0 && a.checked_rem(b)? == 0).then(|| a / b),
                }
            }
        }
    }

    pub fn leaves(&self, out: &mut Vec<u64>) {
        match self {
            Expr::Num(n) => out.push(*n),
            Expr::Bin(_, l, r) => {
                l.leaves(out);
                r.leaves(out);
            }
        }
    }

    /// Parses `+ - * /`, parentheses and whole numbers; spaces are ignored. Never panics: deep
    /// nesting and long input are refused.
    pub fn parse(text: &str) -> Option<Expr> {
        if text.len() > 256 {
            return None;
        }
        let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut parser = ExprParser { chars, pos: 0 };
        let e = parser.sum(0)?;
        (parser.pos == parser.chars.len()).then_some(e)
    }
}

struct ExprParser {
    chars: Vec<char>,
    pos: usize,
}

impl ExprParser {
    const MAX_DEPTH: usize = 32;

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn sum(&mut self, depth: usize) -> Option<Expr> {
        self.left_associative(depth, [Op::Add, Op::Sub], Self::product)
    }

    fn product(&mut self, depth: usize) -> Option<Expr> {
        self.left_associative(depth, [Op::Mul, Op::Div], Self::atom)
    }

    /// `operand (op operand)*` for the two operators of one precedence level, left to right.
    fn left_associative(
        &mut self,
        depth: usize,
        ops: [Op; 2],
        operand: fn(&mut Self, usize) -> Option<Expr>,
    ) -> Option<Expr> {
        let mut left = operand(self, depth)?;
        while let Some(op) = self.peek().and_then(Op::from_symbol).filter(|op| ops.contains(op)) {
            self.pos += 1;
            let right = operand(self, depth)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Some(left)
    }

    fn atom(&mut self, depth: usize) -> Option<Expr> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            '(' => {
                self.pos += 1;
                let e = self.sum(depth + 1)?;
                (self.peek()? == ')').then(|| self.pos += 1)?;
                Some(e)
            }
            c if c.is_ascii_digit() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let s: String = self.chars[start..self.pos].iter().collect();
                s.parse().ok().map(Expr::Num)
            }
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Countdown {
    config: CountdownConfig,
}

impl Countdown {
    pub fn new(config: CountdownConfig) -> Result<Self, TaskError> {
        config.validate().map_err(|reason| TaskError::BadSettings {
            task: NAME.into(),
            reason,
        })?;
        Ok(Countdown { config })
    }

    pub fn config(&self) -> &CountdownConfig {
        &self.config
    }

    fn ordered_moves(&self, state: &[u64], target: u64, rng: &mut TaskRng) -> Vec<Move> {
        let mut ms = moves(state);
        ms.shuffle(rng);
        if self.config.search_order == SearchOrder::Heuristic {
            let distance = |m: &Move| m.next.iter().map(|&x| x.abs_diff(target)).min().unwrap_or(u64::MAX);
            ms.sort_by_key(distance); // stable: ties keep their random order
        }
        ms
    }
}

/// Numbers of a state, each with the expression that produced it.
type Tagged = Vec<(u64, Expr)>;

fn apply_tagged(tagged: &Tagged, m: &Move) -> Tagged {
    let mut rest = tagged.clone();
    let ia = rest.iter().position(|(v, _)| *v == m.a);
    let ea = ia.map(|i| rest.remove(i).1);
    let ib = rest.iter().position(|(v, _)| *v == m.b);
    let eb = ib.map(|i| rest.remove(i).1);
    let (ea, eb) = (ea.unwrap_or(Expr::Num(m.a)), eb.unwrap_or(Expr::Num(m.b)));
    rest.push((m.result, Expr::Bin(m.op, Box::new(ea), Box::new(eb))));
    rest
}

fn tag(state: &[u64]) -> Tagged {
    state.iter().map(|&v| (v, Expr::Num(v))).collect()
}

/// Appends the moves of a depth-first search from `tagged`; returns the answer expression on
/// success. Two-number states are finished with the single move closest to the target: if any
/// move reaches the target, the closest one does, so the search stays complete.
fn depth_first(
    task: &Countdown,
    tagged: &Tagged,
    target: u64,
    steps: &mut Vec<String>,
    rng: &mut TaskRng,
) -> Option<Expr> {
    let state: Vec<u64> = {
        let mut s: Vec<u64> = tagged.iter().map(|(v, _)| *v).collect();
        s.sort_unstable();
        s
    };
    if state.len() == 1 {
        return (state[0] == target).then(|| tagged[0].1.clone());
    }
    let candidates = if state.len() == 2 {
        let mut ms = moves(&state);
        ms.shuffle(rng);
        ms.into_iter()
            .min_by_key(|m| m.result.abs_diff(target))
            .into_iter()
            .collect()
    } else {
        task.ordered_moves(&state, target, rng)
    };
    for (k, m) in candidates.iter().enumerate() {
        if k > 0 {
            steps.push(format!("back to {}", join(&state)));
        }
        steps.push(m.render());
        if let Some(e) = depth_first(task, &apply_tagged(tagged, m), target, steps, rng) {
            return Some(e);
        }
    }
    None
}

impl Task for Countdown {
    fn name(&self) -> &str {
        NAME
    }

    fn sample(&self, rng: &mut TaskRng, difficulty: Option<u32>) -> Result<Problem, TaskError> {
        let count = difficulty.unwrap_or(self.config.numbers);
        if !(2..=5).contains(&count) {
            return Err(TaskError::BadSettings {
                task: NAME.into(),
                reason: format!("difficulty (numbers) must be 2 to 5, not {count}"),
            });
        }
        let c = &self.config;
        for _ in 0..100_000 {
            let mut numbers: Vec<u64> = (0..count)
                .map(|_| rng.random_range(c.min_number..=c.max_number))
                .collect();
            numbers.sort_unstable();
            let mut values = Vec::new();
            reachable_values(&numbers, &mut values);
            values.retain(|v| (c.min_target..=c.max_target).contains(v));
            if c.targets == TargetSampling::Uniform {
                values.sort_unstable();
                values.dedup();
            }
            if values.is_empty() {
                continue;
            }
            let target = values[rng.random_range(0..values.len())];
            let mut solver = Solver::new(target);
            let solutions = solver.solutions(&numbers);
            if c.max_solutions > 0 && solutions > c.max_solutions {
                continue;
            }
            let instance = Instance {
                numbers: numbers.clone(),
                target,
            };
            let mut steps = Vec::new();
            let answer = self.optimal(&instance, &mut solver, &mut steps, rng);
            let meta = serde_json::json!({
                "numbers": numbers,
                "target": target,
                "solutions": solutions,
                "paths": total_paths(&numbers),
            });
            return Ok(Problem::new(NAME, instance.prompt(), answer, count, meta));
        }
        Err(TaskError::BadSettings {
            task: NAME.into(),
            reason: "no solvable problem found in 100000 tries: widen the ranges".into(),
        })
    }

    fn check_answer(&self, problem: &Problem, answer: &str) -> Result<bool, TaskError> {
        let instance = Instance::parse(problem)?;
        let Some(expr) = Expr::parse(answer) else {
            return Ok(false);
        };
        let mut leaves = Vec::new();
        expr.leaves(&mut leaves);
        leaves.sort_unstable();
        Ok(leaves == instance.numbers && expr.eval() == Some(i128::from(instance.target)))
    }

    fn check_steps(&self, problem: &Problem, steps: &[String]) -> Result<Vec<bool>, TaskError> {
        let instance = Instance::parse(problem)?;
        let mut solver = Solver::new(instance.target);
        let mut path: Vec<Vec<u64>> = vec![instance.numbers.clone()];
        let mut labels = Vec::with_capacity(steps.len());
        for step in steps {
            let current = path.last().cloned().unwrap_or_default();
            let label = match parse_step(step) {
                Some(StepLine::Move { a, op, b, result, left }) => {
                    let next = remove_one(&current, a)
                        .and_then(|s| remove_one(&s, b))
                        .filter(|_| op.apply(a, b) == Some(result))
                        .map(|mut s| {
                            s.push(result);
                            s.sort_unstable();
                            s
                        });
                    let mut claimed = left.clone();
                    claimed.sort_unstable();
                    match next {
                        Some(next) if next == claimed && left == claimed => {
                            let label = solver.reachable(&next);
                            path.push(next);
                            label
                        }
                        _ => false,
                    }
                }
                Some(StepLine::Back(state)) => {
                    let mut sorted = state.clone();
                    sorted.sort_unstable();
                    match path.iter().rposition(|s| *s == sorted && sorted == state) {
                        Some(i) => {
                            path.truncate(i + 1);
                            solver.reachable(&sorted)
                        }
                        None => false,
                    }
                }
                None => false,
            };
            labels.push(label);
        }
        Ok(labels)
    }

    fn expert_trace(&self, problem: &Problem, style: TraceStyle, rng: &mut TaskRng) -> Result<Trace, TaskError> {
        let instance = Instance::parse(problem)?;
        let mut solver = Solver::new(instance.target);
        if !solver.reachable(&instance.numbers) {
            return Err(TaskError::bad_prompt(NAME, problem, "the target cannot be reached"));
        }
        let mut steps = Vec::new();
        let answer = match style {
            TraceStyle::Optimal | TraceStyle::Revision { .. } => self.optimal(&instance, &mut solver, &mut steps, rng),
            TraceStyle::Search => depth_first(self, &tag(&instance.numbers), instance.target, &mut steps, rng)
                .map(|e| e.render())
                .unwrap_or_default(),
            TraceStyle::Retry { rate } => self.retry(&instance, &mut solver, Some(rate), &mut steps, rng),
        };
        Ok(Trace::new(steps, answer))
    }

    fn wrong_attempt(&self, problem: &Problem, rng: &mut TaskRng) -> Result<Option<Trace>, TaskError> {
        let instance = Instance::parse(problem)?;
        // Random legal moves to a single number that misses the target.
        for _ in 0..50 {
            let mut tagged = tag(&instance.numbers);
            let mut state = instance.numbers.clone();
            let mut steps = Vec::new();
            while state.len() > 1 {
                let ms = moves(&state);
                let Some(m) = ms.get(rng.random_range(0..ms.len().max(1))).cloned() else {
                    break;
                };
                steps.push(m.render());
                tagged = apply_tagged(&tagged, &m);
                state = m.next;
            }
            if state.len() == 1 && state[0] != instance.target {
                let answer = tagged.first().map(|(_, e)| e.render()).unwrap_or_default();
                return Ok(Some(Trace::new(steps, answer)));
            }
        }
        Ok(None)
    }

    /// The set of numbers: problems that share it (with another target) are one family, so a
    /// held-out problem's numbers never appear in training.
    fn family(&self, problem: &Problem) -> String {
        Instance::parse(problem).map_or_else(|_| problem.id.clone(), |i| format!("{NAME} {}", join(&i.numbers)))
    }

    fn answer_key(&self, _problem: &Problem, answer: &str) -> Option<String> {
        Expr::parse(answer).map(|e| e.canonical())
    }

    fn chance_level(&self, problem: &Problem) -> f64 {
        match Instance::parse(problem) {
            Ok(instance) => {
                let solutions = Solver::new(instance.target).solutions(&instance.numbers);
                solutions as f64 / total_paths(&instance.numbers).max(1) as f64
            }
            Err(_) => 0.0,
        }
    }
}

impl Countdown {
    /// A random solution path: at each state a uniformly chosen move that keeps the target
    /// reachable. Returns the answer expression; pushes the steps.
    fn optimal(&self, instance: &Instance, solver: &mut Solver, steps: &mut Vec<String>, rng: &mut TaskRng) -> String {
        self.retry(instance, solver, None, steps, rng)
    }

    /// The optimal path with, before each step, a wrong move and a `back to` line with
    /// probability `rate` (where a wrong move exists; no rate draws nothing for them: that is
    /// [`Self::optimal`]).
    fn retry(
        &self,
        instance: &Instance,
        solver: &mut Solver,
        rate: Option<f64>,
        steps: &mut Vec<String>,
        rng: &mut TaskRng,
    ) -> String {
        let mut tagged = tag(&instance.numbers);
        let mut state = instance.numbers.clone();
        while state.len() > 1 {
            let (good, bad): (Vec<Move>, Vec<Move>) =
                moves(&state).into_iter().partition(|m| solver.reachable(&m.next));
            if let Some(rate) = rate
                && !bad.is_empty()
                && rng.random_bool(rate.clamp(0.0, 1.0))
            {
                steps.push(bad[rng.random_range(0..bad.len())].render());
                steps.push(format!("back to {}", join(&state)));
            }
            let Some(m) = good.get(rng.random_range(0..good.len().max(1))).cloned() else {
                break;
            };
            steps.push(m.render());
            tagged = apply_tagged(&tagged, &m);
            state = m.next;
        }
        tagged.first().map(|(_, e)| e.render()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn problem(numbers: &[u64], target: u64) -> Problem {
        let instance = Instance {
            numbers: numbers.to_vec(),
            target,
        };
        Problem::new(NAME, instance.prompt(), String::new(), 3, serde_json::Value::Null)
    }

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn labels_follow_reachability() {
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let p = problem(&[3, 7, 9], 21);
        // 9-7=2 left 2 3 is a dead end for 21 (2*3=6, 2+3=5...)
        let labels = task
            .check_steps(
                &p,
                &lines(&[
                    "9-7=2 left 2 3",
                    "3*2=6 left 6",
                    "back to 3 7 9",
                    "7*3=21 left 9 21", // wrong: 21 and 9 cannot make 21 with all numbers? 21*9, 21+9...
                    "back to 3 7 9",
                    "9+7=16 left 3 16", // wrong arithmetic claim below
                    "9+7=17 left 3 17",
                ]),
            )
            .expect("parses");
        let mut solver = Solver::new(21);
        assert_eq!(labels[0], solver.reachable(&[2, 3]));
        assert!(!labels[1]);
        assert!(labels[2]);
        assert_eq!(labels[3], solver.reachable(&[9, 21]));
        assert!(labels[4]);
        assert_eq!(labels[5], solver.reachable(&[3, 16]));
        assert!(!labels[6], "9+7 is not 17");
    }

    #[test]
    fn answers_are_verified() {
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let p = problem(&[3, 7, 9], 30);
        assert_eq!(task.check_answer(&p, "(9-7)*3"), Ok(false)); // 6
        assert_eq!(task.check_answer(&p, "3*(9+7)-18"), Ok(false)); // extra number
        assert_eq!(task.check_answer(&p, "3*7+9"), Ok(true));
        assert_eq!(task.check_answer(&p, " 9 + 7*3 "), Ok(true));
        assert_eq!(task.check_answer(&p, "9+7*3)"), Ok(false));
        assert_eq!(task.check_answer(&p, ""), Ok(false));
        assert_eq!(
            task.answer_key(&p, "9+7*3"),
            task.answer_key(&p, "3*7+9"),
            "commutative answers vote together"
        );
    }

    #[test]
    fn minimal_parentheses_keep_the_value() {
        let e = Expr::parse("(9-(7-3))*2/(1+1)").expect("parses");
        let r = Expr::parse(&e.render()).expect("re-parses");
        assert_eq!(e.eval(), r.eval());
        assert_eq!(e.render(), "(9-(7-3))*2/(1+1)");
    }

    #[test]
    fn every_style_solves() {
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let mut rng = TaskRng::seed_from_u64(7);
        for _ in 0..50 {
            let p = task.sample(&mut rng, None).expect("samples");
            for style in [TraceStyle::Optimal, TraceStyle::Search, TraceStyle::Retry { rate: 0.5 }] {
                let t = task.expert_trace(&p, style, &mut rng).expect("trace");
                let answer = t.answer.clone().expect("answer");
                assert!(task.check_answer(&p, &answer).expect("ok"), "{p:?} {t:?}");
                let labels = task.check_steps(&p, &t.steps).expect("ok");
                assert_eq!(labels.last(), Some(&true));
            }
        }
    }

    #[test]
    fn bad_prompts_are_errors() {
        let task = Countdown::new(CountdownConfig::default()).expect("valid");
        let mut p = problem(&[3, 7, 9], 21);
        p.prompt = "count 1 2 target x\n".into();
        assert!(task.check_answer(&p, "1").is_err());
        assert!(task.check_steps(&p, &[]).is_err());
    }
}
