//! Policy initialisation end to end on a micro model: the loss falls, and a run killed after a
//! checkpoint and resumed ends with the same weights, bit for bit.

use burn::tensor::{Device, Tensor};
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::dataset::{GenerateSpec, generate};
use ponder_datagen::{Example, TraceStyle};
use ponder_policy_init::checkpoint::Checkpointer;
use ponder_policy_init::metrics::MetricsLog;
use ponder_policy_init::model::Transformer;
use ponder_policy_init::sft::{Sequences, SftObjective};
use ponder_policy_init::trainer::{Objective, Silent, StepInfo, TrainerConfig};
use ponder_policy_init::{HostWeights, ModelConfig, PolicyError, Tokenizer};

fn micro() -> ModelConfig {
    ModelConfig {
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 1,
        ffn_hidden: 64,
        max_seq_len: 96,
        ..ModelConfig::preset("tiny", 100).expect("preset")
    }
}

fn examples(n: usize) -> Vec<Example> {
    let task = Arithmetic::new(ArithmeticConfig {
        digits: 2,
        ..ArithmeticConfig::default()
    })
    .expect("task");
    generate(&task, &GenerateSpec::new(n, 3, TraceStyle::Optimal))
        .collect::<Result<_, _>>()
        .expect("examples")
}

fn objective(model: &Transformer, tokenizer: &Tokenizer) -> SftObjective {
    let seqs = Sequences::from_examples(&examples(400), tokenizer, micro().max_seq_len);
    SftObjective::new(model.clone(), seqs, 16, 11, tokenizer.pad_id)
}

fn config(steps: usize) -> TrainerConfig {
    let mut c = TrainerConfig {
        steps,
        checkpoint_every: 10,
        log_every: 5,
        ..TrainerConfig::default()
    };
    c.optim.warmup_steps = 5;
    c
}

fn host(params: &[Tensor<2>]) -> Vec<Vec<f32>> {
    params
        .iter()
        .map(|p| p.clone().into_data().try_into_vec_as::<f32>().expect("data"))
        .collect()
}

#[test]
fn loss_falls_on_expert_traces() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 1).expect("init");
    let model = Transformer::from_host(&weights, &Device::flex());
    let mut obj = objective(&model, &tokenizer);
    let batch = obj.batch(0).expect("batch");
    let (before, _) = model.loss(&batch);
    let before: f32 = before.into_scalar();
    let mut trainer = model.trainer(config(60));
    let summary = trainer.run(&mut obj, &Silent, &|_| Ok(())).expect("trains");
    let (after, _) = model.with_params(trainer.params.clone()).loss(&batch);
    let after: f32 = after.into_scalar();
    assert!(before > 4.0, "starts near ln(100): {before}");
    assert!(after < 0.5 * before, "loss {before} -> {after}");
    assert!(summary.tokens > 0 && summary.tokens_per_second > 0.0);
}

/// Stops the run at a given step, as a kill would.
struct KillAt<'a> {
    inner: &'a mut SftObjective,
    at: usize,
}

impl Objective for KillAt<'_> {
    fn loss(&mut self, params: &[Tensor<2>], step: usize) -> Result<(Tensor<1>, StepInfo), PolicyError> {
        if step == self.at {
            return Err(PolicyError::Config("killed".into()));
        }
        self.inner.loss(params, step)
    }

    fn host_step(
        &mut self,
        params: &[Tensor<2>],
        step: usize,
    ) -> Option<Result<(f64, Vec<Tensor<2>>, StepInfo), PolicyError>> {
        if step == self.at {
            return Some(Err(PolicyError::Config("killed".into())));
        }
        self.inner.host_step(params, step)
    }
}

