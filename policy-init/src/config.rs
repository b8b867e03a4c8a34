//! The transformer's shape: presets, and the Hugging Face `config.json` of the Llama and Qwen2
//! families (read and written).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::PolicyError;

/// A Llama-family decoder: RMSNorm, rotary positions (rotate-half, as in Hugging Face),
/// SwiGLU, optional grouped-query attention, tied embeddings and q/k/v (and o) biases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads; fewer than `n_heads` is grouped-query attention.
    pub n_kv_heads: usize,
    /// Hidden size of the SwiGLU MLP.
    pub ffn_hidden: usize,
    /// The longest sequence (prompt and trace) the model handles.
    pub max_seq_len: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// The output head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// A bias on the output projection too (Llama `attention_bias = true`).
    pub o_bias: bool,
}

impl ModelConfig {
    /// Presets: `tiny` (about 1M parameters, the CPU default), `small` (about 10M) and `micro`
    /// (for tests).
    pub fn preset(name: &str, vocab_size: usize) -> Result<ModelConfig, PolicyError> {
        let base = ModelConfig {
            vocab_size,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 4,
            ffn_hidden: 512,
            max_seq_len: 512,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tie_embeddings: true,
            qkv_bias: false,
            o_bias: false,
        };
        match name {
            "tiny" => Ok(base),
            "small" => Ok(ModelConfig {
                d_model: 256,
                n_layers: 12,
                n_heads: 4,
                n_kv_heads: 4,
                ffn_hidden: 768,
                ..base
            }),
            // For tests and quick checks: a few thousand parameters plus the embeddings, with
            // grouped-query attention.
            "micro" => Ok(ModelConfig {
                d_model: 32,
                n_layers: 2,
                n_heads: 2,
                n_kv_heads: 1,
                ffn_hidden: 64,
                max_seq_len: 128,
                ..base
            }),
            other => Err(PolicyError::Config(format!(
                "unknown preset `{other}`: tiny (about 1M parameters), small (about 10M) or micro (for tests)"
            ))),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        let fail = |m: String| Err(PolicyError::Config(m));
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return fail(format!(
                "d_model {} is not a multiple of n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return fail(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "head dimension {} must be even for rotary positions",
                self.head_dim()
            ));
        }
        if self.vocab_size == 0 || self.n_layers == 0 || self.ffn_hidden == 0 || self.max_seq_len == 0 {
            return fail("vocab_size, n_layers, ffn_hidden and max_seq_len must be positive".into());
        }
        Ok(())
    }

    /// Parameter count.
    pub fn params(&self) -> usize {
        let d = self.d_model;
        let kv = self.kv_dim();
        let attention =
            d * d * 2 + d * kv * 2 + if self.qkv_bias { d + 2 * kv } else { 0 } + if self.o_bias { d } else { 0 };
        let mlp = 3 * d * self.ffn_hidden;
        let per_layer = attention + mlp + 2 * d;
        let embeddings = self.vocab_size * d * if self.tie_embeddings { 1 } else { 2 };
        embeddings + self.n_layers * per_layer + d
    }

    /// Reads a Hugging Face `config.json` of the Llama or Qwen2 family.
    pub fn from_hf_json(text: &str) -> Result<ModelConfig, PolicyError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PolicyError::Format(format!("config.json is not JSON: {e}")))?;
        let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        if !matches!(model_type, "llama" | "qwen2") {
            return Err(PolicyError::Format(format!(
                "config.json: model_type `{model_type}` is not supported (llama or qwen2)"
            )));
        }
        let get = |key: &str| -> Result<usize, PolicyError> {
            v.get(key)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| PolicyError::Format(format!("config.json: `{key}` is missing")))
        };
        let act = v.get("hidden_act").and_then(|a| a.as_str()).unwrap_or("silu");
        if act != "silu" {
            return Err(PolicyError::Format(format!(
                "config.json: hidden_act `{act}` is not supported (silu)"
            )));
        }
        if v.get("mlp_bias").and_then(|b| b.as_bool()) == Some(true) {
            return Err(PolicyError::Format("config.json: mlp_bias is not supported".into()));
        }
        if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
            return Err(PolicyError::Format("config.json: rope_scaling is not supported".into()));
        }
        let n_heads = get("num_attention_heads")?;
        let d_model = get("hidden_size")?;
        if let Some(hd) = v.get("head_dim").and_then(|h| h.as_u64())
            && hd as usize * n_heads != d_model
        {
            return Err(PolicyError::Format(
                "config.json: head_dim * num_attention_heads must equal hidden_size".into(),
            ));
        }
        let attention_bias = v.get("attention_bias").and_then(|b| b.as_bool()).unwrap_or(false);
        let config = ModelConfig {
            vocab_size: get("vocab_size")?,
            d_model,
            n_layers: get("num_hidden_layers")?,
            n_heads,
            n_kv_heads: v
                .get("num_key_value_heads")
                .and_then(|x| x.as_u64())
                .map_or(n_heads, |x| x as usize),
            ffn_hidden: get("intermediate_size")?,
            max_seq_len: get("max_position_embeddings")?,
            rope_theta: v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10_000.0) as f32,
            rms_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6) as f32,
            tie_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            qkv_bias: model_type == "qwen2" || attention_bias,
            o_bias: model_type == "llama" && attention_bias,
        };
        config.validate()?;
        Ok(config)
    }

    /// The Hugging Face `config.json`: Qwen2 where only q/k/v have biases, else Llama.
    pub fn to_hf_json(&self, bos: Option<u32>, eos: Option<u32>, pad: u32) -> serde_json::Value {
        let qwen = self.qkv_bias && !self.o_bias;
        let mut v = json!({
            "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": if qwen { "qwen2" } else { "llama" },
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.ffn_hidden,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        });
        if !qwen {
            v["attention_bias"] = json!(self.qkv_bias);
            v["mlp_bias"] = json!(false);
        } else {
            v["use_sliding_window"] = json!(false);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_sizes() {
        let tiny = ModelConfig::preset("tiny", 100).expect("preset");
        assert!((0.9e6..1.2e6).contains(&(tiny.params() as f64)), "{}", tiny.params());
        let small = ModelConfig::preset("small", 100).expect("preset");
        assert!((9e6..11.5e6).contains(&(small.params() as f64)), "{}", small.params());
        assert!(ModelConfig::preset("huge", 100).is_err());
    }

    #[test]
    fn hf_config_round_trips_for_both_families() {
        for (qkv, o) in [(false, false), (true, false), (true, true)] {
            let mut c = ModelConfig::preset("tiny", 100).expect("preset");
            c.qkv_bias = qkv;
            c.o_bias = o;
            c.n_kv_heads = 2;
            c.tie_embeddings = !qkv;
            let json = c.to_hf_json(Some(1), Some(2), 0).to_string();
            assert_eq!(ModelConfig::from_hf_json(&json).expect("reads"), c);
        }
        assert!(ModelConfig::from_hf_json(r#"{"model_type": "gpt2"}"#).is_err());
    }
}
