//! `ponder sweep configs/sweeps/NAME.toml` (and `cargo xtask sweep`): ablation sweeps.
//!
//! A sweep file names a base config, overrides for every run (`[set]`), a grid (`[grid]`: each
//! key a dotted config path with a list of values; runs are the cartesian product), optional
//! hand-written `[[variants]]` (a `label` and overrides each; crossed with the grid), and the
//! figures to collect (`[metrics]`: a label and a JSON pointer into `results.json`, where `*`
//! matches any key). Every run gets one complete TOML (`OUT/NAME/configs/RUN.toml`) and its own
//! run directory, and runs as a `ponder run` process of its own, `parallel` at a time. A
//! table value replaces the whole table at its path (`"search" = [{kind = "beam"}, ...]`).
//!
//! `reuse = ["datagen", "init", "reward"]` runs those stages once (in `OUT/NAME/base`) and gives
//! every run a copy. A variant may not change what they depend on; a grid key may, and then the
//! shared stages run once per value of it (`base_seed-2`, ...) and each run gets its value's
//! copy: `[grid] "run.seed" = [1, 2, 3]` with nine learner variants runs three initialisations,
//! not twenty-seven. A shared reward stage must train every reward model a run needs; a run's
//! own `[reward]` settings that do not change what is trained (a PRM's aggregation) leave the
//! reward stage's measures, made with the base's settings, as they are.
//!
//! A sweep is resumable: run it again and finished stages of every run are skipped. At the end
//! `table.md`, `table.csv` and `sweep.json` hold a row per run, and `plots/` a chart per metric
//! across runs (with confidence intervals where `results.json` has them, as `KEY_ci`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

mod runner;
mod table;

use crate::config::{Layers, STAGES};
use crate::registry::Registry;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepToml {
    sweep: Header,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    grid: toml::Table,
    #[serde(default)]
    variants: Vec<toml::Table>,
    #[serde(default)]
    metrics: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    /// Default: the file's stem.
    name: Option<String>,
    /// The base run config, relative to the sweep file.
    base: String,
    /// Where sweeps go (default `runs/sweeps`).
    out_dir: Option<String>,
    #[serde(default = "one")]
    parallel: usize,
    /// CPU threads per run; 0: the machine's cores shared among the parallel runs.
    #[serde(default)]
    threads: usize,
    #[serde(default)]
    reuse: Vec<String>,
    /// The key on the plots' x axis (default: `variant` when there are variants, else the
    /// first grid key).
    x: Option<String>,
}

/// The grid key whose runs are summarised as a mean and range.
const SEED_KEY: &str = "run.seed";

fn one() -> usize {
    1
}

/// One run of a sweep.
#[derive(Clone, Debug)]
pub struct SweepRun {
    pub name: String,
    /// The swept values (grid keys and `variant`), for the table.
    pub values: Vec<(String, toml::Value)>,
    pub config: toml::Table,
    /// The shared stages' run this run copies them from (`reuse`), by name.
    pub base: Option<String>,
}

/// A parsed sweep file.
#[derive(Debug)]
pub struct Sweep {
    pub name: String,
    pub dir: PathBuf,
    pub parallel: usize,
    pub threads: usize,
    pub reuse: Vec<String>,
    /// The shared stages' runs: one, or one per value of the grid keys they depend on.
    pub bases: Vec<SweepRun>,
    pub runs: Vec<SweepRun>,
    /// The columns the runs differ in.
    pub keys: Vec<String>,
    pub metrics: Vec<(String, String)>,
    pub x: Option<String>,
}

/// Config paths each stage reads (its own and those of the stages before it).
fn stage_inputs(stage: &str) -> Vec<&'static str> {
    let own: &[(&str, &[&str])] = &[
        ("datagen", &["run.seed", "task", "pipeline.data"]),
        ("init", &["policy", "pipeline.init", "pipeline.held_out", "run.device"]),
        // The `[reward]` table is checked by what it trains (a run may use a reward kind the
        // shared stage need not train, such as exact labels or PRIME's).
        ("reward", &["pipeline.reward"]),
        ("search-eval", &["search", "pipeline.search_eval"]),
        ("rl", &["learn", "pipeline.rl"]),
    ];
    let upto = STAGES.iter().position(|s| *s == stage).unwrap_or(0);
    own.iter()
        .filter(|(s, _)| STAGES.iter().position(|x| x == s).is_some_and(|i| i <= upto))
        .flat_map(|(_, keys)| keys.iter().copied())
        .collect()
}

