//! Registration of every built-in kind.

use ponder_datagen::Task;
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::chains::{Chains, ChainsConfig};
use ponder_datagen::countdown::{Countdown, CountdownConfig};

use ponder_policy_init::remote::{RemoteConfig, RemotePolicy};
use ponder_policy_init::settings::TransformerSettings;
use ponder_policy_init::{HostWeights, Policy, Tokenizer};

use ponder_reward::learned::LearnedReward;
use ponder_reward::oracle::OracleProcessReward;
use ponder_reward::remote::{RemoteReward, RemoteRewardSettings};
use ponder_reward::training::RewardWeights;
use ponder_reward::verifier::{VerifierReward, VerifierSettings};
use ponder_reward::{OracleSettings, OutcomeRewardSettings, ProcessRewardSettings, RewardModel};
use ponder_search::beam::{BeamMode, BeamSearch, BeamSettings};
use ponder_search::best_of_n::{BestOfN, BestOfNSettings};
use ponder_search::mcts::{Mcts, MctsSettings};
use ponder_search::revision::{Revision, RevisionSettings};
use ponder_search::{BudgetNesting, SearchCapabilities, Searcher};

use ponder_learn::Learner;
use ponder_learn::bc::{BcSettings, BehaviourCloning};
use ponder_learn::critic_free::CriticFree;
use ponder_learn::dapo::{Dapo, DapoSettings};
use ponder_learn::dpo::{Dpo, DpoSettings};
use ponder_learn::grpo::{Grpo, GrpoSettings};
use ponder_learn::gspo::{Gspo, GspoSettings};
use ponder_learn::ppo::{Ppo, PpoSettings};
use ponder_learn::prime::{ImplicitPrm, PrimeSettings};
use ponder_learn::reinforce_pp::{ReinforcePlusPlus, ReinforcePlusPlusSettings};

use crate::registry::{
    Kind, LearnCategory, PolicyCapabilities, PolicyCategory, PolicyContext, Registry, RewardCapabilities,
    RewardCategory, RewardContext, RewardTraining, SearchCategory, TaskCategory,
};

