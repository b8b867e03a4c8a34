//! Hugging Face interop: export and re-import give identical logits; and, where Python has
//! `transformers` and `torch`, the export loads in `transformers` with matching logits.

#![cfg(feature = "burn")]

use std::process::Command;

use burn::tensor::Device;
use ponder_policy_init::hf::{load_pretrained, save_pretrained};
use ponder_policy_init::model::Transformer;
use ponder_policy_init::{HostWeights, ModelConfig, Tokenizer};

fn configs() -> Vec<ModelConfig> {
    let tiny = ModelConfig::preset("tiny", 100).expect("preset");
    vec![
        tiny.clone(),
        // Qwen2 shape: q/k/v biases, grouped-query attention, untied head.
        ModelConfig {
            n_kv_heads: 2,
            qkv_bias: true,
            tie_embeddings: false,
            ..tiny.clone()
        },
        // Llama with attention_bias.
        ModelConfig {
            qkv_bias: true,
            o_bias: true,
            ..tiny
        },
    ]
}

fn logits(weights: &HostWeights, ids: &[i32]) -> Vec<f32> {
    Transformer::from_host(weights, &Device::flex())
        .forward(ids, 1, ids.len())
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("logits")
}

fn ids(tokenizer: &Tokenizer) -> Vec<i32> {
    let mut ids = vec![tokenizer.bos_id.expect("bos") as i32];
    ids.extend(
        tokenizer
            .encode("countdown 3 7 9 target 30\n7*3=21 left 9 21\n")
            .iter()
            .map(|&t| t as i32),
    );
    ids
}

fn scaled(config: &ModelConfig, seed: u64) -> HostWeights {
    let mut w = HostWeights::init(config, seed).expect("init");
    for t in &mut w.tensors {
        t.data.iter_mut().enumerate().for_each(|(i, x)| {
            *x = if t.shape.len() == 2 {
                *x * 10.0
            } else {
                *x + 0.01 * (i % 7) as f32
            };
        });
    }
    w
}

#[test]
fn export_and_reimport_give_identical_logits() {
    let tokenizer = Tokenizer::chars();
    for (i, config) in configs().into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let weights = scaled(&config, i as u64);
        save_pretrained(dir.path(), &weights, &tokenizer).expect("exports");
        let (back, back_tokenizer) = load_pretrained(dir.path()).expect("imports");
        assert_eq!(back, weights);
        let ids = ids(&back_tokenizer);
        assert_eq!(logits(&back, &ids), logits(&weights, &ids));
    }
}

/// Run by `cargo xtask hf-check` (needs `pip install transformers torch`).
#[test]
#[ignore = "needs Python with transformers and torch; run by `cargo xtask hf-check`"]
fn transformers_loads_the_export_with_matching_logits() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hf_check.py");
    let tokenizer = Tokenizer::chars();
    for (i, config) in configs().into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let weights = scaled(&config, 10 + i as u64);
        save_pretrained(dir.path(), &weights, &tokenizer).expect("exports");
        let ids = ids(&tokenizer);
        let ids_text: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let out = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .arg(ids_text.join(","))
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let theirs: Vec<f32> = serde_json::from_slice(&out.stdout).expect("logits as JSON");
        let ours = logits(&weights, &ids);
        assert_eq!(theirs.len(), ours.len());
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("config {i}: max abs logit difference vs transformers: {diff:.2e}");
        assert!(diff <= 1e-4, "config {i}: max abs diff {diff}");
        // The tokenizer reads the same ids from the text.
        let check = Command::new("python3")
            .args(["-c", "import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]); print(','.join(map(str, t('countdown 3 7 9 target 30\\n', add_special_tokens=False)['input_ids'])))"])
            .arg(dir.path())
            .output()
            .expect("python3 runs");
        let text = String::from_utf8_lossy(&check.stdout).trim().to_string();
        let expected: Vec<String> = tokenizer
            .encode("countdown 3 7 9 target 30\n")
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(text, expected.join(","), "{}", String::from_utf8_lossy(&check.stderr));
    }
}