/// The shared stages' run a grid combination uses: `base`, with the values of the keys they
/// depend on (`base_seed-2`).
fn base_name(combo: &[(String, toml::Value)], names: &[String], base_keys: &[&str]) -> String {
    let mut parts = vec!["base".to_string()];
    for ((k, v), column) in combo.iter().zip(names) {
        if base_keys.contains(&k.as_str()) {
            parts.push(format!("{column}-{}", short(v)));
        }
    }
    parts.join("_")
}

fn overlaps(a: &str, b: &str) -> bool {
    let prefix = |x: &str, y: &str| x == y || y.starts_with(&format!("{x}."));
    prefix(a, b) || prefix(b, a)
}

/// Sets `value` at a dotted `path`, replacing whatever was there.
fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> anyhow::Result<()> {
    let mut parts = path.split('.').peekable();
    let mut here = table;
    while let Some(part) = parts.next() {
        if part.is_empty() {
            bail!("`{path}` is not a dotted config path");
        }
        if parts.peek().is_none() {
            here.insert(part.to_string(), value);
            return Ok(());
        }
        let next = here
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match next {
            toml::Value::Table(t) => t,
            _ => bail!("`{path}`: `{part}` is not a table in the base config"),
        };
    }
    Ok(())
}

/// A value as a short name part.
fn short(value: &toml::Value) -> String {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => t
            .get("label")
            .or_else(|| t.get("kind"))
            .map(short)
            .unwrap_or_else(|| "table".into()),
        toml::Value::Array(items) => items.iter().map(short).collect::<Vec<_>>().join("."),
        other => other.to_string(),
    };
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The last part of a dotted path, unless two keys share it.
fn column_names(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            let last = k.rsplit('.').next().unwrap_or(k);
            let shared = keys.iter().filter(|o| o.rsplit('.').next() == Some(last)).count() > 1;
            if shared {
                k.trim_start_matches("pipeline.").to_string()
            } else {
                last.to_string()
            }
        })
        .collect()
}

