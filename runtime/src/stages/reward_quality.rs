//! The reward stage's held-out measures, for the models it trained: step AUROC, first-error F1
//! and calibration of a process model (PRM) against the exact labels; outcome AUROC of each
//! model and of the policy's own likelihood; accuracy of Monte-Carlo labels against exact ones
//! for N = 1, 2, 4, ... rollouts (with a PRM); best-of-N accuracy with each
//! model, majority and a PRM-weighted vote on the same samples.

use std::collections::BTreeMap;

use ponder_datagen::{Problem, Trace};
use ponder_policy_init::TransformerPolicy;
use ponder_policy_init::eval::{Estimate, bootstrap_mean};
use ponder_reward::labels::{MonteCarloSettings, labels_from_rollouts, monte_carlo_rollouts};
use ponder_reward::learned::LearnedReward;
use ponder_reward::quality::{
    auroc, auroc_interval, calibration, calibration_interval, first_error_f1, first_error_f1_interval, label_accuracy,
};
use ponder_reward::{Aggregation, RewardModel, StepScores};
use serde_json::{Map, Value, json};

use super::Context;
use super::common::sample_traces;
use super::reward::{Labelled, label};

/// The trained models to measure; `None` where the run trained none.
pub struct Trained<'a> {
    pub prm: Option<&'a LearnedReward>,
    pub orm: Option<&'a LearnedReward>,
    /// Measure Monte-Carlo label accuracy against exact labels (with a PRM, whatever its
    /// labels: how good the labels it could learn from are).
    pub monte_carlo: bool,
}

fn estimate_json(e: &Estimate) -> Value {
    json!({"value": e.value, "low": e.low, "high": e.high, "n": e.n})
}

/// Per-problem (scores, truth) groups as one flat pair.
fn flat_groups(groups: &[(Vec<f32>, Vec<bool>)]) -> (Vec<f32>, Vec<bool>) {
    let scores = groups.iter().flat_map(|g| g.0.iter().copied()).collect();
    let truth = groups.iter().flat_map(|g| g.1.iter().copied()).collect();
    (scores, truth)
}

/// The generator's own likelihood as a reward, the baseline that needs no training (Cobbe et
/// al. rank samples by it): each step is scored by the policy's negative log-likelihood of the
/// trace up to that step's end, the answer line by that of the whole trace, as `1 / (1 + nll)`:
/// 1 at certainty, falling as the prefix grows less likely, in the same order as the
/// probability but without underflowing for long or unlikely traces.
fn likelihood_scores(policy: &TransformerPolicy, pairs: &[(&Problem, &Trace)]) -> Vec<StepScores> {
    let mut requests: Vec<(&str, String)> = Vec::new();
    for (problem, trace) in pairs {
        for n in 1..=trace.steps.len() {
            requests.push((problem.prompt.as_str(), trace.render_prefix(n)));
        }
        if trace.answer.is_some() {
            requests.push((problem.prompt.as_str(), trace.render()));
        }
    }
    let mut likelihoods: Vec<f32> = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(256) {
        let batch: Vec<(&str, &str)> = chunk.iter().map(|(c, t)| (*c, t.as_str())).collect();
        let logprobs = policy.score(&batch);
        likelihoods.extend(logprobs.iter().map(|l| {
            let nll = -l.iter().map(|&x| f64::from(x)).sum::<f64>();
            (1.0 / (1.0 + nll.max(0.0))) as f32
        }));
    }
    let mut next = likelihoods.into_iter();
    pairs
        .iter()
        .map(|(_, trace)| StepScores {
            steps: next.by_ref().take(trace.steps.len()).collect(),
            answer: trace.answer.as_ref().and_then(|_| next.next()),
        })
        .collect()
}

