//! `ponder bench` (and `cargo xtask bench`): how fast the policy trains and samples, side by
//! side with the PyTorch reference (`benches/reference/torch_bench.py`, run in the same
//! invocation when Python has `torch`), as ratios, with the model FLOPs utilisation against
//! this machine's measured peak matrix-product rate.
//!
//! Measured per preset (`tiny`, `small`): training tokens/s (the pipeline's trainer and CPU
//! training path, batch 32, context 128, AdamW), generation tokens/s with the KV cache at batch
//! 1 and 32 (128 new tokens after a 4-token prompt), and the speed-up of the KV cache over
//! recomputing the whole sequence for every new token (120 tokens, batch 1).
//!
//! The machine is shared and its speed drifts, so the two sides are measured in alternating
//! rounds (ponder, then PyTorch, then ponder again, ...) and each figure is the best of its
//! rounds: a neighbour's load only ever slows a measurement down, so the best round is the
//! closest to the machine's own speed, and both sides get the same chances.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ponder_policy_init::cpu::{Engine, Want};
use ponder_policy_init::sft::{Sequences, SftObjective};
use ponder_policy_init::trainer::{Silent, Trainer, TrainerConfig};
use ponder_policy_init::{GenRequest, HostWeights, ModelConfig, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const BATCH: usize = 32;
const CONTEXT: usize = 128;
const GEN_TOKENS: usize = 128;
const UNCACHED_TOKENS: usize = 120;

/// Runs `step` once to warm up, then until `seconds` have passed (at least twice); returns the
/// runs and the seconds they took.
fn timed(seconds: f64, mut step: impl FnMut()) -> (usize, f64) {
    step();
    let start = Instant::now();
    let mut runs = 0;
    loop {
        step();
        runs += 1;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= seconds && runs >= 2 {
            return (runs, elapsed);
        }
    }
}

/// The best matrix-product rate (FLOP/s) of 2048³ products on every core.
pub fn peak_matmul_flops() -> f64 {
    let n = 2048;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let a: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut c = vec![0.0f32; n * n];
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        ponder_policy_init::cpu::linalg::matmul(&a, n, n, &b, n, &mut c, false, threads);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best
}

fn train_tokens_per_s(weights: &HostWeights, tokenizer: &Tokenizer, seconds: f64) -> anyhow::Result<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let vocab = tokenizer.vocab_size() as u32;
    let items: Vec<(Vec<u32>, usize)> = (0..BATCH * 4)
        .map(|_| ((0..=CONTEXT).map(|_| rng.random_range(0..vocab)).collect(), 1))
        .collect();
    let sequences = Sequences { items, dropped: 0 };
    // A short run to calibrate, then one long enough to measure.
    let run = |steps: usize| -> anyhow::Result<f64> {
        let config = TrainerConfig {
            steps,
            log_every: 0,
            checkpoint_every: 0,
            ..TrainerConfig::default()
        };
        let mut trainer = Trainer::for_weights(config, weights);
        let mut objective = SftObjective::new(weights.config.clone(), sequences.clone(), BATCH, 3);
        let t = Instant::now();
        let summary = trainer.run(&mut objective, &Silent, &|_| Ok(()))?;
        Ok(summary.tokens as f64 / t.elapsed().as_secs_f64())
    };
    let rate = run(2)?;
    let steps = ((rate * seconds) / (BATCH * CONTEXT) as f64).ceil().max(3.0) as usize;
    run(steps)
}

