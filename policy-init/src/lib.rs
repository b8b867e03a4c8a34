//! # ponder-policy-init
//!
//! The policy: a Llama-family transformer in burn 0.22 ([`model`]), a KV-cached CPU decoding
//! engine ([`engine`]) behind the [`Policy`] trait, character-level and Hugging Face
//! tokenizers, sampling, policy initialisation (supervised training on expert traces),
//! checkpoints, Hugging Face import/export and a remote OpenAI-compatible policy.
//!
//! | feature | effect |
//! |---|---|
//! | (default) | burn's `flex` CPU backend |
//! | `ndarray` | burn's `ndarray` backend as well (`run.device = "ndarray"`) |
//! | `cuda` | burn's CUDA backend (needs internet at build time; never in CI) |

pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod evaluate;
pub mod hf;
pub mod linalg;
pub mod metrics;
pub mod model;
pub mod native_train;
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
