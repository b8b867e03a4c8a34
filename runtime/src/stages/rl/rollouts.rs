//! An RL iteration's experience, one sampling round at a time: samples from the policy (or
//! the run's searcher's answers), the verifier's reward at the end, and a process model's step
//! scores where the learner asks; and which groups carry a signal (for DAPO's refill rounds).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;

use ponder_datagen::{Problem, Task, Trace};
use ponder_learn::Sample;
use ponder_policy_init::{Policy, Sampling};
use ponder_reward::RewardModel;
use ponder_reward::verifier::VerifierReward;
use ponder_search::lockstep::search_all;
use ponder_search::{Budget, SearchEnv};

use rand::SeedableRng;
use rand::seq::IndexedRandom;

use super::rollout_server::RolloutServer;
use crate::stages::Context;
use crate::stages::common::{sample_generations, stage_policy, tokens_per_generation};

/// Step scores of every trace, in order, each with the index of its problem in `problems`: one
/// `score_many` call with the traces grouped by problem (one request per problem for a remote
/// model).
async fn process_scores(
    model: &dyn RewardModel,
    problems: &[Problem],
    traces: &[(usize, &Trace)],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut groups: Vec<(usize, Vec<Trace>)> = Vec::new();
    for (i, trace) in traces {
        match groups.last_mut() {
            Some((last, traces)) if last == i => traces.push((*trace).clone()),
            _ => groups.push((*i, vec![(*trace).clone()])),
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
        traces.len(),
        groups.len()
    );
    Ok(scored.into_iter().flatten().map(|s| s.steps).collect())
}

/// An online reward model's turn (PRIME's implicit PRM): it learns from the samples' outcomes,
/// then gives their step rewards, so that the update reads the scores of the model that has
/// seen them. `problems[g]` is group `g`'s problem.
pub(super) async fn learn_and_score(
    model: &dyn RewardModel,
    tokenizer: &ponder_policy_init::Tokenizer,
    problems: &[Problem],
    samples: &mut [Sample],
) -> anyhow::Result<ponder_reward::OnlineUpdate> {
    let examples: Vec<ponder_reward::OutcomeExample> = samples
        .iter()
        .map(|x| {
            let (tokens, first) = ponder_learn::sample_tokens(tokenizer, x);
            ponder_reward::OutcomeExample {
                tokens,
                first,
                correct: x.correct,
            }
        })
        .collect();
    let update = model.learn_outcomes(&examples)?;
    let parsed: Vec<Trace> = samples.iter().map(|x| Trace::parse(&x.completion)).collect();
    let traces: Vec<(usize, &Trace)> = samples.iter().map(|x| x.group).zip(&parsed).collect();
    let scores = process_scores(model, problems, &traces).await?;
    for (x, steps) in samples.iter_mut().zip(scores) {
        x.step_rewards = steps;
    }
    Ok(update)
}

/// One iteration's samples: the batch's problems (group `g`'s is `problems[g]`), the tokens
/// the policy ran through its model for them (prompts and generated tokens, each once), and
/// DAPO's refill rounds and groups.
pub(super) struct Sampled {
    pub(super) samples: Vec<Sample>,
    pub(super) problems: Vec<Problem>,
    pub(super) tokens: u64,
    /// The reward model's FLOPs for their step scores.
    pub(super) reward_flops: f64,
    pub(super) refills: usize,
    pub(super) groups: usize,
}

/// What an iteration's sampling reads, apart from the weights it samples with: so that the
/// next iteration can sample on another thread while this one trains (asynchronous rollouts).
pub(super) struct IterationSampler<'a> {
    pub(super) ctx: &'a Context<'a>,
    pub(super) task: &'a Arc<dyn Task>,
    pub(super) tokenizer: &'a ponder_policy_init::Tokenizer,
    pub(super) reward_model: Option<&'a dyn RewardModel>,
    pub(super) needs_process: bool,
    pub(super) verifier: &'a VerifierReward,
    pub(super) max_tokens: usize,
    pub(super) train_problems: &'a [Problem],
    /// The learner leaves out groups without signal: refill them (DAPO's dynamic sampling).
    pub(super) refills: bool,
    /// Sample on these servers (loading the weights there) rather than in this process.
    pub(super) server: Option<&'a RolloutServer>,
}