/// Samples `pipeline.reward.best_of` traces per held-out problem and measures the trained
/// models on them; the keys it returns go into the stage's results as they are.
pub async fn measure(
    ctx: &Context<'_>,
    policy: &TransformerPolicy,
    max_tokens: usize,
    trained: Trained<'_>,
) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    let heldout = held_out_traces(ctx, policy, max_tokens).await?;
    let flat: Vec<&Labelled> = heldout.iter().flatten().collect();
    out.insert("heldout_traces".into(), json!(flat.len()));
    let scored_pairs: Vec<(&Problem, &Trace)> = flat.iter().map(|l| (&l.problem, &l.trace)).collect();
    let prm_scores: Option<Vec<StepScores>> = trained.prm.map(|m| m.score_pairs(&scored_pairs));
    let orm_scores: Option<Vec<StepScores>> = trained.orm.map(|m| m.score_pairs(&scored_pairs));
    let likelihood = likelihood_scores(policy, &scored_pairs);
    let outcome_truth: Vec<bool> = flat.iter().map(|l| l.correct).collect();
    let last = |scores: &[StepScores]| -> Vec<f32> { scores.iter().map(|s| s.aggregate(Aggregation::Last)).collect() };
    // Per problem (the intervals resample a problem's samples and their steps together).
    let mut ranges = Vec::with_capacity(heldout.len());
    let mut start = 0;
    for traces in &heldout {
        ranges.push(start..start + traces.len());
        start += traces.len();
    }
    let lined_up = |scores: &[StepScores]| lined_up(&heldout, scores);
    let step_groups_of = |scores: &[StepScores]| step_groups(lined_up(scores));
    let outcome_groups_of = |scores: &[f32]| -> Vec<(Vec<f32>, Vec<bool>)> {
        ranges
            .iter()
            .map(|range| (scores[range.clone()].to_vec(), outcome_truth[range.clone()].to_vec()))
            .collect()
    };
    let interval = |groups: &[(Vec<f32>, Vec<bool>)], purpose: &str| {
        auroc_interval(groups, ctx.seed(purpose)).map(|(low, high)| json!([low, high]))
    };
    if let Some(prm_scores) = &prm_scores {
        let step_groups = step_groups_of(prm_scores);
        let first_error_groups = lined_up(prm_scores);
        let (step_scores, step_truth) = flat_groups(&step_groups);
        let (ece, reliability) = calibration(&step_scores, &step_truth, 10);
        let fe = first_error_f1(first_error_groups.iter().flatten(), 0.5);
        let prm_outcome = last(prm_scores);
        out.insert(
            "prm".into(),
            json!({
                "step_auroc": auroc(&step_scores, &step_truth),
                "step_auroc_ci": interval(&step_groups, "reward-step-auroc"),
                "first_error_f1": fe.f1,
                "first_error_f1_ci": first_error_f1_interval(&first_error_groups, 0.5, ctx.seed("reward-first-error"))
                    .map(|(low, high)| json!([low, high])),
                "first_error": fe,
                "calibration_ece": ece,
                "calibration_ece_ci": calibration_interval(&step_groups, 10, ctx.seed("reward-ece"))
                    .map(|(low, high)| json!([low, high])),
                "reliability": reliability,
                "outcome_auroc": auroc(&prm_outcome, &outcome_truth),
                "outcome_auroc_ci": interval(&outcome_groups_of(&prm_outcome), "reward-prm-outcome-auroc"),
                "labelled_steps": step_truth.len(),
                "right_steps": step_truth.iter().filter(|&&b| b).count(),
            }),
        );
    }
    if let Some(orm_scores) = &orm_scores {
        let orm_outcome = last(orm_scores);
        out.insert(
            "orm".into(),
            json!({"auroc": auroc(&orm_outcome, &outcome_truth),
                   "auroc_ci": interval(&outcome_groups_of(&orm_outcome), "reward-orm-outcome-auroc")}),
        );
    }
    let likelihood_step_groups = step_groups_of(&likelihood);
    let (likelihood_steps, likelihood_truth) = flat_groups(&likelihood_step_groups);
    let likelihood_outcome = last(&likelihood);
    out.insert(
        "likelihood".into(),
        json!({
            "step_auroc": auroc(&likelihood_steps, &likelihood_truth),
            "step_auroc_ci": interval(&likelihood_step_groups, "reward-likelihood-step-auroc"),
            "outcome_auroc": auroc(&likelihood_outcome, &outcome_truth),
            "outcome_auroc_ci": interval(&outcome_groups_of(&likelihood_outcome), "reward-likelihood-outcome-auroc"),
        }),
    );

    if trained.monte_carlo {
        ctx.progress.set(5, 6, "Monte-Carlo label accuracy");
        let (accuracy, details, tokens) = monte_carlo_accuracy(ctx, policy, &flat, max_tokens).await?;
        out.insert("mc_label_accuracy".into(), Value::Object(accuracy));
        out.insert("mc_label_details".into(), Value::Object(details));
        out.insert("accuracy_tokens".into(), json!(tokens));
    }

    let (best_of, per_n) = best_of_n(ctx, &heldout, prm_scores.as_deref(), orm_scores.as_deref())?;
    out.insert("best_of_n".into(), Value::Object(best_of));
    out.insert("best_of_n_curve".into(), Value::Array(per_n));
    Ok(out)
}

