//! `reward`: the learned reward models the run uses, trained, and measured against exact truth.
//!
//! 1. Sample traces from the initialised policy on training problems; label their outcomes
//!    and, for a process model, their steps: Monte-Carlo rollouts or the task's exact labels,
//!    as its settings say.
//! 2. Train each learned reward model the config names without a trained `from` folder
//!    (`[reward]` and the search-eval searchers' own reward tables), from the policy's
//!    weights with its own settings: a process reward model (PRM) on the step labels, saved in
//!    `reward/prm`; an outcome reward model (ORM) on the outcomes, in `reward/orm`. A config
//!    that names neither trains nothing.
//! 3. On held-out problems, the measures of [`super::reward_quality`].

use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::trainer::TrainerConfig;
use ponder_policy_init::{Tokenizer, TransformerPolicy};
use ponder_reward::datasets::{ProcessExample, write_process};
use ponder_reward::labels::{LabelSource, MonteCarloSettings, labels_from_rollouts, monte_carlo_rollouts};
use ponder_reward::learned::LearnedReward;
use ponder_reward::training::{RewardExample, RewardObjective, RewardWeights, reward_example, reward_trainer};
use ponder_reward::{Aggregation, Granularity, OutcomeRewardSettings, ProcessRewardSettings};
use rand::SeedableRng;
use serde_json::{Value, json};

use super::Context;
use super::common::{current_policy, distinct_problems, sample_traces, stage_policy, trace_token_limit};
use super::reward_quality::{self, Trained};
use crate::registry::RewardTraining;

/// A sampled trace with everything known about it.
pub(super) struct Labelled {
    pub problem: Problem,
    pub trace: Trace,
    pub exact: Vec<bool>,
    pub correct: bool,
}

pub(super) fn label(task: &dyn Task, problem: &Problem, trace: Trace) -> anyhow::Result<Labelled> {
    let exact = task.check_steps(problem, &trace.steps)?;
    let correct = task.verify(problem, &trace)?.correct;
    Ok(Labelled {
        problem: problem.clone(),
        trace,
        exact,
        correct,
    })
}

/// Trains one reward model from `start` on examples; returns its weights and a summary.
fn train_model(
    ctx: &Context,
    name: &str,
    start: RewardWeights,
    tokenizer: &Tokenizer,
    examples: Vec<RewardExample>,
) -> anyhow::Result<(RewardWeights, Value)> {
    let s = &ctx.config.pipeline.reward;
    let (granularity, aggregation) = (start.granularity, start.aggregation);
    let config = TrainerConfig {
        optim: s.optim.clone(),
        steps: s.steps,
        checkpoint_every: (s.steps / 2).max(1),
        log_every: 10,
        ..TrainerConfig::default()
    };
    let count = examples.len();
    let mut objective = RewardObjective::new(
        start.backbone.config.clone(),
        examples,
        s.batch_size,
        ctx.seed(&format!("{name}-batches")),
        granularity,
        aggregation,
    );
    let mut trainer = reward_trainer(&start, config).with_backend(ctx.backend.clone()).open(
        &ctx.dir.checkpoints(name),
        &ctx.dir.metrics(),
        name,
        ctx.resume,
    )?;
    if let Some(step) = trainer.resumed_from() {
        tracing::info!(model = name, step, "reward model training resumed");
    }
    let summary = trainer.run(&mut objective, ctx.progress, &|_| Ok(()))?;
    if summary.rewinds > 0 || summary.skipped_batches > 0 {
        tracing::warn!(
            model = name,
            rewinds = summary.rewinds,
            lr_factor = summary.lr_factor,
            skipped = summary.skipped_batches,
            "the loss spiked: batches skipped, or training rewound to a snapshot with a lower learning rate"
        );
    }
    let weights = objective.weights(&trainer.params);
    weights.save(&ctx.dir.path(&format!("reward/{name}")), tokenizer)?;
    let summary = json!({"examples": count, "steps": summary.steps, "final_loss": summary.final_loss,
                         "likelihood_weight": weights.likelihood_weight,
                         "train_tokens": summary.tokens, "train_seconds": summary.train_seconds,
                         "rewinds": summary.rewinds, "lr_factor": summary.lr_factor,
                         "skipped_batches": summary.skipped_batches});
    Ok((weights, summary))
}

