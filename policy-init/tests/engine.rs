//! The CPU decoding engine and burn's decoder against the burn forward (same logits, cached or
//! not). Built with burn (`--features burn`; the workspace's tests always have it).
#![cfg(feature = "burn")]

use burn::tensor::Device;
use ponder_policy_init::backend::Backend;
use ponder_policy_init::burn_decode::BurnDecoder;
use ponder_policy_init::cpu::{Engine, Want};
use ponder_policy_init::model::Transformer;
use ponder_policy_init::{GenRequest, HostWeights, ModelConfig, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Random weights, the matrices 10 times the init's 0.02 so that differences are visible.
fn sharpened(config: &ModelConfig, seed: u64) -> HostWeights {
    let mut weights = HostWeights::init(config, seed).expect("init");
    for t in &mut weights.tensors {
        if t.shape.len() == 2 {
            for x in &mut t.data {
                *x *= 10.0;
            }
        }
    }
    weights
}

/// A fixed token sequence of `len` and burn's uncached logits of every position of it.
fn reference(weights: &HostWeights, len: usize) -> (Vec<u32>, Vec<f32>) {
    let v = weights.config.vocab_size;
    let tokens: Vec<u32> = (0..len).map(|i| ((i * 37 + 11) % v) as u32).collect();
    let model = Transformer::from_host(weights, &Device::flex());
    let inputs: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let logits = model
        .forward(&inputs, 1, len)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("logits");
    (tokens, logits)
}

fn check(config: ModelConfig, seed: u64) {
    let weights = sharpened(&config, seed);
    let v = config.vocab_size;
    let len = 40;
    let (tokens, reference) = reference(&weights, len);
    let engine = Engine::new(&weights);
    // Prefill 10 tokens at once, then one token at a time through the cache.
    let mut caches = vec![engine.new_cache()];
    let mut logits = engine.forward(&mut caches, &[&tokens[..10]], &[Want::All]).remove(0);
    for t in 10..len {
        logits.extend(
            engine
                .forward(&mut caches, &[&tokens[t..t + 1]], &[Want::Last])
                .remove(0),
        );
    }
    let diff = max_abs_diff(&logits, &reference);
    assert!(diff <= 1e-4, "cached engine vs burn forward: max abs diff {diff}");
    // A batch of two sequences split across threads gives the same logits as one alone.
    let mut two = vec![engine.new_cache(), engine.new_cache()];
    let batched = engine.forward(&mut two, &[&tokens[..len], &tokens[..7]], &[Want::All, Want::Last]);
    assert!(max_abs_diff(&batched[0], &reference) <= 1e-4);
    assert!(max_abs_diff(&batched[1], &reference[6 * v..7 * v]) <= 1e-4);
}

#[test]
fn cached_decoding_matches_the_burn_forward() {
    let tiny = ModelConfig::preset("tiny", 100).expect("preset");
    check(tiny.clone(), 1);
    // Grouped-query attention, biases everywhere, untied head.
    let variant = ModelConfig {
        n_kv_heads: 2,
        qkv_bias: true,
        o_bias: true,
        tie_embeddings: false,
        ..tiny
    };
    check(variant, 2);
}

/// burn's decoder on one padded batch of sequences with different cached and new lengths, and
/// continuing a cache the CPU engine filled.
fn check_burn_decoder(config: ModelConfig, seed: u64) {
    let weights = sharpened(&config, seed);
    let v = config.vocab_size;
    let (tokens, reference) = reference(&weights, 24);
    let rows = |from: usize, to: usize| &reference[from * v..to * v];
    let burn = BurnDecoder::new(&weights, &Device::flex());
    let engine = Engine::new(&weights);
    let mut caches = vec![engine.new_cache(), engine.new_cache(), engine.new_cache()];
    let first = burn.forward(
        &mut caches,
        &[&tokens[..10], &tokens[..3], &[]],
        &[Want::All, Want::Last, Want::Last],
    );
    assert!(max_abs_diff(&first[0], rows(0, 10)) <= 1e-4, "prefill, every row");
    assert!(max_abs_diff(&first[1], rows(2, 3)) <= 1e-4, "prefill, last row");
    assert!(first[2].is_empty());
    // Cached lengths 10, 3 and 0 now; new lengths 1, 5 and 2.
    let second = burn.forward(
        &mut caches,
        &[&tokens[10..11], &tokens[3..8], &tokens[..2]],
        &[Want::Last, Want::All, Want::Nothing],
    );
    assert!(
        max_abs_diff(&second[0], rows(10, 11)) <= 1e-4,
        "one step on a cache of 10"
    );
    assert!(
        max_abs_diff(&second[1], rows(3, 8)) <= 1e-4,
        "five rows on a cache of 3"
    );
    assert!(second[2].is_empty());
    assert_eq!(caches.iter().map(|c| c.len).collect::<Vec<_>>(), vec![11, 8, 2]);
    // The CPU engine's cache, continued by burn, and burn's, continued by the engine.
    let mut cpu_filled = vec![engine.new_cache()];
    engine.forward(&mut cpu_filled, &[&tokens[..12]], &[Want::Nothing]);
    let continued = burn.forward(&mut cpu_filled, &[&tokens[12..14]], &[Want::All]);
    assert!(
        max_abs_diff(&continued[0], rows(12, 14)) <= 1e-4,
        "burn after the engine"
    );
    let back = engine.forward(&mut caches[1..2], &[&tokens[8..9]], &[Want::Last]);
    assert!(max_abs_diff(&back[0], rows(8, 9)) <= 1e-4, "the engine after burn");
}

#[test]
fn burn_decoding_matches_the_burn_forward_and_shares_the_engines_cache() {
    let tiny = ModelConfig::preset("tiny", 100).expect("preset");
    check_burn_decoder(tiny.clone(), 3);
    check_burn_decoder(
        ModelConfig {
            n_kv_heads: 2,
            qkv_bias: true,
            o_bias: true,
            tie_embeddings: false,
            ..tiny
        },
        4,
    );
}

#[test]
fn a_policy_on_the_burn_backend_generates_what_the_cpu_engine_does() {
    let tokenizer = Tokenizer::chars();
    let config = ModelConfig::preset("tiny", tokenizer.vocab_size()).expect("preset");
    let weights = sharpened(&config, 5);
    let cpu = TransformerPolicy::new(&weights, tokenizer.clone());
    let burn = TransformerPolicy::on_backend(&weights, tokenizer, &Backend::Burn(Device::flex()));
    let requests: Vec<GenRequest> = ["12 3\n", "4 5 6\n", "12 3\n"]
        .iter()
        .enumerate()
        .flat_map(|(i, prompt)| {
            [Sampling::greedy(), Sampling::default()]
                .map(|sampling| GenRequest::new(*prompt, Stop::Never, 30, sampling, i as u64))
        })
        .collect();
    let generate =
        |policy: &TransformerPolicy| futures::executor::block_on(policy.generate(&requests)).expect("generates");
    let (a, b) = (generate(&cpu), generate(&burn));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.token_ids, y.token_ids);
        assert!(!x.token_ids.is_empty());
        assert!(max_abs_diff(&x.logprobs, &y.logprobs) <= 1e-4);
    }
    assert_eq!(burn.compute_counters(), cpu.compute_counters());
    // A second call continues the prompts' cached prefixes.
    let again = generate(&burn);
    assert!(again.iter().any(|g| g.computed_prompt_tokens < g.prompt_tokens));
    for (x, y) in again.iter().zip(&b) {
        assert_eq!(x.token_ids, y.token_ids);
        assert!(max_abs_diff(&x.logprobs, &y.logprobs) <= 1e-4);
    }
}