impl IterationSampler<'_> {
    /// Iteration `iteration`'s problems (drawn by its own seed) and their samples from
    /// `weights`, the weights iteration `version` started from; with refills, fresh problems
    /// for the groups that carry no signal.
    pub(super) async fn sample(
        &self,
        iteration: usize,
        version: usize,
        weights: &ponder_policy_init::HostWeights,
    ) -> anyhow::Result<Sampled> {
        let (ctx, s) = (self.ctx, &self.ctx.config.pipeline.rl);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ctx.seed("rl-problems") ^ iteration as u64);
        let problems: Vec<Problem> = self
            .train_problems
            .choose_multiple(&mut rng, s.problems_per_iteration.min(self.train_problems.len()))
            .cloned()
            .collect();
        let policy: Box<dyn Policy> = match self.server {
            Some(server) => Box::new(server.policy_at(version, weights).await?),
            None => Box::new(stage_policy(ctx, weights, self.tokenizer)),
        };
        let round = Round {
            ctx,
            policy: policy.as_ref(),
            task: self.task,
            reward_model: self.reward_model,
            needs_process: self.needs_process,
            verifier: self.verifier,
            max_tokens: self.max_tokens,
        };
        let seed = ctx.seed("rl-samples") ^ (iteration as u64) << 24;
        let reward_before = self.reward_model.map_or(0.0, |m| m.flops());
        let (mut samples, mut tokens) = round.samples(&problems, 0, seed).await?;
        let (mut refills, mut groups) = (0usize, problems.len());
        let mut batch = problems;
        if self.refills {
            let mut used: HashSet<String> = batch.iter().map(|p| p.id.clone()).collect();
            while refills < s.refill_rounds {
                let missing = s.problems_per_iteration.saturating_sub(informative_groups(&samples));
                let unused: Vec<&Problem> = self.train_problems.iter().filter(|p| !used.contains(&p.id)).collect();
                let fresh: Vec<Problem> = unused
                    .choose_multiple(&mut rng, missing)
                    .map(|p| (*p).clone())
                    .collect();
                if fresh.is_empty() {
                    break;
                }
                refills += 1;
                used.extend(fresh.iter().map(|p| p.id.clone()));
                let (more, computed) = round.samples(&fresh, groups, seed ^ (refills as u64) << 48).await?;
                tokens += computed;
                samples.extend(more);
                groups += fresh.len();
                batch.extend(fresh);
            }
        }
        Ok(Sampled {
            samples,
            problems: batch,
            tokens,
            reward_flops: self.reward_model.map_or(0.0, |m| m.flops()) - reward_before,
            refills,
            groups,
        })
    }
}

/// What one sampling round of an iteration reads: the policy, the task and its verifier, and
/// the run's reward model (for search inside RL, and for step rewards when the learner asks).
struct Round<'a> {
    pub(super) ctx: &'a Context<'a>,
    pub(super) policy: &'a dyn Policy,
    pub(super) task: &'a Arc<dyn Task>,
    pub(super) reward_model: Option<&'a dyn RewardModel>,
    pub(super) needs_process: bool,
    pub(super) verifier: &'a VerifierReward,
    pub(super) max_tokens: usize,
}

