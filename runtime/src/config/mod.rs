//! Reading a run's TOML: syntax check with line and column, layering with the `config` crate
//! (file, then `PONDER_*` environment variables, then `--set key=value`), then validation of
//! every section against the registry, collecting all errors at once.
//!
//! Environment variables: `PONDER_SECTION__KEY=value` sets `section.key` (a double underscore
//! separates levels; single underscores stay in names). Variables without `__` are not config
//! (`PONDER_LOG`, for example). Values are read as TOML where they parse (`8`, `true`,
//! `[1, 2]`), as strings otherwise; the same holds for `--set`.

mod layers;
mod pipeline;
mod sections;

pub use layers::*;
pub use pipeline::*;
pub use sections::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::config_error::{ConfigError, ConfigErrors, deserialize_all};
use crate::registry::{
    LearnCategory, PolicyCategory, Registry, RewardCategory, RewardTraining, SearchCategory, Spec, TaskCategory,
    rewards_to_train,
};

/// A validated run config.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub run: RunSection,
    pub task: Arc<dyn Spec<TaskCategory>>,
    /// `[policy]`, by default a `tiny` transformer.
    pub policy: Arc<dyn Spec<PolicyCategory>>,
    /// `[reward]`, by default a process reward model on Monte-Carlo labels.
    pub reward: Arc<dyn Spec<RewardCategory>>,
    /// `[search]`, the run's searcher: measured by search-eval (see `run_searcher`) and used
    /// for search inside RL.
    pub search: Arc<dyn Spec<SearchCategory>>,
    /// `[learn]`, by default GRPO.
    pub learn: Arc<dyn Spec<LearnCategory>>,
    /// `pipeline.search_eval.searchers`, parsed: label, searcher, and its own reward model;
    /// `[search]` among them (see [`RunConfig::run_searcher`]).
    pub eval_searchers: Vec<EvalSearcher>,
    /// The label under which search-eval measures `[search]`, the run's searcher: that of an
    /// identical searcher of the list (same settings, the run's reward model), else `search`,
    /// a curve added for it.
    pub run_searcher: String,
    pub pipeline: PipelineSection,
    pub serve: ServeSection,
    /// `serve.efforts`, parsed: name, searcher, budget.
    pub efforts: Vec<(String, Arc<dyn Spec<SearchCategory>>, usize)>,
    /// Settings the config gives that nothing the run does reads (`ponder check` and
    /// `ponder run` print them).
    pub warnings: Vec<ConfigError>,
}

/// Measures the run's searcher in search-eval: returns the label of the identical searcher of
/// the list, or adds it as `search` (`run-search` if a listed searcher took that label).
fn add_run_searcher(search: &Arc<dyn Spec<SearchCategory>>, eval_searchers: &mut Vec<EvalSearcher>) -> String {
    let resolved = search.resolved();
    if let Some(same) = eval_searchers
        .iter()
        .find(|e| e.reward.is_none() && e.searcher.resolved() == resolved)
    {
        return same.label.clone();
    }
    let label = std::iter::once("search".to_string())
        .chain((2..).map(|i| format!("search-{i}")))
        .find(|l| eval_searchers.iter().all(|e| &e.label != l))
        .unwrap_or_default();
    eval_searchers.push(EvalSearcher {
        label: label.clone(),
        searcher: search.clone(),
        reward: None,
    });
    label
}

/// Whether a searcher's own `reward` table names nothing but the kind of the run's `[reward]`
/// (whose kind defaults to `prm`).
fn names_only_the_kind_of(table: &Value, run_reward: &Value) -> bool {
    let run_kind = run_reward.get("kind").and_then(Value::as_str).unwrap_or("prm");
    table
        .as_object()
        .is_some_and(|t| t.len() == 1 && t.get("kind").and_then(Value::as_str) == Some(run_kind))
}

/// The section `pipeline.KEY` of each stage that reads one.
const STAGE_SECTIONS: [(&str, &str); 4] = [
    ("init", "init"),
    ("reward", "reward"),
    ("search_eval", "search-eval"),
    ("rl", "rl"),
];