fn generate_tokens_per_s(policy: &TransformerPolicy, batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let sampling = Sampling::default();
    let mut seed = 0u64;
    let mut failure = None;
    // Tokens generated: `GEN_TOKENS` per sequence, end-of-sequence tokens decoded like any
    // other, as the PyTorch reference does (the first, warm-up call is not timed or counted).
    let mut generated = 0usize;
    let mut calls = 0usize;
    let (_, elapsed) = timed(seconds, || {
        let requests: Vec<GenRequest> = (0..batch)
            .map(|i| GenRequest::new("12 3\n", Stop::Length, GEN_TOKENS, sampling, seed + i as u64))
            .collect();
        seed += batch as u64;
        match futures::executor::block_on(policy.generate(&requests)) {
            Ok(g) if calls > 0 => generated += g.iter().map(|x| x.tokens()).sum::<usize>(),
            Ok(_) => {}
            Err(e) => failure = Some(e),
        }
        calls += 1;
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(generated as f64 / elapsed)
}

/// Greedy decoding of `UNCACHED_TOKENS` tokens, with the cache and by recomputing the whole
/// sequence each time; returns (cached seconds, uncached seconds).
fn cache_speedup(weights: &HostWeights) -> (f64, f64) {
    let engine = Engine::new(weights).with_threads(rayon::current_num_threads());
    let argmax = |logits: &[f32]| {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    let prompt = vec![1u32, 5, 6, 7];
    let cached = {
        let t = Instant::now();
        let mut cache = [engine.new_cache()];
        let mut logits = engine.forward(&mut cache, &[prompt.as_slice()], &[Want::Last]);
        for _ in 0..UNCACHED_TOKENS {
            let next = argmax(&logits[0]);
            logits = engine.forward(&mut cache, &[&[next]], &[Want::Last]);
        }
        t.elapsed().as_secs_f64()
    };
    let uncached = {
        let t = Instant::now();
        let mut sequence = prompt.clone();
        for _ in 0..UNCACHED_TOKENS {
            let mut cache = [engine.new_cache()];
            let logits = engine.forward(&mut cache, &[sequence.as_slice()], &[Want::Last]);
            sequence.push(argmax(&logits[0]));
        }
        t.elapsed().as_secs_f64()
    };
    (cached, uncached)
}

/// The PyTorch reference's figures for one model shape, if Python has torch.
fn torch_reference(config: &ModelConfig, seconds: f64) -> Result<Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/reference/torch_bench.py");
    let spec = json!({
        "vocab_size": config.vocab_size, "d_model": config.d_model, "n_layers": config.n_layers,
        "n_heads": config.n_heads, "ffn_hidden": config.ffn_hidden, "max_seq_len": config.max_seq_len,
        "rms_eps": config.rms_eps, "rope_theta": config.rope_theta,
        "batch": BATCH, "context": CONTEXT, "gen_tokens": GEN_TOKENS,
    });
    let threads = rayon::current_num_threads();
    let out = Command::new("python3")
        .arg(&script)
        .arg(spec.to_string())
        .arg(seconds.to_string())
        .arg(threads.to_string())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim().lines().last().unwrap_or("")).map_err(|e| format!("its output: {e}"))
}

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the benchmark; prints a table and returns every figure.
pub fn run(presets: &[String], seconds: f64, rounds: usize, reference: bool) -> anyhow::Result<Value> {
    let rounds = rounds.max(1);
    let tokenizer = Tokenizer::chars();
    let peak = peak_matmul_flops();
    let threads = rayon::current_num_threads();
    eprintln!(
        "ponder bench: {threads} threads; peak matmul (2048³, ponder's kernel) {:.1} GFLOP/s",
        peak / 1e9
    );
    let with_torch = reference && torch_available();
    if reference && !with_torch {
        eprintln!("ponder bench: python3 cannot import torch: no reference (pip install torch)");
    }
    let mut results = serde_json::Map::new();
    let mut table = String::from(
        "| preset | params | measure | ponder tokens/s | PyTorch tokens/s | ratio | MFU ponder | MFU PyTorch |\n|---|---|---|---|---|---|---|---|\n",
    );
    for preset in presets {
        let mut config = ModelConfig::preset(preset, tokenizer.vocab_size())?;
        config.max_seq_len = CONTEXT.max(GEN_TOKENS + 8).max(UNCACHED_TOKENS + 8);
        let weights = HostWeights::init(&config, 1)?;
        let params = weights.params() as f64;
        eprintln!("ponder bench: {preset} ({:.2}M parameters)", params / 1e6);
        let policy = TransformerPolicy::new(&weights, tokenizer.clone());
        let (mut train, mut gen1, mut gen32) = (0.0f64, 0.0f64, 0.0f64);
        let mut torch: Option<Value> = None;
        let mut torch_failed = !with_torch;
        for round in 1..=rounds {
            eprintln!("ponder bench: {preset}, round {round} of {}", rounds);
            train = train.max(train_tokens_per_s(&weights, &tokenizer, seconds)?);
            gen1 = gen1.max(generate_tokens_per_s(&policy, 1, seconds)?);
            gen32 = gen32.max(generate_tokens_per_s(&policy, 32, seconds)?);
            if torch_failed {
                continue;
            }
            match torch_reference(&config, seconds) {
                Ok(figures) => torch = Some(best_of(torch.take(), figures)),
                Err(e) => {
                    eprintln!("ponder bench: the PyTorch reference failed for {preset}: {e}");
                    torch_failed = true;
                }
            }
        }
        let (cached, uncached) = cache_speedup(&weights);
        let reference_of = |key: &str| torch.as_ref().and_then(|t| t[key].as_f64());
        let rows = [
            (
                "train (batch 32, context 128)",
                train,
                reference_of("train_tokens_per_s"),
                6.0,
            ),
            ("generate, batch 1", gen1, reference_of("generate_b1_tokens_per_s"), 2.0),
            (
                "generate, batch 32",
                gen32,
                reference_of("generate_b32_tokens_per_s"),
                2.0,
            ),
        ];
        let mut figures = serde_json::Map::new();
        for (key, (label, ours, theirs, flops_per_param)) in ["train", "generate_b1", "generate_b32"].iter().zip(rows) {
            let mfu = |rate: f64| flops_per_param * params * rate / peak;
            let ratio = theirs.map(|t| ours / t);
            table.push_str(&format!(
                "| {preset} | {:.2}M | {label} | {ours:.0} | {} | {} | {:.1}% | {} |\n",
                params / 1e6,
                theirs.map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into()),
                ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
                100.0 * mfu(ours),
                theirs
                    .map(|t| format!("{:.1}%", 100.0 * mfu(t)))
                    .unwrap_or_else(|| "-".into()),
            ));
            figures.insert(
                key.to_string(),
                json!({"ponder_tokens_per_s": ours, "pytorch_tokens_per_s": theirs, "ratio": ratio, "mfu": mfu(ours)}),
            );
        }
        figures.insert("params".into(), json!(weights.params()));
        figures.insert(
            "kv_cache".into(),
            json!({"tokens": UNCACHED_TOKENS, "cached_seconds": cached, "uncached_seconds": uncached, "speedup": uncached / cached}),
        );
        table.push_str(&format!(
            "| {preset} | | KV cache vs recompute, {UNCACHED_TOKENS} tokens | speed-up {:.1}x | | | | |\n",
            uncached / cached
        ));
        results.insert(preset.clone(), Value::Object(figures));
    }
    println!("{table}");
    Ok(json!({"threads": threads, "rounds": rounds, "peak_matmul_flops": peak, "presets": results, "table": table}))
}

/// The larger of each numeric figure of two reference runs (tokens per second: larger is
/// better).
fn best_of(previous: Option<Value>, next: Value) -> Value {
    let (Some(Value::Object(mut best)), Value::Object(next)) = (previous, next.clone()) else {
        return next;
    };
    for (key, value) in next {
        let better = match (best.get(&key).and_then(Value::as_f64), value.as_f64()) {
            (Some(old), Some(new)) => new > old,
            _ => !best.contains_key(&key),
        };
        if better {
            best.insert(key, value);
        }
    }
    Value::Object(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_of_keeps_each_figures_largest_value() {
        let first = json!({"train_tokens_per_s": 10.0, "generate_b1_tokens_per_s": 5.0});
        assert_eq!(best_of(None, first.clone()), first);
        let second = json!({"train_tokens_per_s": 8.0, "generate_b1_tokens_per_s": 7.0, "new": 1.0});
        assert_eq!(
            best_of(Some(first), second),
            json!({"train_tokens_per_s": 10.0, "generate_b1_tokens_per_s": 7.0, "new": 1.0})
        );
    }
}
