//! `init`: policy initialisation. Supervised training of the `[policy]` transformer on the
//! expert traces (loss on the trace only), a greedy pass@1 curve along the way, then a full
//! held-out evaluation (greedy pass@1, pass@k, maj@k) of the final weights, which are saved as
//! a Hugging Face folder in `policy/init/`.

use ponder_datagen::{Problem, Task};
use ponder_policy_init::evaluate::{EvalSettings, evaluate};
use ponder_policy_init::settings::TransformerSettings;
use ponder_policy_init::sft::{Sequences, SftObjective};
use ponder_policy_init::trainer::{Trainer, TrainerConfig};
use ponder_policy_init::{HostWeights, Tokenizer, TransformerPolicy};
use serde_json::json;

use super::Context;

/// The generation limit: the longest training trace and half again, within the context.
pub fn trace_token_limit(examples: &[ponder_datagen::Example], tokenizer: &Tokenizer, max_seq_len: usize) -> usize {
    let longest = examples
        .iter()
        .map(|e| tokenizer.encode(&e.completion).len())
        .max()
        .unwrap_or(64);
    (longest * 3 / 2 + 8).min(max_seq_len)
}

/// The policy's settings, if it is a transformer ponder can train.
pub fn transformer_settings(ctx: &Context) -> anyhow::Result<TransformerSettings> {
    ctx.config.policy.capabilities().trainable.ok_or_else(|| {
        anyhow::anyhow!(
            "stage needs a trainable policy: [policy] kind is `{}`, not `transformer`",
            ctx.config.policy.kind()
        )
    })
}

