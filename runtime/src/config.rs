//! Reading a run's TOML: syntax check with line and column, layering with the `config` crate
//! (file, then `PONDER_*` environment variables, then `--set key=value`), then validation of
//! every section against the registry, collecting all errors at once.
//!
//! Environment variables: `PONDER_SECTION__KEY=value` sets `section.key` (a double underscore
//! separates levels; single underscores stay in names). Variables without `__` are not config
//! (`PONDER_LOG`, for example). Values are read as TOML where they parse (`8`, `true`,
//! `[1, 2]`), as strings otherwise; the same holds for `--set`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use config::{Config, Environment, File, FileFormat, ValueKind};
use ponder_policy_init::Sampling;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config_error::{ConfigError, ConfigErrors, deserialize_all, line_column};
use crate::registry::{
    LearnCategory, PolicyCategory, Registry, RewardCategory, RewardTraining, SearchCategory, Spec, TaskCategory,
    rewards_to_train,
};

/// The top-level sections a run config may have.
pub const SECTIONS: [&str; 8] = [
    "run", "task", "policy", "reward", "search", "learn", "pipeline", "serve",
];

/// One reasoning effort of the server: a searcher and its budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Effort {
    /// A `[search]` table.
    pub search: Value,
    /// Generations' worth of tokens.
    pub budget: usize,
}

impl Default for Effort {
    fn default() -> Self {
        Effort {
            search: serde_json::json!({"kind": "best-of-n", "selection": "majority"}),
            budget: 1,
        }
    }
}

/// `[serve]`: `ponder serve --run runs/NAME`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    /// The model id clients name (default: `ponder-` and the run's name).
    pub model: Option<String>,
    /// An environment variable holding the bearer token clients must send (none: open).
    pub api_key_env: Option<String>,
    pub max_body_bytes: usize,
    pub max_prompt_chars: usize,
    /// The most tokens (hidden and visible) one completion may use.
    pub max_completion_tokens: usize,
    /// Requests worked on at once; more wait in a queue of `queue`, beyond which they are
    /// refused with 429.
    pub concurrency: usize,
    pub queue: usize,
    pub timeout_seconds: f64,
    /// How long the batcher waits for more requests before running a batch.
    pub batch_window_ms: u64,
    pub efforts: std::collections::BTreeMap<String, Effort>,
}

impl Default for ServeSection {
    fn default() -> Self {
        let effort = |search: Value, budget| Effort { search, budget };
        ServeSection {
            model: None,
            api_key_env: None,
            max_body_bytes: 64 * 1024,
            max_prompt_chars: 2000,
            max_completion_tokens: 4096,
            concurrency: 32,
            queue: 512,
            timeout_seconds: 60.0,
            batch_window_ms: 2,
            efforts: [
                (
                    "low".to_string(),
                    effort(serde_json::json!({"kind": "best-of-n", "selection": "majority"}), 1),
                ),
                (
                    "medium".to_string(),
                    effort(serde_json::json!({"kind": "best-of-n", "selection": "weighted"}), 8),
                ),
                ("high".to_string(), effort(serde_json::json!({"kind": "mcts"}), 32)),
            ]
            .into_iter()
            .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// The run directory is `out_dir/name`.
    pub name: String,
    /// The seed every stochastic part derives its own from.
    pub seed: u64,
    /// `cpu` (burn flex), `ndarray`, or `cuda` / `cuda:N` (needs the `cuda` feature).
    pub device: String,
    pub out_dir: String,
    /// Worker threads for the CPU backend; 0 uses every core.
    pub threads: usize,
    /// Train with burn's autodiff even where ponder's hand-written CPU training path applies:
    /// the same gradients to float rounding, several times slower. For checking the fast path
    /// and for measuring what it saves.
    pub autodiff: bool,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            name: "run".into(),
            seed: 1,
            device: "cpu".into(),
            out_dir: "runs".into(),
            threads: 0,
            autodiff: false,
        }
    }
}

impl RunSection {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !self.name.starts_with('.');
        if !name_ok {
            errors.push(ConfigError::new(
                "run.name",
                format!(
                    "`{}` is not a usable directory name (letters, digits, - _ .)",
                    self.name
                ),
            ));
        }
        let device_ok = matches!(self.device.as_str(), "cpu" | "ndarray" | "cuda")
            || self
                .device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !device_ok {
            errors.push(ConfigError::new(
                "run.device",
                format!("unknown device `{}`: cpu, ndarray, cuda or cuda:N", self.device),
            ));
        }
        errors
    }
}

