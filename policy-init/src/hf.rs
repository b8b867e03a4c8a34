//! Hugging Face folders: `config.json` (Llama or Qwen2), `model.safetensors` (or sharded with
//! `model.safetensors.index.json`) and `tokenizer.json`. Every ponder policy checkpoint is
//! such a folder, so `transformers` loads it as it is.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::ModelConfig;
use crate::error::PolicyError;
use crate::tokenizer::Tokenizer;
use crate::weights::{HostTensor, HostWeights, load_safetensors, save_safetensors};

/// Writes `config.json`, `model.safetensors`, `tokenizer.json` (and `tokenizer_config.json`,
/// `generation_config.json`) into `dir`.
pub fn save_pretrained(dir: &Path, weights: &HostWeights, tokenizer: &Tokenizer) -> Result<(), PolicyError> {
    std::fs::create_dir_all(dir).map_err(|e| PolicyError::io(dir, e))?;
    let config = weights
        .config
        .to_hf_json(tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id);
    let write_json = |name: &str, value: &serde_json::Value| {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        ponder_datagen::io::write_atomic(&path, text.as_bytes()).map_err(|e| PolicyError::io(&path, e))
    };
    write_json("config.json", &config)?;
    write_json(
        "generation_config.json",
        &serde_json::json!({"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                            "pad_token_id": tokenizer.pad_id}),
    )?;
    let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
    save_safetensors(&dir.join("model.safetensors"), weights.named(), Some(metadata))?;
    tokenizer.save(dir)
}

/// Reads a Llama/Qwen2 checkpoint folder.
pub fn load_pretrained(dir: &Path) -> Result<(HostWeights, Tokenizer), PolicyError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| PolicyError::io(&config_path, e))?;
    let config =
        ModelConfig::from_hf_json(&text).map_err(|e| PolicyError::Format(format!("{}: {e}", config_path.display())))?;
    let mut named: BTreeMap<String, HostTensor> = BTreeMap::new();
    let single = dir.join("model.safetensors");
    if single.exists() {
        named = load_safetensors(&single)?;
    } else {
        let index_path = dir.join("model.safetensors.index.json");
        let index_text = std::fs::read_to_string(&index_path).map_err(|e| PolicyError::io(&index_path, e))?;
        let index: serde_json::Value = serde_json::from_str(&index_text)
            .map_err(|e| PolicyError::Format(format!("{}: {e}", index_path.display())))?;
        let mut files: Vec<String> = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.values().filter_map(|f| f.as_str().map(String::from)).collect())
            .unwrap_or_default();
        files.sort();
        files.dedup();
        for file in files {
            if file.contains('/') || file.contains("..") {
                return Err(PolicyError::Format(format!(
                    "{}: bad shard name {file}",
                    index_path.display()
                )));
            }
            named.extend(load_safetensors(&dir.join(file))?);
        }
    }
    let weights =
        HostWeights::from_named(&config, named).map_err(|e| PolicyError::Format(format!("{}: {e}", dir.display())))?;
    let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(PolicyError::Format(format!(
            "{}: the tokenizer has {} tokens, the model only {}",
            dir.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    Ok((weights, tokenizer))
}
