//! PRIME's implicit PRM on a micro model: scores start at one half, follow
//! `σ(β · Σ log-ratio)` at each step's end computed by hand, an online update's loss is the
//! hand-computed cross-entropy and moves the implicit reward towards the outcomes, and a saved
//! state restores the same model.

use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::{Problem, Task, TaskRng, Trace};
use ponder_learn::prime::{ImplicitPrm, PrimeSettings};
use ponder_learn::{encode_sample, sequence_logprobs};
use ponder_policy_init::backend::Backend;
use ponder_policy_init::{HostWeights, ModelConfig, Tokenizer};
use ponder_reward::training::encode_trace;
use ponder_reward::{OutcomeExample, RewardModel, sigmoid};
use rand::SeedableRng;

fn micro() -> (HostWeights, Tokenizer) {
    let config = ModelConfig {
        max_seq_len: 96,
        ..ModelConfig::preset("micro", 100).expect("preset")
    };
    (HostWeights::init(&config, 5).expect("init"), Tokenizer::chars())
}

/// Right traces (the task's own) and wrong attempts, alternately.
fn traces(n: usize) -> Vec<(Problem, Trace, bool)> {
    let task = Arithmetic::new(ArithmeticConfig {
        digits: 2,
        ..ArithmeticConfig::default()
    })
    .expect("task");
    let mut rng = TaskRng::seed_from_u64(3);
    let mut out = Vec::new();
    while out.len() < n {
        let problem = task.sample(&mut rng, None).expect("problem");
        let right = task
            .expert_trace(&problem, ponder_datagen::TraceStyle::Optimal, &mut rng)
            .expect("solves");
        out.push((problem.clone(), right, true));
        if let Some(wrong) = task.wrong_attempt(&problem, &mut rng).expect("attempt") {
            out.push((problem, wrong, false));
        }
    }
    out
}

fn examples(tokenizer: &Tokenizer, traces: &[(Problem, Trace, bool)]) -> Vec<OutcomeExample> {
    traces
        .iter()
        .map(|(p, t, correct)| {
            let (tokens, first) = encode_sample(tokenizer, &p.prompt, &t.render());
            OutcomeExample {
                tokens,
                first,
                correct: *correct,
            }
        })
        .collect()
}

fn settings() -> PrimeSettings {
    PrimeSettings {
        beta: 0.5,
        lr: 1e-2,
        epochs: 1,
        minibatch: 64,
        from: None,
    }
}

/// `q_T` of each example by hand: `β (Σ log π_φ − Σ log π_ref)` over the completion.
fn final_rewards(
    phi: &HostWeights,
    reference: &HostWeights,
    tokenizer: &Tokenizer,
    examples: &[OutcomeExample],
) -> Vec<f32> {
    let sequences: Vec<(Vec<u32>, usize)> = examples.iter().map(|e| (e.tokens.clone(), e.first)).collect();
    let backend = Backend::default();
    let now = sequence_logprobs(phi, tokenizer, &sequences, &backend);
    let before = sequence_logprobs(reference, tokenizer, &sequences, &backend);
    now.iter()
        .zip(&before)
        .map(|(a, b)| settings().beta * (a.iter().sum::<f32>() - b.iter().sum::<f32>()))
        .collect()
}