#[test]
fn resume_after_a_kill_reproduces_the_weights_bit_for_bit() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 2).expect("init");
    let model = Transformer::from_host(&weights, &Device::flex());
    let dir = tempfile::tempdir().expect("tempdir");

    let mut straight = model.trainer(config(30));
    straight
        .run(&mut objective(&model, &tokenizer), &Silent, &|_| Ok(()))
        .expect("trains");

    let outputs = |name: &str| {
        (
            Checkpointer::new(dir.path().join(name), 2),
            MetricsLog::open(&dir.path().join("metrics.jsonl"), name, None).expect("log"),
        )
    };
    let (ckpt, log) = outputs("killed");
    let mut first = model.trainer(config(30)).with_outputs(ckpt, log);
    let mut obj = objective(&model, &tokenizer);
    let killed = first.run(
        &mut KillAt {
            inner: &mut obj,
            at: 17,
        },
        &Silent,
        &|_| Ok(()),
    );
    assert!(killed.is_err());

    let ckpt = Checkpointer::new(dir.path().join("killed"), 2);
    let log = MetricsLog::open(&dir.path().join("metrics.jsonl"), "killed", Some(10)).expect("log");
    let mut resumed = model.trainer(config(30)).with_outputs(ckpt, log);
    assert_eq!(resumed.resume().expect("resumes"), Some(10));
    let summary = resumed
        .run(&mut objective(&model, &tokenizer), &Silent, &|_| Ok(()))
        .expect("trains");
    assert_eq!(summary.resumed_from, Some(10));
    assert_eq!(host(&resumed.params), host(&straight.params), "bit-identical weights");
    // The metrics hold each step once.
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).expect("metrics");
    let steps: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, vec![5, 10, 15, 20, 25, 30]);
}

#[test]
fn the_cpu_training_path_matches_burn_autodiff() {
    use ponder_policy_init::sft::cross_entropy_gradients;
    let tokenizer = Tokenizer::chars();
    let base = micro();
    for config in [
        base.clone(),
        ModelConfig {
            n_heads: 4,
            n_kv_heads: 2,
            qkv_bias: true,
            o_bias: true,
            tie_embeddings: false,
            ..base
        },
    ] {
        let mut weights = HostWeights::init(&config, 4).expect("init");
        for t in &mut weights.tensors {
            for (i, x) in t.data.iter_mut().enumerate() {
                *x = if t.shape.len() == 2 {
                    *x * 10.0
                } else {
                    *x + 0.05 * ((i % 5) as f32 - 2.0)
                };
            }
        }
        let sequences = Sequences::from_examples(&examples(3), &tokenizer, config.max_seq_len).items;
        let model = Transformer::from_host(&weights, &Device::flex());
        let trainable = model.trainable();
        let batch = ponder_policy_init::model::TokenBatch::new(&sequences, tokenizer.pad_id);
        let (loss, _) = trainable.loss(&batch);
        let burn_loss: f32 = loss.clone().into_scalar();
        let grads = loss.backward();
        let burn_grads: Vec<Vec<f32>> = trainable
            .params
            .iter()
            .map(|p| {
                p.grad(&grads)
                    .expect("grad")
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .expect("data")
            })
            .collect();
        let (native_loss, native_grads, _) = cross_entropy_gradients(&weights, &sequences);
        assert!(
            (native_loss - f64::from(burn_loss)).abs() < 1e-4,
            "{native_loss} vs {burn_loss}"
        );
        for ((name, a), b) in weights.layout().names.iter().zip(&native_grads).zip(&burn_grads) {
            let scale = b.iter().map(|x| x.abs()).fold(1e-6f32, f32::max);
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff <= 1e-4 * scale.max(1.0), "{name}: max diff {diff} (scale {scale})");
        }
    }
}

/// Multiplies the loss of one step by `factor` (NaN for a NaN loss), as a diverging run would.
struct BlowUpAt<'a> {
    inner: &'a mut SftObjective,
    at: usize,
    factor: f64,
}

