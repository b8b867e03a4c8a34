//! search-eval's statistics: a curve's points with their intervals, difficulty quintiles,
//! the compute-optimal curve against the strongest best-of-N, each curve's trend, the best and
//! the run's searcher at the largest budget, pass@k and maj@k.

use std::collections::HashMap;

use ponder_datagen::{Problem, Task};
use ponder_policy_init::eval::{Estimate, bootstrap_difference, bootstrap_mean, pass_at_k};
use ponder_policy_init::evaluate::EvalReport;
use ponder_search::{Candidate, Cost, SearchOutcome, Selection, select};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::stages::Context;

/// One searcher at one budget on every problem.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub budget: usize,
    pub tokens_per_problem: f64,
    /// Floating-point operations per problem: every forward pass of the policy (prompts,
    /// generated tokens, rollouts, lookahead) and of the reward model, at 2 per parameter and
    /// token computed (`docs/results.md`).
    pub flops_per_problem: f64,
    pub accuracy: f64,
    pub low: f64,
    pub high: f64,
    /// Accuracy per difficulty quintile (1 easiest).
    pub quintiles: Vec<f64>,
    /// Tokens the policy computed per token it generated (prefix reuse keeps it near 1).
    pub computed_per_generated: f64,
    /// Per problem: right or not, and generated tokens (in the checkpoint, not in
    /// `results.json`).
    pub per_problem: Vec<(bool, u64)>,
    /// The run's FLOPs per generated token, to apportion its compute to problems (likewise).
    pub flops_per_token: f64,
}

impl Point {
    /// The point as `results.json` has it: without the per-problem outcomes.
    pub(super) fn public_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(map) = v.as_object_mut() {
            map.remove("per_problem");
            map.remove("flops_per_token");
        }
        v
    }
}

impl Point {
    /// Per problem: 1 if right, else 0.
    fn scores(&self) -> Vec<f64> {
        scores_of(&self.per_problem)
    }
}

pub(super) fn scores_of(per_problem: &[(bool, u64)]) -> Vec<f64> {
    per_problem.iter().map(|(ok, _)| f64::from(u8::from(*ok))).collect()
}

/// `flops_per_token`: the run's FLOPs per generated token; a budget that is a prefix of a larger
/// run is charged in proportion to the tokens it generated.
pub(super) fn point(
    quintile_of: &[usize],
    budget: usize,
    results: Vec<(bool, u64)>,
    cost: Cost,
    flops_per_token: f64,
    seed: u64,
) -> Point {
    let e = bootstrap_mean(&scores_of(&results), seed);
    let mut by_q = [(0.0, 0usize); 5];
    for ((ok, _), &q) in results.iter().zip(quintile_of) {
        by_q[q].0 += f64::from(u8::from(*ok));
        by_q[q].1 += 1;
    }
    let tokens_per_problem = results.iter().map(|(_, t)| *t as f64).sum::<f64>() / results.len().max(1) as f64;
    Point {
        budget,
        tokens_per_problem,
        flops_per_problem: tokens_per_problem * flops_per_token,
        flops_per_token,
        accuracy: e.value,
        low: e.low,
        high: e.high,
        quintiles: by_q.iter().map(|(s, n)| s / (*n).max(1) as f64).collect(),
        computed_per_generated: cost.computed_per_generated(),
        per_problem: results,
    }
}

