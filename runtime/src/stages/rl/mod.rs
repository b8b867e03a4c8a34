//! `rl`: the RL loop with search inside. Each iteration: a batch of training problems →
//! samples from the current policy (or the `[search]` searcher's answers, for expert iteration
//! with search) → rewards (the verifier's 1.0 / 0.1 / 0.0 at the end; the process model's step
//! scores where the learner asks) → one update by the `[learn]` learner. A greedy pass@1 curve
//! on held-out problems against the RL compute spent; a checkpoint every iteration (resume
//! gives the same weights); stability monitors (reward, KL, entropy, length) in
//! `metrics.jsonl`; pass@1 and pass@k before and after.

mod evaluation;
mod rollout_server;
mod rollouts;

use evaluation::{curve_point, evaluate_weights, paired_changes};

use rollout_server::RolloutServer;
use rollouts::{IterationSampler, Sampled, learn_and_score};

use std::collections::VecDeque;

use anyhow::Context as _;

use ponder_datagen::Problem;
use ponder_learn::{Experience, TrainablePolicy};
use ponder_policy_init::checkpoint::Checkpointer;
use ponder_policy_init::metrics::MetricsLog;
use ponder_policy_init::{HostWeights, TransformerPolicy};
use ponder_reward::Granularity;
use ponder_reward::verifier::{VerifierReward, VerifierSettings};
use serde_json::{Value, json};

use super::Context;
use super::common::{distinct_problems, load_policy, shared_task, stage_policy, trace_token_limit};
use super::reward_quality::step_quality;
use crate::registry::RewardContext;
use crate::run_dir::clear_dir;

/// The snapshot of the weights iteration `at` started from.
fn snapshot(snapshots: &VecDeque<(usize, HostWeights)>, at: usize) -> anyhow::Result<&HostWeights> {
    snapshots
        .iter()
        .find(|(j, _)| *j == at)
        .map(|(_, w)| w)
        .with_context(|| format!("no snapshot of the weights of iteration {}", at + 1))
}

/// The learner's optimizer steps shown within an RL iteration: the stage's position stays the
/// iteration (what a crash point for the kill tests counts), the steps go in the message.
struct WithinIteration<'a> {
    bar: &'a crate::progress::StageBar,
    iteration: usize,
    iterations: usize,
}

impl ponder_policy_init::trainer::Progress for WithinIteration<'_> {
    fn update(&self, step: usize, total: usize, status: &str) {
        self.bar.set(
            self.iteration,
            self.iterations,
            &format!("iteration {}: step {step}/{total} {status}", self.iteration + 1),
        );
    }
}

pub fn run(ctx: &Context) -> anyhow::Result<Value> {
    crate::block_on(run_async(ctx))
}