fn cross_entropy(q: &[f32], examples: &[OutcomeExample]) -> f64 {
    q.iter()
        .zip(examples)
        .map(|(&q, e)| {
            let p = f64::from(sigmoid(q));
            if e.correct { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum::<f64>()
        / q.len() as f64
}

#[test]
fn prime_scores_follow_the_implicit_reward_and_its_update_the_outcome_cross_entropy() {
    let (start, tokenizer) = micro();
    let prm = ImplicitPrm::new(&start, tokenizer.clone(), Backend::default(), settings());
    let data = traces(24);
    let pairs: Vec<(&Problem, &Trace)> = data.iter().map(|(p, t, _)| (p, t)).collect();

    // π_φ = π_ref: every step and answer scores σ(0).
    for (scores, (_, trace, _)) in prm.score_pairs(&pairs).expect("scores").iter().zip(&data) {
        assert_eq!(scores.steps.len(), trace.steps.len());
        assert!(scores.all().all(|s| s == 0.5), "{scores:?}");
    }

    // One step on all examples: its loss is the cross-entropy at q = 0, ln 2 for every example,
    // and a rollout counts as ranked right only when it is wrong (q > 0 is false).
    let batch = examples(&tokenizer, &data);
    let wrong = batch.iter().filter(|e| !e.correct).count() as f64 / batch.len() as f64;
    let update = prm.learn_outcomes(&batch).expect("learns");
    assert_eq!((update.optimizer_steps, update.examples), (1, batch.len()));
    assert!((update.loss - std::f64::consts::LN_2).abs() < 1e-5, "{}", update.loss);
    assert!((update.accuracy - wrong).abs() < 1e-12);
    assert!(prm.flops() > 0.0);

    // The step lowered the cross-entropy computed by hand and put the right rollouts' q above
    // the wrong ones'.
    let phi = prm.weights().expect("weights");
    let q = final_rewards(&phi, &start, &tokenizer, &batch);
    assert!(
        cross_entropy(&q, &batch) < std::f64::consts::LN_2 - 1e-3,
        "{}",
        cross_entropy(&q, &batch)
    );
    let mean = |right: bool| {
        let picked: Vec<f32> = q
            .iter()
            .zip(&batch)
            .filter(|(_, e)| e.correct == right)
            .map(|(q, _)| *q)
            .collect();
        picked.iter().sum::<f32>() / picked.len() as f32
    };
    assert!(
        mean(true) > mean(false) + 0.1,
        "right {} wrong {}",
        mean(true),
        mean(false)
    );

    // Step scores are σ(q) at each step's last token and the answer's, by hand.
    let backend = Backend::default();
    for ((problem, trace, _), scores) in data.iter().zip(prm.score_pairs(&pairs).expect("scores")) {
        let e = encode_trace(&tokenizer, problem, trace);
        let first = e.prompt_end + 1;
        let seq = [(e.tokens.clone(), first)];
        let (now, before) = (
            &sequence_logprobs(&phi, &tokenizer, &seq, &backend)[0],
            &sequence_logprobs(&start, &tokenizer, &seq, &backend)[0],
        );
        let q_at = |end: usize| settings().beta * (0..=end - first).map(|i| now[i] - before[i]).sum::<f32>();
        let expected: Vec<f32> = e
            .step_ends
            .iter()
            .chain(&e.answer_end)
            .map(|&end| sigmoid(q_at(end)))
            .collect();
        let got: Vec<f32> = scores.all().collect();
        assert_eq!(got.len(), expected.len());
        for (g, x) in got.iter().zip(&expected) {
            assert!((g - x).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
    }
}

#[test]
fn a_saved_implicit_prm_resumes_with_the_same_scores_and_updates() {
    let (start, tokenizer) = micro();
    let data = traces(12);
    let batch = examples(&tokenizer, &data);
    let pairs: Vec<(&Problem, &Trace)> = data.iter().map(|(p, t, _)| (p, t)).collect();
    let first = ImplicitPrm::new(&start, tokenizer.clone(), Backend::default(), settings());
    first.learn_outcomes(&batch).expect("learns");
    let dir = tempfile::tempdir().expect("tempdir");
    first.save_online_state(&dir.path().join("prime")).expect("saves");

    let resumed = ImplicitPrm::new(&start, tokenizer.clone(), Backend::default(), settings());
    assert!(resumed.load_online_state(&dir.path().join("missing")).is_err());
    resumed.load_online_state(&dir.path().join("prime")).expect("loads");
    assert_eq!(
        first.score_pairs(&pairs).expect("scores"),
        resumed.score_pairs(&pairs).expect("scores")
    );
    // The next update draws the same minibatches from the same optimizer state.
    let mut settings = settings();
    settings.minibatch = 4;
    let (a, b) = (
        ImplicitPrm::new(&start, tokenizer.clone(), Backend::default(), settings.clone()),
        ImplicitPrm::new(&start, tokenizer.clone(), Backend::default(), settings),
    );
    a.learn_outcomes(&batch).expect("learns");
    a.save_online_state(&dir.path().join("a")).expect("saves");
    b.load_online_state(&dir.path().join("a")).expect("loads");
    a.learn_outcomes(&batch).expect("learns");
    b.learn_outcomes(&batch).expect("learns");
    assert_eq!(a.weights().expect("a").tensors, b.weights().expect("b").tensors);
}
