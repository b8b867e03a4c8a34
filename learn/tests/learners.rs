//! Every learner, from a briefly initialised micro policy on 2-digit addition: a few RL
//! iterations (sample, reward with the verifier, learn) raise the share of right samples.

use burn::tensor::Device;
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::dataset::{GenerateSpec, generate};
use ponder_datagen::{Problem, Task, TaskRng, Trace, TraceStyle};
use ponder_learn::bc::{BcSettings, BehaviourCloning};
use ponder_learn::dapo::{Dapo, DapoSettings};
use ponder_learn::dpo::{Dpo, DpoSettings};
use ponder_learn::grpo::{Grpo, GrpoSettings};
use ponder_learn::gspo::{Gspo, GspoSettings};
use ponder_learn::ppo::{Ppo, PpoSettings};
use ponder_learn::reinforce_pp::{ReinforcePlusPlus, ReinforcePlusPlusSettings};
use ponder_learn::{Experience, Learner, Sample, TrainablePolicy};
use ponder_policy_init::backend::Backend;
use ponder_policy_init::sft::{Sequences, SftObjective};
use ponder_policy_init::trainer::{Silent, Trainer, TrainerConfig};
use ponder_policy_init::{GenRequest, HostWeights, ModelConfig, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};
use rand::SeedableRng;