/// Warnings for tables the config sets that no stage of the run reads: a stage's
/// `[pipeline.*]` table when the stage is not in `pipeline.stages` (`pipeline.data`, which
/// RL reads too, aside), and `[learn]` without RL.
fn unread_sections(root: &serde_json::Map<String, Value>, stages: &[String]) -> Vec<ConfigError> {
    let runs = |stage: &str| stages.iter().any(|s| s == stage);
    let mut warnings = Vec::new();
    let set_in_pipeline = root.get("pipeline").and_then(Value::as_object);
    for (key, stage) in STAGE_SECTIONS {
        // The reward stage reads the search-eval searchers' own reward tables: what it trains.
        let read_elsewhere = key == "search_eval" && runs("reward");
        if set_in_pipeline.is_some_and(|p| p.contains_key(key)) && !runs(stage) && !read_elsewhere {
            warnings.push(ConfigError::new(
                format!("pipeline.{key}"),
                format!(
                    "read by the {stage} stage only, which is not in pipeline.stages: these settings have no effect"
                ),
            ));
        }
    }
    if root.contains_key("learn") && !runs("rl") {
        warnings.push(ConfigError::new(
            "learn",
            "read by the rl stage only, which is not in pipeline.stages: these settings have no effect",
        ));
    }
    warnings
}

/// One searcher of the search evaluation.
#[derive(Clone, Debug)]
pub struct EvalSearcher {
    pub label: String,
    pub searcher: Arc<dyn Spec<SearchCategory>>,
    /// Replaces the run's reward model for this searcher.
    pub reward: Option<Arc<dyn Spec<RewardCategory>>>,
}

/// Every reward table of a run with its key path: `[reward]`, then each search-eval
/// searcher's own.
fn reward_tables<'a>(
    reward: &'a Arc<dyn Spec<RewardCategory>>,
    eval_searchers: &'a [EvalSearcher],
) -> impl Iterator<Item = (String, &'a dyn Spec<RewardCategory>)> {
    let own = eval_searchers.iter().enumerate().filter_map(|(i, e)| {
        let spec = e.reward.as_ref()?;
        Some((format!("pipeline.search_eval.searchers.{i}.reward"), spec.as_ref()))
    });
    std::iter::once(("reward".to_string(), reward.as_ref())).chain(own)
}

impl RunConfig {
    /// The learned reward models the reward stage trains: those `[reward]` and the
    /// search-eval searchers' own reward tables name without a trained `from` folder.
    pub fn rewards_to_train(&self) -> anyhow::Result<Vec<RewardTraining>> {
        rewards_to_train(reward_tables(&self.reward, &self.eval_searchers))
            .map_err(|errors| anyhow::anyhow!(ConfigErrors { file: None, errors }))
    }