/// Difficulty quintiles (0 easiest) by pass@1 estimated from the init evaluation's samples;
/// problems it did not see go to the middle.
pub(super) fn quintiles(ctx: &Context, problems: &[Problem]) -> Vec<usize> {
    let report: Option<EvalReport> = std::fs::read_to_string(ctx.dir.path("eval/init.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let rate: HashMap<String, f64> = report
        .map(|r| {
            r.outcomes
                .iter()
                .map(|o| (o.id.clone(), o.correct_samples as f64 / o.samples.max(1) as f64))
                .collect()
        })
        .unwrap_or_default();
    let ease: Vec<f64> = problems
        .iter()
        .map(|p| rate.get(&p.id).copied().unwrap_or(0.5))
        .collect();
    quintiles_by_ease(&ease)
}

/// Quintiles (0 easiest) of problems by an ease score (higher is easier; ties by position).
pub(super) fn quintiles_by_ease(ease: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ease.len()).collect();
    order.sort_by(|&a, &b| ease[b].total_cmp(&ease[a]).then(a.cmp(&b)));
    let mut q = vec![0; ease.len()];
    for (rank, &i) in order.iter().enumerate() {
        q[i] = rank * 5 / ease.len().max(1);
    }
    q
}

/// The compute-optimal curve at one budget.
pub(super) struct OptimalPoint {
    budget: usize,
    /// Per problem: right (1) or not (0) under the searcher chosen for its quintile and fold.
    scores: Vec<f64>,
    tokens_per_problem: f64,
    flops_per_problem: f64,
    choices: Vec<Value>,
}

impl OptimalPoint {
    fn accuracy(&self) -> f64 {
        self.scores.iter().sum::<f64>() / self.scores.len().max(1) as f64
    }

    pub(super) fn to_json(&self, seed: u64) -> Value {
        let e = bootstrap_mean(&self.scores, seed ^ self.budget as u64);
        json!({
            "budget": self.budget,
            "accuracy": e.value,
            "low": e.low,
            "high": e.high,
            "tokens_per_problem": self.tokens_per_problem,
            "flops_per_problem": self.flops_per_problem,
            "choices": self.choices,
        })
    }
}

/// Compute-optimal accuracy per budget: in each quintile, the searcher best on one half of the
/// problems is measured on the other half, both ways.
pub(super) fn compute_optimal(
    curves: &[(String, Vec<Point>)],
    quintile_of: &[usize],
    budgets: &[usize],
) -> Vec<OptimalPoint> {
    compute_optimal_charged(curves, quintile_of, budgets, &vec![0.0; quintile_of.len()])
}

/// `compute_optimal`, each problem also charged `extra_flops` (what predicting its quintile
/// cost).
pub(super) fn compute_optimal_charged(
    curves: &[(String, Vec<Point>)],
    quintile_of: &[usize],
    budgets: &[usize],
    extra_flops: &[f64],
) -> Vec<OptimalPoint> {
    let n = quintile_of.len();
    let fold = |i: usize| i % 2;
    let mut out = Vec::new();
    for &b in budgets {
        let at_b: Vec<(&String, &Point)> = curves
            .iter()
            .filter_map(|(name, pts)| pts.iter().find(|p| p.budget == b).map(|p| (name, p)))
            .collect();
        if at_b.is_empty() {
            continue;
        }
        let mut scores = vec![0.0; n];
        let (mut tokens, mut flops) = (0.0, 0.0);
        let mut choices = Vec::new();
        for q in 0..5 {
            for test_fold in 0..2 {
                let members = |f: usize| (0..n).filter(move |&i| quintile_of[i] == q && fold(i) == f);
                let train_acc = |p: &Point| {
                    members(1 - test_fold)
                        .map(|i| f64::from(u8::from(p.per_problem[i].0)))
                        .sum::<f64>()
                };
                let Some((name, best)) = at_b.iter().max_by(|a, b| {
                    train_acc(a.1)
                        .total_cmp(&train_acc(b.1))
                        .then(b.1.tokens_per_problem.total_cmp(&a.1.tokens_per_problem))
                }) else {
                    continue;
                };
                for i in members(test_fold) {
                    scores[i] = f64::from(u8::from(best.per_problem[i].0));
                    tokens += best.per_problem[i].1 as f64;
                    flops += best.per_problem[i].1 as f64 * best.flops_per_token;
                }
                choices.push(json!({"quintile": q + 1, "fold": test_fold, "searcher": name}));
            }
        }
        out.push(OptimalPoint {
            budget: b,
            scores,
            tokens_per_problem: tokens / n.max(1) as f64,
            flops_per_problem: (flops + extra_flops.iter().sum::<f64>()) / n.max(1) as f64,
            choices,
        });
    }
    out
}

/// Snell et al.'s comparison: the budget at which the compute-optimal curve first reaches the
/// reference searcher's accuracy at the largest budget (the strongest of the `best_of_n` curves
/// there: independent samples under any vote, reward model or rule), the ratios of FLOPs and of tokens, and paired
/// intervals that say whether the comparison means anything: the
/// reference's own gain from its smallest budget to its largest (nothing to save when there is
/// none), and the compute-optimal curve's difference from the reference at the match.
pub(super) fn compute_optimal_vs_reference(
    curves: &[(String, Vec<Point>)],
    best_of_n: &[&str],
    optimal: &[OptimalPoint],
    seed: u64,
) -> Value {
    let Some((label, points)) = curves
        .iter()
        .filter(|(l, _)| best_of_n.contains(&l.as_str()))
        .filter(|(_, points)| !points.is_empty())
        .max_by(|a, b| {
            let top = |points: &[Point]| points.iter().max_by_key(|p| p.budget).map_or(0.0, |p| p.accuracy);
            top(&a.1).total_cmp(&top(&b.1))
        })
    else {
        return json!({"reference": null, "first_match": null});
    };
    let (Some(top), Some(bottom)) = (
        points.iter().max_by_key(|p| p.budget),
        points.iter().min_by_key(|p| p.budget),
    ) else {
        return json!({"reference": null, "first_match": null});
    };
    let gain = paired_change(bottom, top, seed);
    let mut gain_over_budget = change_json(bottom, top, &gain);
    gain_over_budget["significant"] = json!(gain.low > 0.0);
    let mut reference = point_json(label, top);
    reference["gain_over_budget"] = gain_over_budget;
    // Undefined when the reference solved nothing: every curve "matches" zero.
    let first_match = (top.accuracy > 0.0)
        .then(|| optimal.iter().find(|o| o.accuracy() >= top.accuracy))
        .flatten()
        .map(|o| {
            let d = bootstrap_difference(&o.scores, &top.scores(), seed ^ 1);
            json!({
                "budget": o.budget,
                "tokens_per_problem": o.tokens_per_problem,
                "token_ratio": top.tokens_per_problem / o.tokens_per_problem.max(1e-9),
                "flops_per_problem": o.flops_per_problem,
                "flops_ratio": top.flops_per_problem / o.flops_per_problem.max(1e-9),
                "difference": d.value,
                "difference_ci": [d.low, d.high],
            })
        });
    json!({"reference": reference, "first_match": first_match})
}

/// A curve's accuracy change from one budget to another, paired over problems.
pub(super) fn paired_change(from: &Point, to: &Point, seed: u64) -> Estimate {
    bootstrap_difference(&to.scores(), &from.scores(), seed)
}

pub(super) fn change_json(from: &Point, to: &Point, change: &Estimate) -> Value {
    json!({
        "from_budget": from.budget,
        "to_budget": to.budget,
        "difference": change.value,
        "ci": [change.low, change.high],
    })
}

/// Whether a curve rises with budget, paired over problems: from its smallest budget to its
/// largest, and its largest step down between neighbouring budgets. With common random numbers
/// a larger budget extends a smaller one's samples, so the paired difference is the budget's
/// effect; a fall is significant only when its whole 95% interval is below zero.
pub(super) fn budget_trend(points: &[Point], seed: u64) -> Value {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return json!(null);
    };
    let steps: Vec<(&Point, &Point, Estimate)> = (points.windows(2).enumerate())
        .map(|(i, w)| (&w[0], &w[1], paired_change(&w[0], &w[1], seed ^ (i as u64 + 1))))
        .collect();
    let largest_fall = (steps.iter())
        .filter(|(_, _, change)| change.value < 0.0)
        .min_by(|a, b| a.2.value.total_cmp(&b.2.value))
        .map(|(from, to, change)| change_json(from, to, change));
    let rise = paired_change(first, last, seed);
    json!({
        "rise": change_json(first, last, &rise),
        "rises_significantly": rise.low > 0.0,
        "largest_fall": largest_fall,
        "falls_significantly": steps.iter().any(|(_, _, change)| change.high < 0.0),
    })
}

