//! `results.json`: the headline figures of a run, machine readable (see `docs/results.md`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::RunConfig;
use crate::run_dir::StageRecord;

fn stage<'a>(records: &'a BTreeMap<String, StageRecord>, name: &str) -> Option<&'a Value> {
    records.get(name).map(|r| &r.results)
}

/// Builds `results.json` from the finished stages' records.
pub fn assemble(config: &RunConfig, records: &BTreeMap<String, StageRecord>) -> Value {
    let mut out = json!({
        "task": config.task.kind(),
        "seed": config.run.seed,
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
