//! Reward models on a micro backbone: the CPU training path matches burn's autodiff and finite
//! differences, scoring
//! matches the burn forward, a PRM trained on exact labels separates right from wrong steps,
//! and saved models load back identically.

use burn::tensor::Device;
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::{Problem, Task, TaskRng, Trace, TraceStyle};
use ponder_policy_init::backend::Backend;
use ponder_policy_init::model::Transformer;
use ponder_policy_init::trainer::{Objective, Silent, TrainerConfig};
use ponder_policy_init::{HostWeights, ModelConfig, Tokenizer};
use ponder_reward::learned::LearnedReward;
use ponder_reward::quality::auroc;
use ponder_reward::training::{
    RewardExample, RewardObjective, RewardWeights, encode_trace, prefix_loglik, reward_example, reward_trainer,
};
use ponder_reward::{Aggregation, Granularity};
use rand::SeedableRng;

fn micro() -> ModelConfig {
    ModelConfig::preset("micro", 100).expect("preset")
}

/// Retry traces (with wrong steps) and their exact labels.
fn labelled(n: usize, seed: u64) -> Vec<(Problem, Trace, Vec<f32>, f32)> {
    let task = Arithmetic::new(ArithmeticConfig {
        digits: 3,
        ..ArithmeticConfig::default()
    })
    .expect("task");
    let mut rng = TaskRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let p = task.sample(&mut rng, None).expect("sample");
            let t = task
                .expert_trace(&p, TraceStyle::Retry { rate: 0.5 }, &mut rng)
                .expect("trace");
            let labels = task.check_steps(&p, &t.steps).expect("labels");
            let outcome = f32::from(u8::from(task.verify(&p, &t).expect("verify").correct));
            (
                p,
                t,
                labels.into_iter().map(|l| f32::from(u8::from(l))).collect(),
                outcome,
            )
        })
        .collect()
}

fn examples(items: &[(Problem, Trace, Vec<f32>, f32)], tokenizer: &Tokenizer) -> Vec<RewardExample> {
    items
        .iter()
        .map(|(p, t, l, o)| reward_example(tokenizer, p, t, l, *o, Granularity::Process))
        .collect()
}

/// A micro reward model; with a nonzero `likelihood_weight`, the likelihood feature at that
/// weight, read through the backbone's own language-model head or, `tied`, through its embedding.
fn start(seed: u64, likelihood_weight: f32, tied: bool) -> RewardWeights {
    let likelihood = likelihood_weight != 0.0;
    let config = ModelConfig {
        tie_embeddings: tied,
        ..micro()
    };
    let mut w = RewardWeights::new(
        HostWeights::init(&config, seed).expect("init"),
        Granularity::Process,
        Aggregation::Last,
        likelihood,
    );
    w.head = (0..w.head.len()).map(|i| ((i as f32) * 0.7).sin() * 0.3).collect();
    w.bias = 0.1;
    w.likelihood_weight = likelihood_weight;
    w
}

#[test]
fn cpu_training_path_matches_autodiff_and_scoring_matches_the_forward() {
    check_training_and_scoring(false, true);
}

#[test]
fn with_the_likelihood_feature_too() {
    check_training_and_scoring(true, false);
}

/// The default policy ties its embedding and output: the embedding's gradient then comes from
/// the input lookup and from the likelihood feature's language-model logits.
#[test]
fn with_the_likelihood_feature_on_a_tied_backbone_too() {
    check_training_and_scoring(true, true);
}