/// The stages of a pipeline, in the order they run.
pub const STAGES: [&str; 6] = ["datagen", "init", "reward", "search-eval", "rl", "report"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataStage {
    /// Training examples (expert traces).
    pub train_examples: usize,
    /// Held-out test problems: read once per final run.
    pub test_problems: usize,
    /// Held-out validation problems: where settings are chosen.
    pub validation_problems: usize,
    /// Trace style of the training set: optimal, search, retry or retry:RATE.
    pub style: String,
    /// Share of the problem families set aside for testing (by a seeded hash of each family:
    /// for countdown, the set of numbers).
    pub test_fraction: f64,
    /// Share of the problem families set aside for validation.
    pub validation_fraction: f64,
    /// Seed of the split and of the held-out problems: fixed across the seeds of a seeds
    /// sweep, so every seed is measured on the same problems.
    pub split_seed: u64,
    /// Every training problem distinct (the stage fails with a clear error if the space is too
    /// small); off, problems repeat as often as the task samples them.
    pub distinct: bool,
    /// Training-side problems kept for RL (`data/rl.jsonl`): distinct from every problem of the
    /// initialisation data, so RL meets problems the policy has not been trained on. 0: RL
    /// draws from the initialisation's problems.
    pub rl_problems: usize,
    /// Extra training examples in the revision style (wrong attempts as context, then a right
    /// one), so that the policy can revise (the `revision` searcher needs it).
    pub revision_examples: usize,
}

impl Default for DataStage {
    fn default() -> Self {
        DataStage {
            train_examples: 20_000,
            test_problems: 200,
            validation_problems: 200,
            style: "optimal".into(),
            test_fraction: 0.1,
            validation_fraction: 0.1,
            split_seed: 1,
            distinct: true,
            rl_problems: 0,
            revision_examples: 0,
        }
    }
}

/// `[pipeline.init]`: policy initialisation, supervised training on the expert traces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitStage {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    pub optim: ponder_policy_init::optim::OptimConfig,
    pub checkpoint_every: usize,
    /// Evaluate (greedy pass@1 on `curve_problems` problems) every this many steps; 0: at the end only.
    pub eval_every: usize,
    pub curve_problems: usize,
    /// Samples per held-out problem for pass@k and maj@k at the end.
    pub samples: usize,
    /// Token limit of a generated trace; 0 sizes it from the training data.
    pub max_new_tokens: usize,
    /// A training budget in tokens instead of `steps` (0: use `steps`): the steps are set so
    /// that `steps * batch_size * mean sequence length` reaches it, so that datasets with
    /// longer traces (search, retry) are compared at equal compute.
    pub train_tokens: u64,
}

impl Default for InitStage {
    fn default() -> Self {
        InitStage {
            steps: 1500,
            batch_size: 32,
            optim: ponder_policy_init::optim::OptimConfig::default(),
            checkpoint_every: 250,
            eval_every: 0,
            curve_problems: 100,
            samples: 32,
            max_new_tokens: 0,
            train_tokens: 0,
        }
    }
}

/// `[pipeline.reward]`: step labels, reward-model training and the measures of their quality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardStage {
    /// Training problems whose sampled traces are labelled.
    pub problems: usize,
    /// Traces sampled per problem (temperature 1) for labelling.
    pub samples_per_problem: usize,
    /// Optimizer steps for each reward model.
    pub steps: usize,
    pub batch_size: usize,
    pub optim: ponder_policy_init::optim::OptimConfig,
    /// Held-out traces whose Monte-Carlo labels are compared with the exact ones.
    pub accuracy_traces: usize,
    /// Rollouts per step for that comparison (labels for N = 1, 2, 4, ... up to this).
    pub accuracy_rollouts: usize,
    /// Samples per held-out problem for best-of-N (PRM vs ORM vs majority).
    pub best_of: usize,
    /// Synthetic traces with exact step labels added to the PRM's training data: half expert
    /// traces of training problems, half the task's plausible wrong attempts. They cover the
    /// state space the policy's own samples visit too rarely (0: none).
    pub synthetic_traces: usize,
}

impl Default for RewardStage {
    fn default() -> Self {
        RewardStage {
            problems: 400,
            samples_per_problem: 4,
            steps: 300,
            batch_size: 32,
            optim: ponder_policy_init::optim::OptimConfig {
                lr: 1e-3,
                warmup_steps: 30,
                ..ponder_policy_init::optim::OptimConfig::default()
            },
            accuracy_traces: 200,
            accuracy_rollouts: 16,
            best_of: 16,
            synthetic_traces: 0,
        }
    }
}