/// `pipeline.reward.best_of` traces of `policy` per held-out problem, labelled exactly (the
/// same traces for every model measured from the same policy and seed).
async fn held_out_traces(
    ctx: &Context<'_>,
    policy: &TransformerPolicy,
    max_tokens: usize,
) -> anyhow::Result<Vec<Vec<Labelled>>> {
    let test_problems: Vec<Problem> = ctx.held_out_examples()?.into_iter().map(|e| e.problem).collect();
    let sampled = sample_traces(
        policy,
        &test_problems,
        ctx.config.pipeline.reward.best_of,
        max_tokens,
        1.0,
        ctx.seed("reward-heldout"),
    )
    .await?;
    let mut heldout = Vec::with_capacity(test_problems.len());
    for (p, traces) in test_problems.iter().zip(&sampled) {
        heldout.push(
            traces
                .iter()
                .map(|(t, _)| label(ctx.task, p, t.clone()))
                .collect::<anyhow::Result<_>>()?,
        );
    }
    Ok(heldout)
}

/// A model's step scores beside the exact labels, per problem (`scores` in the order of the
/// flattened traces; traces whose scores do not line up with their steps are left out).
fn lined_up(heldout: &[Vec<Labelled>], scores: &[StepScores]) -> Vec<Vec<(Vec<f32>, Vec<bool>)>> {
    let mut scores = scores.iter();
    heldout
        .iter()
        .map(|traces| {
            traces
                .iter()
                .zip(scores.by_ref())
                .filter(|(l, sc)| sc.steps.len() == l.exact.len())
                .map(|(l, sc)| (sc.steps.clone(), l.exact.clone()))
                .collect()
        })
        .collect()
}

/// Per problem, its traces' step scores and labels as one pair.
fn step_groups(lined: Vec<Vec<(Vec<f32>, Vec<bool>)>>) -> Vec<(Vec<f32>, Vec<bool>)> {
    lined
        .into_iter()
        .map(|traces| {
            traces
                .into_iter()
                .fold((Vec::new(), Vec::new()), |(mut s, mut t), (sc, ex)| {
                    s.extend(sc);
                    t.extend(ex);
                    (s, t)
                })
        })
        .collect()
}

/// Any process reward model's step AUROC against the exact labels on the reward stage's
/// held-out traces of `policy` (PRIME's implicit PRM before and after RL, beside the PRM's),
/// with its interval over problems and its outcome AUROC.
pub async fn step_quality(
    ctx: &Context<'_>,
    policy: &TransformerPolicy,
    max_tokens: usize,
    model: &dyn RewardModel,
) -> anyhow::Result<Value> {
    let heldout = held_out_traces(ctx, policy, max_tokens).await?;
    let items: Vec<(&Problem, Vec<Trace>)> = heldout
        .iter()
        .filter_map(|traces| {
            Some((
                &traces.first()?.problem,
                traces.iter().map(|l| l.trace.clone()).collect(),
            ))
        })
        .collect();
    let borrowed: Vec<(&Problem, &[Trace])> = items.iter().map(|(p, t)| (*p, t.as_slice())).collect();
    let scores: Vec<StepScores> = model.score_many(&borrowed).await?.into_iter().flatten().collect();
    let groups = step_groups(lined_up(&heldout, &scores));
    let (step_scores, step_truth) = flat_groups(&groups);
    let outcome = heldout
        .iter()
        .flatten()
        .zip(&scores)
        .map(|(l, s)| (s.aggregate(Aggregation::Last), l.correct));
    let (outcome_scores, outcome_truth): (Vec<f32>, Vec<bool>) = outcome.unzip();
    Ok(json!({
        "step_auroc": auroc(&step_scores, &step_truth),
        "step_auroc_ci": auroc_interval(&groups, ctx.seed("reward-step-auroc")).map(|(low, high)| json!([low, high])),
        "outcome_auroc": auroc(&outcome_scores, &outcome_truth),
        "labelled_steps": step_truth.len(),
        "right_steps": step_truth.iter().filter(|&&b| b).count(),
        "mean_step_score": step_scores.iter().map(|&x| f64::from(x)).sum::<f64>() / step_scores.len().max(1) as f64,
        "traces": scores.len(),
    }))
}

