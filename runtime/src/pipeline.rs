//! Runs a config's pipeline in its run directory: each stage once (a finished stage is skipped
//! on a re-run), an interrupted stage started over or, with `--resume`, continued from its last
//! checkpoint; `manifest.json` and `results.json` rewritten after every stage.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context as _;
use ponder_datagen::io::write_atomic;
use ponder_datagen::trace::stable_hash;
use serde_json::json;

use crate::config::{RunConfig, STAGES};
use crate::progress::Display;
use crate::registry::Registry;
use crate::run_dir::{RunDir, StageRecord};
use crate::stages::{self, Context};

/// Facts about the machine, for the manifest.
pub fn machine() -> serde_json::Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / (1024.0 * 1024.0));
    json!({
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "threads": rayon::current_num_threads(),
        "memory_gib": memory_gib,
    })
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Makes rayon (and so burn's flex backend and the CPU engine) use `threads` threads, once per
/// process; 0 keeps rayon's default (every core).
pub fn configure_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
}

/// Runs the pipeline.
pub fn run(config: &RunConfig, registry: &Registry, resume: bool) -> anyhow::Result<BTreeMap<String, StageRecord>> {
    configure_threads(config.run.threads);
    let dir = RunDir::new(config.run_dir());
    fs::create_dir_all(&dir.root).with_context(|| format!("creating {}", dir.root.display()))?;
    let _lock = dir.lock()?;
    let resolved = config.resolved_toml();
    let config_path = dir.path("config.toml");
    let mut added = Vec::new();
    if let Ok(existing) = fs::read_to_string(&config_path)
        && existing != resolved
    {
        // The directory's config as this ponder reads it: settings added since at their
        // defaults. Anything else that differs is another config.
        let upgraded = crate::config::Layers::from_file(&config_path)
            .and_then(|l| l.load(registry))
            .map(|c| c.resolved_toml());
        let differs = match &upgraded {
            Ok(upgraded) if *upgraded == resolved => {
                config_difference(&existing, upgraded, &mut added);
                None
            }
            Ok(upgraded) => {
                let mut set = Vec::new();
                let changed = config_difference(upgraded, &resolved, &mut set);
                Some(changed.unwrap_or_else(|| match set.as_slice() {
                    [] => "its config.toml differs in how a value is written".to_string(),
                    set => format!("{} set, which it left unset", set.join(", ")),
                }))
            }
            Err(e) => Some(format!("its config.toml no longer loads: {}", e.to_string().trim())),
        };
        if let Some(key) = differs {
            anyhow::bail!(
                "{} was made with a different config ({key}); give this run another run.name, or delete that directory",
                dir.root.display()
            );
        }
    }
    write_atomic(&config_path, resolved.as_bytes())?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.path("log.txt"))
        .with_context(|| format!("opening {}", dir.path("log.txt").display()))?;
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Mutex::new(log))
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _log_guard = tracing::subscriber::set_default(subscriber);
    tracing::info!(run = %config.run.name, resume, "pipeline starts");
    if !added.is_empty() {
        tracing::info!(keys = %added.join(", "), "settings new since this run began, at their defaults");
    }

    let backend = ponder_policy_init::backend::Backend::from_names(&config.run.backend, &config.run.device)?;
    backend.seed(config.run.seed);
    let task = config.task.build(&())?;
    let stages: Vec<String> = STAGES
        .iter()
        .filter(|s| config.pipeline.stages.iter().any(|x| x == *s))
        .map(|s| s.to_string())
        .collect();
    let started = Instant::now();
    let display = Display::new(stages.len());
    let mut records = dir.records(&stages)?;
    // The commit checked out when the run started (a later invocation, at another commit, must
    // not relabel it), and the one each stage ran at.
    let commit = git_commit();
    let started_at = fs::read_to_string(dir.path("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|m| m["git_commit"].as_str().map(str::to_string))
        .or_else(|| commit.clone());
    let manifest = |records: &BTreeMap<String, StageRecord>| {
        json!({
            "ponder_version": env!("CARGO_PKG_VERSION"),
            "git_commit": started_at,
            "stage_commits": records.iter().filter_map(|(k, r)| Some((k.clone(), json!(r.commit.as_ref()?)))).collect::<serde_json::Map<_, _>>(),
            "config_hash": format!("{:016x}", stable_hash(resolved.as_bytes())),
            "seed": config.run.seed,
            "device": config.run.device,
            "backend": config.run.backend,
            "machine": machine(),
            "stages": records.iter().map(|(k, r)| (k.clone(), json!({"seconds": r.seconds}))).collect::<serde_json::Map<_, _>>(),
            "wall_seconds": records.values().map(|r| r.seconds).sum::<f64>(),
            "timings": crate::results::timings(records),
        })
    };
    for name in &stages {
        if records.contains_key(name) {
            tracing::info!(stage = %name, "finished earlier; skipped");
            display.stage_done();
            continue;
        }
        let bar = display.stage(name);
        let stage_started = Instant::now();
        tracing::info!(stage = %name, "stage starts");
        let ctx = Context {
            stage: name,
            config,
            registry,
            dir: &dir,
            task: task.as_ref(),
            backend: backend.clone(),
            resume,
            progress: &bar,
            earlier: &records,
        };
        let results = stages::run(name, &ctx).with_context(|| format!("stage {name}"))?;
        let record = StageRecord {
            stage: name.clone(),
            results,
            seconds: stage_started.elapsed().as_secs_f64(),
            commit: commit.clone(),
        };
        dir.record(&record)?;
        eprintln!("ponder: stage {name} done in {:.1}s", record.seconds);
        tracing::info!(stage = %name, seconds = record.seconds, "stage done");
        records.insert(name.clone(), record);
        drop(bar);
        display.stage_done();
        dir.write_json("manifest.json", &manifest(&records))?;
        dir.write_json("results.json", &crate::results::assemble(config, &records))?;
    }
    display.finish();
    dir.write_json("manifest.json", &manifest(&records))?;
    dir.write_json("results.json", &crate::results::assemble(config, &records))?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "pipeline done");
    Ok(records)
}

