//! Decoding on the CPU engine alone (built without burn too): `Stop::Length` decodes a fixed
//! number of tokens through end-of-sequence, as the benchmarks need.

use ponder_policy_init::{
    Finish, GenRequest, HostWeights, ModelConfig, Policy, Sampling, Stop, Tokenizer, TransformerPolicy,
};

#[test]
fn stop_length_decodes_a_fixed_number_of_tokens_through_end_of_sequence() {
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
