//! `datagen`: the training set (expert traces of training-side problems), the problems kept
//! for RL, and the held-out problems of the validation and test sides. The three sides are
//! disjoint by problem family (`Task::family`: for countdown, the set of numbers), and the stage
//! records, computed from the files it wrote, how many families two sides share (zero by
//! construction) and how often training repeats a problem.

use std::collections::{HashMap, HashSet};

use ponder_datagen::dataset::{Example, GenerateSpec, Split, Splitter, generate, write_jsonl};
use ponder_datagen::{DatasetError, Task, TraceStyle};
use serde_json::json;

use super::Context;

/// The file of a held-out side's problems.
pub fn held_out_file(side: Split) -> &'static str {
    match side {
        Split::Validation => "validation.jsonl",
        _ => "test.jsonl",
    }
}

pub fn run(ctx: &Context) -> anyhow::Result<serde_json::Value> {
    let d = &ctx.config.pipeline.data;
    let style: TraceStyle = d.style.parse().map_err(anyhow::Error::msg)?;
    let splitter = Splitter {
        seed: d.split_seed,
        test_fraction: d.test_fraction,
        validation_fraction: d.validation_fraction,
    };
    let training_side = |n: usize, seed: u64, style: TraceStyle| {
        let mut spec = GenerateSpec::new(n, seed, style);
        spec.split = Split::Train;
        spec.splitter = splitter;
        spec.distinct = d.distinct;
        spec
    };

    // The RL problems come first in one distinct stream with the initialisation's problems, so
    // the two never share a problem; revision examples then skip the RL problems too.
    let mut rl_problems: Vec<Example> = Vec::new();
    if d.rl_problems > 0 {
        let mut spec = training_side(d.rl_problems, ctx.seed("rl-problems"), TraceStyle::Optimal);
        spec.distinct = true;
        for example in generate(ctx.task, &spec) {
            rl_problems.push(example?);
        }
        write_jsonl::<_, DatasetError>(&ctx.dir.data("rl.jsonl"), rl_problems.iter().cloned().map(Ok))?;
    }
    let rl_ids: HashSet<String> = rl_problems.iter().map(|e| e.problem.id.clone()).collect();
    let mut train = training_side(d.train_examples, ctx.seed("train"), style);
    train.exclude = rl_ids.clone();
    let mut revision = training_side(
        d.revision_examples,
        ctx.seed("train-revision"),
        TraceStyle::Revision { attempts: 2 },
    );
    revision.exclude = rl_ids;
    let mut chars = 0usize;
    let mut problem_counts: HashMap<String, usize> = HashMap::new();
    let mut train_families: HashSet<String> = HashSet::new();
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
                    *problem_counts.entry(e.problem.id.clone()).or_default() += 1;
                    train_families.insert(ctx.task.family(&e.problem));
                })
                .map_err(DatasetError::from)
            }),
    )?;
    for e in &rl_problems {
        train_families.insert(ctx.task.family(&e.problem));
    }

    let mut sides = serde_json::Map::new();
    let mut held_out_families: Vec<(Split, HashSet<String>)> = Vec::new();
    for (side, wanted, purpose) in [
        (Split::Test, d.test_problems, "test"),
        (Split::Validation, d.validation_problems, "validation"),
    ] {
        let examples = held_out_problems(ctx.task, splitter, side, wanted, d.split_seed, purpose)?;
        let chance =
            examples.iter().map(|e| ctx.task.chance_level(&e.problem)).sum::<f64>() / examples.len().max(1) as f64;
        write_jsonl::<_, DatasetError>(&ctx.dir.data(held_out_file(side)), examples.iter().cloned().map(Ok))?;
        let families: HashSet<String> = examples.iter().map(|e| ctx.task.family(&e.problem)).collect();
        sides.insert(
            purpose.into(),
            json!({
                "problems": examples.len(),
                "families": families.len(),
                "families_in_training": families.intersection(&train_families).count(),
                "chance_level": chance,
            }),
        );
        held_out_families.push((side, families));
    }
    let shared_held_out = held_out_families[0].1.intersection(&held_out_families[1].1).count();
    anyhow::ensure!(
        held_out_families.iter().all(|(_, f)| f.is_disjoint(&train_families)) && shared_held_out == 0,
        "the split leaks: a held-out problem family is also on another side (a task whose `family` is not a pure function of the problem?)"
    );
    let distinct = problem_counts.len();
    Ok(json!({
        "train_examples": written,
        "revision_examples": d.revision_examples,
        "train_chars": chars,
        "train_distinct_problems": distinct,
        "train_lines_per_problem": written as f64 / distinct.max(1) as f64,
        "train_max_lines_per_problem": problem_counts.values().copied().max().unwrap_or(0),
        "train_families": train_families.len(),
        "rl_problems": rl_problems.len(),
        "test_problems": sides["test"]["problems"],
        "chance_level": sides["test"]["chance_level"],
        "held_out": sides,
        "held_out_families_shared_by_test_and_validation": shared_held_out,
        "style": style.to_string(),
    }))
}

/// Distinct problems of a held-out side, drawn with a seed of the split's own, so every run
/// with the same split sees the same problems.
fn held_out_problems(
    task: &dyn Task,
    splitter: Splitter,
    side: Split,
    wanted: usize,
    split_seed: u64,
    purpose: &str,
) -> anyhow::Result<Vec<Example>> {
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let mut spec = GenerateSpec::new(
        wanted,
        crate::plan::derive_seed(split_seed, purpose),
        TraceStyle::Optimal,
    );
    spec.split = side;
    spec.splitter = splitter;
    spec.distinct = true;
    generate(task, &spec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{purpose} problems: {e}"))
}