/// Monte-Carlo label accuracy against exact labels on `pipeline.reward.accuracy_traces` of the
/// held-out traces, N = 1, 2, 4, ... rollouts: (accuracy per N, details per N, tokens).
async fn monte_carlo_accuracy(
    ctx: &Context<'_>,
    policy: &TransformerPolicy,
    flat: &[&Labelled],
    max_tokens: usize,
) -> anyhow::Result<(Map<String, Value>, Map<String, Value>, u64)> {
    let s = &ctx.config.pipeline.reward;
    let task = ctx.task;
    let accuracy_items: Vec<(Problem, Trace)> = flat
        .iter()
        .step_by((flat.len() / s.accuracy_traces.max(1)).max(1))
        .take(s.accuracy_traces)
        .map(|l| (l.problem.clone(), l.trace.clone()))
        .collect();
    let mc = MonteCarloSettings {
        rollouts: s.accuracy_rollouts,
        max_tokens,
        seed: ctx.seed("reward-mc-accuracy"),
        ..MonteCarloSettings::default()
    };
    let (outcomes, tokens) = monte_carlo_rollouts(policy, task, &accuracy_items, &mc).await?;
    let truth: Vec<bool> = accuracy_items
        .iter()
        .map(|(p, t)| task.check_steps(p, &t.steps))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut accuracy = Map::new();
    let mut details = Map::new();
    let mut n = 1;
    while n <= s.accuracy_rollouts {
        let hard: Vec<bool> = outcomes
            .iter()
            .flat_map(|o| labels_from_rollouts(o, n, false))
            .map(|x| x >= 0.5)
            .collect();
        let soft: Vec<f32> = outcomes.iter().flat_map(|o| labels_from_rollouts(o, n, true)).collect();
        let acc = label_accuracy(&hard, &truth);
        accuracy.insert(n.to_string(), json!(acc.accuracy));
        details.insert(n.to_string(), json!({"hard": acc, "soft_auroc": auroc(&soft, &truth)}));
        n *= 2;
    }
    Ok((accuracy, details, tokens))
}

