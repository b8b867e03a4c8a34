//! `search-eval`: test-time compute. Every configured searcher over a ladder of budgets on the
//! held-out problems, all problems of one (searcher, budget) run in lockstep so each round is
//! one batched policy call. Accuracy against generated tokens per problem, overall and per
//! difficulty quintile (by pass@1 estimated from many samples in the init stage's evaluation);
//! pass@k and maj@k; the compute-optimal curve (best searcher per quintile and budget, chosen
//! on one half of the problems and measured on the other, both ways: 2-fold cross-validation).
//! The best-of-N searchers (majority, reward, weighted vote) all select from one set of samples,
//! so their differences are the selection rules' alone. Every searcher runs each budget with the
//! same seed (common random numbers): a larger budget replays a smaller one's first samples and
//! searches on, so a fall along the curve is the budget's doing, not a fresh draw's. Each
//! curve's trend is tested paired over problems: its rise from the smallest budget to the
//! largest and its largest step down, each with a bootstrap interval.

use std::collections::HashMap;

use anyhow::Context as _;

use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::eval::{Estimate, bootstrap_difference, bootstrap_mean, pass_at_k};
use ponder_policy_init::evaluate::EvalReport;
use ponder_policy_init::{Policy, Sampling};
use ponder_reward::RewardModel;
use ponder_search::best_of_n::{BestOfN, BestOfNSettings, score_candidates};
use ponder_search::lockstep::Lockstep;
use ponder_search::{
    Budget, BudgetNesting, Candidate, Cost, SearchEnv, SearchError, SearchOutcome, Searcher, Selection, outcome, select,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Context;
use super::common::{current_policy, shared_task, stage_policy, trace_token_limit};
use super::search_trees::{self, TreeLine};
use crate::config::EvalSearcher;
use crate::registry::RewardContext;

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
    fn public_json(&self) -> Value {
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

fn scores_of(per_problem: &[(bool, u64)]) -> Vec<f64> {
    per_problem.iter().map(|(ok, _)| f64::from(u8::from(*ok))).collect()
}

/// How every searcher generates: token limits per step and per trace, and the sampling.
#[derive(Clone, Copy, Debug)]
struct Generation {
    max_step_tokens: usize,
    max_trace_tokens: usize,
    sampling: Sampling,
}

/// Runs one searcher on all problems at one budget, in lockstep.
async fn run_budget(
    searcher: &dyn Searcher,
    policy: &dyn Policy,
    reward: &dyn RewardModel,
    task: &dyn Task,
    problems: &[Problem],
    budget: Budget,
    generation: Generation,
    seed: u64,
    record_first: usize,
) -> anyhow::Result<Vec<SearchOutcome>> {
    let lockstep = Lockstep::new(policy, reward, problems.len());
    let runs = problems.iter().enumerate().map(|(i, p)| {
        let lockstep = &lockstep;
        async move {
            let me = lockstep.participant(i);
            let env = SearchEnv {
                policy: &me,
                reward: &me,
                task,
                seed: seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                max_step_tokens: generation.max_step_tokens,
                max_trace_tokens: generation.max_trace_tokens,
                sampling: generation.sampling,
                record: i < record_first,
            };
            let out = searcher.search(p, &env, &budget).await;
            lockstep.leave().await;
            out
        }
    });
    let outcomes = futures::future::join_all(runs).await;
    Ok(outcomes.into_iter().collect::<Result<Vec<_>, _>>()?)
}

/// One recorded search as `search_trees.jsonl` has it.
fn tree_line(
    searcher: &str,
    budget: usize,
    index: usize,
    problem: &Problem,
    record: ponder_search::record::SearchRecord,
) -> TreeLine {
    let chosen = record.chosen_leaf().map(|i| &record.nodes[i]);
    TreeLine {
        searcher: searcher.to_string(),
        budget,
        problem: index,
        id: problem.id.clone(),
        prompt: problem.prompt.clone(),
        answer: chosen.and_then(|n| n.answer.clone()),
        correct: chosen.and_then(|n| n.correct).unwrap_or(false),
        record,
    }
}

/// Best-of-N samples drawn once for every selection rule: per problem id, the traces and
/// their tokens; what drawing them cost, and its FLOPs.
#[derive(Serialize, Deserialize)]
struct SharedDraw {
    samples: HashMap<String, Vec<(Trace, u64)>>,
    cost: Cost,
    flops: f64,
}

/// What search-eval has finished, saved after every searcher
/// (`checkpoints/search-eval/progress.json`) so that `--resume` continues with the next one.
#[derive(Default, Serialize, Deserialize)]
struct SearchProgress {
    curves: Vec<(String, Vec<Point>)>,
    pass_and_majority: Value,
    shared_samples: Option<SharedDraw>,
}

impl SearchProgress {
    fn load(path: &std::path::Path) -> anyhow::Result<SearchProgress> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SearchProgress::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = serde_json::to_string(self)?;
        ponder_datagen::io::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }
}

/// Best-of-N over samples drawn once for every selection rule (keyed by problem id): it only
/// scores (with its own reward model) and selects, so the rules are compared on the same samples
/// and the policy samples them once.
struct SharedSamples<'s> {
    samples: &'s HashMap<String, Vec<(Trace, u64)>>,
    settings: BestOfNSettings,
}

