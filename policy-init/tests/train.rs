//! Policy initialisation end to end on a micro model: the loss falls, and a run killed after a
//! checkpoint and resumed ends with the same weights, bit for bit.

#[cfg(feature = "burn")]
use burn::tensor::Device;
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::dataset::{GenerateSpec, generate};
use ponder_datagen::{Example, TraceStyle};
use ponder_policy_init::backend::Backend;
use ponder_policy_init::checkpoint::Checkpointer;
use ponder_policy_init::metrics::MetricsLog;
use ponder_policy_init::sft::{Sequences, SftObjective, cross_entropy_gradients};
use ponder_policy_init::trainer::{Objective, Silent, StepOutput, Trainer, TrainerConfig};
use ponder_policy_init::weights::HostTensor;
use ponder_policy_init::{HostWeights, ModelConfig, PolicyError, Tokenizer};

fn micro() -> ModelConfig {
    ModelConfig {
        max_seq_len: 96,
        ..ModelConfig::preset("micro", 100).expect("preset")
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

fn objective(tokenizer: &Tokenizer) -> SftObjective {
    let seqs = Sequences::from_examples(&examples(400), tokenizer, micro().max_seq_len);
    SftObjective::new(micro(), seqs, 16, 11)
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

fn host(params: &[HostTensor]) -> Vec<Vec<f32>> {
    params.iter().map(|p| p.data.clone()).collect()
}

fn new_trainer(weights: &HostWeights, steps: usize) -> Trainer {
    Trainer::for_weights(config(steps), weights)
}

#[test]
fn loss_falls_on_expert_traces() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 1).expect("init");
    let mut obj = objective(&tokenizer);
    let batch = obj.picked(0).expect("batch");
    let loss = |tensors: &[HostTensor]| cross_entropy_gradients(&micro(), tensors, &batch, &Backend::default()).0;
    let before = loss(&weights.tensors);
    let mut trainer = new_trainer(&weights, 60);
    let summary = trainer.run(&mut obj, &Silent, &|_| Ok(())).expect("trains");
    let after = loss(&trainer.params);
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
    fn step(&mut self, params: &[HostTensor], step: usize, backend: &Backend) -> Result<StepOutput, PolicyError> {
        if step == self.at {
            return Err(PolicyError::Config("killed".into()));
        }
        self.inner.step(params, step, backend)
    }
}

#[test]
fn resume_after_a_kill_reproduces_the_weights_bit_for_bit() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 2).expect("init");
    let dir = tempfile::tempdir().expect("tempdir");

    let mut straight = new_trainer(&weights, 30);
    straight
        .run(&mut objective(&tokenizer), &Silent, &|_| Ok(()))
        .expect("trains");

    let outputs = |name: &str| {
        (
            Checkpointer::new(dir.path().join(name), 2),
            MetricsLog::open(&dir.path().join("metrics.jsonl"), name, None).expect("log"),
        )
    };
    let (ckpt, log) = outputs("killed");
    let mut first = new_trainer(&weights, 30).with_outputs(ckpt, log);
    let mut obj = objective(&tokenizer);
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
    let mut resumed = new_trainer(&weights, 30).with_outputs(ckpt, log);
    assert_eq!(resumed.resume().expect("resumes"), Some(10));
    let summary = resumed
        .run(&mut objective(&tokenizer), &Silent, &|_| Ok(()))
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
#[cfg(feature = "burn")]
fn the_cpu_training_path_matches_burn_autodiff() {
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
        let run = |backend: Backend| cross_entropy_gradients(&config, &weights.tensors, &sequences, &backend);
        let (burn_loss, burn_grads, burn_tokens) = run(Backend::Burn(Device::flex()));
        let (cpu_loss, cpu_grads, cpu_tokens) = run(Backend::default());
        assert_eq!(burn_tokens, cpu_tokens);
        assert!((cpu_loss - burn_loss).abs() < 1e-4, "{cpu_loss} vs {burn_loss}");
        for ((name, a), b) in weights.layout().names.iter().zip(&cpu_grads).zip(&burn_grads) {
            let scale = b.iter().map(|x| x.abs()).fold(1e-6f32, f32::max);
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff <= 1e-4 * scale.max(1.0), "{name}: max diff {diff} (scale {scale})");
            assert!(scale > 1e-5, "{name}: a gradient to compare");
        }
    }
}

