//! How RL is measured: greedy pass@1 (and pass@k) of a policy on held-out problems, the
//! train-time curve's points, and RL's paired change against the initialised policy.

use anyhow::Context as _;

use ponder_datagen::{Problem, Task};
use ponder_policy_init::TransformerPolicy;
use ponder_policy_init::evaluate::{EvalSettings, evaluate};
use serde_json::{Value, json};

use crate::stages::Context;

/// Greedy pass@1 (and, with samples, pass@k) of weights on problems.
pub(super) async fn evaluate_weights(
    policy: &TransformerPolicy,
    task: &dyn Task,
    problems: &[Problem],
    samples: usize,
    max_tokens: usize,
    seed: u64,
) -> anyhow::Result<ponder_policy_init::evaluate::EvalReport> {
    let ks: Vec<usize> = [1, 4, 8, 16, 32, 64].into_iter().filter(|&k| k <= samples).collect();
    let settings = EvalSettings {
        samples,
        ks,
        max_tokens,
        seed,
        ..EvalSettings::default()
    };
    Ok(evaluate(policy, task, problems, &settings).await?)
}

/// One point of the train-time curve: greedy pass@1 on the held-out problems, with its
/// interval, after `flops` of RL compute.
pub(super) fn curve_point(iteration: usize, flops: f64, pass1: &ponder_policy_init::eval::Estimate) -> Value {
    json!({"iteration": iteration, "flops": flops, "pass@1": pass1.value, "low": pass1.low, "high": pass1.high})
}

/// RL's change on the held-out problems, paired over problems against the initialised policy's
/// evaluation (`eval/init.json`): sampled pass@1 (each problem's share of right samples) and
/// greedy pass@1, each `{value, low, high}` with a paired bootstrap interval. `None` when the
/// initialisation's evaluation is missing or was made on other problems.
pub(super) fn paired_changes(
    ctx: &Context,
    after: &ponder_policy_init::evaluate::EvalReport,
    seed: u64,
) -> anyhow::Result<Option<(Value, Value)>> {
    let path = ctx.dir.path("eval/init.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let before: ponder_policy_init::evaluate::EvalReport =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let same_problems = before.outcomes.len() == after.outcomes.len()
        && before.outcomes.iter().zip(&after.outcomes).all(|(a, b)| a.id == b.id);
    if !same_problems || after.outcomes.iter().any(|o| o.samples == 0) {
        return Ok(None);
    }
    let sampled = |r: &ponder_policy_init::evaluate::EvalReport| -> Vec<f64> {
        r.outcomes
            .iter()
            .map(|o| o.correct_samples as f64 / o.samples.max(1) as f64)
            .collect()
    };
    let greedy = |r: &ponder_policy_init::evaluate::EvalReport| -> Vec<f64> {
        r.outcomes
            .iter()
            .map(|o| f64::from(u8::from(o.greedy_correct)))
            .collect()
    };
    let as_json = |e: ponder_policy_init::eval::Estimate| json!({"value": e.value, "low": e.low, "high": e.high});
    use ponder_policy_init::eval::bootstrap_difference;
    Ok(Some((
        as_json(bootstrap_difference(&sampled(after), &sampled(&before), seed)),
        as_json(bootstrap_difference(&greedy(after), &greedy(&before), seed ^ 1)),
    )))
}
