//! The pipeline's stages. Each reads what earlier stages left in the run directory, writes its
//! own outputs there, and returns its headline results (recorded in `stages/NAME.json`).

pub mod common;
pub mod datagen;
pub mod init;
pub mod report;
pub mod reward;
pub mod rl;
pub mod search_eval;

use std::collections::BTreeMap;

use burn::tensor::Device;
use ponder_datagen::{Example, Task};

use crate::config::RunConfig;
use crate::progress::StageBar;
use crate::registry::Registry;
use crate::run_dir::{RunDir, StageRecord};

/// What a stage works with.
pub struct Context<'a> {
    pub config: &'a RunConfig,
    pub registry: &'a Registry,
    pub dir: &'a RunDir,
    pub task: &'a dyn Task,
    pub device: Device,
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

    pub fn test_examples(&self) -> anyhow::Result<Vec<Example>> {
        Ok(ponder_datagen::dataset::read_examples(&self.dir.data("test.jsonl"))?)
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