#[async_trait::async_trait]
impl Searcher for SharedSamples<'_> {
    fn describe(&self) -> String {
        format!(
            "best-of-n over shared samples ({:?} selection)",
            self.settings.selection
        )
        .to_lowercase()
    }

    async fn search(
        &self,
        problem: &Problem,
        env: &SearchEnv<'_>,
        _budget: &Budget,
    ) -> Result<SearchOutcome, SearchError> {
        let traces = self.samples.get(&problem.id).cloned().unwrap_or_default();
        let mut cost = Cost::default();
        let (selection, aggregation) = (self.settings.selection, self.settings.aggregation);
        let candidates = score_candidates(problem, env, traces, selection, aggregation, &mut cost).await?;
        Ok(outcome(env.task, problem, candidates, selection, cost))
    }
}

/// The policy's own cost between two readings of its compute counters (prompt tokens
/// computed, tokens generated).
fn counted_cost(before: (u64, u64), after: (u64, u64)) -> Cost {
    Cost {
        generated_tokens: after.1 - before.1,
        computed_prompt_tokens: (after.0 - before.0).saturating_sub(after.1 - before.1),
        ..Cost::default()
    }
}

fn correct(task: &dyn Task, problem: &Problem, answer: &Option<String>) -> bool {
    answer
        .as_ref()
        .is_some_and(|a| task.check_answer(problem, a).unwrap_or(false))
}