async fn run_async(ctx: &Context<'_>) -> anyhow::Result<Value> {
    let s = ctx.config.pipeline.rl.clone();
    let task = shared_task(ctx)?;
    let (start, tokenizer) = load_policy(&ctx.dir.policy("init"))?;
    let params = start.params() as f64;
    let max_tokens = trace_token_limit(ctx, &tokenizer, start.config.max_seq_len)?;
    let mut learner = ctx.config.learn.build(&ctx.seed("rl-learner"))?;
    let mut state = TrainablePolicy::new(
        &start,
        tokenizer.clone(),
        ctx.backend.clone(),
        learner.optim(),
        learner.value_head_lr(),
    );
    // Continue with the moments AdamW had at the end of policy initialisation: a fresh AdamW
    // moves every weight by about the learning rate on its first steps whatever its gradient,
    // which on a converged small model undoes more than the first updates teach.
    state.trainer.warm_start_from(&ctx.dir.checkpoints("init"))?;
    let checkpoints = Checkpointer::new(ctx.dir.checkpoints("rl"), 2);
    let verifier = VerifierReward::new(task.clone(), VerifierSettings::default());
    let needs_process = ctx.config.learn.resolved()["process_rewards"].as_bool() == Some(true);
    // The run's `[reward]` model guides search inside RL and gives per-step rewards: the reward
    // stage's PRM by default, the exact step labels with `oracle-process`, or a remote model.
    let reward_model = if needs_process || ctx.config.pipeline.rl.use_search {
        let model = ctx
            .config
            .reward
            .build(&RewardContext {
                task: task.clone(),
                run_dir: Some(ctx.dir.root.clone()),
            })
            .context("the RL stage's [reward] model (for learn.process_rewards or pipeline.rl.use_search)")?;
        if needs_process && model.granularity() != Granularity::Process {
            anyhow::bail!(
                "learn.process_rewards needs a process reward model in [reward] (prm, oracle-process, or a remote one); {} scores outcomes only",
                model.describe()
            );
        }
        Some(model)
    } else {
        None
    };
    // A reward model that learns during RL (PRIME): its own update each iteration, its state
    // in RL's checkpoints, and its step AUROC on held-out traces before and after.
    let online = reward_model.as_deref().filter(|m| m.learns_online());
    let mut online_before = Value::Null;
    // The reward model's passes during RL (step scores, an online model's updates), counted
    // batch by batch as they are used.
    let mut reward_flops = 0.0;
    let k = s.max_staleness;
    let mut snapshots: VecDeque<(usize, HostWeights)> = VecDeque::new();
    let mut prefetched: Option<(usize, anyhow::Result<Sampled>)> = None;
    let mut resumed = None;
    let mut first_iteration = 0usize;
    let mut curve: Vec<Value> = Vec::new();
    let (mut train_tokens, mut sample_tokens, mut scored_tokens) = (0u64, 0u64, 0u64);
    if ctx.resume
        && let Some((_, dir)) = checkpoints.latest()?
    {
        let path = dir.join("rl_state.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let saved: Value = serde_json::from_str(&text)?;
        state
            .trainer
            .set_outputs(checkpoints.clone(), MetricsLog::disabled("rl"));
        state.trainer.resume()?;
        // The reference in use at the checkpoint, when a reset replaced the initial one.
        let reference = dir.join("reference");
        if reference.join("config.json").exists() {
            state.reference = load_policy(&reference)?.0;
        }
        first_iteration = saved["iteration"].as_u64().unwrap_or(0) as usize;
        curve = saved["curve"].as_array().cloned().unwrap_or_default();
        train_tokens = saved["train_tokens"].as_u64().unwrap_or(0);
        sample_tokens = saved["sample_tokens"].as_u64().unwrap_or(0);
        scored_tokens = saved["scored_tokens"].as_u64().unwrap_or(0);
        reward_flops = saved["reward_flops"].as_f64().unwrap_or(0.0);
        online_before = saved["reward_model_before"].clone();
        if let Some(model) = online {
            model.load_online_state(&dir.join("reward_model"))?;
        }
        for j in first_iteration.saturating_sub(s.max_staleness)..first_iteration {
            snapshots.push_back((j, load_policy(&dir.join(format!("behaviour-{j}")))?.0));
        }
        resumed = Some(first_iteration);
        tracing::info!(iteration = first_iteration, "RL resumed");
    } else {
        clear_dir(checkpoints.dir())?;
        state
            .trainer
            .set_outputs(checkpoints.clone(), MetricsLog::disabled("rl"));
    }
    // An iteration's records (step = iteration + 1) are written before its checkpoint: keep
    // those of the iterations the checkpoint holds, drop any of the one it does not.
    let mut metrics = MetricsLog::open(&ctx.dir.metrics(), "rl", resumed)?;
    let train_problems = distinct_problems(&ctx.rl_examples()?, 0);
    let mut test: Vec<Problem> = ctx.held_out_examples()?.into_iter().map(|e| e.problem).collect();
    if s.eval_problems > 0 {
        test.truncate(s.eval_problems);
    }
    if let Some(model) = online
        && resumed.is_none()
    {
        ctx.progress
            .set(0, s.iterations, "the online reward model's step AUROC before RL");
        let policy = stage_policy(ctx, &start, &tokenizer);
        online_before = step_quality(ctx, &policy, max_tokens, model).await?;
    }
    // Training passes (forward and backward) at 6 FLOPs per parameter and token; sampling and the
    // update's forward-only passes (old policy, reference, critic) at 2; and the reward model's.
    let flops = |train: u64, sample: u64, scored: u64, reward: f64| {
        6.0 * params * train as f64 + 2.0 * params * (sample + scored) as f64 + reward
    };
    if curve.is_empty() {
        let policy = TransformerPolicy::on_backend(&start, tokenizer.clone(), &ctx.backend);
        let r = evaluate_weights(&policy, task.as_ref(), &test, 0, max_tokens, ctx.seed("rl-curve")).await?;
        curve.push(curve_point(0, 0.0, &r.pass1_greedy));
    }
    let spent = |train: u64, sample: u64, scored: u64, reward: f64| {
        s.flops_budget > 0.0 && flops(train, sample, scored, reward) >= s.flops_budget
    };
    let server = match &s.rollout_server {
        Some(config) => Some(RolloutServer::new(
            config,
            ctx.dir.root.join("rollout-weights"),
            tokenizer.clone(),
        )?),
        None => None,
    };
    let sampler = IterationSampler {
        ctx,
        task: &task,
        tokenizer: &tokenizer,
        reward_model: reward_model.as_deref(),
        // An online model scores after its update, below.
        needs_process: needs_process && online.is_none(),
        verifier: &verifier,
        max_tokens,
        train_problems: &train_problems,
        refills: learner.refills_uniform_groups(),
        server: server.as_ref(),
    };
    let mut completed = first_iteration;
    for iteration in first_iteration..s.iterations {
        if spent(train_tokens, sample_tokens, scored_tokens, reward_flops) {
            break;
        }
        ctx.progress
            .set(iteration, s.iterations, &format!("iteration {}", iteration + 1));
        // Asynchronous rollouts: iteration i samples with the weights iteration i - k started
        // from (k = max_staleness), which were ready while iteration i - 1 trained.
        snapshots.push_back((iteration, state.weights()));
        while snapshots.front().is_some_and(|(j, _)| j + k < iteration) {
            snapshots.pop_front();
        }
        let behaviour_at = iteration.saturating_sub(k);
        let sampled = match prefetched.take() {
            Some((i, sampled)) if i == iteration => sampled?,
            _ => {
                sampler
                    .sample(iteration, behaviour_at, snapshot(&snapshots, behaviour_at)?)
                    .await?
            }
        };
        let Sampled {
            mut samples,
            problems: batch_problems,
            tokens,
            reward_flops: scoring_flops,
            refills,
            groups,
        } = sampled;
        sample_tokens += tokens;
        reward_flops += scoring_flops;
        let online_update = match online {
            Some(model) => {
                let before = model.flops();
                let update = learn_and_score(model, &tokenizer, &batch_problems, &mut samples).await?;
                reward_flops += model.flops() - before;
                Some(update)
            }
            None => None,
        };
        let rewards: f64 = samples.iter().map(|x| f64::from(x.reward)).sum();
        let right = samples.iter().filter(|x| x.correct).count();
        let length: usize = samples
            .iter()
            .map(|x| match x.completion_tokens.len() {
                0 => tokenizer.encode(&x.completion).len(),
                n => n,
            })
            .sum();
        let n = samples.len().max(1) as f64;
        let staleness = iteration - behaviour_at;
        let experience = Experience {
            samples,
            truncated_is: (staleness > 0).then_some(s.tis_cap),
            ..Experience::default()
        };
        let within = WithinIteration {
            bar: ctx.progress,
            iteration,
            iterations: s.iterations,
        };
        // The update, and meanwhile the next iteration's sampling when it may be stale.
        let next = iteration + 1;
        let (stats, next_sampled) = std::thread::scope(|scope| {
            let version = next.saturating_sub(k);
            let ahead = (k > 0 && next < s.iterations)
                .then(|| snapshot(&snapshots, version).map(|w| (w, &sampler)))
                .transpose()?
                .map(|(w, sampler)| scope.spawn(move || crate::block_on(sampler.sample(next, version, w))));
            let stats = learner.learn(&mut state, &experience, &within);
            let next_sampled = ahead.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("iteration {}: the sampling thread panicked", next + 1)))
            });
            anyhow::Ok((stats, next_sampled))
        })?;
        prefetched = next_sampled.map(|r| (next, r));
        let stats = stats?;
        if !stats.loss.is_finite() {
            anyhow::bail!(
                "iteration {}: the loss is {}; the last good checkpoint (iteration {iteration}) is intact",
                iteration + 1,
                stats.loss
            );
        }
        train_tokens += stats.tokens;
        scored_tokens += stats.scored_tokens;
        let mut record = json!({
            "step": iteration + 1,
            "reward": rewards / n,
            "correct": right as f64 / n,
            "response_tokens": length as f64 / n,
            "loss": stats.loss,
            "kl": stats.kl,
            "entropy": stats.entropy,
            "clip_fraction": stats.clip_fraction,
            "optimizer_steps": stats.optimizer_steps,
            "train_tokens": train_tokens,
            "sample_tokens": sample_tokens,
            "scored_tokens": scored_tokens,
            "flops": flops(train_tokens, sample_tokens, scored_tokens, reward_flops),
        });
        if learner.refills_uniform_groups() {
            record["refill_rounds"] = json!(refills);
            record["groups"] = json!(groups);
        }
        if k > 0 {
            record["staleness"] = json!(staleness);
        }
        for (k, v) in &stats.extra {
            record[k] = json!(v);
        }
        if let Some(update) = &online_update {
            record["reward_model_loss"] = json!(update.loss);
            record["reward_model_accuracy"] = json!(update.accuracy);
        }
        // ProRL's stabilisers, before the checkpoint so that a resume continues from them.
        let due = |every: usize| every > 0 && (iteration + 1) % every == 0;
        if due(s.reset_reference_every) {
            state.reference = state.weights();
            record["reference_reset"] = json!(true);
        }
        if due(s.reset_optimizer_every) {
            state.trainer.reset_optimizer();
            record["optimizer_reset"] = json!(true);
        }
        metrics.write(record)?;
        completed = iteration + 1;
        let last = iteration + 1 == s.iterations || spent(train_tokens, sample_tokens, scored_tokens, reward_flops);
        if (iteration + 1) % s.eval_every.max(1) == 0 || last {
            let policy = TransformerPolicy::on_backend(&state.weights(), tokenizer.clone(), &ctx.backend);
            let r = evaluate_weights(&policy, task.as_ref(), &test, 0, max_tokens, ctx.seed("rl-curve")).await?;
            curve.push(curve_point(
                iteration + 1,
                flops(train_tokens, sample_tokens, scored_tokens, reward_flops),
                &r.pass1_greedy,
            ));
            metrics.write(json!({"step": iteration + 1, "eval": {"pass@1_greedy": r.pass1_greedy.value}}))?;
        }
        let rl_state = json!({
            "iteration": iteration + 1,
            "curve": curve,
            "train_tokens": train_tokens,
            "sample_tokens": sample_tokens,
            "scored_tokens": scored_tokens,
            "reward_flops": reward_flops,
            "reward_model_before": online_before,
        });
        let reference_was_reset = s.reset_reference_every > 0 && iteration + 1 >= s.reset_reference_every;
        state.trainer.save_checkpoint(&|dir| {
            let path = dir.join("rl_state.json");
            std::fs::write(&path, rl_state.to_string()).map_err(|e| ponder_policy_init::PolicyError::io(&path, e))?;
            if reference_was_reset {
                ponder_policy_init::hf::save_pretrained(&dir.join("reference"), &state.reference, &tokenizer)?;
            }
            if let Some(model) = online {
                model
                    .save_online_state(&dir.join("reward_model"))
                    .map_err(|e| ponder_policy_init::PolicyError::Format(e.to_string()))?;
            }
            // The snapshots later iterations sample with (the current weights are the
            // checkpoint's own).
            for (j, weights) in snapshots.iter().filter(|(j, _)| j + k > iteration) {
                ponder_policy_init::hf::save_pretrained(&dir.join(format!("behaviour-{j}")), weights, &tokenizer)?;
            }
            Ok(())
        })?;
    }
    let online_after = match online {
        Some(model) => {
            ctx.progress.set(
                s.iterations,
                s.iterations,
                "the online reward model's step AUROC after RL",
            );
            let policy = stage_policy(ctx, &start, &tokenizer);
            step_quality(ctx, &policy, max_tokens, model).await?
        }
        None => Value::Null,
    };
    let weights = state.weights();
    ponder_policy_init::hf::save_pretrained(&ctx.dir.policy("rl"), &weights, &tokenizer)?;
    ctx.progress.set(s.iterations, s.iterations, "final evaluation");
    let policy = TransformerPolicy::on_backend(&weights, tokenizer.clone(), &ctx.backend);
    let all_test: Vec<Problem> = ctx.held_out_examples()?.into_iter().map(|e| e.problem).collect();
    let after = evaluate_weights(
        &policy,
        task.as_ref(),
        &all_test,
        s.final_samples,
        max_tokens,
        ctx.seed("init-eval"),
    )
    .await?;
    ctx.dir.write_json("eval/rl.json", &serde_json::to_value(&after)?)?;
    let before = ctx
        .earlier
        .get("init")
        .map(|r| r.results.clone())
        .unwrap_or(Value::Null);
    let mut results = json!({
        "learner": learner.describe(),
        "kind": ctx.config.learn.kind(),
        "iterations": completed,
        "flops_budget": s.flops_budget,
        "use_search": s.use_search,
        "reset_reference_every": s.reset_reference_every,
        "reset_optimizer_every": s.reset_optimizer_every,
        "pass@1_before": before["pass@1"],
        "pass@1_before_ci": before["pass@1_ci"],
        "pass@1_after": after.pass1_greedy.value,
        "pass@1_after_ci": [after.pass1_greedy.low, after.pass1_greedy.high],
        "train_tokens": train_tokens,
        "sample_tokens": sample_tokens,
        "scored_tokens": scored_tokens,
        "flops": flops(train_tokens, sample_tokens, scored_tokens, reward_flops),
        "reward_flops": reward_flops,
        "curve": curve,
        "eval": after.summary(),
    });
    if let Some(config) = &s.rollout_server {
        results["rollout_server"] = json!(config.endpoints);
    }
    if let Some(server) = &server {
        server.finish();
    }
    if let Some(model) = online {
        // Measured on the reward stage's held-out traces (the initialised policy's samples), so
        // that the figures sit beside the trained PRM's.
        results["reward_model"] = json!({
            "describe": model.describe(),
            "step_auroc_before": online_before,
            "step_auroc_after": online_after,
        });
    }
    if let Some(changes) = paired_changes(ctx, &after, ctx.seed("rl-paired-change"))? {
        results["pass@1_sampled_change"] = changes.0;
        results["pass@1_change"] = changes.1;
    }
    // Sampled pass@k; `pass@1_before/after` stay the greedy figures.
    for (k, e) in &after.pass_at {
        let key = if *k == 1 {
            "pass@1_sampled".to_string()
        } else {
            format!("pass@{k}")
        };
        results[format!("{key}_after")] = json!(e.value);
        results[format!("{key}_after_ci")] = json!([e.low, e.high]);
        results[format!("{key}_before")] = before[&key].clone();
        results[format!("{key}_before_ci")] = before[format!("{key}_ci")].clone();
    }
    Ok(results)
}
