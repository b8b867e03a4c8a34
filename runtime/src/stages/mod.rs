//! The pipeline's stages. Each reads what earlier stages left in the run directory, writes its
//! own outputs there, and returns its headline results (recorded in `stages/NAME.json`).

pub mod common;
pub mod datagen;
pub mod init;
pub mod report;
pub mod reward;
pub mod reward_quality;
pub mod rl;
pub mod search_eval;
pub mod search_trees;

use std::collections::BTreeMap;

use ponder_datagen::{Example, Task};
use ponder_policy_init::backend::Backend;

use crate::config::RunConfig;
use crate::progress::StageBar;
use crate::registry::Registry;
use crate::run_dir::{RunDir, StageRecord};

/// What a stage works with.
pub struct Context<'a> {
    /// The stage this context runs (one of [`crate::config::STAGES`]).
    pub stage: &'a str,
    pub config: &'a RunConfig,
    pub registry: &'a Registry,
    pub dir: &'a RunDir,
    pub task: &'a dyn Task,
    /// Where training passes run (`run.backend`, `run.device`).
    pub backend: Backend,
    /// Continue an interrupted stage from its last checkpoint instead of starting it over.
    pub resume: bool,
    pub progress: &'a StageBar,
    /// Records of the stages that finished before this one.
    pub earlier: &'a BTreeMap<String, StageRecord>,
}

impl Context<'_> {
    /// A seed for one purpose, derived from the run's seed.
    pub fn seed(&self, purpose: &str) -> u64 {
        crate::plan::derive_seed(self.config.run.seed, purpose)
    }

    pub fn train_examples(&self) -> anyhow::Result<Vec<Example>> {
        Ok(ponder_datagen::dataset::read_examples(&self.dir.data("train.jsonl"))?)
    }

    /// The held-out problems every measuring stage reads: the validation side while settings
    /// are chosen, the test side for a final run (`pipeline.held_out`).
    pub fn held_out_examples(&self) -> anyhow::Result<Vec<Example>> {
        let side = if self.config.pipeline.held_out == "validation" {
            ponder_datagen::Split::Validation
        } else {
            ponder_datagen::Split::Test
        };
        Ok(ponder_datagen::dataset::read_examples(
            &self.dir.data(datagen::held_out_file(side)),
        )?)
    }

    /// The problems RL trains on: those kept apart for it when the data has them
    /// (`pipeline.data.rl_problems`), else the initialisation's.
    pub fn rl_examples(&self) -> anyhow::Result<Vec<Example>> {
        if self.config.pipeline.data.rl_problems > 0 {
            Ok(ponder_datagen::dataset::read_examples(&self.dir.data("rl.jsonl"))?)
        } else {
            self.train_examples()
        }
    }
}

/// Runs one stage by name.
pub fn run(name: &str, ctx: &Context) -> anyhow::Result<serde_json::Value> {
    match name {
        "datagen" => datagen::run(ctx),
        "init" => init::run(ctx),
        "reward" => reward::run(ctx),
        "search-eval" => search_eval::run(ctx),
        "rl" => rl::run(ctx),
        "report" => report::run(ctx),
        other => anyhow::bail!("unknown stage `{other}`"),
    }
}