/// Where two resolved configs differ: the first key of `existing` whose value changed or that
/// is gone from `resolved`, or `None` when `resolved` only adds keys, which are pushed to
/// `added`.
fn config_difference(existing: &str, resolved: &str, added: &mut Vec<String>) -> Option<String> {
    fn walk(old: &toml::Value, new: &toml::Value, path: &str, added: &mut Vec<String>) -> Option<String> {
        let name = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match (old, new) {
            (toml::Value::Table(old), toml::Value::Table(new)) => {
                for (key, value) in old {
                    let difference = match new.get(key) {
                        Some(now) => walk(value, now, &name(key), added),
                        None => Some(format!("{} is gone", name(key))),
                    };
                    if difference.is_some() {
                        return difference;
                    }
                }
                added.extend(new.keys().filter(|k| !old.contains_key(*k)).map(|k| name(k)));
                None
            }
            _ if old == new => None,
            _ => Some(format!("{path} was {old}, is {new}")),
        }
    }
    match (
        toml::from_str::<toml::Value>(existing),
        toml::from_str::<toml::Value>(resolved),
    ) {
        (Ok(old), Ok(new)) => walk(&old, &new, "", added),
        _ => Some("its config.toml does not parse".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::config_difference;

    #[test]
    fn a_config_may_gain_keys_but_not_change_or_lose_them() {
        let old = "[run]\nseed = 1\n\n[pipeline.rl]\niterations = 60\n";
        let mut added = Vec::new();
        let grown = "[run]\nseed = 1\n\n[pipeline.rl]\niterations = 60\ntis_cap = 2.0\n\n[serve]\nport = 1\n";
        assert_eq!(config_difference(old, grown, &mut added), None);
        assert_eq!(added, ["pipeline.rl.tis_cap", "serve"]);
        let changed = "[run]\nseed = 1\n\n[pipeline.rl]\niterations = 100\n";
        assert_eq!(
            config_difference(old, changed, &mut Vec::new()).as_deref(),
            Some("pipeline.rl.iterations was 60, is 100")
        );
        let lost = "[run]\nseed = 1\n";
        assert_eq!(
            config_difference(old, lost, &mut Vec::new()).as_deref(),
            Some("pipeline is gone")
        );
    }
}