fn check_training_and_scoring(likelihood: bool, tied: bool) {
    let tokenizer = Tokenizer::chars();
    let weights = start(1, if likelihood { 0.7 } else { 0.0 }, tied);
    assert_eq!(weights.backbone.layout().lm_head.is_some(), likelihood && !tied);
    let template = Transformer::from_host(&weights.backbone, &Device::flex());
    let items = labelled(6, 2);
    let mut objective = RewardObjective::new(
        weights.backbone.config.clone(),
        examples(&items, &tokenizer),
        6,
        3,
        Granularity::Process,
        Aggregation::Last,
    );
    let trainer = reward_trainer(&weights, TrainerConfig::default());
    let n = weights.backbone.tensors.len();
    assert_eq!(trainer.params.len(), n + 2 + usize::from(likelihood));
    let mut step = |params: &[ponder_policy_init::weights::HostTensor], backend: &Backend| {
        objective.step(params, 0, backend).expect("step")
    };
    let burn = step(&trainer.params, &Backend::Burn(Device::flex()));
    let cpu = step(&trainer.params, &Backend::default());
    assert!((cpu.loss - burn.loss).abs() < 1e-4, "{} vs {}", cpu.loss, burn.loss);
    for (i, (a, b)) in burn.gradients.iter().zip(&cpu.gradients).enumerate() {
        let scale = a.iter().map(|x| x.abs()).fold(1e-6f32, f32::max).max(1.0);
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-4 * scale, "parameter {i}: {diff}");
    }
    // The loss's own parts against finite differences: the head's bias and, with the feature,
    // its weight (whose gradient the loss computes itself, on the host).
    let scalars = if likelihood { vec![n + 1, n + 2] } else { vec![n + 1] };
    for slot in scalars {
        let mut shifted = |by: f32| {
            let mut params = trainer.params.clone();
            params[slot].data[0] += by;
            step(&params, &Backend::default()).loss
        };
        let numeric = (shifted(1e-2) - shifted(-1e-2)) / 2e-2;
        let analytic = f64::from(cpu.gradients[slot][0]);
        assert!(
            (numeric - analytic).abs() <= 1e-2 * analytic.abs().max(1e-2),
            "parameter {slot}: finite difference {numeric} vs gradient {analytic}"
        );
    }
    // Scoring: sigmoid of the head over the burn forward's hidden states at step ends, plus
    // the weighted log-likelihood of the trace so far from the burn forward's logits.
    let reward = LearnedReward::new(&weights, tokenizer.clone());
    let (p, t, _, _) = &items[0];
    let scored = reward.score_pairs(&[(p, t)]).remove(0);
    let e = encode_trace(&tokenizer, p, t);
    let ids: Vec<i32> = e.tokens.iter().map(|&x| x as i32).collect();
    let hidden_states = template.forward_hidden(&ids, 1, ids.len());
    let logits: Vec<f32> = template
        .logits(hidden_states.clone())
        .into_data()
        .try_into_vec_as()
        .expect("logits");
    let hidden: Vec<f32> = hidden_states.into_data().try_into_vec_as().expect("hidden");
    let vocab = micro().vocab_size;
    let loglik = prefix_loglik(|t| &logits[t * vocab..(t + 1) * vocab], &e.tokens, e.prompt_end);
    assert_eq!(loglik[e.prompt_end], 0.0);
    assert!(loglik[e.tokens.len() - 1] < loglik[e.prompt_end + 1], "{loglik:?}");
    let d = micro().d_model;
    for (k, &pos) in e.step_ends.iter().enumerate() {
        let z: f32 = hidden[pos * d..(pos + 1) * d]
            .iter()
            .zip(&weights.head)
            .map(|(h, w)| h * w)
            .sum::<f32>()
            + weights.bias
            + weights.likelihood_weight * loglik[pos];
        let expected = 1.0 / (1.0 + (-z).exp());
        assert!(
            (scored.steps[k] - expected).abs() < 1e-4,
            "step {k}: {} vs {expected}",
            scored.steps[k]
        );
    }
}

#[test]
fn a_process_model_learns_to_separate_right_and_wrong_steps() {
    learns_to_separate(0.0);
}

#[test]
fn a_process_model_with_the_likelihood_feature_learns_too() {
    learns_to_separate(LIKELIHOOD_START);
}

/// The likelihood feature's starting weight on the micro backbone. Its backbone is untrained, so
/// its log-likelihood of a trace is noise of about ln(100) per token, tens of logits per trace:
/// at the pipeline's starting weight of 1 that noise swamps the head, and Adam walks the weight
/// down by only about the learning rate per step. Starting small, training has to drive the
/// weight toward 0 while the head learns.
const LIKELIHOOD_START: f32 = 0.05;

fn learns_to_separate(likelihood_weight: f32) {
    let likelihood = likelihood_weight != 0.0;
    let tokenizer = Tokenizer::chars();
    let weights = start(5, likelihood_weight, !likelihood);
    let train = labelled(600, 10);
    let mut objective = RewardObjective::new(
        weights.backbone.config.clone(),
        examples(&train, &tokenizer),
        32,
        4,
        Granularity::Process,
        Aggregation::Last,
    );
    let mut config = TrainerConfig {
        steps: 150,
        log_every: 50,
        ..TrainerConfig::default()
    };
    config.optim.warmup_steps = 10;
    let mut trainer = reward_trainer(&weights, config);
    trainer.run(&mut objective, &Silent, &|_| Ok(())).expect("trains");
    let trained = objective.weights(&trainer.params);
    let dir = tempfile::tempdir().expect("tempdir");
    trained.save(dir.path(), &tokenizer).expect("saves");
    let (loaded, loaded_tokenizer) = RewardWeights::load(dir.path()).expect("loads");
    assert_eq!(loaded, trained);
    if likelihood {
        assert!(
            trained.likelihood_weight.abs() < 0.5 * likelihood_weight.abs(),
            "a noise feature's weight falls toward 0: {} from {likelihood_weight}",
            trained.likelihood_weight
        );
    }
    let reward = LearnedReward::new(&loaded, loaded_tokenizer);
    let test = labelled(150, 99);
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for (p, t, l, _) in &test {
        let s = reward.score_pairs(&[(p, t)]).remove(0);
        if s.steps.len() != l.len() {
            continue; // longer than the context
        }
        scores.extend(s.steps);
        labels.extend(l.iter().map(|&x| x > 0.5));
    }
    let area = auroc(&scores, &labels).expect("both classes");
    assert!(labels.len() > 300, "{} labelled steps", labels.len());
    assert!(area > 0.8, "step AUROC {area}");
}