fn task() -> Arithmetic {
    Arithmetic::new(ArithmeticConfig {
        digits: 1,
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
    let start = HostWeights::init(&config, 1).expect("init");
    let mut objective = SftObjective::new(
        config.clone(),
        Sequences::from_examples(&examples, &tokenizer, 96),
        32,
        2,
    );
    let mut trainer_config = TrainerConfig {
        steps: 250,
        ..TrainerConfig::default()
    };
    trainer_config.optim.warmup_steps = 20;
    let mut trainer = Trainer::for_weights(trainer_config, &start);
    trainer.run(&mut objective, &Silent, &|_| Ok(())).expect("trains");
    (
        HostWeights {
            config,
            tensors: trainer.params,
        },
        tokenizer,
    )
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
            completion_tokens: g.token_ids.clone(),
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

/// Mean log-likelihood of the right and of the wrong samples of a batch.
fn likelihoods(weights: &HostWeights, tokenizer: &Tokenizer, batch: &Experience) -> (f64, f64) {
    let pairs: Vec<(&str, &str)> = batch
        .samples
        .iter()
        .map(|s| (s.prompt.as_str(), s.completion.as_str()))
        .collect();
    let lps = ponder_learn::completion_logprobs(weights, tokenizer, &pairs, &Backend::default());
    let (mut right, mut wrong) = ((0.0, 0), (0.0, 0));
    for (s, lp) in batch.samples.iter().zip(lps) {
        let total: f32 = lp.iter().sum();
        let slot = if s.correct { &mut right } else { &mut wrong };
        slot.0 += f64::from(total);
        slot.1 += 1;
    }
    (right.0 / right.1.max(1) as f64, wrong.0 / wrong.1.max(1) as f64)
}

#[test]
fn every_learner_moves_probability_towards_rewarded_samples() {
    let (weights, tokenizer) = initialised();
    let (share, batch) = sample(&weights, &tokenizer, &problems(32, 7), 8, 11);
    assert!(
        share > 0.1 && share < 0.9,
        "the batch mixes right and wrong samples: {share}"
    );
    let learners: Vec<Box<dyn Learner>> = vec![
        Box::new(BehaviourCloning {
            settings: BcSettings::default(),
            seed: 1,
        }),
        Box::new(Grpo {
            settings: GrpoSettings::default(),
            seed: 1,
        }),
        Box::new(Grpo {
            settings: GrpoSettings {
                dr_grpo: true,
                ..GrpoSettings::default()
            },
            seed: 1,
        }),
        Box::new(Ppo {
            settings: PpoSettings::default(),
            seed: 1,
        }),
        Box::new(Dpo {
            settings: DpoSettings::default(),
            seed: 1,
        }),
        Box::new(Dapo {
            settings: DapoSettings::default(),
            seed: 1,
        }),
        // GSPO's paper clip range (3e-4/4e-4) is meant for many small steps; one update of a
        // test learns with a range wide enough to move.
        Box::new(Gspo {
            settings: GspoSettings {
                clip_low: 0.2,
                clip_high: 0.2,
                ..GspoSettings::default()
            },
            seed: 1,
        }),
        Box::new(ReinforcePlusPlus {
            settings: ReinforcePlusPlusSettings::default(),
            seed: 1,
        }),
    ];
    let (right0, wrong0) = likelihoods(&weights, &tokenizer, &batch);
    for mut learner in learners {
        let name = learner.describe();
        let mut state = TrainablePolicy::new(
            &weights,
            tokenizer.clone(),
            Backend::default(),
            learner.optim(),
            learner.value_head_lr(),
        );
        let stats = learner.learn(&mut state, &batch, &Silent).expect("learns");
        assert!(stats.loss.is_finite() && stats.optimizer_steps > 0, "{name}: {stats:?}");
        let (right1, wrong1) = likelihoods(&state.weights(), &tokenizer, &batch);
        let margin = (right1 - right0) - (wrong1 - wrong0);
        eprintln!("{name}: right {right0:.3} -> {right1:.3}, wrong {wrong0:.3} -> {wrong1:.3}");
        assert!(
            margin > 0.05,
            "{name}: right samples gained {:.3}, wrong ones {:.3}",
            right1 - right0,
            wrong1 - wrong0
        );
    }
}

#[test]
fn updates_train_on_the_sampled_tokens_with_the_behaviour_log_probs() {
    let (weights, tokenizer) = initialised();
    let (_, batch) = sample(&weights, &tokenizer, &problems(8, 3), 4, 5);
    let grpo = Grpo {
        settings: GrpoSettings::default(),
        seed: 1,
    };
    let state = TrainablePolicy::new(&weights, tokenizer.clone(), Backend::default(), grpo.optim(), None);
    let samples: Vec<&Sample> = batch.samples.iter().collect();
    let sequences: Vec<(Vec<u32>, usize)> = samples
        .iter()
        .map(|x| ponder_learn::sample_tokens(&tokenizer, x))
        .collect();
    for (x, (tokens, first)) in samples.iter().zip(&sequences) {
        assert!(!x.completion_tokens.is_empty());
        assert_eq!(
            &tokens[*first..],
            x.completion_tokens.as_slice(),
            "the sampled ids, verbatim"
        );
    }
    // Recorded: nothing is recomputed, and the recorded log-probs are what the weights give.
    let (old, computed) = ponder_learn::old_logprobs(&state, &samples, &sequences);
    assert_eq!(computed, 0);
    let recomputed = ponder_learn::sequence_logprobs(&weights, &tokenizer, &sequences, &Backend::default());
    for (a, b) in old.iter().zip(&recomputed) {
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3), "{a:?} vs {b:?}");
    }
    // Without token ids the text is encoded and the old log-probs computed (and counted).
    let bare: Vec<Sample> = batch
        .samples
        .iter()
        .map(|x| Sample {
            completion_tokens: Vec::new(),
            ..x.clone()
        })
        .collect();
    let bare_refs: Vec<&Sample> = bare.iter().collect();
    let (_, computed) = ponder_learn::old_logprobs(&state, &bare_refs, &sequences);
    assert_eq!(computed, sequences.iter().map(|(t, _)| t.len() as u64).sum::<u64>());
}

#[test]
fn the_token_loss_gradient_matches_autodiff_and_finite_differences() {
    use ponder_learn::objective::TermsObjective;
    use ponder_learn::token_loss::{LossSettings, TokenTerms};
    use ponder_policy_init::trainer::Objective;
    let tokenizer = Tokenizer::chars();
    let config = ModelConfig {
        max_seq_len: 96,
        ..ModelConfig::preset("micro", 100).expect("preset")
    };
    let mut weights = HostWeights::init(&config, 3).expect("init");
    for t in &mut weights.tensors {
        if t.shape.len() == 2 {
            t.data.iter_mut().for_each(|x| *x *= 10.0);
        }
    }
    for value_head_lr in [None, Some(1e-3)] {
        let value_head = value_head_lr.is_some();
        let state = TrainablePolicy::new(
            &weights,
            tokenizer.clone(),
            Backend::default(),
            Default::default(),
            value_head_lr,
        );
        let terms: Vec<TokenTerms> = problems(4, 8)
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (tokens, first) = ponder_learn::encode_sample(&tokenizer, &p.prompt, "1+2+0=03\nAnswer: 3\n");
                let len = tokens.len() - first;
                TokenTerms {
                    advantages: (0..len).map(|k| ((k + i) as f32 * 0.37).sin()).collect(),
                    old_logprobs: (0..len).map(|k| -4.6 + (k as f32 * 0.1).cos() * 0.3).collect(),
                    ref_logprobs: (0..len).map(|k| -4.5 + (k as f32 * 0.2).sin() * 0.3).collect(),
                    returns: if value_head {
                        (0..len).map(|k| k as f32 * 0.1).collect()
                    } else {
                        Vec::new()
                    },
                    weight: 1.0 + i as f32,
                    tokens,
                    first,
                }
            })
            .collect();
        // Token ratios with clip-higher, and (GSPO's) one ratio per sequence.
        for sequence_ratio in [false, true] {
            let settings = LossSettings {
                clip: Some(0.2),
                clip_high: Some(0.28),
                sequence_ratio,
                kl_coef: 0.1,
                entropy_coef: 0.01,
                value_coef: 0.5,
            };
            let mut objective = TermsObjective::new(
                state.config.clone(),
                terms.clone(),
                vec![vec![0, 1, 2, 3]],
                0,
                settings,
                value_head,
            );
            let params = state.trainer.params.clone();
            let taken = |objective: &TermsObjective| {
                objective
                    .stats
                    .lock()
                    .map(|mut s| std::mem::take(&mut *s))
                    .expect("stats")
            };
            let burn = objective
                .step(&params, 0, &Backend::Burn(Device::flex()))
                .expect("burn");
            let burn_stats = taken(&objective);
            let cpu = objective.step(&params, 0, &Backend::default()).expect("cpu");
            // Both backends report the same statistics (KL, entropy, clipping, value error).
            let cpu_stats = taken(&objective);
            assert!(cpu_stats.tokens > 0.0 && cpu_stats.entropy > 0.0, "{cpu_stats:?}");
            // Some ratios inside the clip range: the policy-gradient term is compared too.
            assert!(
                cpu_stats.clipped < cpu_stats.tokens,
                "every token clipped: {cpu_stats:?}"
            );
            assert_eq!(burn_stats.tokens, cpu_stats.tokens);
            assert_eq!(burn_stats.clipped, cpu_stats.clipped);
            for (a, b) in [
                (burn_stats.kl, cpu_stats.kl),
                (burn_stats.entropy, cpu_stats.entropy),
                (burn_stats.value_error, cpu_stats.value_error),
            ] {
                assert!(
                    (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                    "{burn_stats:?} vs {cpu_stats:?}"
                );
            }
            assert!((burn.loss - cpu.loss).abs() <= 1e-4 * cpu.loss.abs().max(1.0));
            for (i, (a, b)) in burn.gradients.iter().zip(&cpu.gradients).enumerate() {
                let scale = a.iter().map(|x| x.abs()).fold(1e-6f32, f32::max).max(1e-3);
                let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(
                    diff <= 2e-3 * scale,
                    "value head {value_head}, sequence ratio {sequence_ratio}, parameter {i}: {diff} (scale {scale})"
                );
            }
            // The loss itself (policy gradient, KL, entropy, value) against finite differences,
            // on the final norm's first weight and, with a critic, the value head's bias.
            let final_norm = weights.layout().final_norm;
            let mut slots = vec![final_norm];
            if value_head {
                slots.push(params.len() - 1);
            }
            for slot in slots {
                let mut shifted = |by: f32| {
                    let mut moved = params.clone();
                    moved[slot].data[0] += by;
                    objective.step(&moved, 0, &Backend::default()).expect("cpu").loss
                };
                let numeric = (shifted(1e-3) - shifted(-1e-3)) / 2e-3;
                let analytic = f64::from(cpu.gradients[slot][0]);
                assert!(
                    (numeric - analytic).abs() <= 0.03 * analytic.abs() + 1e-4,
                    "sequence ratio {sequence_ratio}, parameter {slot}: finite difference {numeric} vs gradient {analytic}"
                );
            }
        }
    }
}

