//! What several stages share: loading the run's policy, sampling traces, token limits.

use std::path::Path;
use std::sync::Arc;

use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::{GenRequest, Generation, HostWeights, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};

use super::Context;
use crate::config::STAGES;

/// The weights and tokenizer saved in `policy/NAME`.
pub fn load_policy(dir: &Path) -> anyhow::Result<(HostWeights, Tokenizer)> {
    anyhow::ensure!(
        dir.join("config.json").exists(),
        "no policy at {}: run the stage that trains it first",
        dir.display()
    );
    Ok(ponder_policy_init::hf::load_pretrained(dir)?)
}

/// The policy for a stage's sampling and search, as `[policy]` configures it, decoding on the
/// run's backend.
pub fn stage_policy(ctx: &Context, weights: &HostWeights, tokenizer: &Tokenizer) -> TransformerPolicy {
    match ctx.config.policy.capabilities().trainable {
        Some(settings) => settings.policy(weights, tokenizer.clone(), &ctx.backend),
        None => TransformerPolicy::on_backend(weights, tokenizer.clone(), &ctx.backend),
    }
}

/// The policy the latest training stage before this one in the pipeline left: after RL if it
/// ran and comes first, else the initialised one.
pub fn current_policy(ctx: &Context) -> anyhow::Result<(HostWeights, Tokenizer)> {
    // Only stages that come before this one in the pipeline count: search-eval run again on a
    // finished run reads the initialised policy it read the first time, not RL's.
    let position = |s: &str| STAGES.iter().position(|x| *x == s);
    let before = position(ctx.stage).unwrap_or(STAGES.len());
    for name in ["rl", "init"] {
        if position(name).is_some_and(|p| p >= before) {
            continue;
        }
        let dir = ctx.dir.policy(name);
        if dir.join("config.json").exists() {
            return load_policy(&dir);
        }
    }
    match ctx.config.policy.capabilities().trainable.and_then(|t| t.from) {
        Some(from) => load_policy(Path::new(&from)),
        None => anyhow::bail!(
            "no trained policy in {}: run the init stage first",
            ctx.dir.root.display()
        ),
    }
}

/// The token length of a typical trace, which converts a budget's generations into tokens
/// ([`ponder_search::Budget::tokens_per_generation`]) for search-eval, search inside RL and
/// serving alike: the initialised policy's mean held-out trace as the init stage measured it
/// (`init_results`, that stage's results), else half the trace limit.
pub fn tokens_per_generation(init_results: Option<&serde_json::Value>, max_trace_tokens: usize) -> usize {
    init_results
        .and_then(|r| r["eval"]["mean_trace_tokens"].as_f64())
        .unwrap_or(max_trace_tokens as f64 / 2.0)
        .round()
        .max(1.0) as usize
}

/// The token limit of a generated trace: the one the init stage chose, or from the data.
pub fn trace_token_limit(ctx: &Context, tokenizer: &Tokenizer, max_seq_len: usize) -> anyhow::Result<usize> {
    if let Some(n) = ctx
        .earlier
        .get("init")
        .and_then(|r| r.results.get("max_new_tokens"))
        .and_then(|v| v.as_u64())
    {
        return Ok(n as usize);
    }
    let train = ctx.train_examples()?;
    Ok(super::init::trace_token_limit(&train, tokenizer, max_seq_len))
}

/// `n` traces per problem at `temperature`, all in batched policy calls; each with its
/// generated token count.
pub async fn sample_traces(
    policy: &dyn Policy,
    problems: &[Problem],
    n: usize,
    max_tokens: usize,
    temperature: f32,
    seed: u64,
) -> anyhow::Result<Vec<Vec<(Trace, usize)>>> {
    Ok(sample_generations(policy, problems, n, max_tokens, temperature, seed)
        .await?
        .into_iter()
        .map(|group| group.iter().map(|g| (Trace::parse(&g.text), g.tokens())).collect())
        .collect())
}

/// `n` whole generations per problem at `temperature` (text, sampled token ids and their
/// log-probs), all in batched policy calls.
pub async fn sample_generations(
    policy: &dyn Policy,
    problems: &[Problem],
    n: usize,
    max_tokens: usize,
    temperature: f32,
    seed: u64,
) -> anyhow::Result<Vec<Vec<Generation>>> {
    let sampling = Sampling {
        temperature,
        ..Sampling::default()
    };
    let mut out = Vec::with_capacity(problems.len());
    for (c, chunk) in problems.chunks(64).enumerate() {
        let requests: Vec<GenRequest> = chunk
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let base = seed ^ (((c * 64 + i) as u64) << 20);
                (0..n).map(move |s| {
                    GenRequest::new(
                        &p.prompt,
                        Stop::TraceEnd,
                        max_tokens,
                        sampling,
                        base.wrapping_add(s as u64),
                    )
                })
            })
            .collect();
        let generations = policy.generate(&requests).await?;
        for group in generations.chunks(n.max(1)) {
            out.push(group.to_vec());
        }
    }
    Ok(out)
}

/// The task as a shared object (reward kinds keep a handle to it).
pub fn shared_task(ctx: &Context) -> anyhow::Result<Arc<dyn Task>> {
    Ok(Arc::from(ctx.config.task.build(&())?))
}

/// Distinct problems of a set of examples, in order, at most `n` (0: all).
pub fn distinct_problems(examples: &[ponder_datagen::Example], n: usize) -> Vec<Problem> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in examples {
        if e.context.is_none() && seen.insert(e.problem.id.clone()) {
            out.push(e.problem.clone());
            if n > 0 && out.len() >= n {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tokens_per_generation;
    use serde_json::json;

    #[test]
    fn a_generation_is_the_mean_held_out_trace_else_half_the_limit() {
        let init = json!({"eval": {"mean_trace_tokens": 41.6}});
        assert_eq!(tokens_per_generation(Some(&init), 200), 42);
        assert_eq!(tokens_per_generation(None, 200), 100);
        assert_eq!(tokens_per_generation(Some(&json!({})), 1), 1, "never zero");
    }
}
