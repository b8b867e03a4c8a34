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
//! every run a copy, which is only allowed when no swept key changes what they depend on.
//!
//! A sweep is resumable: run it again and finished stages of every run are skipped. At the end
//! `table.md`, `table.csv` and `sweep.json` hold a row per run, and `plots/` a chart per metric
//! across runs (with confidence intervals where `results.json` has them, as `KEY_ci`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Layers, STAGES};
use crate::plots::{Chart, Series};
use crate::registry::Registry;
use crate::run_dir::RunDir;

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
}

/// A parsed sweep file.
#[derive(Debug)]
pub struct Sweep {
    pub name: String,
    pub dir: PathBuf,
    pub parallel: usize,
    pub threads: usize,
    pub reuse: Vec<String>,
    pub base: Option<SweepRun>,
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
        ("reward", &["reward", "pipeline.reward"]),
        ("search-eval", &["search", "pipeline.search_eval"]),
        ("rl", &["learn", "pipeline.rl"]),
    ];
    let upto = STAGES.iter().position(|s| *s == stage).unwrap_or(0);
    own.iter()
        .filter(|(s, _)| STAGES.iter().position(|x| x == s).is_some_and(|i| i <= upto))
        .flat_map(|(_, keys)| keys.iter().copied())
        .collect()
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
        // Reused stages must not depend on anything that varies.
        let varied: Vec<&str> = grid
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(variants.iter().flat_map(|(_, s)| s.iter().map(|(k, _)| k.as_str())))
            .collect();
        for stage in &file.sweep.reuse {
            for input in stage_inputs(stage) {
                if let Some(k) = varied.iter().find(|k| overlaps(k, input)) {
                    return Err(err(format!(
                        "sweep.reuse: stage {stage} is shared, but `{k}` varies and {stage} depends on `{input}`"
                    )));
                }
            }
        }
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
                runs.push(SweepRun {
                    name: run_name,
                    values,
                    config,
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in &runs {
            if ["base", "configs", "logs", "plots"].contains(&r.name.as_str()) {
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
        let base_run = if file.sweep.reuse.is_empty() {
            None
        } else {
            let mut config = common.clone();
            let stages: Vec<toml::Value> = STAGES
                .iter()
                .filter(|s| file.sweep.reuse.iter().any(|r| r == *s))
                .map(|s| toml::Value::String(s.to_string()))
                .collect();
            set_path(&mut config, "pipeline.stages", toml::Value::Array(stages)).map_err(|e| err(e.to_string()))?;
            Some(SweepRun {
                name: "base".into(),
                values: Vec::new(),
                config: finish(config, "base").map_err(|e| err(e.to_string()))?,
            })
        };
        // Validate every config now, so that a typo fails before hours of compute.
        let mut problems = Vec::new();
        for r in base_run.iter().chain(&runs) {
            let text = toml::to_string_pretty(&r.config).map_err(|e| err(e.to_string()))?;
            let layers = Layers {
                text,
                ..Layers::default()
            };
            if let Err(e) = layers.load(registry) {
                problems.push(format!("run {}:\n{}", r.name, e.to_string().trim_end()));
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
            base: base_run,
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
        for r in self.base.iter().chain(&self.runs) {
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

    /// Runs everything (resuming what is done), then writes the table and plots.
    pub fn run(&self, exe: &Path) -> anyhow::Result<()> {
        self.write_configs()?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = if self.threads > 0 {
            self.threads
        } else {
            (cores / self.parallel).max(1)
        };
        if let Some(base) = &self.base {
            eprintln!(
                "ponder sweep {}: shared stages ({}) in {}",
                self.name,
                self.reuse.join(", "),
                self.dir.join("base").display()
            );
            self.run_one(exe, base, threads)?;
        }
        let queue = Mutex::new(self.runs.iter().collect::<Vec<_>>().into_iter());
        let failures = Mutex::new(Vec::new());
        let done = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..self.parallel.min(self.runs.len()).max(1) {
                scope.spawn(|| {
                    loop {
                        let next = queue.lock().ok().and_then(|mut q| q.next());
                        let Some(run) = next else { break };
                        let outcome = self.prepare(run).and_then(|()| self.run_one(exe, run, threads));
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        match outcome {
                            Ok(()) => eprintln!(
                                "ponder sweep {}: [{n}/{}] {} done",
                                self.name,
                                self.runs.len(),
                                run.name
                            ),
                            Err(e) => {
                                eprintln!(
                                    "ponder sweep {}: [{n}/{}] {} FAILED: {e:#}",
                                    self.name,
                                    self.runs.len(),
                                    run.name
                                );
                                if let Ok(mut f) = failures.lock() {
                                    f.push(format!("{}: {e:#}", run.name));
                                }
                            }
                        }
                    }
                });
            }
        });
        let table = self.collect()?;
        eprintln!(
            "ponder sweep {}: table in {}",
            self.name,
            self.dir.join("table.md").display()
        );
        eprint!("{table}");
        let failures = failures.into_inner().unwrap_or_default();
        if !failures.is_empty() {
            bail!(
                "{} of {} runs failed (logs in {}):\n{}",
                failures.len(),
                self.runs.len(),
                self.dir.join("logs").display(),
                failures.join("\n")
            );
        }
        Ok(())
    }

    /// Gives a run the shared stages' files, unless it has them.
    fn prepare(&self, run: &SweepRun) -> anyhow::Result<()> {
        if self.base.is_none() {
            return Ok(());
        }
        let from = self.dir.join("base");
        let to = self.dir.join(&run.name);
        let to_run = RunDir::new(&to);
        if self.reuse.iter().all(|s| to_run.has_record(s)) {
            return Ok(());
        }
        copy_tree(&from, &to, &from)
    }

    fn run_one(&self, exe: &Path, run: &SweepRun, threads: usize) -> anyhow::Result<()> {
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{}.log", run.name));
        let log = std::fs::File::options().create(true).append(true).open(&log_path)?;
        let status = Command::new(exe)
            .arg("run")
            .arg(self.config_path(run))
            .arg("--resume")
            .arg("--set")
            .arg(format!("run.threads={threads}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            bail!(
                "exit {status}; log {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Reads every finished run's `results.json` and writes `table.md`, `table.csv`,
    /// `sweep.json` and `plots/`. Returns the markdown table.
    pub fn collect(&self) -> anyhow::Result<String> {
        let mut rows = Vec::new();
        for r in &self.runs {
            let dir = self.dir.join(&r.name);
            // Finished: every configured stage has its record (results.json is rewritten
            // after each stage, so a run that failed part-way has one too).
            let stages: Vec<String> = r
                .config
                .get("pipeline")
                .and_then(|p| p.get("stages"))
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_else(|| STAGES.iter().map(|s| s.to_string()).collect());
            let run_dir = RunDir::new(&dir);
            let finished = stages.iter().all(|s| run_dir.has_record(s));
            let results: Option<Value> = std::fs::read_to_string(dir.join("results.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let mut row = json!({"run": r.name, "finished": finished});
            for (k, v) in &r.values {
                row[k] = serde_json::to_value(v).unwrap_or(Value::Null);
            }
            let mut figures = serde_json::Map::new();
            for (label, pointer) in &self.metrics {
                let found = results.as_ref().and_then(|res| lookup(res, pointer));
                let interval = results.as_ref().and_then(|res| lookup(res, &format!("{pointer}_ci")));
                figures.insert(label.clone(), json!({"value": found, "ci": interval}));
            }
            row["metrics"] = Value::Object(figures);
            rows.push(row);
        }
        let columns = column_names(&self.keys);
        let mut md = String::new();
        let header: Vec<String> = ["run".to_string()]
            .into_iter()
            .chain(columns.iter().cloned())
            .chain(self.metrics.iter().map(|(l, _)| l.clone()))
            .collect();
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|{}|", vec!["---"; header.len()].join("|"));
        let mut csv = String::new();
        let mut csv_header: Vec<String> = header.clone();
        for (l, _) in &self.metrics {
            csv_header.push(format!("{l} ci low"));
            csv_header.push(format!("{l} ci high"));
        }
        let _ = writeln!(
            csv,
            "{}",
            csv_header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",")
        );
        for row in &rows {
            let mut cells = vec![row["run"].as_str().unwrap_or("").to_string()];
            for k in &self.keys {
                cells.push(display_value(&row[k]));
            }
            let mut csv_cells = cells.clone();
            let mut intervals = Vec::new();
            for (label, _) in &self.metrics {
                let m = &row["metrics"][label];
                let value = m["value"].as_f64();
                let ci = m["ci"]
                    .as_array()
                    .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
                cells.push(match (value, ci) {
                    (Some(v), Some((lo, hi))) => format!("{} [{}, {}]", figure(v), figure(lo), figure(hi)),
                    (Some(v), None) => figure(v),
                    _ if !row["finished"].as_bool().unwrap_or(false) => "not run".into(),
                    _ => display_value(&m["value"]),
                });
                csv_cells.push(
                    value
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| display_value(&m["value"])),
                );
                intervals.push(ci.map(|c| c.0.to_string()).unwrap_or_default());
                intervals.push(ci.map(|c| c.1.to_string()).unwrap_or_default());
            }
            csv_cells.extend(intervals);
            let _ = writeln!(md, "| {} |", cells.join(" | "));
            let _ = writeln!(
                csv,
                "{}",
                csv_cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",")
            );
        }
        let over_seeds = self.over_seeds(&rows);
        for group in &over_seeds {
            let mut cells = vec![format!(
                "mean (range) over seeds {}",
                group["seeds"]
                    .as_array()
                    .map(|a| a.iter().map(display_value).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            )];
            for k in &self.keys {
                cells.push(if k == SEED_KEY {
                    String::new()
                } else {
                    display_value(&group[k])
                });
            }
            for (label, _) in &self.metrics {
                let m = &group["metrics"][label];
                cells.push(match (m["mean"].as_f64(), m["min"].as_f64(), m["max"].as_f64()) {
                    (Some(mean), Some(lo), Some(hi)) => format!("{} ({}–{})", figure(mean), figure(lo), figure(hi)),
                    _ => String::new(),
                });
            }
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
        ponder_datagen::io::write_atomic(self.dir.join("table.md"), md.as_bytes())?;
        ponder_datagen::io::write_atomic(self.dir.join("table.csv"), csv.as_bytes())?;
        let summary = json!({"sweep": self.name, "keys": self.keys, "rows": rows, "over_seeds": over_seeds});
        ponder_datagen::io::write_atomic(
            self.dir.join("sweep.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        self.plot(&rows)?;
        Ok(md)
    }

    /// Where `run.seed` is swept: for every combination of the other keys with at least two
    /// finished seeds, each metric's mean, smallest and largest value over those seeds.
    fn over_seeds(&self, rows: &[Value]) -> Vec<Value> {
        if !self.keys.iter().any(|k| k == SEED_KEY) {
            return Vec::new();
        }
        let others: Vec<&String> = self.keys.iter().filter(|k| *k != SEED_KEY).collect();
        let mut groups: Vec<(Value, Vec<&Value>)> = Vec::new();
        for row in rows.iter().filter(|r| r["finished"].as_bool() == Some(true)) {
            let key = Value::Array(others.iter().map(|k| row[k.as_str()].clone()).collect());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(row),
                None => groups.push((key, vec![row])),
            }
        }
        groups
            .into_iter()
            .filter(|(_, members)| members.len() >= 2)
            .map(|(_, members)| {
                let mut group = json!({
                    "seeds": members.iter().map(|r| r[SEED_KEY].clone()).collect::<Vec<_>>(),
                });
                for k in &others {
                    group[k.as_str()] = members[0][k.as_str()].clone();
                }
                let mut figures = serde_json::Map::new();
                for (label, _) in &self.metrics {
                    let values: Vec<f64> = members
                        .iter()
                        .filter_map(|r| r["metrics"][label]["value"].as_f64())
                        .collect();
                    figures.insert(
                        label.clone(),
                        if values.len() == members.len() {
                            json!({
                                "mean": values.iter().sum::<f64>() / values.len() as f64,
                                "min": values.iter().cloned().fold(f64::INFINITY, f64::min),
                                "max": values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                                "values": values,
                            })
                        } else {
                            Value::Null
                        },
                    );
                }
                group["metrics"] = Value::Object(figures);
                group
            })
            .collect()
    }

    /// One chart per metric: the metric against the x key, a line per combination of the
    /// other keys.
    fn plot(&self, rows: &[Value]) -> anyhow::Result<()> {
        let Some(x) = &self.x else { return Ok(()) };
        let x_of = |row: &Value| scalar(&row[x]);
        let x_values: Vec<Value> = {
            let mut v: Vec<Value> = Vec::new();
            for row in rows {
                if !v.contains(&x_of(row)) {
                    v.push(x_of(row));
                }
            }
            v
        };
        let numeric = x_values.iter().all(|v| v.as_f64().is_some());
        let log_x = numeric && {
            let xs: Vec<f64> = x_values.iter().filter_map(Value::as_f64).collect();
            let (lo, hi) = xs
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
            lo > 0.0 && hi / lo >= 8.0
        };
        let others: Vec<&String> = self.keys.iter().filter(|k| *k != x).collect();
        let x_name = column_names(&self.keys)
            .get(self.keys.iter().position(|k| k == x).unwrap_or(0))
            .cloned()
            .unwrap_or_else(|| x.clone());
        for (label, _) in &self.metrics {
            let mut series: BTreeMap<String, (Vec<(f64, f64)>, Vec<(f64, f64)>)> = BTreeMap::new();
            for row in rows {
                let Some(y) = row["metrics"][label]["value"].as_f64() else {
                    continue;
                };
                let position = x_values.iter().position(|v| *v == x_of(row)).unwrap_or(0);
                let xv = if numeric {
                    x_of(row).as_f64().unwrap_or(0.0)
                } else {
                    position as f64
                };
                let line: Vec<String> = others.iter().map(|k| display_value(&row[*k])).collect();
                let entry = series
                    .entry(if line.is_empty() {
                        label.clone()
                    } else {
                        line.join(", ")
                    })
                    .or_default();
                entry.0.push((xv, y));
                let ci = row["metrics"][label]["ci"]
                    .as_array()
                    .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
                entry.1.push(ci.unwrap_or((f64::NAN, f64::NAN)));
            }
            if series.is_empty() {
                continue;
            }
            let chart = Chart {
                title: format!("{}: {label}", self.name),
                x_label: x_name.clone(),
                y_label: label.clone(),
                log_x,
                series: series
                    .into_iter()
                    .map(|(name, (mut points, intervals))| {
                        let mut both: Vec<((f64, f64), (f64, f64))> = points.drain(..).zip(intervals).collect();
                        both.sort_by(|a, b| a.0.0.total_cmp(&b.0.0));
                        let (points, intervals): (Vec<_>, Vec<_>) = both.into_iter().unzip();
                        Series::new(name, points).with_intervals(intervals)
                    })
                    .collect(),
                y_range: None,
                x_categories: if numeric {
                    Vec::new()
                } else {
                    x_values.iter().map(display_value).collect()
                },
            };
            let file: String = label
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            crate::plots::draw(&self.dir.join("plots").join(format!("{file}.png")), &[chart], 720, 440)?;
        }
        Ok(())
    }
}

/// A JSON pointer where a `*` segment matches any key (the first match wins).
fn lookup(value: &Value, pointer: &str) -> Option<Value> {
    fn walk(v: &Value, parts: &[String]) -> Option<Value> {
        let Some((first, rest)) = parts.split_first() else {
            return Some(v.clone());
        };
        if first == "*" {
            return match v {
                Value::Object(m) => m.values().find_map(|x| walk(x, rest)),
                Value::Array(a) => a.iter().find_map(|x| walk(x, rest)),
                _ => None,
            };
        }
        let next = match v {
            Value::Object(m) => m.get(first)?,
            Value::Array(a) => a.get(first.parse::<usize>().ok()?)?,
            _ => return None,
        };
        walk(next, rest)
    }
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    walk(value, &parts).filter(|v| !v.is_null())
}

/// A one-element list stands for its element (a budget ladder of one budget, say).
fn scalar(v: &Value) -> Value {
    match v.as_array() {
        Some(a) if a.len() == 1 => a[0].clone(),
        _ => v.clone(),
    }
}

fn figure(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn display_value(v: &Value) -> String {
    match &scalar(v) {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(m) => m
            .get("label")
            .or_else(|| m.get("kind"))
            .map(display_value)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Copies (hard-links where possible) a run's files into another run's directory, leaving out
/// what belongs to the run itself (config, manifest, results, log, report, plots).
fn copy_tree(from: &Path, to: &Path, root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let own = [
            "config.toml",
            "manifest.json",
            "results.json",
            "log.txt",
            "report.md",
            "plots",
        ];
        if relative.components().count() == 1 && own.iter().any(|o| relative == Path::new(o)) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &target, root)?;
        } else if !target.exists() && std::fs::hard_link(&path, &target).is_err() {
            std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_with_wildcards() {
        let v = json!({"learn": {"grpo": {"pass@1_after": 0.5}}, "a": [1, 2]});
        assert_eq!(lookup(&v, "/learn/*/pass@1_after"), Some(json!(0.5)));
        assert_eq!(lookup(&v, "/a/1"), Some(json!(2)));
        assert_eq!(lookup(&v, "/learn/ppo/pass@1_after"), None);
    }

    #[test]
    fn set_path_replaces_tables_and_makes_missing_ones() {
        let mut t: toml::Table = "[search]\nkind = \"mcts\"\nwidth = 3\n".parse().expect("toml");
        let beam: toml::Table = "kind = \"beam\"".parse().expect("toml");
        set_path(&mut t, "search", toml::Value::Table(beam)).expect("set");
        assert_eq!(t["search"].as_table().map(|t| t.len()), Some(1));
        set_path(&mut t, "pipeline.rl.iterations", toml::Value::Integer(3)).expect("set");
        assert_eq!(t["pipeline"]["rl"]["iterations"].as_integer(), Some(3));
        assert!(set_path(&mut t, "search.kind.x", toml::Value::Integer(1)).is_err());
    }

    #[test]
    fn every_shipped_sweep_loads_with_valid_run_configs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/sweeps");
        let registry = Registry::builtin();
        let mut loaded = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("configs/sweeps") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let sweep = Sweep::load(&path, &registry).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(!sweep.runs.is_empty(), "{}: no runs", path.display());
                loaded.push(sweep.runs.len());
            }
        }
        assert!(loaded.len() >= 5, "the shipped sweeps: {loaded:?}");
    }

    #[test]
    fn a_seed_grid_gets_the_mean_and_range_of_every_metric_over_finished_seeds() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
        let out = tmp.path().join("out");
        let file = tmp.path().join("s.toml");
        std::fs::write(
            &file,
            format!(
                "[sweep]\nbase = {base:?}\nout_dir = {out:?}\n[set]\n\"pipeline.stages\" = [\"datagen\"]\n\
                 [grid]\n\"task.digits\" = [1, 2]\n\"run.seed\" = [1, 2, 3]\n\
                 [metrics]\n\"score\" = \"/score\"\n"
            ),
        )
        .expect("write");
        let sweep = Sweep::load(&file, &Registry::builtin()).expect("load");
        // Seeds 1 and 2 of one digit finished with scores 0.2 and 0.6; seed 3 did not; of two
        // digits only seed 1 finished, too few for a summary.
        for r in &sweep.runs {
            let value = |key: &str| {
                r.values
                    .iter()
                    .find(|(k, _)| k == key)
                    .and_then(|(_, v)| v.as_integer())
            };
            let (number, seed) = (value("task.digits"), value("run.seed"));
            let score = match (number, seed) {
                (Some(1), Some(1)) => 0.2,
                (Some(1), Some(2)) => 0.6,
                (Some(2), Some(1)) => 0.9,
                _ => continue,
            };
            let dir = RunDir::new(sweep.dir.join(&r.name));
            std::fs::create_dir_all(dir.root.join("stages")).expect("mkdir");
            dir.record(&crate::run_dir::StageRecord {
                stage: "datagen".into(),
                results: json!({}),
                seconds: 1.0,
            })
            .expect("record");
            dir.write_json("results.json", &json!({"score": score}))
                .expect("results");
        }
        let table = sweep.collect().expect("collect");
        let summary_rows: Vec<&str> = table.lines().filter(|l| l.contains("over seeds")).collect();
        assert_eq!(summary_rows.len(), 1, "{table}");
        assert!(
            summary_rows[0].starts_with("| mean (range) over seeds 1, 2 |"),
            "{table}"
        );
        assert!(summary_rows[0].ends_with("| 0.400 (0.200–0.600) |"), "{table}");
        assert!(summary_rows[0].contains("| 1 |"), "{table}");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(sweep.dir.join("sweep.json")).expect("sweep.json"))
                .expect("json");
        assert_eq!(
            written["over_seeds"][0]["metrics"]["score"]["values"],
            json!([0.2, 0.6])
        );
        assert_eq!(written["over_seeds"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn reuse_is_refused_when_a_swept_key_feeds_a_shared_stage() {
        assert!(stage_inputs("reward").iter().any(|k| overlaps("reward.kind", k)));
        assert!(!stage_inputs("reward").iter().any(|k| overlaps("learn.kind", k)));
        assert!(stage_inputs("init").iter().any(|k| overlaps("pipeline.data.style", k)));
    }
}