impl Sweep {
    /// Reads and checks a sweep file; every run's config is validated before anything runs.
    pub fn load(path: &Path, registry: &Registry) -> anyhow::Result<Sweep> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: SweepToml = {
            let table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            serde_path_to_error::deserialize(toml::Value::Table(table))
                .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))?
        };
        let here = path.parent().unwrap_or(Path::new("."));
        let base_path = here.join(&file.sweep.base);
        let base_text = std::fs::read_to_string(&base_path)
            .with_context(|| format!("{}: sweep.base: reading {}", path.display(), base_path.display()))?;
        let base: toml::Table = base_text
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", base_path.display()))?;
        let name = file
            .sweep
            .name
            .clone()
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "sweep".into());
        let dir = PathBuf::from(file.sweep.out_dir.as_deref().unwrap_or("runs/sweeps")).join(&name);
        let err = |what: String| anyhow::anyhow!("{}: {what}", path.display());
        if file.sweep.parallel == 0 {
            return Err(err("sweep.parallel: must be at least 1".into()));
        }
        for s in &file.sweep.reuse {
            if !STAGES[..STAGES.len() - 1].contains(&s.as_str()) {
                return Err(err(format!("sweep.reuse: unknown stage `{s}`")));
            }
        }
        // Shared stages must be the first stages of the pipeline, in order: a later stage
        // needs what the earlier ones wrote.
        if !file.sweep.reuse.iter().zip(STAGES).all(|(r, s)| r == s) {
            return Err(err(format!(
                "sweep.reuse: give the first stages in order ({}), not {:?}",
                STAGES[..STAGES.len() - 1].join(", "),
                file.sweep.reuse
            )));
        }
        // The grid, as (key, values).
        let mut grid: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (key, values) in &file.grid {
            match values {
                toml::Value::Array(v) if !v.is_empty() => grid.push((key.clone(), v.clone())),
                _ => return Err(err(format!("grid.\"{key}\": give a non-empty list of values"))),
            }
        }
        let mut variants: Vec<(String, Vec<(String, toml::Value)>)> = Vec::new();
        for (i, v) in file.variants.iter().enumerate() {
            let label = v
                .get("label")
                .and_then(|l| l.as_str())
                .ok_or_else(|| err(format!("variants.{i}: give each variant a `label`")))?;
            let sets = v
                .iter()
                .filter(|(k, _)| *k != "label")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            variants.push((label.to_string(), sets));
        }
        // Reused stages must not depend on what a variant changes; a grid key they depend on
        // splits them into one shared run per value.
        for stage in &file.sweep.reuse {
            for input in stage_inputs(stage) {
                if let Some(k) = variants
                    .iter()
                    .flat_map(|(_, s)| s.iter().map(|(k, _)| k))
                    .find(|k| overlaps(k, input))
                {
                    return Err(err(format!(
                        "sweep.reuse: stage {stage} is shared, but a variant sets `{k}` and {stage} depends on `{input}`"
                    )));
                }
            }
        }
        let base_keys: Vec<&str> = grid
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| {
                file.sweep
                    .reuse
                    .iter()
                    .any(|stage| stage_inputs(stage).iter().any(|input| overlaps(k, input)))
            })
            .collect();
        let mut common = base.clone();
        for (k, v) in &file.set {
            set_path(&mut common, k, v.clone()).map_err(|e| err(format!("set: {e}")))?;
        }
        let sweep_dir = dir.to_string_lossy().into_owned();
        let finish = |mut config: toml::Table, run_name: &str| -> anyhow::Result<toml::Table> {
            set_path(&mut config, "run.name", toml::Value::String(run_name.into()))?;
            set_path(&mut config, "run.out_dir", toml::Value::String(sweep_dir.clone()))?;
            Ok(config)
        };
        // Every combination.
        let mut combos: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
        for (key, values) in &grid {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((key.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let variant_list: Vec<Option<&(String, Vec<(String, toml::Value)>)>> = if variants.is_empty() {
            vec![None]
        } else {
            variants.iter().map(Some).collect()
        };
        let mut runs = Vec::new();
        let grid_keys: Vec<String> = grid.iter().map(|(k, _)| k.clone()).collect();
        let names = column_names(&grid_keys);
        for variant in &variant_list {
            for combo in &combos {
                let mut config = common.clone();
                let mut values = Vec::new();
                let mut parts = Vec::new();
                if let Some((label, sets)) = variant {
                    for (k, v) in sets {
                        set_path(&mut config, k, v.clone()).map_err(|e| err(format!("variant {label}: {e}")))?;
                    }
                    values.push(("variant".to_string(), toml::Value::String(label.clone())));
                    parts.push(short(&toml::Value::String(label.clone())));
                }
                for ((k, v), column) in combo.iter().zip(&names) {
                    set_path(&mut config, k, v.clone()).map_err(|e| err(format!("grid: {e}")))?;
                    values.push((k.clone(), v.clone()));
                    parts.push(format!("{column}-{}", short(v)));
                }
                let run_name = if parts.is_empty() {
                    "run".to_string()
                } else {
                    parts.join("_")
                };
                let config = finish(config, &run_name).map_err(|e| err(e.to_string()))?;
                let base = (!file.sweep.reuse.is_empty()).then(|| base_name(combo, &names, &base_keys));
                runs.push(SweepRun {
                    name: run_name,
                    base,
                    values,
                    config,
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in &runs {
            let shared = !file.sweep.reuse.is_empty() && (r.name == "base" || r.name.starts_with("base_"));
            if ["configs", "logs", "plots"].contains(&r.name.as_str()) || shared {
                return Err(err(format!(
                    "a run may not be named `{}`: the sweep uses that directory",
                    r.name
                )));
            }
            if !seen.insert(r.name.clone()) {
                return Err(err(format!(
                    "two runs would both be named `{}`: make the values or labels distinct",
                    r.name
                )));
            }
        }
        // The shared stages' runs: one per distinct value of the grid keys they depend on.
        let mut bases: Vec<SweepRun> = Vec::new();
        if !file.sweep.reuse.is_empty() {
            let stages: Vec<toml::Value> = STAGES
                .iter()
                .filter(|s| file.sweep.reuse.iter().any(|r| r == *s))
                .map(|s| toml::Value::String(s.to_string()))
                .collect();
            for combo in &combos {
                let name = base_name(combo, &names, &base_keys);
                if bases.iter().any(|b| b.name == name) {
                    continue;
                }
                let mut config = common.clone();
                let mut values = Vec::new();
                for (k, v) in combo.iter().filter(|(k, _)| base_keys.contains(&k.as_str())) {
                    set_path(&mut config, k, v.clone()).map_err(|e| err(format!("grid: {e}")))?;
                    values.push((k.clone(), v.clone()));
                }
                set_path(&mut config, "pipeline.stages", toml::Value::Array(stages.clone()))
                    .map_err(|e| err(e.to_string()))?;
                bases.push(SweepRun {
                    config: finish(config, &name).map_err(|e| err(e.to_string()))?,
                    name,
                    values,
                    base: None,
                });
            }
        }
        // Validate every config now, so that a typo fails before hours of compute.
        let mut problems = Vec::new();
        let mut loaded = Vec::new();
        for r in bases.iter().chain(&runs) {
            let text = toml::to_string_pretty(&r.config).map_err(|e| err(e.to_string()))?;
            let layers = Layers {
                text,
                ..Layers::default()
            };
            match layers.load(registry) {
                Ok(config) => loaded.push((r.name.clone(), config)),
                Err(e) => problems.push(format!("run {}:\n{}", r.name, e.to_string().trim_end())),
            }
        }
        // A shared reward stage must have trained every reward model a run uses, with the run's
        // settings (the searchers' own reward tables name them too, so a swept searcher list
        // is fine as long as the base run trains what each run needs).
        if problems.is_empty() && file.sweep.reuse.iter().any(|s| s == "reward") {
            let (shared, own) = loaded.split_at(bases.len());
            for ((name, config), run) in own.iter().zip(&runs) {
                let Some((_, base)) = shared.iter().find(|(b, _)| Some(b) == run.base.as_ref()) else {
                    continue;
                };
                let trained = base.rewards_to_train()?;
                for needed in config.rewards_to_train()? {
                    if !trained.iter().any(|t| t.same_model(&needed)) {
                        return Err(err(format!(
                            "sweep.reuse: stage reward is shared, but run {name} needs reward/{}, which the base run does not train with the settings this run gives it",
                            needed.name()
                        )));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(err(format!("some runs' configs are invalid:\n{}", problems.join("\n"))));
        }
        let mut keys: Vec<String> = Vec::new();
        if !variants.is_empty() {
            keys.push("variant".into());
        }
        keys.extend(grid_keys.iter().cloned());
        let mut metrics = Vec::new();
        for (label, pointer) in &file.metrics {
            match pointer.as_str() {
                Some(p) if p.starts_with('/') => metrics.push((label.clone(), p.to_string())),
                _ => {
                    return Err(err(format!(
                        "metrics.\"{label}\": give a JSON pointer such as \"/search/greedy_pass@1\""
                    )));
                }
            }
        }
        if let Some(x) = &file.sweep.x
            && !keys.contains(x)
        {
            return Err(err(format!("sweep.x: `{x}` is not a grid key")));
        }
        Ok(Sweep {
            name,
            dir,
            parallel: file.sweep.parallel,
            threads: file.sweep.threads,
            reuse: file.sweep.reuse,
            bases,
            runs,
            x: file.sweep.x.or_else(|| keys.first().cloned()),
            keys,
            metrics,
        })
    }

    fn config_path(&self, run: &SweepRun) -> PathBuf {
        self.dir.join("configs").join(format!("{}.toml", run.name))
    }

    /// Writes every run's complete TOML.
    pub fn write_configs(&self) -> anyhow::Result<()> {
        for r in self.bases.iter().chain(&self.runs) {
            let text = format!(
                "# Run {} of sweep {}: a complete config, written by `ponder sweep`.\n{}",
                r.name,
                self.name,
                toml::to_string_pretty(&r.config)?
            );
            ponder_datagen::io::write_atomic(self.config_path(r), text.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
