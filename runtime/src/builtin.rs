//! Registration of every built-in kind.

use ponder_datagen::Task;
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::chains::{Chains, ChainsConfig};
use ponder_datagen::countdown::{Countdown, CountdownConfig};

use ponder_policy_init::remote::{RemoteConfig, RemotePolicy};
use ponder_policy_init::settings::TransformerSettings;
use ponder_policy_init::{HostWeights, Policy, Tokenizer, TransformerPolicy};

use crate::registry::{Kind, PolicyCategory, PolicyContext, Registry, TaskCategory};

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
        let mut policy = TransformerPolicy::new(&weights, tokenizer);
        if let Some(tokens) = self.prefix_cache_tokens {
            policy = policy.with_prefix_cache(tokens);
        }
        Ok(Box::new(policy))
    }
}

impl Kind<PolicyCategory> for RemoteConfig {
    fn validate(&self) -> Vec<String> {
        RemoteConfig::validate(self)
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
            "a Llama-family transformer in burn (presets tiny/small, or a Hugging Face folder)",
            ORIGIN,
        ),
        registry.policies.add::<RemoteConfig>(
            "remote",
            "any OpenAI-compatible /v1/completions server pool (vLLM, SGLang, llama.cpp, ponder serve)",
            ORIGIN,
        ),
    ];
    for r in results {
        if let Err(e) = r {
            panic!("built-in registration: {e}");
        }
    }
}