/// The most accurate searcher at the largest budget, and its gain over greedy decoding on the
/// same problems (greedy from the initialisation's evaluation, `eval/init.json`), paired over
/// problems with a bootstrap interval. Null without curves.
pub(super) fn best_at_top_budget(
    ctx: &Context,
    curves: &[(String, Vec<Point>)],
    problems: &[Problem],
    seed: u64,
) -> Value {
    curves
        .iter()
        .filter_map(|(label, points)| points.last().map(|p| (label, p)))
        .max_by(|a, b| a.1.accuracy.total_cmp(&b.1.accuracy))
        .map_or(Value::Null, |(label, top)| {
            top_budget_json(ctx, label, top, problems, seed)
        })
}

/// The run's searcher (`[search]`, chosen before any held-out figure was read) at the largest
/// budget, as [`best_at_top_budget`] gives the best one. Null without its curve.
pub(super) fn run_searcher_at_top_budget(
    ctx: &Context,
    curves: &[(String, Vec<Point>)],
    problems: &[Problem],
    seed: u64,
) -> Value {
    let label = &ctx.config.run_searcher;
    curves
        .iter()
        .find(|(l, _)| l == label)
        .and_then(|(_, points)| points.last())
        .map_or(Value::Null, |top| top_budget_json(ctx, label, top, problems, seed))
}

