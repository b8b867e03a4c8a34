use burn::tensor::Device;
use ponder_datagen::countdown::{Countdown, CountdownConfig};
use ponder_datagen::dataset::{GenerateSpec, generate};
use ponder_datagen::{Example, TraceStyle};
use ponder_policy_init::model::Transformer;
use ponder_policy_init::sft::{Sequences, SftObjective};
use ponder_policy_init::trainer::{Silent, TrainerConfig};
use ponder_policy_init::*;
use std::time::Instant;

fn main() {
    let preset = std::env::args().nth(1).unwrap_or("tiny".into());
    let steps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let tokenizer = Tokenizer::chars();
    let config = ModelConfig::preset(&preset, 100).unwrap();
    let weights = HostWeights::init(&config, 1).unwrap();
    let task = Countdown::new(CountdownConfig::default()).unwrap();
    let ex: Vec<Example> = generate(&task, &GenerateSpec::new(5000, 1, TraceStyle::Optimal))
        .collect::<Result<_, _>>()
        .unwrap();
    let seqs = Sequences::from_examples(&ex, &tokenizer, 512);
    let model = Transformer::from_host(&weights, &Device::flex());
    let mut obj = SftObjective::new(model.clone(), seqs, 32, 1, 0);
    let mut c = TrainerConfig {
        steps,
        ..TrainerConfig::default()
    };
    c.optim.warmup_steps = 5;
    let mut trainer = model.trainer(c);
    let t = Instant::now();
    let s = trainer.run(&mut obj, &Silent, &|_| Ok(())).unwrap();
    println!(
        "train: {:.0} tok/s, {:.2}s, loss {:.3}",
        s.tokens_per_second,
        t.elapsed().as_secs_f64(),
        s.final_loss
    );
    let w = model.with_params(trainer.params.clone()).to_host();
    let policy = TransformerPolicy::new(&w, tokenizer);
    for batch in [1usize, 32] {
        let reqs: Vec<GenRequest> = (0..batch)
            .map(|i| {
                GenRequest::new(
                    format!("countdown 3 {} 9 target 21\n", i % 7 + 1),
                    Stop::Never,
                    120,
                    Sampling::default(),
                    i as u64,
                )
            })
            .collect();
        let t = Instant::now();
        let g = futures::executor::block_on(policy.generate(&reqs)).unwrap();
        let n: usize = g.iter().map(|g| g.tokens()).sum();
        println!(
            "generate batch {batch}: {:.0} tok/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
}
