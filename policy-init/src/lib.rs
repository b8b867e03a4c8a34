//! # ponder-policy-init
//!
//! The policy: a Llama-family transformer on the CPU ([`cpu`]: KV-cached decoding behind the
//! [`Policy`] trait, and training) with burn 0.22's model as the reference and second backend
//! for training and KV-cached decoding ([`backend`]; `model` and `burn_decode` with the feature
//! `burn`), the host-side trainer and AdamW ([`trainer`], [`optim`]),
//! character-level and Hugging Face tokenizers, sampling, policy initialisation (supervised
//! training on expert traces), checkpoints, Hugging Face import/export and a remote
//! OpenAI-compatible policy.
//!
//! | feature | effect |
//! |---|---|
//! | (default) | ponder's CPU transformer only |
//! | `burn` | burn as a second backend, on its `flex` CPU device (`run.backend = "burn"`); the workspace's tests always build it |
//! | `ndarray` | burn's `ndarray` device as well (`run.device = "ndarray"`) |
//! | `cuda` | burn's CUDA device (needs internet at build time; never in CI) |

/// Whether this build has burn's backend (the cargo feature `burn`).
pub const BURN_AVAILABLE: bool = cfg!(feature = "burn");

pub mod backend;
#[cfg(feature = "burn")]
pub mod burn_decode;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod error;
pub mod eval;
pub mod evaluate;
pub mod hf;
pub mod metrics;
#[cfg(feature = "burn")]
pub mod model;
pub mod optim;
pub mod policy;
pub mod prefix_cache;
pub mod remote;
pub mod sampling;
pub mod settings;
pub mod sft;
pub mod tokenizer;
pub mod trainer;
pub mod transformer_policy;
pub mod weights;

pub use config::ModelConfig;
pub use error::PolicyError;
pub use policy::{Finish, GenRequest, Generation, Policy, Sampling, Stop};
pub use tokenizer::Tokenizer;
pub use transformer_policy::TransformerPolicy;
pub use weights::HostWeights;