/// A curve's point at the largest budget with its paired gain over greedy decoding.
pub(super) fn top_budget_json(ctx: &Context, label: &str, top: &Point, problems: &[Problem], seed: u64) -> Value {
    let greedy: HashMap<String, bool> = std::fs::read_to_string(ctx.dir.path("eval/init.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<EvalReport>(&t).ok())
        .map(|r| r.outcomes.into_iter().map(|o| (o.id, o.greedy_correct)).collect())
        .unwrap_or_default();
    let greedy_scores: Option<Vec<f64>> = problems
        .iter()
        .map(|p| greedy.get(&p.id).map(|&ok| f64::from(u8::from(ok))))
        .collect();
    let gain = greedy_scores.map(|g| {
        let e = bootstrap_difference(&top.scores(), &g, seed);
        json!({"greedy_pass@1": g.iter().sum::<f64>() / g.len().max(1) as f64, "value": e.value, "low": e.low, "high": e.high})
    });
    let mut point = point_json(label, top);
    point["gain_over_greedy"] = json!(gain);
    point
}

/// A searcher's point: its budget, accuracy with interval and compute per problem.
fn point_json(label: &str, point: &Point) -> Value {
    json!({
        "searcher": label,
        "budget": point.budget,
        "accuracy": point.accuracy,
        "low": point.low,
        "high": point.high,
        "tokens_per_problem": point.tokens_per_problem,
        "flops_per_problem": point.flops_per_problem,
    })
}

/// pass@k (unbiased) and maj@k over the samples of a majority-vote best-of-N run.
pub(super) fn pass_and_majority(
    task: &dyn Task,
    problems: &[Problem],
    outcomes: &[SearchOutcome],
    budgets: &[usize],
    seed: u64,
) -> Value {
    let mut rows = Vec::new();
    for &k in budgets {
        let (mut pass, mut maj) = (Vec::new(), Vec::new());
        for (p, o) in problems.iter().zip(outcomes) {
            let n = o.candidates.len();
            let c = o
                .candidates
                .iter()
                .filter(|c| correct(task, p, &c.trace.answer))
                .count();
            pass.push(pass_at_k(n, c, k));
            let (answer, _) = prefix_outcome(task, p, &o.candidates, k, Selection::Majority);
            maj.push(f64::from(u8::from(correct(task, p, &answer))));
        }
        let (pe, me) = (
            bootstrap_mean(&pass, seed ^ k as u64),
            bootstrap_mean(&maj, seed ^ (k as u64) << 1),
        );
        rows.push(json!({"k": k, "pass": pe.value, "pass_ci": [pe.low, pe.high], "maj": me.value, "maj_ci": [me.low, me.high]}));
    }
    json!(rows)
}

pub(super) fn correct(task: &dyn Task, problem: &Problem, answer: &Option<String>) -> bool {
    answer
        .as_ref()
        .is_some_and(|a| task.check_answer(problem, a).unwrap_or(false))
}

/// The outcome a budget-`b` run would have had, from a larger run whose candidates come in the
/// order they were made (best-of-N samples, revision attempts).
pub(super) fn prefix_outcome(
    task: &dyn Task,
    problem: &Problem,
    candidates: &[Candidate],
    b: usize,
    how: Selection,
) -> (Option<String>, u64) {
    let sub = &candidates[..b.min(candidates.len())];
    let tokens = sub.iter().map(|c| c.tokens).sum();
    let answer = select(task, problem, sub, how).and_then(|i| sub[i].trace.answer.clone());
    (answer, tokens)
}

#[cfg(test)]
mod tests;