/// `[pipeline.search_eval]`: every listed searcher over a ladder of budgets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchEvalStage {
    /// Held-out problems (0: all).
    pub problems: usize,
    /// Budgets, in generations' worth of tokens.
    pub budgets: Vec<usize>,
    /// How the searchers sample from the policy (`temperature`, `top_k`, `top_p`), the best-of-N
    /// samples included.
    pub sampling: Sampling,
    /// Searchers: each a `[search]` table plus an optional `label` and an optional `reward`
    /// table that replaces the run's `[reward]` for it.
    pub searchers: Vec<serde_json::Value>,
    /// The first this many problems' searches are recorded node by node, per searcher and
    /// budget, in `search_trees.jsonl` (what `ponder view` draws; 0: none).
    pub record_problems: usize,
}

impl Default for SearchEvalStage {
    fn default() -> Self {
        SearchEvalStage {
            record_problems: 4,
            problems: 0,
            budgets: vec![1, 2, 4, 8, 16, 32, 64],
            sampling: Sampling::default(),
            searchers: vec![
                serde_json::json!({"label": "majority", "kind": "best-of-n", "selection": "majority"}),
                serde_json::json!({"label": "best-of-n-orm", "kind": "best-of-n", "selection": "reward", "reward": {"kind": "orm"}}),
                serde_json::json!({"label": "best-of-n-prm", "kind": "best-of-n", "selection": "reward"}),
                serde_json::json!({"label": "best-of-n-weighted", "kind": "best-of-n", "selection": "weighted"}),
                serde_json::json!({"label": "beam-prm", "kind": "beam", "width": 4}),
                serde_json::json!({"label": "dvts-prm", "kind": "dvts", "width": 4}),
                serde_json::json!({"label": "mcts", "kind": "mcts"}),
                serde_json::json!({"label": "mcts-gumbel", "kind": "mcts", "root": "gumbel"}),
                serde_json::json!({"label": "revision", "kind": "revision"}),
            ],
        }
    }
}

/// `[pipeline.rl]`: the RL loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlStage {
    pub iterations: usize,
    pub problems_per_iteration: usize,
    /// Samples per problem (GRPO's group; with `use_search`, the searcher's budget).
    pub samples_per_problem: usize,
    /// Learn from the `[search]` searcher's answers instead of plain samples (expert iteration
    /// with search; with MCTS, the AlphaZero-style loop).
    pub use_search: bool,
    /// Greedy pass@1 on held-out problems every this many iterations.
    pub eval_every: usize,
    /// Held-out problems for that curve (0: all).
    pub eval_problems: usize,
    /// Samples per problem for pass@k after RL.
    pub final_samples: usize,
}

impl Default for RlStage {
    fn default() -> Self {
        RlStage {
            iterations: 30,
            problems_per_iteration: 64,
            samples_per_problem: 8,
            use_search: false,
            eval_every: 5,
            eval_problems: 200,
            final_samples: 32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// Which stages to run, a subset of the pipeline's stages in their order.
    pub stages: Vec<String>,
    /// The held-out side every measuring stage reads: `validation` while choosing settings,
    /// `test` for a final run (`docs/results.md`, the protocol).
    pub held_out: String,
    pub data: DataStage,
    pub init: InitStage,
    pub reward: RewardStage,
    pub search_eval: SearchEvalStage,
    pub rl: RlStage,
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            stages: STAGES.iter().map(|s| s.to_string()).collect(),
            held_out: "test".into(),
            data: DataStage::default(),
            init: InitStage::default(),
            reward: RewardStage::default(),
            search_eval: SearchEvalStage::default(),
            rl: RlStage::default(),
        }
    }
}

