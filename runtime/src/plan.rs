//! Plans and runs a config's pipeline.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use anyhow::Context;
use ponder_datagen::dataset::{Example, GenerateSpec, Split, generate, write_jsonl};
use ponder_datagen::io::write_atomic;
use ponder_datagen::trace::stable_hash;
use ponder_datagen::{DatasetError, Task, TraceStyle};

use crate::config::RunConfig;
use crate::registry::Registry;

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

/// Runs the pipeline's stages in order.
pub fn run(config: &RunConfig, _registry: &Registry, _resume: bool) -> anyhow::Result<()> {
    let dir = config.run_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(dir.join("config.toml"), config.resolved_toml().as_bytes())
        .with_context(|| format!("writing {}", dir.join("config.toml").display()))?;
    let task = config.task.build(&())?;
    for stage in &config.pipeline.stages {
        match stage.as_str() {
            "datagen" => datagen_stage(config, task.as_ref(), &dir)?,
            other => anyhow::bail!("stage {other} is not available yet"),
        }
    }
    Ok(())
}

/// Writes `data/train.jsonl` (expert traces of training-side problems) and `data/test.jsonl`
/// (distinct held-out problems with one optimal trace each).
pub fn datagen_stage(config: &RunConfig, task: &dyn Task, dir: &Path) -> anyhow::Result<()> {
    let d = &config.pipeline.data;
    let style: TraceStyle = d.style.parse().map_err(anyhow::Error::msg)?;
    let seed = config.run.seed;
    let mut train = GenerateSpec::new(d.train_examples, derive_seed(seed, "train"), style);
    train.split = Split::Train;
    train.split_seed = seed;
    train.test_fraction = d.test_fraction;
    let data = dir.join("data");
    write_jsonl::<_, DatasetError>(
        &data.join("train.jsonl"),
        generate(task, &train).map(|r| r.map_err(DatasetError::from)),
    )?;
    let mut test = GenerateSpec::new(usize::MAX, derive_seed(seed, "test"), TraceStyle::Optimal);
    test.split = Split::Test;
    test.split_seed = seed;
    test.test_fraction = d.test_fraction;
    let mut seen = HashSet::new();
    let mut examples: Vec<Example> = Vec::new();
    let mut tries = 0usize;
    for example in generate(task, &test) {
        let example = example?;
        tries += 1;
        if seen.insert(example.problem.id.clone()) {
            examples.push(example);
        }
        if examples.len() >= d.test_problems {
            break;
        }
        anyhow::ensure!(
            tries < d.test_problems * 200 + 10_000,
            "only {} distinct held-out problems exist for this task and test_fraction",
            examples.len()
        );
    }
    write_jsonl::<_, DatasetError>(&data.join("test.jsonl"), examples.into_iter().map(Ok))?;
    Ok(())
}