impl Objective for BlowUpAt<'_> {
    fn loss(&mut self, params: &[Tensor<2>], step: usize) -> Result<(Tensor<1>, StepInfo), PolicyError> {
        let (loss, info) = self.inner.loss(params, step)?;
        Ok(if step == self.at {
            (loss.mul_scalar(self.factor as f32), info)
        } else {
            (loss, info)
        })
    }

    fn host_step(
        &mut self,
        params: &[Tensor<2>],
        step: usize,
    ) -> Option<Result<(f64, Vec<Tensor<2>>, StepInfo), PolicyError>> {
        let result = self.inner.host_step(params, step)?;
        Some(result.map(|(loss, grads, info)| {
            if step == self.at {
                (loss * self.factor, grads, info)
            } else {
                (loss, grads, info)
            }
        }))
    }
}

#[test]
fn an_exploding_or_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 3).expect("init");
    let model = Transformer::from_host(&weights, &Device::flex());
    for (name, factor, message) in [("explodes", 1e4, "jumped"), ("nan", f64::NAN, "NaN")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ckpt = Checkpointer::new(dir.path().join(name), 2);
        let log = MetricsLog::open(&dir.path().join("metrics.jsonl"), name, None).expect("log");
        let mut trainer = model.trainer(config(30)).with_outputs(ckpt, log);
        let mut obj = objective(&model, &tokenizer);
        let err = trainer
            .run(
                &mut BlowUpAt {
                    inner: &mut obj,
                    at: 23,
                    factor,
                },
                &Silent,
                &|_| Ok(()),
            )
            .expect_err("the run stops");
        let text = err.to_string();
        assert!(text.contains("step 23") && text.contains(message), "{text}");
        assert!(text.contains("last checkpoint is intact"), "{text}");
        // The checkpoint of step 20 is there and loads; the bad step was never applied.
        let latest = Checkpointer::new(dir.path().join(name), 2).latest().expect("reads");
        assert_eq!(latest.map(|(s, _)| s), Some(20));
        let mut resumed = model.trainer(config(30)).with_outputs(
            Checkpointer::new(dir.path().join(name), 2),
            MetricsLog::open(&dir.path().join("metrics.jsonl"), name, Some(20)).expect("log"),
        );
        assert_eq!(resumed.resume().expect("resumes"), Some(20));
        assert!(host(&resumed.params).iter().flatten().all(|x| x.is_finite()));
    }
}

#[test]
fn a_warm_start_takes_the_optimizer_moments_of_another_runs_checkpoint_and_keeps_the_weights() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 4).expect("init");
    let model = Transformer::from_host(&weights, &Device::flex());
    let dir = tempfile::tempdir().expect("tempdir");
    let log = MetricsLog::open(&dir.path().join("metrics.jsonl"), "first", None).expect("log");
    let mut first = model
        .trainer(config(20))
        .with_outputs(Checkpointer::new(dir.path().join("first"), 2), log);
    first
        .run(&mut objective(&model, &tokenizer), &Silent, &|_| Ok(()))
        .expect("trains");

    let mut fresh = model.trainer(config(20));
    let start = host(&fresh.params);
    assert_eq!(
        fresh.warm_start_from(&dir.path().join("none")).expect("reads"),
        None,
        "no checkpoint, nothing to start from"
    );
    assert!(host(&fresh.optimizer.m).iter().flatten().all(|&x| x == 0.0));
    assert_eq!(
        fresh.warm_start_from(&dir.path().join("first")).expect("reads"),
        Some(20)
    );
    assert_eq!(host(&fresh.optimizer.m), host(&first.optimizer.m), "first moments");
    assert_eq!(host(&fresh.optimizer.v), host(&first.optimizer.v), "second moments");
    assert!(host(&fresh.optimizer.v).iter().flatten().any(|&x| x > 0.0));
    assert_eq!(host(&fresh.params), start, "the weights stay this trainer's own");
    assert_eq!(fresh.optimizer.t, 10_000);
}
