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

use anyhow::Context as _;

use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::{Policy, Sampling};
use ponder_reward::RewardModel;
use ponder_search::best_of_n::{BestOfN, BestOfNSettings};
use ponder_search::lockstep::search_all;
use ponder_search::{Budget, BudgetNesting, Cost, SearchEnv, SearchOutcome, Searcher, Selection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod policy_source;
mod shared_samples;
mod statistics;

use policy_source::PolicySource;
use shared_samples::{SharedDraw, SharedSamples, predicted_ease};
use statistics::*;

use crate::config::EvalSearcher;
use crate::registry::RewardContext;
use crate::stages::Context;
use crate::stages::common::{shared_task, tokens_per_generation, trace_token_limit};
use crate::stages::search_trees::{self, TreeLine};

/// How every searcher generates: token limits per step and per trace, and the sampling.
#[derive(Clone, Copy, Debug)]
struct Generation {
    max_step_tokens: usize,
    max_trace_tokens: usize,
    sampling: Sampling,
}

impl Generation {
    /// The search environment of these limits and sampling over the given models and seed.
    fn env<'a>(
        &self,
        policy: &'a dyn Policy,
        reward: &'a dyn RewardModel,
        task: &'a dyn Task,
        seed: u64,
    ) -> SearchEnv<'a> {
        SearchEnv {
            policy,
            reward,
            task,
            seed,
            max_step_tokens: self.max_step_tokens,
            max_trace_tokens: self.max_trace_tokens,
            sampling: self.sampling,
            record: false,
        }
    }
}

/// Runs one searcher on all problems at one budget, in lockstep: problem `i` searches with its
/// own seed drawn from `env`'s and is recorded when `i < record_first`.
async fn run_budget(
    searcher: &dyn Searcher,
    env: SearchEnv<'_>,
    problems: &[Problem],
    budget: Budget,
    record_first: usize,
) -> anyhow::Result<Vec<SearchOutcome>> {
    let seed = env.seed;
    let outcomes = search_all(searcher, &env, problems, &budget, |i, env| {
        env.seed = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        env.record = i < record_first;
    })
    .await;
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

/// The policy's own cost between two readings of its compute counters (prompt tokens
/// computed, tokens generated).
fn counted_cost(before: (u64, u64), after: (u64, u64)) -> Cost {
    Cost {
        generated_tokens: after.1 - before.1,
        computed_prompt_tokens: (after.0 - before.0).saturating_sub(after.1 - before.1),
        ..Cost::default()
    }
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
        // A local policy's count is exact (prefix reuse can keep it below the tokens
        // generated); a remote one counts the prompt and generated tokens its servers report
        // (an upper bound: what they reused of a prefix is unseen), or only the tokens they
        // sent back where they report no usage (a lower bound: their prompts are unseen).
        ComputeReading {
            policy_tokens: policy.forward_tokens(),
            reward_flops: reward.flops(),
        }
    }

    /// FLOPs spent since `earlier`.
    fn since(&self, earlier: ComputeReading, policy_params: f64) -> f64 {
        2.0 * policy_params * self.policy_tokens.saturating_sub(earlier.policy_tokens) as f64
            + (self.reward_flops - earlier.reward_flops).max(0.0)
    }
}

pub fn run(ctx: &Context) -> anyhow::Result<Value> {
    crate::block_on(run_async(ctx))
}

async fn run_async(ctx: &Context<'_>) -> anyhow::Result<Value> {
    let s = ctx.config.pipeline.search_eval.clone();
    let task = shared_task(ctx)?;
    let source = PolicySource::of(ctx)?;
    let (tokenizer, max_seq_len) = source.tokenizer_and_context();
    let max_trace = trace_token_limit(ctx, &tokenizer, max_seq_len)?;
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
    let per_generation = tokens_per_generation(ctx.earlier.get("init").map(|r| &r.results), max_trace);
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
    let policy_params = source.params() as f64;
    // Each run gets a policy and a reward model of its own, with empty prefix caches: its FLOPs
    // are what it computed itself, and a resumed stage counts the same as an uninterrupted one.
    let fresh_policy = || source.policy(ctx);
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
            let (policy, reward_model) = (fresh_policy()?, fresh_reward(reward)?);
            let reward_model = reward_model.as_ref();
            let before = policy.compute_counters();
            let reading = ComputeReading::now(policy.as_ref(), reward_model);
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
                let env = generation.env(policy.as_ref(), reward_model, task.as_ref(), best_of_n_seed);
                let outcomes = run_budget(&sampler, env, &problems, budget, 0).await?;
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
                    flops: ComputeReading::now(policy.as_ref(), reward_model).since(reading, policy_params),
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
            let before_run = ComputeReading::now(policy.as_ref(), reward_model);
            let env = generation.env(policy.as_ref(), reward_model, task.as_ref(), run_seed);
            let outcomes = run_budget(runner, env, &problems, budget, record_first).await?;
            // The shared samples are charged to every rule that selects from them, with the
            // rule's own scoring; another searcher pays for what its run computed.
            let (cost, run_flops) = match &rescore {
                Some((_, cost, sampling_flops)) => (
                    *cost,
                    sampling_flops
                        + ComputeReading::now(policy.as_ref(), reward_model).since(before_run, policy_params),
                ),
                None => (
                    counted_cost(before, policy.compute_counters()),
                    ComputeReading::now(policy.as_ref(), reward_model).since(reading, policy_params),
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
                let (policy, reward_model) = (fresh_policy()?, fresh_reward(reward)?);
                let reward_model = reward_model.as_ref();
                let reading = ComputeReading::now(policy.as_ref(), reward_model);
                let env = generation.env(policy.as_ref(), reward_model, task.as_ref(), seed);
                let outcomes = run_budget(built.as_ref(), env, &problems, budget, record_first).await?;
                let run_flops = ComputeReading::now(policy.as_ref(), reward_model).since(reading, policy_params);
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
    // The reference is the strongest searcher of independent samples (best-of-N of any kind).
    let best_of_n: Vec<&str> = (ctx.config.eval_searchers.iter())
        .filter(|e| {
            matches!(
                e.searcher.capabilities().nesting,
                Some(BudgetNesting::IndependentSamples(_))
            )
        })
        .map(|e| e.label.as_str())
        .collect();
    let versus = compute_optimal_vs_reference(&curves, &best_of_n, &optimal, optimal_seed);
    let versus_predicted = if optimal_predicted.is_empty() {
        Value::Null
    } else {
        compute_optimal_vs_reference(&curves, &best_of_n, &optimal_predicted, optimal_seed)
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
