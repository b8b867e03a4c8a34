//! Where training's forward and backward passes run: ponder's CPU transformer
//! ([`crate::cpu::TrainingPass`], the default) or burn's model through its autodiff on any burn
//! device (flex, ndarray, cuda), the reference the CPU path is tested against. Both take the
//! same host-side parameters and the same [`SequenceLoss`], so every objective (supervised,
//! reward model, each learner) is written once, and both return host-side gradients for the
//! trainer's AdamW.

#[cfg(feature = "burn")]
use burn::tensor::Device;

use crate::config::ModelConfig;
use crate::cpu::{Gradients, ScalarHead, SequenceLoss, TrainingPass};
use crate::error::PolicyError;
use crate::weights::HostTensor;

/// What a build without burn says when a config asks for it.
pub const NO_BURN: &str = "this ponder was built without burn's backend: build it with `cargo build --release -p ponder-runtime --features burn`";

#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    /// ponder's CPU transformer on `threads` threads (0: every thread of rayon's pool).
    Cpu { threads: usize },
    /// burn's model with autodiff on a device.
    #[cfg(feature = "burn")]
    Burn(Device),
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Cpu { threads: 0 }
    }
}

/// The model one pass runs: its config and parameters in [`crate::weights::Layout`] order,
/// an optional scalar head read at every position, and whether the language-model head's
/// logits are computed.
#[derive(Clone, Copy)]
pub struct PassModel<'a> {
    pub config: &'a ModelConfig,
    pub tensors: &'a [HostTensor],
    pub head: Option<&'a ScalarHead>,
    pub lm: bool,
}

impl Backend {
    /// `run.backend` and `run.device` as configs name them: `cpu` (the device must be `cpu`)
    /// or `burn` on `cpu` (flex), `ndarray` or `cuda[:N]`.
    pub fn from_names(backend: &str, device: &str) -> Result<Backend, PolicyError> {
        match backend {
            "cpu" if matches!(device, "cpu" | "flex") => Ok(Backend::Cpu { threads: 0 }),
            "cpu" => Err(PolicyError::Config(format!(
                "device `{device}` is a burn device: set backend = \"burn\" to train on it"
            ))),
            #[cfg(feature = "burn")]
            "burn" => Ok(Backend::Burn(crate::settings::device_from_name(device)?)),
            #[cfg(not(feature = "burn"))]
            "burn" => Err(PolicyError::Config(NO_BURN.into())),
            other => Err(PolicyError::Config(format!(
                "backend `{other}` is not known (cpu or burn)"
            ))),
        }
    }

    /// Seeds the backend's own random numbers (burn's device; the CPU transformer draws none).
    #[cfg_attr(not(feature = "burn"), allow(unused_variables))]
    pub fn seed(&self, seed: u64) {
        match self {
            Backend::Cpu { .. } => {}
            #[cfg(feature = "burn")]
            Backend::Burn(device) => device.seed(seed),
        }
    }

    /// The loss of a batch of sequences and the gradient of every parameter (and of the scalar
    /// head). Each sequence must be non-empty and fit the model's context.
    pub fn loss_and_gradients(
        &self,
        model: PassModel<'_>,
        sequences: &[&[u32]],
        loss: &dyn SequenceLoss,
    ) -> (f64, Gradients) {
        match self {
            Backend::Cpu { threads } => {
                let threads = if *threads == 0 {
                    rayon::current_num_threads()
                } else {
                    *threads
                };
                TrainingPass::new(model.config, model.tensors, model.head, model.lm)
                    .loss_and_gradients(sequences, loss, threads)
            }
            #[cfg(feature = "burn")]
            Backend::Burn(device) => crate::model::autodiff_loss_and_gradients(model, sequences, loss, device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_name_and_the_mistakes_refused() {
        assert!(matches!(
            Backend::from_names("cpu", "cpu"),
            Ok(Backend::Cpu { threads: 0 })
        ));
        let refused = |backend: &str, device: &str| match Backend::from_names(backend, device) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{backend} on {device} was accepted"),
        };
        assert!(refused("cpu", "cuda").contains("is a burn device"));
        assert!(refused("tpu", "cpu").contains("backend `tpu` is not known"));
        // A build without burn names the command that builds it in (`cargo test -p
        // ponder-policy-init --lib` runs this branch; the workspace's tests build burn).
        #[cfg(feature = "burn")]
        assert!(matches!(Backend::from_names("burn", "cpu"), Ok(Backend::Burn(_))));
        #[cfg(not(feature = "burn"))]
        assert!(refused("burn", "cpu").contains("--features burn"));
    }
}