pub fn run(ctx: &Context) -> anyhow::Result<Value> {
    crate::block_on(run_async(ctx))
}

/// Step labels for the PRM's training traces, as its settings say: (labels per trace, tokens
/// the Monte-Carlo rollouts generated).
async fn step_labels(
    ctx: &Context<'_>,
    policy: &TransformerPolicy,
    items: &[Labelled],
    settings: &ProcessRewardSettings,
    max_tokens: usize,
) -> anyhow::Result<(Vec<Vec<f32>>, u64)> {
    Ok(match settings.labels {
        LabelSource::GroundTruth => (items.iter().map(exact_labels).collect(), 0),
        LabelSource::MonteCarlo => {
            let pairs: Vec<(Problem, Trace)> = items.iter().map(|l| (l.problem.clone(), l.trace.clone())).collect();
            let mc = MonteCarloSettings {
                rollouts: settings.rollouts,
                max_tokens,
                seed: ctx.seed("reward-mc"),
                ..MonteCarloSettings::default()
            };
            let (outcomes, tokens) = monte_carlo_rollouts(policy, ctx.task, &pairs, &mc).await?;
            let labels = outcomes
                .iter()
                .map(|o| labels_from_rollouts(o, settings.rollouts, settings.soft))
                .collect();
            (labels, tokens)
        }
    })
}

fn exact_labels(l: &Labelled) -> Vec<f32> {
    l.exact.iter().map(|&b| f32::from(u8::from(b))).collect()
}

/// `pipeline.reward.synthetic_traces` traces with exact labels for the PRM: training-side
/// expert traces and the task's wrong attempts, alternately.
fn synthetic_traces(ctx: &Context) -> anyhow::Result<Vec<Labelled>> {
    let wanted = ctx.config.pipeline.reward.synthetic_traces;
    let mut synthetic = Vec::new();
    if wanted == 0 {
        return Ok(synthetic);
    }
    let mut rng = ponder_datagen::TaskRng::seed_from_u64(ctx.seed("reward-synthetic"));
    for (i, e) in ctx.train_examples()?.iter().filter(|e| e.context.is_none()).enumerate() {
        if synthetic.len() >= wanted {
            break;
        }
        let trace = if i % 2 == 0 {
            Some(e.trace())
        } else {
            ctx.task.wrong_attempt(&e.problem, &mut rng)?
        };
        if let Some(t) = trace {
            synthetic.push(label(ctx.task, &e.problem, t)?);
        }
    }
    Ok(synthetic)
}

