//! Every learner, from a briefly initialised micro policy on 2-digit addition: a few RL
//! iterations (sample, reward with the verifier, learn) raise the share of right samples.

use burn::tensor::Device;
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::dataset::{GenerateSpec, generate};
use ponder_datagen::{Problem, Task, TaskRng, Trace, TraceStyle};
use ponder_learn::bc::{BcSettings, BehaviourCloning};
use ponder_learn::dpo::{Dpo, DpoSettings};
use ponder_learn::grpo::{Grpo, GrpoSettings};
use ponder_learn::ppo::{Ppo, PpoSettings};
use ponder_learn::{Experience, Learner, Sample, TrainablePolicy};
use ponder_policy_init::model::Transformer;
use ponder_policy_init::sft::{Sequences, SftObjective};
use ponder_policy_init::trainer::{Silent, TrainerConfig};
use ponder_policy_init::{GenRequest, HostWeights, ModelConfig, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};
use rand::SeedableRng;

fn task() -> Arithmetic {
    Arithmetic::new(ArithmeticConfig {
        digits: 2,
        ..ArithmeticConfig::default()
    })
    .expect("task")
}

/// A micro policy with some skill: supervised training on a few hundred examples.
fn initialised() -> (HostWeights, Tokenizer) {
    let tokenizer = Tokenizer::chars();
    let config = ModelConfig {
        d_model: 64,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 2,
        ffn_hidden: 128,
        max_seq_len: 96,
        ..ModelConfig::preset("tiny", 100).expect("preset")
    };
    let examples: Vec<_> = generate(&task(), &GenerateSpec::new(2000, 1, TraceStyle::Optimal))
        .collect::<Result<_, _>>()
        .expect("data");
    let model = Transformer::from_host(&HostWeights::init(&config, 1).expect("init"), &Device::flex());
    let mut objective = SftObjective::new(
        model.clone(),
        Sequences::from_examples(&examples, &tokenizer, 96),
        32,
        2,
        0,
    );
    let mut config = TrainerConfig {
        steps: 300,
        ..TrainerConfig::default()
    };
    config.optim.warmup_steps = 20;
    let mut trainer = model.trainer(config);
    trainer.run(&mut objective, &Silent, &|_| Ok(())).expect("trains");
    (model.with_params(trainer.params).to_host(), tokenizer)
}

fn problems(n: usize, seed: u64) -> Vec<Problem> {
    let t = task();
    let mut rng = TaskRng::seed_from_u64(seed);
    (0..n).map(|_| t.sample(&mut rng, None).expect("sample")).collect()
}

/// Share of right samples at temperature 1, and the samples as experience.
fn sample(
    weights: &HostWeights,
    tokenizer: &Tokenizer,
    problems: &[Problem],
    n: usize,
    seed: u64,
) -> (f64, Experience) {
    let t = task();
    let policy = TransformerPolicy::new(weights, tokenizer.clone());
    let requests: Vec<GenRequest> = problems
        .iter()
        .flat_map(|p| {
            (0..n).map(move |i| {
                GenRequest::new(
                    &p.prompt,
                    Stop::TraceEnd,
                    60,
                    Sampling::default(),
                    seed + i as u64 * 7919,
                )
            })
        })
        .collect();
    let generations = futures::executor::block_on(policy.generate(&requests)).expect("generates");
    let mut samples = Vec::new();
    let mut right = 0;
    for (i, g) in generations.iter().enumerate() {
        let p = &problems[i / n];
        let correct = t.verify(p, &Trace::parse(&g.text)).expect("verify").correct;
        right += usize::from(correct);
        samples.push(Sample {
            prompt: p.prompt.clone(),
            completion: g.text.clone(),
            logprobs: g.logprobs.clone(),
            reward: if correct { 1.0 } else { 0.0 },
            correct,
            group: i / n,
            ..Sample::default()
        });
    }
    (
        right as f64 / generations.len() as f64,
        Experience {
            samples,
            ..Experience::default()
        },
    )
}

fn improves(mut learner: Box<dyn Learner>, start: &(HostWeights, Tokenizer)) -> (f64, f64) {
    let (weights, tokenizer) = start;
    let mut state = TrainablePolicy::new(
        weights,
        tokenizer.clone(),
        &Device::flex(),
        learner.optim(),
        learner.needs_value_head(),
    );
    let held_out = problems(64, 999);
    let (before, _) = sample(weights, tokenizer, &held_out, 4, 5);
    for iteration in 0..6 {
        let (_, experience) = sample(
            &state.weights(),
            tokenizer,
            &problems(32, iteration),
            8,
            100 + iteration,
        );
        let stats = learner.learn(&mut state, &experience, &Silent).expect("learns");
        assert!(stats.loss.is_finite(), "{}: loss {}", learner.describe(), stats.loss);
    }
    let (after, _) = sample(&state.weights(), tokenizer, &held_out, 4, 5);
    (before, after)
}

#[test]
fn every_learner_raises_the_share_of_right_answers() {
    let start = initialised();
    let learners: Vec<Box<dyn Learner>> = vec![
        Box::new(BehaviourCloning {
            settings: BcSettings::default(),
            seed: 1,
        }),
        Box::new(Grpo {
            settings: GrpoSettings {
                lr: 1e-3,
                ..GrpoSettings::default()
            },
            seed: 1,
        }),
        Box::new(Grpo {
            settings: GrpoSettings {
                lr: 1e-3,
                dr_grpo: true,
                ..GrpoSettings::default()
            },
            seed: 1,
        }),
        Box::new(Ppo {
            settings: PpoSettings {
                lr: 1e-3,
                ..PpoSettings::default()
            },
            seed: 1,
        }),
        Box::new(Dpo {
            settings: DpoSettings {
                lr: 1e-3,
                ..DpoSettings::default()
            },
            seed: 1,
        }),
    ];
    for learner in learners {
        let name = learner.describe();
        let (before, after) = improves(learner, &start);
        eprintln!("{name}: {before:.3} -> {after:.3}");
        assert!(after > before + 0.03, "{name}: {before:.3} -> {after:.3}");
    }
}

#[test]
#[ignore]
fn debug_samples() {
    let (w, t) = initialised();
    let (acc, e) = sample(&w, &t, &problems(4, 1), 2, 1);
    eprintln!("acc {acc}");
    for s in e.samples {
        eprintln!("{}{}---", s.prompt, s.completion);
    }
}
