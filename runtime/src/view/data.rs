//! What the page shows, gathered from the files a run or a sweep left, as one JSON value.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context as _;
use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::evaluate::EvalReport;
use serde_json::{Map, Value, json};

use crate::config::{Layers, RunConfig};
use crate::registry::Registry;
use crate::stages::search_trees;

/// At most this many held-out problems in the before-and-after comparison.
const BEFORE_AFTER_PROBLEMS: usize = 60;

/// The RL metrics drawn over iterations, in this order, where the run logged them.
const RL_METRICS: [(&str, &str); 7] = [
    ("reward", "mean reward"),
    ("correct", "right rollouts"),
    ("kl", "KL to the reference"),
    ("entropy", "entropy per token"),
    ("response_tokens", "response length (tokens)"),
    ("clip_fraction", "clipped fraction"),
    ("loss", "loss"),
];

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// One point: x, y, and optionally an interval and a note for the tooltip.
fn pt(x: f64, y: f64, interval: Option<(f64, f64)>, note: String) -> Value {
    let mut p = json!({"x": x, "y": y});
    if let Some((lo, hi)) = interval {
        p["lo"] = json!(lo);
        p["hi"] = json!(hi);
    }
    if !note.is_empty() {
        p["note"] = json!(note);
    }
    p
}

fn series(name: &str, points: Vec<Value>) -> Value {
    json!({"name": name, "points": points})
}

fn plot(id: &str, title: &str, x: &str, y: &str, log_x: bool, percent: bool, series: Vec<Value>) -> Value {
    json!({"id": id, "title": title, "x": x, "y": y, "log_x": log_x, "percent": percent, "series": series})
}