/// The outcome a budget-`b` run would have had, from a larger run whose candidates come in the
/// order they were made (best-of-N samples, revision attempts).
fn prefix_outcome(
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

/// The compute a run spent: the policy's forward passes (tokens it computed, 2 FLOPs per
/// parameter each) and the reward model's (its own count), between two readings.
#[derive(Clone, Copy, Debug)]
struct ComputeReading {
    policy_tokens: u64,
    reward_flops: f64,
}

impl ComputeReading {
    fn now(policy: &dyn Policy, reward: &dyn RewardModel) -> ComputeReading {
        ComputeReading {
            policy_tokens: policy.compute_counters().0,
            reward_flops: reward.flops(),
        }
    }

    /// FLOPs spent since `earlier`.
    fn since(&self, earlier: ComputeReading, policy_params: f64) -> f64 {
        2.0 * policy_params * self.policy_tokens.saturating_sub(earlier.policy_tokens) as f64
            + (self.reward_flops - earlier.reward_flops).max(0.0)
    }
}

/// `flops_per_token`: the run's FLOPs per generated token; a budget that is a prefix of a larger
/// run is charged in proportion to the tokens it generated.
fn point(
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
fn quintiles(ctx: &Context, problems: &[Problem]) -> Vec<usize> {
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
fn quintiles_by_ease(ease: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ease.len()).collect();
    order.sort_by(|&a, &b| ease[b].total_cmp(&ease[a]).then(a.cmp(&b)));
    let mut q = vec![0; ease.len()];
    for (rank, &i) in order.iter().enumerate() {
        q[i] = rank * 5 / ease.len().max(1);
    }
    q
}

/// Difficulty as a deployed system could predict it, and what predicting cost: the run's reward
/// model scores one sample per problem (the first of the shared best-of-N samples), and a high
/// score means easy. Per problem: the predicted ease and the FLOPs of the sample and its
/// scoring. `None` without shared samples.
async fn predicted_ease(
    problems: &[Problem],
    draw: Option<&SharedDraw>,
    reward: &dyn RewardModel,
) -> anyhow::Result<Option<(Vec<f64>, Vec<f64>)>> {
    let Some(draw) = draw else {
        return Ok(None);
    };
    let total_tokens: u64 = draw.samples.values().flatten().map(|(_, t)| *t).sum();
    let sample_flops_per_token = draw.flops / total_tokens.max(1) as f64;
    let firsts: Vec<Option<&(Trace, u64)>> = problems
        .iter()
        .map(|p| draw.samples.get(&p.id).and_then(|s| s.first()))
        .collect();
    let traces: Vec<Vec<Trace>> = firsts
        .iter()
        .map(|f| f.map(|(t, _)| vec![t.clone()]).unwrap_or_default())
        .collect();
    let items: Vec<(&Problem, &[Trace])> = problems.iter().zip(&traces).map(|(p, t)| (p, t.as_slice())).collect();
    let before = reward.flops();
    let scored = reward.score_many(&items).await?;
    let scoring = (reward.flops() - before).max(0.0) / problems.len().max(1) as f64;
    let ease = scored
        .iter()
        .map(|s| s.first().map_or(0.0, |s| f64::from(s.aggregate(reward.aggregation()))))
        .collect();
    let cost = firsts
        .iter()
        .map(|f| f.map_or(0.0, |(_, t)| *t as f64 * sample_flops_per_token) + scoring)
        .collect();
    Ok(Some((ease, cost)))
}

/// The compute-optimal curve at one budget.
struct OptimalPoint {
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

    fn to_json(&self, seed: u64) -> Value {
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
fn compute_optimal(curves: &[(String, Vec<Point>)], quintile_of: &[usize], budgets: &[usize]) -> Vec<OptimalPoint> {
    compute_optimal_charged(curves, quintile_of, budgets, &vec![0.0; quintile_of.len()])
}

/// `compute_optimal`, each problem also charged `extra_flops` (what predicting its quintile
/// cost).
fn compute_optimal_charged(
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
/// reference searcher's accuracy at the largest budget (the strongest best-of-N there: majority,
/// or best-of-N under any reward model or rule), the ratios of FLOPs and of tokens, and paired
/// intervals that say whether the comparison means anything: the
/// reference's own gain from its smallest budget to its largest (nothing to save when there is
/// none), and the compute-optimal curve's difference from the reference at the match.
fn compute_optimal_vs_reference(curves: &[(String, Vec<Point>)], optimal: &[OptimalPoint], seed: u64) -> Value {
    let Some((label, points)) = curves
        .iter()
        .filter(|(l, _)| l == "majority" || l.starts_with("best-of-n"))
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
    let reference = json!({
        "searcher": label,
        "budget": top.budget,
        "accuracy": top.accuracy,
        "low": top.low,
        "high": top.high,
        "tokens_per_problem": top.tokens_per_problem,
        "flops_per_problem": top.flops_per_problem,
        "gain_over_budget": gain_over_budget,
    });
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
fn paired_change(from: &Point, to: &Point, seed: u64) -> Estimate {
    bootstrap_difference(&to.scores(), &from.scores(), seed)
}

fn change_json(from: &Point, to: &Point, change: &Estimate) -> Value {
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
fn budget_trend(points: &[Point], seed: u64) -> Value {
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

pub fn run(ctx: &Context) -> anyhow::Result<Value> {
    crate::block_on(run_async(ctx))
}

async fn run_async(ctx: &Context<'_>) -> anyhow::Result<Value> {
    let s = ctx.config.pipeline.search_eval.clone();
    let task = shared_task(ctx)?;
    let (weights, tokenizer) = current_policy(ctx)?;
    let max_trace = trace_token_limit(ctx, &tokenizer, weights.config.max_seq_len)?;
    let longest_step = ctx
        .train_examples()?
        .iter()
        .flat_map(|e| {
            Trace::parse(&e.completion)
                .steps
                .into_iter()
                .map(|s| tokenizer.encode(&s).len())
        })
        .max()
        .unwrap_or(32);
    let max_step = (longest_step + 8).min(max_trace);
    let per_generation = ctx
        .earlier
        .get("init")
        .and_then(|r| r.results["eval"]["mean_trace_tokens"].as_f64())
        .unwrap_or(max_trace as f64 / 2.0)
        .round()
        .max(1.0) as usize;
    let generation = Generation {
        max_step_tokens: max_step,
        max_trace_tokens: max_trace,
        sampling: s.sampling,
    };
    let mut problems: Vec<Problem> = ctx.held_out_examples()?.into_iter().map(|e| e.problem).collect();
    if s.problems > 0 {
        problems.truncate(s.problems);
    }
    let quintile_of = quintiles(ctx, &problems);
    let reward_context = RewardContext {
        task: task.clone(),
        run_dir: Some(ctx.dir.root.clone()),
    };
    let mut budgets = s.budgets.clone();
    budgets.sort_unstable();
    budgets.dedup();
    let max_budget = budgets.last().copied().unwrap_or(1);
    // Every best-of-N searcher selects from the same samples (drawn by the first of them, with a
    // seed of their own) and the policy's cost of drawing them.
    let best_of_n_seed = ctx.seed("search-eval-best-of-n");
    let policy_params = weights.config.params() as f64;
    // Each run gets a policy and a reward model of its own, with empty prefix caches: its FLOPs
    // are what it computed itself, and a resumed stage counts the same as an uninterrupted one.
    let fresh_policy = || stage_policy(ctx, &weights, &tokenizer);
    let fresh_reward = |own: &Option<_>| -> anyhow::Result<Box<dyn RewardModel>> {
        let spec: &std::sync::Arc<dyn crate::registry::Spec<crate::registry::RewardCategory>> =
            own.as_ref().unwrap_or(&ctx.config.reward);
        spec.build(&reward_context)
    };
    let checkpoint_dir = ctx.dir.checkpoints("search-eval");
    let checkpoint = checkpoint_dir.join("progress.json");
    let record_first = s.record_problems.min(problems.len());
    let mut progress = if ctx.resume {
        SearchProgress::load(&checkpoint)?
    } else {
        crate::run_dir::clear_dir(&ctx.dir.checkpoints("search-eval"))?;
        SearchProgress::default()
    };
    if !progress.curves.is_empty() {
        tracing::info!(
            searchers = progress.curves.len(),
            "search-eval resumes from its checkpoint"
        );
    }
    let total_runs: usize = ctx.config.eval_searchers.len() * budgets.len();
    let mut done_runs = progress.curves.len() * budgets.len();
    for (si, entry) in ctx.config.eval_searchers.iter().enumerate().skip(progress.curves.len()) {
        let EvalSearcher {
            label,
            searcher,
            reward,
        } = entry;
        let built = searcher.build(&())?;
        let seed = ctx.seed(&format!("search-eval-{label}"));
        // Searchers whose smaller budgets are prefixes of a larger run are run once.
        let nesting = searcher.capabilities().nesting;
        let (selection, best_of_n, attempts) = match &nesting {
            Some(BudgetNesting::IndependentSamples(settings)) => (Some(settings.selection), Some(settings), false),
            Some(BudgetNesting::Attempts(how)) => (Some(*how), None, true),
            None => (None, None, false),
        };
        let mut points = Vec::new();
        let mut trees = Vec::new();
        if let Some(how) = selection {
            ctx.progress
                .set(done_runs, total_runs, &format!("{label} (budget {max_budget})"));
            let (policy, reward_model) = (fresh_policy(), fresh_reward(reward)?);
            let reward_model = reward_model.as_ref();
            let before = policy.compute_counters();
            let reading = ComputeReading::now(&policy, reward_model);
            let budget = Budget {
                generations: max_budget,
                tokens_per_generation: per_generation,
            };
            if best_of_n.is_some() && progress.shared_samples.is_none() {
                let sampler = BestOfN {
                    settings: BestOfNSettings {
                        selection: Selection::Majority,
                        ..BestOfNSettings::default()
                    },
                };
                let outcomes = run_budget(
                    &sampler,
                    &policy,
                    reward_model,
                    task.as_ref(),
                    &problems,
                    budget,
                    generation,
                    best_of_n_seed,
                    0,
                )
                .await?;
                let samples = problems
                    .iter()
                    .zip(outcomes)
                    .map(|(p, o)| {
                        (
                            p.id.clone(),
                            o.candidates.into_iter().map(|c| (c.trace, c.tokens)).collect(),
                        )
                    })
                    .collect();
                let after = policy.compute_counters();
                progress.shared_samples = Some(SharedDraw {
                    samples,
                    cost: counted_cost(before, after),
                    flops: ComputeReading::now(&policy, reward_model).since(reading, policy_params),
                });
            }
            // A best-of-N searcher scores and selects from the shared samples, at their cost.
            let rescore = best_of_n.zip(progress.shared_samples.as_ref()).map(|(settings, draw)| {
                let searcher = SharedSamples {
                    samples: &draw.samples,
                    settings: settings.clone(),
                };
                (searcher, draw.cost, draw.flops)
            });
            let (runner, run_seed): (&dyn Searcher, u64) = match &rescore {
                Some((searcher, _, _)) => (searcher, best_of_n_seed),
                None => (built.as_ref(), seed),
            };
            let before_run = ComputeReading::now(&policy, reward_model);
            let outcomes = run_budget(
                runner,
                &policy,
                reward_model,
                task.as_ref(),
                &problems,
                budget,
                generation,
                run_seed,
                record_first,
            )
            .await?;
            // The shared samples are charged to every rule that selects from them, with the
            // rule's own scoring; another searcher pays for what its run computed.
            let (cost, run_flops) = match &rescore {
                Some((_, cost, sampling_flops)) => (
                    *cost,
                    sampling_flops + ComputeReading::now(&policy, reward_model).since(before_run, policy_params),
                ),
                None => (
                    counted_cost(before, policy.compute_counters()),
                    ComputeReading::now(&policy, reward_model).since(reading, policy_params),
                ),
            };
            let tokens_at_max: u64 = outcomes
                .iter()
                .flat_map(|o| o.candidates.iter().map(|c| c.tokens))
                .sum();
            let flops_per_token = run_flops / tokens_at_max.max(1) as f64;
            for &b in &budgets {
                let results: Vec<(bool, u64)> = problems
                    .iter()
                    .zip(&outcomes)
                    .map(|(p, o)| {
                        let (answer, tokens) = prefix_outcome(task.as_ref(), p, &o.candidates, b, how);
                        (correct(task.as_ref(), p, &answer), tokens)
                    })
                    .collect();
                points.push(point(&quintile_of, b, results, cost, flops_per_token, seed ^ b as u64));
                for (pi, (p, o)) in problems.iter().zip(&outcomes).enumerate().take(record_first) {
                    let record = search_trees::prefix_record(task.as_ref(), p, &o.candidates, b, how, attempts);
                    trees.push(tree_line(label, b, pi, p, record));
                }
            }
            done_runs += budgets.len();
            if best_of_n.is_some() && how == Selection::Majority {
                progress.pass_and_majority = pass_and_majority(task.as_ref(), &problems, &outcomes, &budgets, seed);
            }
        } else {
            for &b in &budgets {
                ctx.progress
                    .set(done_runs, total_runs, &format!("{label} (budget {b})"));
                let budget = Budget {
                    generations: b,
                    tokens_per_generation: per_generation,
                };
                let (policy, reward_model) = (fresh_policy(), fresh_reward(reward)?);
                let reward_model = reward_model.as_ref();
                let reading = ComputeReading::now(&policy, reward_model);
                let outcomes = run_budget(
                    built.as_ref(),
                    &policy,
                    reward_model,
                    task.as_ref(),
                    &problems,
                    budget,
                    generation,
                    seed,
                    record_first,
                )
                .await?;
                let run_flops = ComputeReading::now(&policy, reward_model).since(reading, policy_params);
                let mut cost = Cost::default();
                for o in &outcomes {
                    cost.add(&o.cost);
                }
                let results: Vec<(bool, u64)> = problems
                    .iter()
                    .zip(&outcomes)
                    .map(|(p, o)| (correct(task.as_ref(), p, &o.answer), o.cost.generated_tokens))
                    .collect();
                let flops_per_token = run_flops / cost.generated_tokens.max(1) as f64;
                points.push(point(&quintile_of, b, results, cost, flops_per_token, seed ^ b as u64));
                for (pi, (p, o)) in problems.iter().zip(&outcomes).enumerate().take(record_first) {
                    let record = search_trees::record_of(task.as_ref(), p, o);
                    trees.push(tree_line(label, b, pi, p, record));
                }
                done_runs += 1;
            }
        }
        tracing::info!(searcher = %label, index = si, "search evaluation done");
        search_trees::write_part(&search_trees::part(&checkpoint_dir, si), &trees)?;
        progress.curves.push((label.clone(), points));
        progress.save(&checkpoint)?;
    }
    let recorded = search_trees::join_parts(
        &checkpoint_dir,
        ctx.config.eval_searchers.len(),
        &ctx.dir.path(search_trees::FILE),
    )?;
    let SearchProgress {
        curves,
        pass_and_majority: pass_maj,
        shared_samples,
    } = progress;
    let optimal = compute_optimal(&curves, &quintile_of, &budgets);
    let predictor = fresh_reward(&None)?;
    let predicted = predicted_ease(&problems, shared_samples.as_ref(), predictor.as_ref()).await?;
    let (optimal_predicted, predictor_json) = match &predicted {
        Some((ease, cost)) => {
            let quintile_predicted = quintiles_by_ease(ease);
            let agreement = quintile_predicted
                .iter()
                .zip(&quintile_of)
                .filter(|(a, b)| a == b)
                .count() as f64
                / problems.len().max(1) as f64;
            (
                compute_optimal_charged(&curves, &quintile_predicted, &budgets, cost),
                json!({
                    "predictor": format!("{} score of one sample", predictor.describe()),
                    "flops_per_problem": cost.iter().sum::<f64>() / cost.len().max(1) as f64,
                    "quintile_agreement_with_oracle": agreement,
                }),
            )
        }
        None => (Vec::new(), Value::Null),
    };
    let optimal_seed = ctx.seed("search-eval-compute-optimal");
    let versus = compute_optimal_vs_reference(&curves, &optimal, optimal_seed);
    let versus_predicted = if optimal_predicted.is_empty() {
        Value::Null
    } else {
        compute_optimal_vs_reference(&curves, &optimal_predicted, optimal_seed)
    };
    let trend_seed = ctx.seed("search-eval-trend");
    let trends: serde_json::Map<String, Value> = (curves.iter())
        .map(|(label, points)| (label.clone(), budget_trend(points, trend_seed)))
        .collect();
    let greedy = ctx.earlier.get("init").and_then(|r| r.results["pass@1"].as_f64());
    let best = best_at_top_budget(ctx, &curves, &problems, ctx.seed("search-eval-best"));
    let run_searcher = run_searcher_at_top_budget(ctx, &curves, &problems, ctx.seed("search-eval-best"));
    let chance = problems.iter().map(|p| task.chance_level(p)).sum::<f64>() / problems.len().max(1) as f64;
    Ok(json!({
        "problems": problems.len(),
        "budgets": budgets,
        "tokens_per_generation": per_generation,
        "sampling": s.sampling,
        "greedy_pass@1": greedy,
        "chance_level": chance,
        "curves": curves.iter().map(|(l, pts)| (l.clone(), Value::Array(pts.iter().map(Point::public_json).collect()))).collect::<serde_json::Map<_, _>>(),
        "trends": trends,
        "compute_optimal": optimal.iter().map(|o| o.to_json(optimal_seed)).collect::<Vec<_>>(),
        "compute_optimal_vs_best_of_n": versus,
        "compute_optimal_predicted": optimal_predicted.iter().map(|o| o.to_json(optimal_seed)).collect::<Vec<_>>(),
        "compute_optimal_predicted_vs_best_of_n": versus_predicted,
        "difficulty_predictor": predictor_json,
        "best_at_top_budget": best,
        "run_searcher_at_top_budget": run_searcher,
        "pass_and_majority": pass_maj,
        "recorded_searches": recorded,
    }))
}

/// The most accurate searcher at the largest budget, and its gain over greedy decoding on the
/// same problems (greedy from the initialisation's evaluation, `eval/init.json`), paired over
/// problems with a bootstrap interval. Null without curves.
fn best_at_top_budget(ctx: &Context, curves: &[(String, Vec<Point>)], problems: &[Problem], seed: u64) -> Value {
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
fn run_searcher_at_top_budget(
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
fn top_budget_json(ctx: &Context, label: &str, top: &Point, problems: &[Problem], seed: u64) -> Value {
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
    json!({
        "searcher": label,
        "budget": top.budget,
        "accuracy": top.accuracy,
        "low": top.low,
        "high": top.high,
        "tokens_per_problem": top.tokens_per_problem,
        "flops_per_problem": top.flops_per_problem,
        "gain_over_greedy": gain,
    })
}

/// pass@k (unbiased) and maj@k over the samples of a majority-vote best-of-N run.
fn pass_and_majority(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A curve point with the given per-problem outcomes, 50 tokens per generation.
    fn point_with(budget: usize, outcomes: Vec<bool>) -> Point {
        let accuracy = outcomes.iter().filter(|&&ok| ok).count() as f64 / outcomes.len() as f64;
        Point {
            budget,
            tokens_per_problem: 50.0 * budget as f64,
            accuracy,
            low: accuracy,
            high: accuracy,
            quintiles: vec![accuracy; 5],
            computed_per_generated: 1.0,
            per_problem: outcomes.into_iter().map(|ok| (ok, 50 * budget as u64)).collect(),
            flops_per_problem: 50.0 * budget as f64 * 1e6,
            flops_per_token: 1e6,
        }
    }

    /// `n` problems, every `right_every`-th one solved.
    fn outcomes(n: usize, right_every: usize) -> Vec<bool> {
        (0..n).map(|i| i % right_every == 0).collect()
    }

    /// `n` problems, the first `right` solved (so smaller counts are subsets of larger ones).
    fn first_right(n: usize, right: usize) -> Vec<bool> {
        (0..n).map(|i| i < right).collect()
    }

    #[test]
    fn a_one_problem_dip_is_not_a_significant_fall_but_a_collapse_is() {
        let n = 64;
        let dipping = [(1, 16), (4, 40), (16, 39), (64, 44)].map(|(b, right)| point_with(b, first_right(n, right)));
        let t = budget_trend(&dipping, 3);
        assert!(
            (t["rise"]["difference"].as_f64().unwrap_or(0.0) - 28.0 / 64.0).abs() < 1e-9,
            "{t}"
        );
        assert_eq!(t["rise"]["from_budget"], 1);
        assert_eq!(t["rise"]["to_budget"], 64);
        assert_eq!(t["rises_significantly"], true, "{t}");
        assert_eq!(t["largest_fall"]["from_budget"], 4, "{t}");
        assert_eq!(t["largest_fall"]["to_budget"], 16, "{t}");
        assert!((t["largest_fall"]["difference"].as_f64().unwrap_or(0.0) + 1.0 / 64.0).abs() < 1e-9);
        assert_eq!(t["falls_significantly"], false, "{t}");

        let collapsing = [(1, 40), (4, 10)].map(|(b, right)| point_with(b, first_right(n, right)));
        let t = budget_trend(&collapsing, 3);
        assert_eq!(t["falls_significantly"], true, "{t}");
        assert_eq!(t["rises_significantly"], false, "{t}");

        let rising = [(1, 10), (4, 20)].map(|(b, right)| point_with(b, first_right(n, right)));
        assert_eq!(budget_trend(&rising, 3)["largest_fall"], Value::Null);
    }

    #[test]
    fn predicted_quintiles_follow_the_ease_and_the_prediction_is_charged() {
        let ease = [0.9, 0.1, 0.5, 0.7, 0.3];
        assert_eq!(quintiles_by_ease(&ease), vec![0, 4, 2, 1, 3]);
        let n = 10;
        let curves = vec![("mcts".to_string(), vec![point_with(4, outcomes(n, 2))])];
        let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
        let free = compute_optimal(&curves, &quintile_of, &[4]);
        let charged = compute_optimal_charged(&curves, &quintile_of, &[4], &vec![5e6; n]);
        assert!((charged[0].flops_per_problem - free[0].flops_per_problem - 5e6).abs() < 1e-3);
        assert_eq!(charged[0].scores, free[0].scores);
    }

    #[test]
    fn the_reference_is_the_strongest_best_of_n_at_the_top_budget() {
        let n = 100;
        let curves = vec![
            (
                "mcts".to_string(),
                vec![point_with(1, outcomes(n, 1)), point_with(64, outcomes(n, 1))],
            ),
            (
                "majority".to_string(),
                vec![point_with(1, outcomes(n, 4)), point_with(64, outcomes(n, 3))],
            ),
            (
                "best-of-n-orm".to_string(),
                vec![point_with(1, outcomes(n, 4)), point_with(64, outcomes(n, 2))],
            ),
            (
                "best-of-n-weighted".to_string(),
                vec![point_with(1, outcomes(n, 4)), point_with(64, outcomes(n, 3))],
            ),
        ];
        let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
        let optimal = compute_optimal(&curves, &quintile_of, &[1, 64]);
        let v = compute_optimal_vs_reference(&curves, &optimal, 7);
        assert_eq!(v["reference"]["searcher"], "best-of-n-orm", "{v}");
        assert!(
            (v["reference"]["flops_per_problem"].as_f64().unwrap_or(0.0) - 3200.0 * 1e6).abs() < 1.0,
            "{v}"
        );
    }

    #[test]
    fn a_flat_reference_makes_the_saving_not_significant() {
        let n = 100;
        // Best-of-N weighted stays at 50% from budget 1 to 64; majority is as good at budget 1.
        let curves = vec![
            (
                "best-of-n-weighted".to_string(),
                vec![point_with(1, outcomes(n, 2)), point_with(64, outcomes(n, 2))],
            ),
            (
                "majority".to_string(),
                vec![point_with(1, outcomes(n, 2)), point_with(64, outcomes(n, 2))],
            ),
        ];
        let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
        let optimal = compute_optimal(&curves, &quintile_of, &[1, 64]);
        let v = compute_optimal_vs_reference(&curves, &optimal, 7);
        let gain = &v["reference"]["gain_over_budget"];
        assert_eq!(gain["significant"], false, "{v}");
        assert_eq!(gain["difference"].as_f64(), Some(0.0));
        assert_eq!(v["first_match"]["budget"], 1, "{v}");
        assert!(v["first_match"]["token_ratio"].as_f64().is_some_and(|r| r > 60.0));
    }

    #[test]
    fn a_rising_reference_is_significant_and_the_match_comes_where_the_accuracy_is() {
        let n = 100;
        // Best-of-N weighted rises from 25% to 100%; majority reaches 100% already at budget 16.
        let curves = vec![
            (
                "best-of-n-weighted".to_string(),
                vec![
                    point_with(1, outcomes(n, 4)),
                    point_with(16, outcomes(n, 2)),
                    point_with(64, outcomes(n, 1)),
                ],
            ),
            (
                "majority".to_string(),
                vec![
                    point_with(1, outcomes(n, 4)),
                    point_with(16, outcomes(n, 1)),
                    point_with(64, outcomes(n, 1)),
                ],
            ),
        ];
        let quintile_of: Vec<usize> = (0..n).map(|i| i % 5).collect();
        let optimal = compute_optimal(&curves, &quintile_of, &[1, 16, 64]);
        assert_eq!(
            optimal[1].accuracy(),
            1.0,
            "majority is chosen at budget 16 in every fold"
        );
        let v = compute_optimal_vs_reference(&curves, &optimal, 7);
        let gain = &v["reference"]["gain_over_budget"];
        assert_eq!(gain["significant"], true, "{v}");
        assert!((gain["difference"].as_f64().unwrap_or(0.0) - 0.75).abs() < 1e-9);
        let ci = gain["ci"].as_array().expect("interval");
        assert!(ci[0].as_f64() <= gain["difference"].as_f64() && gain["difference"].as_f64() <= ci[1].as_f64());
        assert_eq!(v["first_match"]["budget"], 16, "{v}");
        assert!((v["first_match"]["token_ratio"].as_f64().unwrap_or(0.0) - 4.0).abs() < 1e-9);
        assert!(
            (v["first_match"]["flops_ratio"].as_f64().unwrap_or(0.0) - 4.0).abs() < 1e-9,
            "{v}"
        );
        let json = optimal[1].to_json(7);
        assert!(
            json["low"].as_f64() <= json["accuracy"].as_f64() && json["accuracy"].as_f64() <= json["high"].as_f64()
        );
    }
}