impl Round<'_> {
    /// The learner's samples of `problems` (groups numbered from `first_group`), each with the
    /// verifier's reward and, where the learner asks, the process model's step scores; and the
    /// positions the policy ran through its model for them (prompts and generated tokens).
    async fn samples(&self, problems: &[Problem], first_group: usize, seed: u64) -> anyhow::Result<(Vec<Sample>, u64)> {
        let (collected, computed) = collect(
            self.ctx,
            self.policy,
            self.task,
            self.reward_model,
            problems,
            self.max_tokens,
            seed,
        )
        .await?;
        let step_scores = match self.reward_model.filter(|_| self.needs_process) {
            Some(model) => {
                let traces: Vec<(usize, &Trace)> = collected.iter().map(|c| (c.group, &c.trace)).collect();
                process_scores(model, problems, &traces).await?
            }
            None => vec![Vec::new(); collected.len()],
        };
        let mut samples = Vec::with_capacity(collected.len());
        for (
            Collected {
                group: i,
                trace,
                generation,
            },
            steps,
        ) in collected.into_iter().zip(step_scores)
        {
            let problem = &problems[i];
            let reward = self.verifier.reward(problem, &trace)?;
            let correct = self.task.verify(problem, &trace)?.correct;
            // The update trains on what the policy sampled, token for token, with the
            // behaviour log-probs recorded then; a searcher's chosen trace is rendered.
            let (completion, completion_tokens, logprobs) = match generation {
                Some(g) => (g.text, g.token_ids, g.logprobs),
                None => (trace.render(), Vec::new(), Vec::new()),
            };
            samples.push(Sample {
                prompt: problem.prompt.clone(),
                completion,
                completion_tokens,
                logprobs,
                reward,
                step_rewards: steps,
                correct,
                group: first_group + i,
            });
        }
        Ok((samples, computed))
    }
}

/// Groups (with at least two samples) whose samples did not all earn the same reward: the
/// ones a group-relative advantage learns from.
pub(super) fn informative_groups(samples: &[Sample]) -> usize {
    let mut rewards: HashMap<usize, Vec<f32>> = HashMap::new();
    for x in samples {
        rewards.entry(x.group).or_default().push(x.reward);
    }
    rewards
        .values()
        .filter(|r| r.len() > 1 && r.iter().any(|&x| x != r[0]))
        .count()
}

/// One trace collected for an update: the problem's index in the batch, the trace, and the
/// generation it was parsed from (text, sampled token ids, behaviour log-probs) when it was
/// sampled whole from the policy; a searcher's chosen trace has none.
struct Collected {
    group: usize,
    trace: Trace,
    generation: Option<ponder_policy_init::Generation>,
}

/// Samples for one iteration: plain samples, or the searcher's chosen traces (guided by
/// `reward`, the run's `[reward]` model, built once for the stage).
async fn collect(
    ctx: &Context<'_>,
    policy: &dyn Policy,
    task: &Arc<dyn Task>,
    reward: Option<&dyn RewardModel>,
    problems: &[Problem],
    max_tokens: usize,
    seed: u64,
) -> anyhow::Result<(Vec<Collected>, u64)> {
    let s = &ctx.config.pipeline.rl;
    let before = policy.forward_tokens();
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
    Ok((out, policy.forward_tokens().saturating_sub(before)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(group: usize, reward: f32) -> Sample {
        Sample {
            prompt: String::new(),
            completion: String::new(),
            completion_tokens: Vec::new(),
            logprobs: Vec::new(),
            reward,
            step_rewards: Vec::new(),
            correct: reward == 1.0,
            group,
        }
    }

    #[test]
    fn a_group_informs_when_its_rewards_differ() {
        let samples = [
            // Group 0 all right, 1 mixed, 2 all wrong, 3 format reward against none, 4 alone.
            sample(0, 1.0),
            sample(0, 1.0),
            sample(1, 1.0),
            sample(1, 0.0),
            sample(2, 0.0),
            sample(2, 0.0),
            sample(3, 0.1),
            sample(3, 0.0),
            sample(4, 1.0),
        ];
        assert_eq!(informative_groups(&samples), 2);
        assert_eq!(informative_groups(&samples[..2]), 0);
    }
}