/// Best-of-N over the same samples for N = 1, 2, 4, ... up to `pipeline.reward.best_of`: the
/// PRM (three aggregations and a weighted vote), the ORM, majority, and pass@N; (the rows at
/// the largest N, every N's rows).
fn best_of_n(
    ctx: &Context<'_>,
    heldout: &[Vec<Labelled>],
    prm_scores: Option<&[StepScores]>,
    orm_scores: Option<&[StepScores]>,
) -> anyhow::Result<(Map<String, Value>, Vec<Value>)> {
    let task = ctx.task;
    let best = ctx.config.pipeline.reward.best_of;
    let mut best_of = Map::new();
    let mut per_n = Vec::new();
    let mut k = 1;
    while k <= best {
        let mut rows: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut offset = 0;
        for group in heldout {
            let m = group.len();
            let range = offset..offset + m;
            offset += m;
            let sub = &group[..k.min(m)];
            let pick = |score: &dyn Fn(usize) -> f32| -> f64 {
                let best = (0..sub.len()).max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)));
                f64::from(u8::from(best.is_some_and(|i| sub[i].correct)))
            };
            if let Some(prm) = prm_scores {
                let prm_g = &prm[range.clone()];
                for (row, how) in [
                    ("prm-last", Aggregation::Last),
                    ("prm-min", Aggregation::Min),
                    ("prm-product", Aggregation::Product),
                ] {
                    rows.entry(row).or_default().push(pick(&|i| prm_g[i].aggregate(how)));
                }
                // Weighted vote: the answer with the largest total PRM score.
                let mut totals: BTreeMap<String, (f64, usize)> = BTreeMap::new();
                for (i, l) in sub.iter().enumerate() {
                    if let Some(key) = l.trace.answer.as_ref().and_then(|a| task.answer_key(&l.problem, a)) {
                        let e = totals.entry(key).or_insert((0.0, i));
                        e.0 += f64::from(prm_g[i].aggregate(Aggregation::Last));
                    }
                }
                let weighted = totals
                    .values()
                    .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
                    .is_some_and(|&(_, i)| sub[i].correct);
                rows.entry("prm-weighted")
                    .or_default()
                    .push(f64::from(u8::from(weighted)));
            }
            if let Some(orm) = orm_scores {
                let orm_g = &orm[range];
                rows.entry("orm")
                    .or_default()
                    .push(pick(&|i| orm_g[i].aggregate(Aggregation::Last)));
            }
            let traces: Vec<Trace> = sub.iter().map(|l| l.trace.clone()).collect();
            let majority =
                ponder_policy_init::evaluate::majority_vote(task, &sub[0].problem, &traces)?.unwrap_or(false);
            rows.entry("majority").or_default().push(f64::from(u8::from(majority)));
            rows.entry("pass@n")
                .or_default()
                .push(f64::from(u8::from(sub.iter().any(|l| l.correct))));
        }
        let mut at_k = Map::new();
        for (name, scores) in &rows {
            at_k.insert(
                name.to_string(),
                estimate_json(&bootstrap_mean(scores, ctx.seed(&format!("bo{k}{name}")))),
            );
        }
        per_n.push(json!({"n": k, "accuracy": at_k}));
        if k == best {
            best_of = at_k;
        }
        k *= 2;
    }
    Ok((best_of, per_n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ponder_policy_init::{HostWeights, ModelConfig, Tokenizer};

    fn random_policy() -> TransformerPolicy {
        let config = ModelConfig::preset("tiny", 100).expect("preset");
        let weights = HostWeights::init(&config, 3).expect("init");
        TransformerPolicy::new(&weights, Tokenizer::chars())
    }

    #[test]
    fn the_likelihood_baseline_scores_every_prefix_of_every_trace() {
        let policy = random_policy();
        let problem = Problem::new(
            "countdown",
            "countdown 2 3 9 target 33\n".into(),
            "9*3+2".into(),
            3,
            Value::Null,
        );
        let finished = Trace::new(vec!["9*3=27 left 2 27".into(), "27+2=29 left 29".into()], "9*3+2");
        let unfinished = Trace {
            steps: vec!["3+2=5 left 5 9".into()],
            answer: None,
        };
        let pairs = [(&problem, &finished), (&problem, &unfinished), (&problem, &finished)];
        let scores = likelihood_scores(&policy, &pairs);
        assert_eq!(scores.len(), 3);
        assert_eq!(scores[0].steps.len(), 2);
        assert!(scores[0].answer.is_some());
        assert_eq!((scores[1].steps.len(), scores[1].answer), (1, None));
        assert_eq!(
            scores[0], scores[2],
            "the same trace scores the same wherever it sits in the batch"
        );
        // Each score is the likelihood of a longer prefix of the same text: it can only fall.
        let chain: Vec<f32> = scores[0].all().collect();
        assert!(chain.iter().all(|&p| p > 0.0 && p <= 1.0), "{chain:?}");
        assert!(chain.windows(2).all(|w| w[1] <= w[0]), "{chain:?}");
        // The answer's score comes from the policy's log-likelihood of the whole trace.
        let nll: f64 = -policy.score(&[(problem.prompt.as_str(), finished.render().as_str())])[0]
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>();
        assert!(nll > 1.0, "a random policy finds the trace unlikely: {nll}");
        let answer = f64::from(scores[0].answer.unwrap_or(0.0));
        assert!((answer - 1.0 / (1.0 + nll)).abs() < 1e-6, "{answer} vs nll {nll}");
    }
}