async fn run_async(ctx: &Context<'_>) -> anyhow::Result<Value> {
    let s = ctx.config.pipeline.reward.clone();
    let task = ctx.task;
    let to_train = ctx.config.rewards_to_train()?;
    let process: Option<ProcessRewardSettings> = to_train.iter().find_map(|t| match t {
        RewardTraining::Process(p) => Some(p.clone()),
        RewardTraining::Outcome(_) => None,
    });
    let outcome: Option<OutcomeRewardSettings> = to_train.iter().find_map(|t| match t {
        RewardTraining::Outcome(o) => Some(o.clone()),
        RewardTraining::Process(_) => None,
    });
    if to_train.is_empty() {
        tracing::info!(reward = ctx.config.reward.kind(), "no reward model to train");
        return Ok(json!({"trained": []}));
    }
    let (weights, tokenizer) = current_policy(ctx)?;
    let max_tokens = trace_token_limit(ctx, &tokenizer, weights.config.max_seq_len)?;
    let policy = stage_policy(ctx, &weights, &tokenizer);

    // 1. Traces to learn from, labelled.
    ctx.progress.set(0, 6, "sampling traces to label");
    let train_problems = distinct_problems(&ctx.train_examples()?, s.problems);
    let sampled = sample_traces(
        &policy,
        &train_problems,
        s.samples_per_problem,
        max_tokens,
        1.0,
        ctx.seed("reward-samples"),
    )
    .await?;
    let mut items: Vec<Labelled> = Vec::new();
    for (p, traces) in train_problems.iter().zip(sampled) {
        for (t, _) in traces {
            items.push(label(task, p, t)?);
        }
    }
    let start = |granularity, aggregation, likelihood| {
        RewardWeights::new(weights.clone(), granularity, aggregation, likelihood)
    };
    let mut results = serde_json::Map::new();
    let mut training = serde_json::Map::new();
    let mut mc_tokens = 0;

    // 2. The models.
    let prm = match &process {
        Some(settings) => {
            ctx.progress.set(1, 6, "step labels");
            let (labels, tokens) = step_labels(ctx, &policy, &items, settings, max_tokens).await?;
            mc_tokens += tokens;
            // The labelled data, in the shape TRL's PRM trainer reads.
            let exported: Vec<ProcessExample> = items
                .iter()
                .zip(&labels)
                .map(|(l, labels)| {
                    let hard: Vec<bool> = labels.iter().map(|&x| x >= 0.5).collect();
                    ProcessExample::new(&l.problem, &l.trace, &hard, Some(l.correct))
                })
                .collect();
            write_process(&ctx.dir.path("reward/prm_labels.jsonl"), &exported)?;
            let synthetic = synthetic_traces(ctx)?;
            ctx.progress.set(2, 6, "training the PRM");
            let examples: Vec<RewardExample> = items
                .iter()
                .zip(labels)
                .chain(synthetic.iter().map(|l| (l, exact_labels(l))))
                .map(|(l, labels)| {
                    let outcome = f32::from(u8::from(l.correct));
                    reward_example(&tokenizer, &l.problem, &l.trace, &labels, outcome, Granularity::Process)
                })
                .collect();
            let begin = start(Granularity::Process, settings.aggregation, settings.likelihood);
            let (prm_weights, summary) = train_model(ctx, "prm", begin, &tokenizer, examples)?;
            training.insert("prm".into(), summary);
            results.insert("labels".into(), json!(settings.labels));
            results.insert("rollouts".into(), json!(settings.rollouts));
            results.insert("synthetic_traces".into(), json!(synthetic.len()));
            Some(LearnedReward::new(&prm_weights, tokenizer.clone()))
        }
        None => None,
    };
    let orm = match &outcome {
        Some(settings) => {
            ctx.progress.set(3, 6, "training the ORM");
            // The ORM learns from the policy's traces alone: with synthetic ones beside them
            // (half expert traces, half the task's wrong attempts, unlike what the policy
            // writes) its held-out outcome AUROC fell from 0.90 to 0.85 on the default run.
            let examples: Vec<RewardExample> = items
                .iter()
                .map(|l| {
                    let outcome = f32::from(u8::from(l.correct));
                    reward_example(&tokenizer, &l.problem, &l.trace, &[], outcome, Granularity::Outcome)
                })
                .collect();
            let begin = start(Granularity::Outcome, Aggregation::Last, settings.likelihood);
            let (orm_weights, summary) = train_model(ctx, "orm", begin, &tokenizer, examples)?;
            training.insert("orm".into(), summary);
            Some(LearnedReward::new(&orm_weights, tokenizer.clone()))
        }
        None => None,
    };

    // 3. Held-out measures.
    ctx.progress.set(4, 6, "held-out evaluation");
    let trained = Trained {
        prm: prm.as_ref(),
        orm: orm.as_ref(),
        monte_carlo: process.is_some(),
    };
    let mut measures = reward_quality::measure(ctx, &policy, max_tokens, trained).await?;
    ctx.progress.set(6, 6, "done");
    let accuracy_tokens = measures.remove("accuracy_tokens").and_then(|v| v.as_u64()).unwrap_or(0);
    let (rollout_computed, rollout_generated) = {
        use ponder_policy_init::Policy;
        policy.compute_counters()
    };
    results.extend(measures);
    results.extend([
        (
            "trained".into(),
            json!(to_train.iter().map(RewardTraining::name).collect::<Vec<_>>()),
        ),
        ("labelled_traces".into(), json!(items.len())),
        ("right_traces".into(), json!(items.iter().filter(|l| l.correct).count())),
        ("monte_carlo_tokens".into(), json!(mc_tokens + accuracy_tokens)),
        ("policy_tokens_computed".into(), json!(rollout_computed)),
        ("policy_tokens_generated".into(), json!(rollout_generated)),
        ("training".into(), Value::Object(training)),
    ]);
    Ok(Value::Object(results))
}
