//! `[pipeline]`: which stages run, and each stage's settings, every field defaulted.

use ponder_policy_init::Sampling;
use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;

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
    /// Measure the run's `[search]` too, as a curve of its own when no listed searcher is the
    /// same (off for sweeps whose runs measure one listed searcher each).
    pub run_searcher: bool,
}

impl Default for SearchEvalStage {
    fn default() -> Self {
        SearchEvalStage {
            record_problems: 4,
            run_searcher: true,
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
    /// Every this many iterations the reference policy of the KL term becomes the current
    /// policy (ProRL's reference reset; 0: never).
    pub reset_reference_every: usize,
    /// Every this many iterations the optimizer's moments are cleared (ProRL; 0: never). Like
    /// a fresh AdamW, the first steps after a reset move every weight by about the learning
    /// rate, whatever its gradient.
    pub reset_optimizer_every: usize,
    /// With a learner that leaves out groups whose samples all earned the same reward (DAPO's
    /// dynamic sampling), up to this many more sampling rounds per iteration, each on as many
    /// fresh problems as groups are missing, until `problems_per_iteration` groups carry a
    /// signal (their samples' compute is counted). 0: no refill.
    pub refill_rounds: usize,
    /// Stop once RL's FLOPs (every policy and reward-model pass, as the results count them)
    /// reach this many, at the end of an iteration; `iterations` stays the cap. For comparing
    /// learners at equal compute. 0: no budget.
    pub flops_budget: f64,
    /// Asynchronous rollouts: iteration i samples with the weights of iteration i - k (at most
    /// k updates stale; earlier iterations with the first weights), so that the next batch is
    /// sampled while the current one trains. 0: synchronous, every batch from the weights it
    /// updates.
    pub max_staleness: usize,
    /// With stale rollouts, the cap of each token's truncated importance weight
    /// `min(π_current / π_behaviour, cap)` in the update.
    pub tis_cap: f32,
    /// Sample on OpenAI-compatible servers instead of in this process: before each
    /// iteration samples, its weights are saved under the run directory's `rollout-weights/`
    /// and every endpoint loads them with `POST /update_weights_from_disk` (so the servers must
    /// read this machine's files; `ponder serve` needs `serve.weight_updates = true`). The
    /// samples' token ids and log-probs come back with them (`token_ids` is always on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_server: Option<ponder_policy_init::remote::RemoteConfig>,
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
            reset_reference_every: 0,
            reset_optimizer_every: 0,
            refill_rounds: 3,
            flops_budget: 0.0,
            max_staleness: 0,
            tis_cap: 2.0,
            rollout_server: None,
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
    pub(super) fn validate(&self) -> Vec<ConfigError> {
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
        if self.rl.max_staleness > 0 && self.rl.use_search {
            errors.push(ConfigError::new(
                "pipeline.rl.max_staleness",
                "asynchronous rollouts need the behaviour log-probs recorded at sampling, which a searcher's chosen traces lack: use it without pipeline.rl.use_search",
            ));
        }
        if let Some(server) = &self.rl.rollout_server {
            for problem in server.validate() {
                errors.push(ConfigError::new("pipeline.rl.rollout_server", problem));
            }
        }
        if !(self.rl.tis_cap >= 1.0 && self.rl.tis_cap.is_finite()) {
            errors.push(ConfigError::new(
                "pipeline.rl.tis_cap",
                format!("must be a number of at least 1, not {}", self.rl.tis_cap),
            ));
        }
        if !(self.rl.flops_budget >= 0.0 && self.rl.flops_budget.is_finite()) {
            errors.push(ConfigError::new(
                "pipeline.rl.flops_budget",
                format!(
                    "must be 0 (no budget) or a positive number, not {}",
                    self.rl.flops_budget
                ),
            ));
        }
        errors
    }
}
