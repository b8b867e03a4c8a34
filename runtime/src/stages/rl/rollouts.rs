//! One RL iteration's experience: samples from the policy (or the run's searcher's answers),
//! the verifier's reward at the end, and a process model's step scores where the learner asks.

use std::sync::Arc;

use anyhow::Context as _;

use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::{Policy, Sampling, TransformerPolicy};
use ponder_reward::RewardModel;
use ponder_search::lockstep::search_all;
use ponder_search::{Budget, SearchEnv};

use crate::stages::Context;
use crate::stages::common::{sample_generations, tokens_per_generation};

/// Step scores of every collected trace, in order: one `score_many` call with the traces grouped
/// by problem (one request per problem for a remote model).
pub(super) async fn process_scores(
    model: &dyn RewardModel,
    problems: &[Problem],
    collected: &[Collected],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut groups: Vec<(usize, Vec<Trace>)> = Vec::new();
    for Collected { group: i, trace, .. } in collected {
        match groups.last_mut() {
            Some((last, traces)) if last == i => traces.push(trace.clone()),
            _ => groups.push((*i, vec![trace.clone()])),
        }
    }
    let items: Vec<(&Problem, &[Trace])> = groups.iter().map(|(i, t)| (&problems[*i], t.as_slice())).collect();
    let scored = model.score_many(&items).await?;
    let one_per_trace =
        scored.len() == groups.len() && scored.iter().zip(&groups).all(|(s, (_, t))| s.len() == t.len());
    anyhow::ensure!(
        one_per_trace,
        "the process reward model ({}) returned {} scores in {} groups for {} traces in {} groups (one per trace, grouped by problem, expected)",
        model.describe(),
        scored.iter().map(Vec::len).sum::<usize>(),
        scored.len(),
        collected.len(),
        groups.len()
    );
    Ok(scored.into_iter().flatten().map(|s| s.steps).collect())
}

/// One trace collected for an update: the problem's index in the batch, the trace, and the
/// generation it was parsed from (text, sampled token ids, behaviour log-probs) when it was
/// sampled whole from the policy; a searcher's chosen trace has none.
pub(super) struct Collected {
    pub(super) group: usize,
    pub(super) trace: Trace,
    pub(super) generation: Option<ponder_policy_init::Generation>,
}

/// Samples for one iteration: plain samples, or the searcher's chosen traces (guided by
/// `reward`, the run's `[reward]` model, built once for the stage).
pub(super) async fn collect(
    ctx: &Context<'_>,
    policy: &TransformerPolicy,
    task: &Arc<dyn Task>,
    reward: Option<&dyn RewardModel>,
    problems: &[Problem],
    max_tokens: usize,
    seed: u64,
) -> anyhow::Result<(Vec<Collected>, u64)> {
    let s = &ctx.config.pipeline.rl;
    let before = policy.compute_counters();
    let mut out = Vec::new();
    if s.use_search {
        let searcher = ctx.config.search.build(&())?;
        let reward = reward.context("search inside RL needs the [reward] model")?;
        let budget = Budget {
            generations: s.samples_per_problem,
            tokens_per_generation: tokens_per_generation(ctx.earlier.get("init").map(|r| &r.results), max_tokens),
        };
        let env = SearchEnv {
            policy,
            reward,
            task: task.as_ref(),
            seed,
            max_step_tokens: max_tokens,
            max_trace_tokens: max_tokens,
            sampling: Sampling::default(),
            record: false,
        };
        let outcomes = search_all(searcher.as_ref(), &env, problems, &budget, |i, env| {
            env.seed = seed ^ i as u64
        })
        .await;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let outcome = outcome?;
            if let Some(trace) = outcome.trace {
                out.push(Collected {
                    group: i,
                    trace,
                    generation: None,
                });
            }
        }
    } else {
        let sampled = sample_generations(policy, problems, s.samples_per_problem, max_tokens, 1.0, seed).await?;
        for (i, generations) in sampled.into_iter().enumerate() {
            out.extend(generations.into_iter().map(|g| Collected {
                group: i,
                trace: Trace::parse(&g.text),
                generation: Some(g),
            }));
        }
    }
    let after = policy.compute_counters();
    Ok((out, (after.0 - before.0) + (after.1 - before.1)))
}