impl PipelineSection {
    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            if !STAGES.contains(&s.as_str()) {
                errors.push(ConfigError::new(
                    format!("pipeline.stages.{i}"),
                    format!("unknown stage `{s}`; stages: {}", STAGES.join(", ")),
                ));
            }
        }
        if let Err(e) = self.data.style.parse::<ponder_datagen::TraceStyle>() {
            errors.push(ConfigError::new("pipeline.data.style", e));
        }
        if !(0.0..1.0).contains(&self.data.test_fraction) || self.data.test_fraction == 0.0 {
            errors.push(ConfigError::new(
                "pipeline.data.test_fraction",
                "must be above 0 and below 1",
            ));
        }
        let validation = self.data.validation_fraction;
        if !(0.0..1.0).contains(&validation) || self.data.test_fraction + validation >= 1.0 {
            errors.push(ConfigError::new(
                "pipeline.data.validation_fraction",
                "must be at least 0 and leave a training side (test_fraction + validation_fraction below 1)",
            ));
        }
        if self.data.validation_problems > 0 && validation == 0.0 {
            errors.push(ConfigError::new(
                "pipeline.data.validation_problems",
                "needs a validation side: set pipeline.data.validation_fraction above 0, or validation_problems = 0",
            ));
        }
        match self.held_out.as_str() {
            "test" => {}
            "validation" if self.data.validation_problems > 0 => {}
            "validation" => errors.push(ConfigError::new(
                "pipeline.held_out",
                "is `validation` but pipeline.data.validation_problems is 0",
            )),
            other => errors.push(ConfigError::new(
                "pipeline.held_out",
                format!("`{other}` is neither `test` nor `validation`"),
            )),
        }
        for p in self.init.optim.validate() {
            let (field, msg) = p.split_once(": ").unwrap_or(("", &p));
            errors.push(ConfigError::new(format!("pipeline.init.optim.{field}"), msg));
        }
        let sampling = &self.search_eval.sampling;
        if !(sampling.temperature > 0.0 && sampling.temperature <= 2.0) {
            errors.push(ConfigError::new(
                "pipeline.search_eval.sampling.temperature",
                "must be above 0 (searchers need samples; the report already has greedy decoding) and at most 2",
            ));
        }
        if !(sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
            errors.push(ConfigError::new(
                "pipeline.search_eval.sampling.top_p",
                "must be above 0 and at most 1",
            ));
        }
        if self.init.batch_size == 0 {
            errors.push(ConfigError::new("pipeline.init.batch_size", "must be at least 1"));
        }
        if self.stages.contains(&"init".to_string()) && self.data.train_examples == 0 {
            errors.push(ConfigError::new(
                "pipeline.data.train_examples",
                "policy initialisation needs training examples",
            ));
        }
        errors
    }
}

/// A validated run config.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub run: RunSection,
    pub task: Arc<dyn Spec<TaskCategory>>,
    /// `[policy]`, by default a `tiny` transformer.
    pub policy: Arc<dyn Spec<PolicyCategory>>,
    /// `[reward]`, by default a process reward model on Monte-Carlo labels.
    pub reward: Arc<dyn Spec<RewardCategory>>,
    /// `[search]`: the searcher used for serving and for search inside RL.
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
    let label = if eval_searchers.iter().any(|e| e.label == "search") {
        "run-search"
    } else {
        "search"
    };
    eval_searchers.push(EvalSearcher {
        label: label.to_string(),
        searcher: search.clone(),
        reward: None,
    });
    label.to_string()
}

/// The section `pipeline.KEY` of each stage that reads one.
const STAGE_SECTIONS: [(&str, &str); 5] = [
    ("data", "datagen"),
    ("init", "init"),
    ("reward", "reward"),
    ("search_eval", "search-eval"),
    ("rl", "rl"),
];

/// Warnings for tables the config sets that no stage of the run reads: a stage's
/// `[pipeline.*]` table when the stage is not in `pipeline.stages`, and `[learn]` without RL.
fn unread_sections(root: &serde_json::Map<String, Value>, stages: &[String]) -> Vec<ConfigError> {
    let runs = |stage: &str| stages.iter().any(|s| s == stage);
    let mut warnings = Vec::new();
    let set_in_pipeline = root.get("pipeline").and_then(Value::as_object);
    for (key, stage) in STAGE_SECTIONS {
        if set_in_pipeline.is_some_and(|p| p.contains_key(key)) && !runs(stage) {
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
        let run_searcher = search
            .as_ref()
            .map(|search| add_run_searcher(search, &mut eval_searchers))
            .unwrap_or_default();
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

fn json_to_toml(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().filter_map(json_to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect(),
        ),
    })
}

fn toml_to_config(value: &toml::Value) -> ValueKind {
    match value {
        toml::Value::String(s) => ValueKind::String(s.clone()),
        toml::Value::Integer(i) => ValueKind::I64(*i),
        toml::Value::Float(f) => ValueKind::Float(*f),
        toml::Value::Boolean(b) => ValueKind::Boolean(*b),
        toml::Value::Datetime(d) => ValueKind::String(d.to_string()),
        toml::Value::Array(items) => ValueKind::Array(
            items
                .iter()
                .map(|v| config::Value::new(None, toml_to_config(v)))
                .collect(),
        ),
        toml::Value::Table(t) => ValueKind::Table(
            t.iter()
                .map(|(k, v)| (k.clone(), config::Value::new(None, toml_to_config(v))))
                .collect(),
        ),
    }
}

/// Reads an override's value as TOML (`8`, `0.5`, `true`, `"x"`, `[1, 2]`), else as a string.
pub fn parse_override_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The layers of one config: the file's text, environment variables and `--set` overrides.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    pub file: Option<PathBuf>,
    pub text: String,
    pub env: Vec<(String, String)>,
    pub overrides: Vec<String>,
}

