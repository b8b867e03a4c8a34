//! `results.json`: the headline figures of a run, machine readable (see `docs/results.md`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::RunConfig;
use crate::run_dir::StageRecord;

fn stage<'a>(records: &'a BTreeMap<String, StageRecord>, name: &str) -> Option<&'a Value> {
    records.get(name).map(|r| &r.results)
}

/// Whether a key holds a timing (wall seconds, throughput): these vary from run to run and
/// machine to machine; everything else in `results.json` is a function of config and seed.
fn is_timing(key: &str) -> bool {
    key.ends_with("seconds") || key.ends_with("_per_s") || key.ends_with("per_second")
}

/// Moves every timing out of `value` into `out` (keyed by its JSON path).
fn split_timings(value: &mut Value, path: &str, out: &mut serde_json::Map<String, Value>) {
    match value {
        Value::Object(map) => {
            let timed: Vec<String> = map.keys().filter(|k| is_timing(k)).cloned().collect();
            for k in timed {
                if let Some(v) = map.remove(&k) {
                    out.insert(format!("{path}/{k}"), v);
                }
            }
            for (k, v) in map.iter_mut() {
                split_timings(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                split_timings(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The timings of the finished stages (for `manifest.json`), by stage and JSON path.
pub fn timings(records: &BTreeMap<String, StageRecord>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, r) in records {
        let mut results = r.results.clone();
        let mut found = serde_json::Map::new();
        split_timings(&mut results, "", &mut found);
        found.insert("/seconds".into(), json!(r.seconds));
        out.insert(name.clone(), Value::Object(found));
    }
    Value::Object(out)
}

/// `results.json` without its timings: what the config and seed determine. Two runs of one
/// config and seed on one machine give equal values (`docs/results.md`).
pub fn without_timings(results: &Value) -> Value {
    let mut out = results.clone();
    split_timings(&mut out, "", &mut serde_json::Map::new());
    out
}

/// Builds `results.json` from the finished stages' records.
pub fn assemble(config: &RunConfig, records: &BTreeMap<String, StageRecord>) -> Value {
    let mut out = json!({
        "task": config.task.kind(),
        "seed": config.run.seed,
        "held_out": config.pipeline.held_out,
        "wall_seconds": records.values().map(|r| r.seconds).sum::<f64>(),
    });
    if let Some(d) = stage(records, "datagen") {
        out["data"] = d.clone();
    }
    if let Some(init) = stage(records, "init") {
        out["policy_init"] = init.clone();
    }
    if let Some(reward) = stage(records, "reward") {
        out["reward"] = reward.clone();
    }
    if let Some(search) = stage(records, "search-eval") {
        out["search"] = search.clone();
    }
    if let Some(rl) = stage(records, "rl") {
        let kind = rl["kind"].as_str().unwrap_or("rl").to_string();
        out["learn"] = serde_json::json!({ kind: rl.clone() });
    }
    out
}