fn metrics_rows(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// A metric over steps for each stage named.
fn loss_plot(rows: &[Value], id: &str, title: &str, stages: &[&str]) -> Option<Value> {
    let all: Vec<Value> = stages
        .iter()
        .filter_map(|&stage| {
            let points: Vec<Value> = (rows.iter())
                .filter(|r| r["stage"] == stage)
                .filter_map(|r| Some(pt(r["step"].as_f64()?, r["loss"].as_f64()?, None, String::new())))
                .collect();
            (!points.is_empty()).then(|| series(stage, points))
        })
        .collect();
    (!all.is_empty()).then(|| plot(id, title, "step", "loss", false, false, all))
}

fn interval(v: &Value) -> Option<(f64, f64)> {
    Some((v["low"].as_f64()?, v["high"].as_f64()?))
}

/// Accuracy against FLOPs per problem, every searcher, with greedy decoding for reference.
fn test_time_plot(search: &Value) -> Option<Value> {
    let curves = search["curves"].as_object()?;
    let mut all: Vec<Value> = curves
        .iter()
        .map(|(label, points)| {
            let pts = (points.as_array().into_iter().flatten())
                .filter_map(|p| {
                    let note = format!(
                        "budget {}, {:.0} tokens per problem",
                        p["budget"].as_u64().unwrap_or(0),
                        p["tokens_per_problem"].as_f64().unwrap_or(0.0)
                    );
                    Some(pt(
                        p["flops_per_problem"].as_f64()?,
                        p["accuracy"].as_f64()?,
                        interval(p),
                        note,
                    ))
                })
                .collect();
            series(label, pts)
        })
        .collect();
    let xs: Vec<f64> = (all.iter())
        .flat_map(|s| {
            s["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["x"].as_f64())
        })
        .collect();
    if let (Some(greedy), false) = (search["greedy_pass@1"].as_f64(), xs.is_empty()) {
        let (lo, hi) = xs.iter().fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        let mut g = series(
            "greedy",
            vec![
                pt(lo, greedy, None, "greedy decoding".into()),
                pt(hi, greedy, None, "greedy decoding".into()),
            ],
        );
        g["dashed"] = json!(true);
        all.push(g);
    }
    Some(plot(
        "test-time",
        "Test-time compute: accuracy against FLOPs per problem (policy and reward-model passes)",
        "FLOPs per problem",
        "accuracy",
        true,
        true,
        all,
    ))
}

/// Best-of-N on the same samples: each selection rule against N.
fn best_of_n_plot(reward: &Value) -> Option<Value> {
    let curve = reward["best_of_n_curve"].as_array()?;
    let mut by_rule: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in curve {
        let n = entry["n"].as_f64().unwrap_or(0.0);
        for (rule, acc) in entry["accuracy"].as_object().into_iter().flatten() {
            if let Some(v) = acc["value"].as_f64() {
                by_rule
                    .entry(rule.clone())
                    .or_default()
                    .push(pt(n, v, interval(acc), format!("N = {n}")));
            }
        }
    }
    let all = by_rule.into_iter().map(|(rule, pts)| series(&rule, pts)).collect();
    Some(plot(
        "best-of-n",
        "Best-of-N on the same samples: reward models against majority voting",
        "N (samples per problem)",
        "accuracy",
        true,
        true,
        all,
    ))
}

/// Held-out greedy pass@1 over RL iterations, for each learner.
fn rl_curve_plot(learn: &Value) -> Option<Value> {
    let all: Vec<Value> = (learn.as_object()?.iter())
        .filter_map(|(kind, r)| {
            let pts = (r["curve"].as_array()?.iter())
                .filter_map(|p| {
                    let note = format!("{:.2e} FLOPs", p["flops"].as_f64().unwrap_or(0.0));
                    let iv = p["low"].as_f64().zip(p["high"].as_f64());
                    Some(pt(p["iteration"].as_f64()?, p["pass@1"].as_f64()?, iv, note))
                })
                .collect();
            Some(series(kind, pts))
        })
        .collect();
    (!all.is_empty()).then(|| {
        plot(
            "rl-curve",
            "RL: held-out greedy pass@1 over iterations",
            "iteration",
            "greedy pass@1",
            false,
            true,
            all,
        )
    })
}

/// One trace as the page shows it: each step with its exact label, the answer and its verdict.
fn shown_trace(task: Option<&dyn Task>, problem: Option<&Problem>, text: &str) -> Value {
    let trace = Trace::parse(text);
    let labels = task
        .zip(problem)
        .and_then(|(t, p)| t.check_steps(p, &trace.steps).ok())
        .unwrap_or_default();
    let steps: Vec<Value> = (trace.steps.iter().enumerate())
        .map(|(i, s)| json!({"text": s, "label": labels.get(i)}))
        .collect();
    let correct = task
        .zip(problem)
        .zip(trace.answer.as_ref())
        .and_then(|((t, p), a)| t.check_answer(p, a).ok());
    json!({"steps": steps, "answer": trace.answer, "correct": correct})
}

/// The same held-out problems' greedy traces before and after RL.
fn before_after(dir: &Path, task: Option<&dyn Task>, held_out: &str) -> Vec<Value> {
    let (Some(before), Some(after)) = (
        read_json(&dir.join("eval/init.json")).and_then(|v| serde_json::from_value::<EvalReport>(v).ok()),
        read_json(&dir.join("eval/rl.json")).and_then(|v| serde_json::from_value::<EvalReport>(v).ok()),
    ) else {
        return Vec::new();
    };
    let problems: HashMap<String, Problem> =
        ponder_datagen::dataset::read_examples(&dir.join("data").join(format!("{held_out}.jsonl")))
            .map(|ex| ex.into_iter().map(|e| (e.problem.id.clone(), e.problem)).collect())
            .unwrap_or_default();
    let after: HashMap<&str, _> = after.outcomes.iter().map(|o| (o.id.as_str(), o)).collect();
    (before.outcomes.iter())
        .filter(|b| !b.greedy_text.is_empty())
        .filter_map(|b| {
            let a = after.get(b.id.as_str())?;
            let problem = problems.get(&b.id);
            Some(json!({
                "id": b.id,
                "prompt": problem.map(|p| p.prompt.trim_end().to_string()).unwrap_or_default(),
                "before": shown_trace(task, problem, &b.greedy_text),
                "after": shown_trace(task, problem, &a.greedy_text),
                "before_correct": b.greedy_correct,
                "after_correct": a.greedy_correct,
                "before_samples": [b.correct_samples, b.samples],
                "after_samples": [a.correct_samples, a.samples],
            }))
        })
        .take(BEFORE_AFTER_PROBLEMS)
        .collect()
}

/// Everything the page shows for a run directory.
pub fn run(dir: &Path, registry: &Registry) -> anyhow::Result<Value> {
    let config: Option<RunConfig> = Layers::from_file(&dir.join("config.toml"))
        .and_then(|l| l.load(registry))
        .ok();
    let task: Option<Box<dyn Task>> = config.as_ref().and_then(|c| c.task.build(&()).ok());
    let held_out = config
        .as_ref()
        .map(|c| c.pipeline.held_out.clone())
        .unwrap_or_else(|| "test".into());
    let results = read_json(&dir.join("results.json")).unwrap_or(Value::Null);
    let rows = metrics_rows(dir);
    let figures: Vec<Value> = [
        test_time_plot(&results["search"]),
        best_of_n_plot(&results["reward"]),
        rl_curve_plot(&results["learn"]),
        loss_plot(&rows, "init-loss", "Policy initialisation: training loss", &["init"]),
        loss_plot(&rows, "reward-loss", "Reward models: training loss", &["prm", "orm"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    let rl_rows: Vec<&Value> = rows.iter().filter(|r| r["stage"] == "rl").collect();
    let rl_metrics: Vec<Value> = RL_METRICS
        .iter()
        .filter_map(|&(key, title)| {
            let pts: Vec<Value> = (rl_rows.iter())
                .filter_map(|r| Some(pt(r["step"].as_f64()?, r[key].as_f64()?, None, String::new())))
                .collect();
            (!pts.is_empty()).then(|| {
                plot(
                    &format!("rl-{key}"),
                    title,
                    "iteration",
                    key,
                    false,
                    false,
                    vec![series(key, pts)],
                )
            })
        })
        .collect();
    let trees_path = dir.join(search_trees::FILE);
    let trees = if trees_path.exists() {
        serde_json::to_value(search_trees::read(&trees_path)?)?
    } else {
        json!([])
    };
    let title = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(json!({
        "kind": "run",
        "title": title,
        "summary": summary(&results),
        "figures": figures,
        "trees": trees,
        "rl": {"metrics": rl_metrics, "before_after": before_after(dir, task.as_deref(), &held_out)},
    }))
}

/// A few headline figures for the page's top line.
fn summary(results: &Value) -> Value {
    let mut m = Map::new();
    let mut put = |name: &str, v: &Value| {
        if let Some(x) = v.as_f64() {
            m.insert(name.to_string(), json!(x));
        }
    };
    put("greedy pass@1", &results["policy_init"]["pass@1"]);
    put("sampled pass@1", &results["policy_init"]["pass@1_sampled"]);
    put("pass@32", &results["policy_init"]["pass@32"]);
    put("PRM step AUROC", &results["reward"]["prm"]["step_auroc"]);
    put(
        "best searcher at the top budget",
        &results["search"]["best_at_top_budget"]["accuracy"],
    );
    Value::Object(m)
}

/// Everything the page shows for a sweep folder: its table (rows and, over seeds, mean and
/// range) and one plot per figure across the runs.
pub fn sweep(dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join("sweep.json");
    let sweep: Value = read_json(&path).with_context(|| format!("reading {}", path.display()))?;
    let keys: Vec<String> = (sweep["keys"].as_array().into_iter().flatten())
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let rows = sweep["rows"].as_array().cloned().unwrap_or_default();
    // The figures in the order of the sweep's own table (its CSV header), then any others.
    let mut metrics: Vec<String> = std::fs::read_to_string(dir.join("table.csv"))
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|h| h.split(',').map(str::to_string).collect::<Vec<_>>())
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|c| rows.iter().any(|r| r["metrics"].get(c).is_some()))
        .collect();
    for r in &rows {
        for k in r["metrics"].as_object().into_iter().flatten().map(|(k, _)| k) {
            if !metrics.contains(k) {
                metrics.push(k.clone());
            }
        }
    }
    let mut columns: Vec<String> = vec!["run".into()];
    columns.extend(keys.iter().cloned());
    columns.extend(metrics.iter().cloned());
    let cell = |v: &Value| -> Value {
        match (v["value"].as_f64(), v["ci"].as_array()) {
            (Some(x), Some(ci)) if ci.len() == 2 => json!({"v": x, "lo": ci[0], "hi": ci[1]}),
            (Some(x), _) => json!({"v": x}),
            _ => Value::Null,
        }
    };
    let table_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut out = vec![r["run"].clone()];
            out.extend(keys.iter().map(|k| r[k].clone()));
            out.extend(metrics.iter().map(|m| cell(&r["metrics"][m])));
            Value::Array(out)
        })
        .collect();
    let over_seeds: Vec<Value> = (sweep["over_seeds"].as_array().into_iter().flatten())
        .map(|o| {
            let seeds = o["seeds"].clone();
            let mut out = vec![json!(format!("mean (range) over seeds {seeds}"))];
            out.extend(keys.iter().map(|k| o[k].clone()));
            out.extend(metrics.iter().map(|m| {
                let v = &o["metrics"][m];
                match v["mean"].as_f64() {
                    Some(x) => json!({"v": x, "lo": v["min"], "hi": v["max"], "range": true}),
                    None => Value::Null,
                }
            }));
            Value::Array(out)
        })
        .collect();
    let runs: Vec<String> = (rows.iter())
        .map(|r| r["run"].as_str().unwrap_or("?").to_string())
        .collect();
    let plots: Vec<Value> = metrics
        .iter()
        .map(|m| {
            let pts = (rows.iter().enumerate())
                .filter_map(|(i, r)| {
                    let v = &r["metrics"][m];
                    let ci = v["ci"]
                        .as_array()
                        .and_then(|c| Some((c.first()?.as_f64()?, c.get(1)?.as_f64()?)));
                    Some(pt(i as f64, v["value"].as_f64()?, ci, runs[i].clone()))
                })
                .collect();
            let mut p = plot(&format!("sweep-{m}"), m, "run", m, false, false, vec![series(m, pts)]);
            p["categories"] = json!(runs);
            p
        })
        .collect();
    Ok(json!({
        "kind": "sweep",
        "title": sweep["sweep"].as_str().unwrap_or("sweep"),
        "table": {"columns": columns, "rows": table_rows, "over_seeds": over_seeds},
        "figures": plots,
    }))
}
