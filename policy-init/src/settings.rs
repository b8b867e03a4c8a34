//! The TOML settings of the `transformer` policy kind, and devices by name.

#[cfg(feature = "burn")]
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::PolicyError;

/// `[policy] kind = "transformer"`: a preset, any field of it overridden, or a Hugging Face
/// folder to start from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerSettings {
    /// `tiny` (about 1M parameters), `small` (about 10M) or `micro` (for tests).
    pub preset: String,
    pub d_model: Option<usize>,
    pub n_layers: Option<usize>,
    pub n_heads: Option<usize>,
    pub n_kv_heads: Option<usize>,
    pub ffn_hidden: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub tie_embeddings: Option<bool>,
    pub qkv_bias: Option<bool>,
    /// Start from this Hugging Face folder (Llama/Qwen2) instead of random weights.
    pub from: Option<String>,
    /// Tokens of computed prefixes kept for reuse across calls (0 disables).
    pub prefix_cache_tokens: Option<usize>,
}

impl TransformerSettings {
    /// The policy for these weights decoding on `backend`, with `prefix_cache_tokens` applied
    /// where it is set (else the default memory budget).
    pub fn policy(
        &self,
        weights: &crate::HostWeights,
        tokenizer: crate::Tokenizer,
        backend: &crate::backend::Backend,
    ) -> crate::TransformerPolicy {
        let policy = crate::TransformerPolicy::on_backend(weights, tokenizer, backend);
        match self.prefix_cache_tokens {
            Some(tokens) => policy.with_prefix_cache(tokens),
            None => policy,
        }
    }

    pub fn preset_name(&self) -> &str {
        if self.preset.is_empty() { "tiny" } else { &self.preset }
    }

    /// The architecture for a vocabulary.
    pub fn model_config(&self, vocab_size: usize) -> Result<ModelConfig, PolicyError> {
        let mut c = ModelConfig::preset(self.preset_name(), vocab_size)?;
        if let Some(v) = self.d_model {
            c.d_model = v;
        }
        if let Some(v) = self.n_layers {
            c.n_layers = v;
        }
        if let Some(v) = self.n_heads {
            c.n_heads = v;
            c.n_kv_heads = v;
        }
        if let Some(v) = self.n_kv_heads {
            c.n_kv_heads = v;
        }
        if let Some(v) = self.ffn_hidden {
            c.ffn_hidden = v;
        }
        if let Some(v) = self.max_seq_len {
            c.max_seq_len = v;
        }
        if let Some(v) = self.tie_embeddings {
            c.tie_embeddings = v;
        }
        if let Some(v) = self.qkv_bias {
            c.qkv_bias = v;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.model_config(100) {
            let msg = e.to_string();
            let field = if msg.contains("preset") { "preset" } else { "d_model" };
            problems.push(format!("{field}: {msg}"));
        }
        problems
    }
}

/// `cpu` (burn flex), `ndarray`, `cuda` or `cuda:N`.
#[cfg(feature = "burn")]
pub fn device_from_name(name: &str) -> Result<Device, PolicyError> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        "ndarray" => Ok(Device::ndarray()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0usize)),
        #[cfg(feature = "cuda")]
        other if other.starts_with("cuda:") => other[5..]
            .parse::<usize>()
            .map(Device::cuda)
            .map_err(|_| PolicyError::Config(format!("bad cuda device `{other}`"))),
        other => Err(PolicyError::Config(format!(
            "device `{other}` is not available in this build (cpu; ndarray and cuda need the cargo features of the same names)"
        ))),
    }
}