/// Multiplies the loss of one step by `factor` (NaN for a NaN loss), as a diverging run would.
/// Multiplies the loss of step `at` by `factor`, the first `times` times that step is taken.
struct BlowUpAt<'a> {
    inner: &'a mut SftObjective,
    at: usize,
    factor: f64,
    times: usize,
}

impl Objective for BlowUpAt<'_> {
    fn step(&mut self, params: &[HostTensor], step: usize, backend: &Backend) -> Result<StepOutput, PolicyError> {
        let mut out = self.inner.step(params, step, backend)?;
        if step == self.at && self.times > 0 {
            self.times -= 1;
            out.loss *= self.factor;
        }
        Ok(out)
    }
}

#[test]
fn an_exploding_or_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 3).expect("init");
    for (name, factor, message) in [("explodes", 1e4, "jumped"), ("nan", f64::NAN, "NaN")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ckpt = Checkpointer::new(dir.path().join(name), 2);
        let log = MetricsLog::open(&dir.path().join("metrics.jsonl"), name, None).expect("log");
        let mut stopping = config(30);
        stopping.max_rewinds = 0;
        stopping.skip_spikes = 0;
        let mut trainer = Trainer::for_weights(stopping, &weights).with_outputs(ckpt, log);
        let mut obj = objective(&tokenizer);
        let err = trainer
            .run(
                &mut BlowUpAt {
                    inner: &mut obj,
                    at: 23,
                    factor,
                    times: usize::MAX,
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
        let mut resumed = new_trainer(&weights, 30).with_outputs(
            Checkpointer::new(dir.path().join(name), 2),
            MetricsLog::open(&dir.path().join("metrics.jsonl"), name, Some(20)).expect("log"),
        );
        assert_eq!(resumed.resume().expect("resumes"), Some(20));
        assert!(host(&resumed.params).iter().flatten().all(|x| x.is_finite()));
    }
}

/// 30 steps of `config` whose step 27 has its loss multiplied by 1e4 the first `times` times
/// it is taken, with metrics in `dir/metrics.jsonl`: the summary and the final parameters.
fn spiky_run(
    weights: &HostWeights,
    dir: &std::path::Path,
    config: TrainerConfig,
    times: usize,
) -> Result<(ponder_policy_init::trainer::TrainSummary, Vec<Vec<f32>>), PolicyError> {
    let log = MetricsLog::open(&dir.join("metrics.jsonl"), "spiky", None).expect("log");
    let mut trainer = Trainer::for_weights(config, weights).with_outputs(Checkpointer::new(dir.join("ckpt"), 2), log);
    let mut obj = objective(&Tokenizer::chars());
    let mut spiky = BlowUpAt {
        inner: &mut obj,
        at: 27,
        factor: 1e4,
        times,
    };
    trainer
        .run(&mut spiky, &Silent, &|_| Ok(()))
        .map(|summary| (summary, host(&trainer.params)))
}

/// The records of a metrics file that have `key`.
fn records_with(path: &std::path::Path, key: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|r| r.get(key).is_some())
        .collect()
}

