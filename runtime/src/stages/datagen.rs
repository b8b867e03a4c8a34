//! `datagen`: the training set (expert traces of training-side problems) and the held-out
//! problems (distinct, test side of the split).

use std::collections::HashSet;

use ponder_datagen::dataset::{Example, GenerateSpec, Split, generate, write_jsonl};
use ponder_datagen::{DatasetError, TraceStyle};
use serde_json::json;

use super::Context;

pub fn run(ctx: &Context) -> anyhow::Result<serde_json::Value> {
    let d = &ctx.config.pipeline.data;
    let style: TraceStyle = d.style.parse().map_err(anyhow::Error::msg)?;
    let split_seed = ctx.config.run.seed;
    let mut train = GenerateSpec::new(d.train_examples, ctx.seed("train"), style);
    train.split = Split::Train;
    train.split_seed = split_seed;
    train.test_fraction = d.test_fraction;
    let mut revision = GenerateSpec::new(
        d.revision_examples,
        ctx.seed("train-revision"),
        TraceStyle::Revision { attempts: 2 },
    );
    revision.split = Split::Train;
    revision.split_seed = split_seed;
    revision.test_fraction = d.test_fraction;
    let mut chars = 0usize;
    let total = d.train_examples + d.revision_examples;
    let written = write_jsonl::<_, DatasetError>(
        &ctx.dir.data("train.jsonl"),
        generate(ctx.task, &train)
            .chain(generate(ctx.task, &revision))
            .enumerate()
            .map(|(i, r)| {
                if i % 1000 == 0 {
                    ctx.progress.set(i, total, "training traces");
                }
                r.inspect(|e| {
                    chars += e.problem.prompt.len() + e.completion.len();
                })
                .map_err(DatasetError::from)
            }),
    )?;
    let mut test = GenerateSpec::new(usize::MAX, ctx.seed("test"), TraceStyle::Optimal);
    test.split = Split::Test;
    test.split_seed = split_seed;
    test.test_fraction = d.test_fraction;
    let mut seen = HashSet::new();
    let mut examples: Vec<Example> = Vec::new();
    let mut tries = 0usize;
    if d.test_problems > 0 {
        for example in generate(ctx.task, &test) {
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
    }
    let chance = examples.iter().map(|e| ctx.task.chance_level(&e.problem)).sum::<f64>() / examples.len().max(1) as f64;
    write_jsonl::<_, DatasetError>(&ctx.dir.data("test.jsonl"), examples.iter().cloned().map(Ok))?;
    Ok(json!({
        "train_examples": written,
        "revision_examples": d.revision_examples,
        "train_chars": chars,
        "test_problems": examples.len(),
        "style": style.to_string(),
        "chance_level": chance,
    }))
}