impl Kind<LearnCategory> for BcSettings {
    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(BehaviourCloning {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

impl Kind<LearnCategory> for DpoSettings {
    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(Dpo {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

impl Kind<LearnCategory> for PpoSettings {
    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(Ppo {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

impl Kind<LearnCategory> for DapoSettings {
    fn validate(&self) -> Vec<String> {
        CriticFree::validate(self)
    }

    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(Dapo {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

impl Kind<LearnCategory> for GspoSettings {
    fn validate(&self) -> Vec<String> {
        CriticFree::validate(self)
    }

    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(Gspo {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

impl Kind<LearnCategory> for ReinforcePlusPlusSettings {
    fn validate(&self) -> Vec<String> {
        CriticFree::validate(self)
    }

    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(ReinforcePlusPlus {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

impl Kind<LearnCategory> for GrpoSettings {
    fn validate(&self) -> Vec<String> {
        CriticFree::validate(self)
    }

    fn build(&self, seed: &u64) -> anyhow::Result<Box<dyn Learner>> {
        Ok(Box::new(Grpo {
            settings: self.clone(),
            seed: *seed,
        }))
    }
}

/// A trained reward model: `from`, else the run's own `reward/NAME` folder.
fn trained_reward(from: &Option<String>, context: &RewardContext, name: &str) -> anyhow::Result<LearnedReward> {
    let dir = match (from, &context.run_dir) {
        (Some(dir), _) => std::path::PathBuf::from(dir),
        (None, Some(run)) => run.join("reward").join(name),
        (None, None) => anyhow::bail!("no trained {name}: run the reward stage or set reward.from"),
    };
    if !dir.exists() {
        anyhow::bail!(
            "no trained {name} at {}: run the reward stage first, or set reward.from",
            dir.display()
        );
    }
    let (weights, tokenizer) = RewardWeights::load(&dir)?;
    Ok(LearnedReward::new(&weights, tokenizer))
}

impl Kind<RewardCategory> for VerifierSettings {
    fn build(&self, context: &RewardContext) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(VerifierReward::new(context.task.clone(), self.clone())))
    }
}

impl Kind<RewardCategory> for OracleSettings {
    fn build(&self, context: &RewardContext) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(OracleProcessReward::new(
            context.task.clone(),
            self.aggregation,
        )))
    }
}

impl Kind<RewardCategory> for ProcessRewardSettings {
    fn validate(&self) -> Vec<String> {
        ProcessRewardSettings::validate(self)
    }

    fn build(&self, context: &RewardContext) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(
            trained_reward(&self.from, context, "prm")?.with_aggregation(self.aggregation),
        ))
    }

    fn capabilities(&self) -> RewardCapabilities {
        RewardCapabilities {
            trained: self.from.is_none().then(|| RewardTraining::Process(self.clone())),
        }
    }
}

impl Kind<RewardCategory> for OutcomeRewardSettings {
    fn build(&self, context: &RewardContext) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(trained_reward(&self.from, context, "orm")?))
    }

    fn capabilities(&self) -> RewardCapabilities {
        RewardCapabilities {
            trained: self.from.is_none().then(|| RewardTraining::Outcome(self.clone())),
        }
    }
}

impl Kind<RewardCategory> for PrimeSettings {
    fn validate(&self) -> Vec<String> {
        PrimeSettings::validate(self)
    }

    /// From `from`, else the run's initialised policy (`policy/init`); it learns during RL.
    fn build(&self, context: &RewardContext) -> anyhow::Result<Box<dyn RewardModel>> {
        let dir = match (&self.from, &context.run_dir) {
            (Some(dir), _) => std::path::PathBuf::from(dir),
            (None, Some(run)) => run.join("policy").join("init"),
            (None, None) => {
                anyhow::bail!("the implicit PRM starts from a policy: run the init stage or set reward.from")
            }
        };
        let (weights, tokenizer) = crate::stages::common::load_policy(&dir)?;
        Ok(Box::new(ImplicitPrm::new(
            &weights,
            tokenizer,
            ponder_policy_init::backend::Backend::default(),
            self.clone(),
        )))
    }
}

impl Kind<RewardCategory> for RemoteRewardSettings {
    fn build(&self, _: &RewardContext) -> anyhow::Result<Box<dyn RewardModel>> {
        Ok(Box::new(RemoteReward::new(self.clone())?))
    }
}

impl Kind<SearchCategory> for BestOfNSettings {
    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Searcher>> {
        Ok(Box::new(BestOfN { settings: self.clone() }))
    }

    fn capabilities(&self) -> SearchCapabilities {
        SearchCapabilities {
            nesting: Some(BudgetNesting::IndependentSamples(self.clone())),
        }
    }
}

impl Kind<SearchCategory> for BeamSettings {
    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Searcher>> {
        Ok(Box::new(BeamSearch {
            settings: BeamSettings {
                mode: BeamMode::Beam,
                ..self.clone()
            },
        }))
    }
}

/// `dvts` takes the settings of `beam`; the kind name picks the mode.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DvtsSettings(pub BeamSettings);

impl Kind<SearchCategory> for DvtsSettings {
    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Searcher>> {
        Ok(Box::new(BeamSearch {
            settings: BeamSettings {
                mode: BeamMode::Dvts,
                ..self.0.clone()
            },
        }))
    }
}

impl Kind<SearchCategory> for MctsSettings {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.expand == 0 {
            problems.push("expand: must be at least 1".into());
        }
        problems
    }

    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Searcher>> {
        Ok(Box::new(Mcts { settings: self.clone() }))
    }
}

impl Kind<SearchCategory> for RevisionSettings {
    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Searcher>> {
        Ok(Box::new(Revision { settings: self.clone() }))
    }

    fn capabilities(&self) -> SearchCapabilities {
        // Several chains split the budget between them, so a smaller budget is no prefix.
        SearchCapabilities {
            nesting: (self.chains == 1).then_some(BudgetNesting::Attempts(self.selection)),
        }
    }
}

const ORIGIN: &str = "ponder";

impl Kind<TaskCategory> for CountdownConfig {
    fn validate(&self) -> Vec<String> {
        CountdownConfig::validate(self).err().into_iter().collect()
    }

    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Task>> {
        Ok(Box::new(Countdown::new(self.clone())?))
    }
}

impl Kind<TaskCategory> for ChainsConfig {
    fn validate(&self) -> Vec<String> {
        ChainsConfig::validate(self).err().into_iter().collect()
    }

    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Task>> {
        Ok(Box::new(Chains::new(self.clone())?))
    }
}

impl Kind<TaskCategory> for ArithmeticConfig {
    fn validate(&self) -> Vec<String> {
        Arithmetic::new(self.clone())
            .err()
            .map(|e| match e {
                ponder_datagen::TaskError::BadSettings { reason, .. } => reason,
                other => other.to_string(),
            })
            .into_iter()
            .collect()
    }

    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Task>> {
        Ok(Box::new(Arithmetic::new(self.clone())?))
    }
}

impl Kind<PolicyCategory> for TransformerSettings {
    fn validate(&self) -> Vec<String> {
        TransformerSettings::validate(self)
    }

    fn build(&self, context: &PolicyContext) -> anyhow::Result<Box<dyn Policy>> {
        let (weights, tokenizer) = match (&context.trained, &self.from) {
            (Some((w, t)), _) => (w.clone(), t.clone()),
            (None, Some(dir)) => ponder_policy_init::hf::load_pretrained(std::path::Path::new(dir))?,
            (None, None) => {
                let tokenizer = Tokenizer::chars();
                let config = self.model_config(tokenizer.vocab_size())?;
                (HostWeights::init(&config, context.seed)?, tokenizer)
            }
        };
        Ok(Box::new(self.policy(&weights, tokenizer, &context.backend)))
    }

    fn capabilities(&self) -> PolicyCapabilities {
        PolicyCapabilities {
            trainable: Some(self.clone()),
        }
    }
}

impl Kind<PolicyCategory> for RemoteConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = RemoteConfig::validate(self);
        if self.token_ids {
            problems.push(
                "token_ids: the run's policy reads the servers' text; token ids are for pipeline.rl.rollout_server, which has the run's tokenizer".into(),
            );
        }
        problems
    }

    fn build(&self, _: &PolicyContext) -> anyhow::Result<Box<dyn Policy>> {
        Ok(Box::new(RemotePolicy::new(self.clone())?))
    }
}

/// Registers the built-in kinds. Names are unique, so this cannot fail on a fresh registry.
pub fn register(registry: &mut Registry) {
    let results = [
        registry.tasks.add::<CountdownConfig>(
            ponder_datagen::countdown::NAME,
            "combine numbers with + - * / to hit a target; exact reachability per state",
            ORIGIN,
        ),
        registry.tasks.add::<ChainsConfig>(
            ponder_datagen::chains::NAME,
            "modular dependency chains (iGSM-lite) with distractors and an ordering knob",
            ORIGIN,
        ),
        registry.tasks.add::<ArithmeticConfig>(
            ponder_datagen::arithmetic::NAME,
            "multi-digit addition and multiplication with a digit/carry scratchpad",
            ORIGIN,
        ),
        registry.policies.add::<TransformerSettings>(
            "transformer",
            "a Llama-family transformer on ponder's CPU engine (presets tiny/small, or a Hugging Face folder)",
            ORIGIN,
        ),
        registry.policies.add::<RemoteConfig>(
            "remote",
            "any OpenAI-compatible /v1/completions server pool (vLLM, SGLang, llama.cpp, ponder serve)",
            ORIGIN,
        ),
        registry.rewards.add::<VerifierSettings>(
            "verifier",
            "the task's answer check: 1.0 right, 0.1 well-formed but wrong, 0.0 otherwise",
            ORIGIN,
        ),
        registry.rewards.add::<OracleSettings>(
            "oracle-process",
            "exact per-step labels from the task (the upper bound for ablations)",
            ORIGIN,
        ),
        registry.rewards.add::<ProcessRewardSettings>(
            "prm",
            "process reward model: transformer + head at every step end, trained on step labels",
            ORIGIN,
        ),
        registry.rewards.add::<OutcomeRewardSettings>(
            "orm",
            "outcome reward model: transformer + head on the last token, trained on outcomes",
            ORIGIN,
        ),
        registry.rewards.add::<PrimeSettings>(
            "prime",
            "PRIME's implicit process reward model: the log-ratio of a policy-shaped model to the initialised policy, learned online from RL's outcomes",
            ORIGIN,
        ),
        registry.rewards.add::<RemoteRewardSettings>(
            "remote",
            "a reward model served over HTTP (POST /v1/score)",
            ORIGIN,
        ),
        registry.searchers.add::<BestOfNSettings>(
            "best-of-n",
            "N samples; majority, reward-best or reward-weighted vote",
            ORIGIN,
        ),
        registry.searchers.add::<BeamSettings>(
            "beam",
            "step-level beam search guided by step scores (N beams, width M)",
            ORIGIN,
        ),
        registry.searchers.add::<DvtsSettings>(
            "dvts",
            "diverse verifier tree search: N/M independent beams of width M",
            ORIGIN,
        ),
        registry.searchers.add::<MctsSettings>(
            "mcts",
            "Monte-Carlo tree search: PUCT or Gumbel root, rollout or PRM evaluation, full backup",
            ORIGIN,
        ),
        registry.searchers.add::<RevisionSettings>(
            "revision",
            "sequential revision: each attempt sees the previous ones; majority or reward selector",
            ORIGIN,
        ),
        registry.learners.add::<BcSettings>(
            "bc",
            "behaviour cloning / expert iteration on right samples or search outputs",
            ORIGIN,
        ),
        registry.learners.add::<DpoSettings>(
            "dpo",
            "direct preference optimisation against a frozen reference",
            ORIGIN,
        ),
        registry.learners.add::<PpoSettings>(
            "ppo",
            "PPO: value head, GAE, clipped ratio, KL, entropy; optional per-step process rewards",
            ORIGIN,
        ),
        registry.learners.add::<GrpoSettings>(
            "grpo",
            "GRPO: group-normalised advantages, clipping, KL; Dr. GRPO variant",
            ORIGIN,
        ),
        registry.learners.add::<DapoSettings>(
            "dapo",
            "DAPO: clip-higher, token-level loss, dynamic sampling, overlong shaping, no KL",
            ORIGIN,
        ),
        registry.learners.add::<GspoSettings>(
            "gspo",
            "GSPO: one clipped importance ratio per sequence (geometric mean of its tokens')",
            ORIGIN,
        ),
        registry.learners.add::<ReinforcePlusPlusSettings>(
            "reinforce++",
            "REINFORCE++ with a group baseline: batch-normalised advantages, clipped ratio, KL",
            ORIGIN,
        ),
    ];
    for r in results {
        if let Err(e) = r {
            panic!("built-in registration: {e}");
        }
    }
}
