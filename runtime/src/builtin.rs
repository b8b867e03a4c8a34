//! Registration of every built-in kind.

use ponder_datagen::Task;
use ponder_datagen::arithmetic::{Arithmetic, ArithmeticConfig};
use ponder_datagen::chains::{Chains, ChainsConfig};
use ponder_datagen::countdown::{Countdown, CountdownConfig};

use crate::registry::{Kind, Registry, TaskCategory};

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
    ];
    for r in results {
        if let Err(e) = r {
            panic!("built-in registration: {e}");
        }
    }
}
