//! The CPU decoding engine against the burn forward (same logits, cached or not), and decoding
//! a fixed number of tokens.

use burn::tensor::Device;
use ponder_policy_init::cpu::{Engine, Want};
use ponder_policy_init::model::Transformer;
use ponder_policy_init::{HostWeights, ModelConfig};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check(config: ModelConfig, seed: u64) {
    let weights = HostWeights::init(&config, seed).expect("init");
    // Larger weights than the init's 0.02 make differences visible.
    let mut weights = weights;
    for t in &mut weights.tensors {
        if t.shape.len() == 2 {
            for x in &mut t.data {
                *x *= 10.0;
            }
        }
    }
    let v = config.vocab_size;
    let len = 40;
    let tokens: Vec<u32> = (0..len).map(|i| ((i * 37 + 11) % v) as u32).collect();
    let model = Transformer::from_host(&weights, &Device::flex());
    let inputs: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let reference: Vec<f32> = model
        .forward(&inputs, 1, len)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("logits");
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

#[test]
fn stop_length_decodes_a_fixed_number_of_tokens_through_end_of_sequence() {
    use ponder_policy_init::{Finish, GenRequest, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};
    // An untrained model samples its end-of-sequence token about once in a vocabulary's worth
    // of tokens at temperature 1: with 120 new tokens most sequences meet one.
    let tokenizer = Tokenizer::chars();
    let config = ModelConfig::preset("tiny", tokenizer.vocab_size()).expect("preset");
    let weights = HostWeights::init(&config, 9).expect("init");
    let policy = TransformerPolicy::new(&weights, tokenizer);
    let requests = |stop| -> Vec<GenRequest> {
        (0..16)
            .map(|i| GenRequest::new("12 3\n", stop, 120, Sampling::default(), i))
            .collect()
    };
    let never = futures::executor::block_on(policy.generate(&requests(Stop::Never))).expect("generates");
    assert!(
        never.iter().any(|g| g.finish == Finish::EndOfSequence),
        "no sequence met its end-of-sequence token: the comparison below would be empty"
    );
    let length = futures::executor::block_on(policy.generate(&requests(Stop::Length))).expect("generates");
    for g in &length {
        assert_eq!(g.finish, Finish::Length);
        assert_eq!(g.tokens(), 120, "{:?}", g.finish);
    }
}