    /// Validates a layered config value, collecting every error.
    pub fn from_value(value: &Value, registry: &Registry) -> Result<RunConfig, ConfigErrors> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let empty = Value::Object(Default::default());
        let Value::Object(root) = value else {
            return Err(ConfigErrors::one(ConfigError::new("", "the config must be a table")));
        };
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(ConfigError::new(
                    key.clone(),
                    format!("unknown section; sections: {}", SECTIONS.join(", ")),
                ));
            }
        }
        let section = |name: &str| root.get(name).unwrap_or(&empty);
        let run: RunSection = match deserialize_all(section("run"), "run") {
            Ok(r) => r,
            Err(e) => {
                errors.extend(e);
                RunSection::default()
            }
        };
        errors.extend(run.validate());
        let pipeline: PipelineSection = match deserialize_all(section("pipeline"), "pipeline") {
            Ok(p) => p,
            Err(e) => {
                errors.extend(e);
                PipelineSection::default()
            }
        };
        errors.extend(pipeline.validate());
        let task = match root.get("task") {
            Some(t) => registry.tasks.parse(t, "task").map_err(|e| errors.extend(e)).ok(),
            None => {
                errors.push(ConfigError::new("task", "missing: every run needs a [task]"));
                None
            }
        };
        // A component table without `kind` (say, from `--set reward.rollouts=4`) gets the
        // default kind.
        let with_default_kind = |name: &str, kind: &str| -> Value {
            let mut table = match root.get(name) {
                Some(Value::Object(m)) => m.clone(),
                Some(other) => return other.clone(),
                None => serde_json::Map::new(),
            };
            table.entry("kind").or_insert_with(|| Value::String(kind.to_string()));
            Value::Object(table)
        };
        let policy = registry
            .policies
            .parse(&with_default_kind("policy", "transformer"), "policy")
            .map_err(|e| errors.extend(e))
            .ok();
        let reward = registry
            .rewards
            .parse(&with_default_kind("reward", "prm"), "reward")
            .map_err(|e| errors.extend(e))
            .ok();
        let search = registry
            .searchers
            .parse(&with_default_kind("search", "best-of-n"), "search")
            .map_err(|e| errors.extend(e))
            .ok();
        let serve: ServeSection = match deserialize_all(section("serve"), "serve") {
            Ok(s) => s,
            Err(e) => {
                errors.extend(e);
                ServeSection::default()
            }
        };
        let mut efforts = Vec::new();
        for (name, effort) in &serve.efforts {
            if !["low", "medium", "high"].contains(&name.as_str()) {
                errors.push(ConfigError::new(
                    format!("serve.efforts.{name}"),
                    "efforts are low, medium and high",
                ));
                continue;
            }
            match registry
                .searchers
                .parse(&effort.search, &format!("serve.efforts.{name}.search"))
            {
                Ok(spec) => efforts.push((name.clone(), spec, effort.budget.max(1))),
                Err(e) => errors.extend(e),
            }
        }
        let learn = registry
            .learners
            .parse(&with_default_kind("learn", "grpo"), "learn")
            .map_err(|e| errors.extend(e))
            .ok();
        let mut eval_searchers = Vec::new();
        for (i, entry) in pipeline.search_eval.searchers.iter().enumerate() {
            let path = format!("pipeline.search_eval.searchers.{i}");
            let Value::Object(map) = entry else {
                errors.push(ConfigError::new(path, "must be a table with a `kind` key"));
                continue;
            };
            let mut map = map.clone();
            let label = match map.remove("label") {
                Some(Value::String(l)) => l,
                Some(_) => {
                    errors.push(ConfigError::new(format!("{path}.label"), "must be a string"));
                    continue;
                }
                None => map
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("searcher")
                    .to_string(),
            };
            let own_reward = match map.remove("reward") {
                // A table naming only the run's own kind is the run's model, with its settings.
                Some(r) if names_only_the_kind_of(&r, section("reward")) => None,
                Some(r) => match registry.rewards.parse(&r, &format!("{path}.reward")) {
                    Ok(spec) => Some(spec),
                    Err(e) => {
                        errors.extend(e);
                        continue;
                    }
                },
                None => None,
            };
            match registry.searchers.parse(&Value::Object(map), &path) {
                Ok(searcher) => {
                    if eval_searchers.iter().any(|e: &EvalSearcher| e.label == label) {
                        errors.push(ConfigError::new(
                            format!("{path}.label"),
                            format!("`{label}` is used twice"),
                        ));
                    }
                    eval_searchers.push(EvalSearcher {
                        label,
                        searcher,
                        reward: own_reward,
                    })
                }
                Err(e) => errors.extend(e),
            }
        }
        if let Some(reward) = &reward
            && let Err(e) = rewards_to_train(reward_tables(reward, &eval_searchers))
        {
            errors.extend(e);
        }
        let run_searcher = match &search {
            Some(search) if pipeline.search_eval.run_searcher => add_run_searcher(search, &mut eval_searchers),
            _ => String::new(),
        };
        let warnings = unread_sections(root, &pipeline.stages);
        match (errors.is_empty(), task, policy, reward, search, learn) {
            (true, Some(task), Some(policy), Some(reward), Some(search), Some(learn)) => Ok(RunConfig {
                run,
                task,
                policy,
                reward,
                search,
                learn,
                eval_searchers,
                run_searcher,
                pipeline,
                serve,
                efforts,
                warnings,
            }),
            _ => Err(ConfigErrors { file: None, errors }),
        }
    }

    /// The config with every default filled in, as saved in the run directory.
    pub fn resolved(&self) -> Value {
        serde_json::json!({
            "run": self.run,
            "task": self.task.resolved(),
            "policy": self.policy.resolved(),
            "reward": self.reward.resolved(),
            "search": self.search.resolved(),
            "learn": self.learn.resolved(),
            "pipeline": self.pipeline,
            "serve": self.serve,
        })
    }

    pub fn resolved_toml(&self) -> String {
        json_to_toml(&self.resolved())
            .and_then(|v| toml::to_string_pretty(&v).ok())
            .unwrap_or_default()
    }

    pub fn run_dir(&self) -> PathBuf {
        Path::new(&self.run.out_dir).join(&self.run.name)
    }
}