#[test]
fn stale_samples_are_weighed_by_truncated_importance_ratios() {
    use ponder_learn::StaleCorrection;
    use ponder_learn::token_loss::TokenTerms;
    let correction = StaleCorrection {
        proximal: vec![vec![-1.0, -2.0], vec![-0.5]],
        log_ratios: vec![vec![0.5f32.ln(), 3.0f32.ln()], vec![0.0]],
        cap: 2.0,
        tokens: 0,
    };
    let close = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() < 1e-6)
    };
    // Per token: the ratio, capped at 2; per sequence (GSPO): the geometric mean, capped.
    assert!(close(&correction.weights(false), &[vec![0.5, 2.0], vec![1.0]]));
    let g = 1.5f32.sqrt();
    assert!(close(&correction.weights(true), &[vec![g, g], vec![1.0]]));
    let mut terms = vec![
        TokenTerms::uniform(vec![1, 2, 3], 1, 1.0, 1.0),
        TokenTerms::uniform(vec![1, 2], 1, -2.0, 1.0),
    ];
    let stats = correction.weigh(&mut terms, false);
    assert_eq!(terms[0].advantages, vec![0.5, 2.0]);
    assert_eq!(terms[1].advantages, vec![-2.0]);
    assert!((stats[0].1 - 3.5 / 3.0).abs() < 1e-9, "{stats:?}");
    assert!((stats[1].1 - 1.0 / 3.0).abs() < 1e-9, "{stats:?}");
}
