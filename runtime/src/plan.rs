//! A config's plan, as `ponder check` prints it.

use ponder_datagen::trace::stable_hash;

use crate::config::RunConfig;

/// A seed for one purpose, derived from the run's seed: stable, and independent across
/// purposes.
pub fn derive_seed(seed: u64, purpose: &str) -> u64 {
    let mut bytes = seed.to_le_bytes().to_vec();
    bytes.extend_from_slice(purpose.as_bytes());
    stable_hash(&bytes)
}

/// A human-readable plan of the run.
pub fn describe(run: &RunConfig) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "run {} (seed {}, device {}) -> {}\n",
        run.run.name,
        run.run.seed,
        run.run.device,
        run.run_dir().display()
    ));
    out.push_str(&format!("task: {}\n", compact(&run.task.resolved())));
    out.push_str(&format!("policy: {}\n", compact(&run.policy.resolved())));
    out.push_str("stages:\n");
    for (i, stage) in run.pipeline.stages.iter().enumerate() {
        let detail = match stage.as_str() {
            "datagen" => {
                let d = &run.pipeline.data;
                format!(
                    "{} training examples ({} traces), {} held-out problems",
                    d.train_examples, d.style, d.test_problems
                )
            }
            "init" => {
                let i = &run.pipeline.init;
                format!(
                    "{} steps of {} sequences, lr {}, pass@k from {} samples",
                    i.steps, i.batch_size, i.optim.lr, i.samples
                )
            }
            _ => String::new(),
        };
        out.push_str(&format!("  {}. {stage}: {detail}\n", i + 1));
    }
    out
}

fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let kind = map.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
            let rest: Vec<String> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "kind")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{kind} ({})", rest.join(", "))
        }
        other => other.to_string(),
    }
}