#[test]
fn a_loss_spike_rewinds_to_the_last_snapshot_with_half_the_learning_rate() {
    let weights = HostWeights::init(&micro(), 3).expect("init");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(30);
    c.snapshot_every = 8;
    c.max_rewinds = 2;
    c.skip_spikes = 0;
    let (clean, clean_params) = spiky_run(&weights, dir.path(), c.clone(), 0).expect("trains");
    assert_eq!((clean.rewinds, clean.lr_factor), (0, 1.0));

    // One spike at step 27: back to the snapshot of step 24, the rest at half the rate.
    let (once, once_params) = spiky_run(&weights, dir.path(), c.clone(), 1).expect("trains through one spike");
    assert_eq!((once.steps, once.rewinds, once.lr_factor), (30, 1, 0.5));
    assert!(once.final_loss.is_finite());
    assert_ne!(
        once_params, clean_params,
        "the steps after the rewind ran at another rate"
    );
    assert!(once_params.iter().flatten().all(|x| x.is_finite()));
    let metrics = dir.path().join("metrics.jsonl");
    let rewinds = records_with(&metrics, "rewind");
    assert_eq!(rewinds.len(), 1, "{rewinds:?}");
    assert_eq!(
        (rewinds[0]["step"].as_u64(), rewinds[0]["from_step"].as_u64()),
        (Some(24), Some(27))
    );
    assert!(rewinds[0]["reason"].as_str().is_some_and(|r| r.contains("jumped")));
    // The record of step 25 from before the rewind was dropped and written again: one loss
    // record per logged step.
    let logged: Vec<u64> = records_with(&metrics, "loss")
        .iter()
        .filter_map(|r| r["step"].as_u64())
        .collect();
    assert_eq!(logged, vec![5, 10, 15, 20, 25, 30]);
    // Steps after the rewind ran at half the schedule's rate: compare with a clean run's log.
    let lr_at = |step: u64| {
        records_with(&metrics, "lr")
            .iter()
            .find(|r| r["step"].as_u64() == Some(step))
            .and_then(|r| r["lr"].as_f64())
            .expect("lr")
    };
    let (rewound_20, rewound_30) = (lr_at(20), lr_at(30));
    spiky_run(&weights, dir.path(), c.clone(), 0).expect("trains");
    assert_eq!(rewound_20, lr_at(20), "before the rewind, the schedule's rate");
    assert!(
        (rewound_30 / lr_at(30) - 0.5).abs() < 1e-12,
        "{rewound_30} vs {}",
        lr_at(30)
    );

    // The same spike on every try: the run fails once the two rewinds are spent.
    let err = spiky_run(&weights, dir.path(), c, usize::MAX).expect_err("gives up");
    assert!(err.to_string().contains("step 27"), "{err}");
}

#[test]
fn a_spiking_batch_is_skipped_and_the_run_goes_on() {
    let weights = HostWeights::init(&micro(), 3).expect("init");
    let dir = tempfile::tempdir().expect("tempdir");
    let (clean, clean_params) = spiky_run(&weights, dir.path(), config(30), 0).expect("trains");
    let (spiked, spiked_params) = spiky_run(&weights, dir.path(), config(30), 1).expect("trains");
    assert_eq!((clean.skipped_batches, spiked.skipped_batches), (0, 1));
    assert_eq!((spiked.steps, spiked.rewinds, spiked.lr_factor), (30, 0, 1.0));
    assert!(
        spiked.tokens < clean.tokens,
        "the skipped batch's tokens are not counted"
    );
    assert_ne!(spiked_params, clean_params, "step 27's update was left out");
    let skips = records_with(&dir.path().join("metrics.jsonl"), "skipped_batch");
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0]["step"].as_u64(), Some(28));
}

#[test]
fn a_warm_start_takes_the_optimizer_moments_of_another_runs_checkpoint_and_keeps_the_weights() {
    let tokenizer = Tokenizer::chars();
    let weights = HostWeights::init(&micro(), 4).expect("init");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = MetricsLog::open(&dir.path().join("metrics.jsonl"), "first", None).expect("log");
    let mut first = new_trainer(&weights, 20).with_outputs(Checkpointer::new(dir.path().join("first"), 2), log);
    first
        .run(&mut objective(&tokenizer), &Silent, &|_| Ok(()))
        .expect("trains");

    let mut fresh = new_trainer(&weights, 20);
    let start = host(&fresh.params);
    assert_eq!(
        fresh.warm_start_from(&dir.path().join("none")).expect("reads"),
        None,
        "no checkpoint, nothing to start from"
    );
    assert!(fresh.optimizer.m.iter().flatten().all(|&x| x == 0.0));
    assert_eq!(
        fresh.warm_start_from(&dir.path().join("first")).expect("reads"),
        Some(20)
    );
    assert_eq!(fresh.optimizer.m, first.optimizer.m, "first moments");
    assert_eq!(fresh.optimizer.v, first.optimizer.v, "second moments");
    assert!(fresh.optimizer.v.iter().flatten().any(|&x| x > 0.0));
    assert_eq!(host(&fresh.params), start, "the weights stay this trainer's own");
    assert_eq!(fresh.optimizer.t, 10_000);
}
