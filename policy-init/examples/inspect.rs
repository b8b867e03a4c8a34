//! Prints greedy traces of a checkpoint on held-out problems, with their verdicts.
//! usage: cargo run --release -p ponder-policy-init --example inspect CHECKPOINT_DIR TEST_JSONL [N]
use ponder_datagen::countdown::{Countdown, CountdownConfig};
use ponder_datagen::{Task, Trace};
use ponder_policy_init::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (weights, tokenizer) =
        hf::load_pretrained(std::path::Path::new(&args[1])).expect("checkpoint");
    let examples =
        ponder_datagen::dataset::read_examples(std::path::Path::new(&args[2])).expect("test set");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let task = Countdown::new(CountdownConfig::default()).expect("task");
    let policy = TransformerPolicy::new(&weights, tokenizer);
    let requests: Vec<GenRequest> = examples
        .iter()
        .take(n)
        .map(|e| {
            GenRequest::new(
                &e.problem.prompt,
                Stop::TraceEnd,
                120,
                Sampling::greedy(),
                0,
            )
        })
        .collect();
    let gens = futures::executor::block_on(policy.generate(&requests)).expect("generates");
    let (mut right, mut steps_right) = (0, 0);
    for (e, g) in examples.iter().zip(&gens) {
        let t = Trace::parse(&g.text);
        let v = task.verify(&e.problem, &t).expect("verify");
        let labels = task.check_steps(&e.problem, &t.steps).expect("labels");
        right += usize::from(v.correct);
        steps_right += usize::from(labels.iter().all(|&l| l) && !labels.is_empty());
        println!(
            "{}{}  -> correct={} steps={:?}\n",
            e.problem.prompt, g.text, v.correct, labels
        );
    }
    println!("correct {right}/{n}, all steps right {steps_right}/{n}");
}