pub fn run(ctx: &Context) -> anyhow::Result<serde_json::Value> {
    let settings = transformer_settings(ctx)?;
    let s = &ctx.config.pipeline.init;
    let train = ctx.train_examples()?;
    let test: Vec<Problem> = ctx.held_out_examples()?.into_iter().map(|e| e.problem).collect();
    let (start, tokenizer) = match &settings.from {
        Some(dir) => ponder_policy_init::hf::load_pretrained(std::path::Path::new(dir))?,
        None => {
            let tokenizer = Tokenizer::chars();
            let config = settings.model_config(tokenizer.vocab_size())?;
            (HostWeights::init(&config, ctx.seed("init-weights"))?, tokenizer)
        }
    };
    let max_seq_len = start.config.max_seq_len;
    let sequences = Sequences::from_examples(&train, &tokenizer, max_seq_len);
    if sequences.dropped > 0 {
        tracing::warn!(
            dropped = sequences.dropped,
            "training examples longer than the context ({max_seq_len} tokens) were left out"
        );
    }
    anyhow::ensure!(
        !sequences.items.is_empty(),
        "no training example fits the model's context of {max_seq_len} tokens"
    );
    let max_tokens = match s.max_new_tokens {
        0 => trace_token_limit(&train, &tokenizer, max_seq_len),
        n => n,
    };
    let steps = match s.train_tokens {
        0 => s.steps,
        budget => {
            let mean = sequences.total_tokens() as f64 / sequences.items.len() as f64;
            ((budget as f64 / (mean * s.batch_size.max(1) as f64)).ceil() as usize).max(1)
        }
    };
    let trainer_config = TrainerConfig {
        optim: s.optim.clone(),
        steps,
        checkpoint_every: s.checkpoint_every,
        log_every: 10,
        eval_every: s.eval_every,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::for_weights(trainer_config, &start)
        .with_backend(ctx.backend.clone())
        .open(&ctx.dir.checkpoints("init"), &ctx.dir.metrics(), "init", ctx.resume)?;
    if let Some(step) = trainer.resumed_from() {
        tracing::info!(step, "policy initialisation resumed");
    }
    // The curve: greedy pass@1 on a slice of the held-out problems.
    let curve_task = ctx.config.task.build(&())?;
    let curve_problems: Vec<Problem> = test.iter().take(s.curve_problems).cloned().collect();
    let curve_tokenizer = tokenizer.clone();
    let curve_backend = ctx.backend.clone();
    let curve_settings = EvalSettings {
        samples: 0,
        ks: vec![],
        max_tokens,
        seed: ctx.seed("init-curve"),
        ..EvalSettings::default()
    };
    let hook = Box::new(move |weights: &HostWeights, _step: usize| {
        let policy = TransformerPolicy::on_backend(weights, curve_tokenizer.clone(), &curve_backend);
        let report =
            futures::executor::block_on(evaluate(&policy, curve_task.as_ref(), &curve_problems, &curve_settings))?;
        Ok(json!({"pass@1_greedy": report.pass1_greedy.value, "problems": report.problems}))
    });
    let mut objective =
        SftObjective::new(start.config.clone(), sequences, s.batch_size, ctx.seed("init-batches")).with_eval(hook);
    let extra_tokenizer = tokenizer.clone();
    let config = start.config.clone();
    let summary = trainer.run(&mut objective, ctx.progress, &move |dir| {
        let hf = config.to_hf_json(extra_tokenizer.bos_id, extra_tokenizer.eos_id, extra_tokenizer.pad_id);
        std::fs::write(dir.join("config.json"), hf.to_string())
            .map_err(|e| ponder_policy_init::PolicyError::io(dir, e))?;
        extra_tokenizer.save(dir)
    })?;
    let weights = HostWeights {
        config: start.config.clone(),
        tensors: trainer.params.clone(),
    };
    ponder_policy_init::hf::save_pretrained(&ctx.dir.policy("init"), &weights, &tokenizer)?;
    ctx.progress.set(steps, steps, "evaluating");
    let report = evaluate_policy(ctx, &weights, &tokenizer, &test, s.samples, max_tokens, "init-eval")?;
    tracing::info!(
        pass1 = report.pass1_greedy.value,
        tokens_per_s = summary.tokens_per_second,
        "policy initialisation done"
    );
    let mut results = json!({
        "params": weights.params(),
        "steps": steps,
        "train_tokens": summary.tokens,
        "train_seconds": summary.train_seconds,
        "train_tokens_per_s": summary.tokens_per_second,
        "final_loss": summary.final_loss,
        "rewinds": summary.rewinds,
        "lr_factor": summary.lr_factor,
        "skipped_batches": summary.skipped_batches,
        "max_new_tokens": max_tokens,
        "eval": report.summary(),
        "pass@1": report.pass1_greedy.value,
        "pass@1_ci": [report.pass1_greedy.low, report.pass1_greedy.high],
    });
    // Sampled pass@k; `pass@1` stays the greedy figure, the sampled one is `pass@1_sampled`.
    for (k, e) in &report.pass_at {
        let key = if *k == 1 {
            "pass@1_sampled".to_string()
        } else {
            format!("pass@{k}")
        };
        results[&key] = json!(e.value);
        results[format!("{key}_ci")] = json!([e.low, e.high]);
    }
    for (k, e) in &report.maj_at {
        results[format!("maj@{k}")] = json!(e.value);
        results[format!("maj@{k}_ci")] = json!([e.low, e.high]);
    }
    ctx.dir.write_json("eval/init.json", &serde_json::to_value(&report)?)?;
    Ok(results)
}

/// Greedy pass@1 and sampled pass@k/maj@k of given weights on held-out problems.
pub fn evaluate_policy(
    ctx: &Context,
    weights: &HostWeights,
    tokenizer: &Tokenizer,
    problems: &[Problem],
    samples: usize,
    max_tokens: usize,
    purpose: &str,
) -> anyhow::Result<ponder_policy_init::evaluate::EvalReport> {
    let policy = TransformerPolicy::on_backend(weights, tokenizer.clone(), &ctx.backend);
    let ks: Vec<usize> = [1, 4, 8, 16, 32, 64].into_iter().filter(|&k| k <= samples).collect();
    let settings = EvalSettings {
        samples,
        ks,
        max_tokens,
        seed: ctx.seed(purpose),
        ..EvalSettings::default()
    };
    let task: &dyn Task = ctx.task;
    Ok(futures::executor::block_on(evaluate(
        &policy, task, problems, &settings,
    ))?)
}