impl Layers {
    pub fn from_file(path: &Path) -> Result<Layers, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: Some(path.to_path_buf()),
            errors: vec![ConfigError::new("", format!("cannot read the file: {e}"))],
        })?;
        Ok(Layers {
            file: Some(path.to_path_buf()),
            text,
            env: Vec::new(),
            overrides: Vec::new(),
        })
    }

    /// Adds this process's `PONDER_*__*` variables.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars()
            .filter(|(k, _)| k.starts_with("PONDER_") && k.contains("__"))
            .collect();
        self
    }

    pub fn with_overrides(mut self, overrides: &[String]) -> Self {
        self.overrides = overrides.to_vec();
        self
    }

    /// Merges the layers into one value. TOML syntax errors carry line and column.
    pub fn merge(&self) -> Result<Value, ConfigErrors> {
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            file: self.file.clone(),
            errors,
        };
        if let Err(e) = self.text.parse::<toml::Table>() {
            let location = e.span().map(|s| line_column(&self.text, s.start));
            return Err(fail(vec![ConfigError {
                path: String::new(),
                message: format!("TOML syntax error: {}", e.message().trim()),
                location,
            }]));
        }
        let mut builder = Config::builder()
            .add_source(File::from_str(&self.text, FileFormat::Toml))
            .add_source(
                Environment::with_prefix("PONDER")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(self.env.iter().cloned().collect())),
            );
        let mut errors = Vec::new();
        for set in &self.overrides {
            let Some((key, raw)) = set.split_once('=') else {
                errors.push(ConfigError::new(
                    "",
                    format!("--set `{set}`: expected KEY=VALUE, e.g. search.width=8"),
                ));
                continue;
            };
            let value = config::Value::new(None, toml_to_config(&parse_override_value(raw)));
            builder = match builder.clone().set_override(key.trim(), value) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(ConfigError::new(key.trim(), format!("--set: {e}")));
                    builder
                }
            };
        }
        if !errors.is_empty() {
            return Err(fail(errors));
        }
        builder
            .build()
            .and_then(|c| c.try_deserialize::<Value>())
            .map_err(|e| fail(vec![ConfigError::new("", e.to_string())]))
    }

    /// Merges and validates, locating errors in the file.
    pub fn load(&self, registry: &Registry) -> Result<RunConfig, ConfigErrors> {
        let value = self.merge()?;
        let mut run = RunConfig::from_value(&value, registry).map_err(|e| e.locate(self.file.clone(), &self.text))?;
        let warnings = ConfigErrors {
            file: None,
            errors: std::mem::take(&mut run.warnings),
        };
        run.warnings = warnings.locate(self.file.clone(), &self.text).errors;
        Ok(run)
    }
}

/// Reads one component table on its own (for commands such as `ponder datagen` that take a
/// kind name and overrides rather than a whole run).
pub fn parse_task(
    registry: &Registry,
    kind: &str,
    overrides: &[(String, toml::Value)],
) -> Result<Arc<dyn Spec<TaskCategory>>, ConfigErrors> {
    let mut table = serde_json::Map::new();
    table.insert("kind".into(), Value::String(kind.to_string()));
    for (k, v) in overrides {
        let json = serde_json::to_value(v).unwrap_or(Value::Null);
        table.insert(k.clone(), json);
    }
    registry
        .tasks
        .parse(&Value::Object(table), "task")
        .map_err(|errors| ConfigErrors { file: None, errors })
}

/// Deserializes a free-standing section with all errors collected (for stage settings).
pub fn read_section<T: serde::de::DeserializeOwned>(value: &Value, path: &str) -> Result<T, ConfigErrors> {
    deserialize_all(value, path).map_err(|errors| ConfigErrors { file: None, errors })
}
