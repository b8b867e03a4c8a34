//! Rollouts from OpenAI-compatible servers (`pipeline.rl.rollout_server`): before an
//! iteration samples, the weights it samples with are saved under the run directory and every
//! server loads them (`POST /update_weights_from_disk`, SGLang's protocol, which `ponder serve`
//! takes with `serve.weight_updates`); the samples come back with their token ids and
//! behaviour log-probs, so the update trains on exactly what the server sampled. One run per
//! server: what a server holds is what this run handed over last.

use std::path::PathBuf;

use tokio::sync::Mutex;

use anyhow::Context as _;
use ponder_policy_init::remote::{RemoteConfig, RemotePolicy, http_client};
use ponder_policy_init::{HostWeights, Tokenizer};
use serde_json::{Value, json};

/// The servers, and which weights they hold.
pub(super) struct RolloutServer {
    config: RemoteConfig,
    /// Where the weights for the servers are written (`rollout-weights/` in the run directory).
    handover: PathBuf,
    tokenizer: Tokenizer,
    /// The iteration whose starting weights the servers hold; locked across a hand-over, so
    /// that callers on several threads hand each version over once.
    loaded: Mutex<Option<usize>>,
}

/// A base URL's server root: `http://host:8000/v1` → `http://host:8000`.
fn server_root(endpoint: &str) -> &str {
    let trimmed = endpoint.trim_end_matches('/');
    trimmed.strip_suffix("/v1").unwrap_or(trimmed)
}

impl RolloutServer {
    /// `token_ids` is always on: the update trains on the ids the servers sampled.
    pub(super) fn new(config: &RemoteConfig, handover: PathBuf, tokenizer: Tokenizer) -> anyhow::Result<RolloutServer> {
        let config = RemoteConfig {
            token_ids: true,
            ..config.clone()
        };
        let problems = config.validate();
        anyhow::ensure!(
            problems.is_empty(),
            "pipeline.rl.rollout_server: {}",
            problems.join("; ")
        );
        Ok(RolloutServer {
            config,
            handover: std::path::absolute(&handover).unwrap_or(handover),
            tokenizer,
            loaded: Mutex::new(None),
        })
    }

    /// A client on the servers once they hold the weights iteration `version` started from
    /// (`weights`): saved and loaded when they hold others. A fresh client per call, since each
    /// sampling thread runs its own async runtime.
    pub(super) async fn policy_at(&self, version: usize, weights: &HostWeights) -> anyhow::Result<RemotePolicy> {
        let mut loaded = self.loaded.lock().await;
        if *loaded != Some(version) {
            self.hand_over(version, weights).await?;
            *loaded = Some(version);
        }
        drop(loaded);
        Ok(RemotePolicy::new(self.config.clone())?.with_tokenizer(self.tokenizer.clone()))
    }

    /// Removes the last hand-over's files once RL is done: the servers hold the weights, and
    /// the run keeps its own checkpoints.
    pub(super) fn finish(&self) {
        let _ = std::fs::remove_dir_all(&self.handover);
    }

    async fn hand_over(&self, version: usize, weights: &HostWeights) -> anyhow::Result<()> {
        let dir = self.handover.join(format!("behaviour-{version}"));
        ponder_policy_init::hf::save_pretrained(&dir, weights, &self.tokenizer)
            .with_context(|| format!("saving the rollout weights in {}", dir.display()))?;
        let (client, api_key) = http_client(self.config.api_key_env.as_deref(), self.config.timeout_seconds)
            .map_err(|e| anyhow::anyhow!("pipeline.rl.rollout_server: {e}"))?;
        for endpoint in &self.config.endpoints {
            let url = format!("{}/update_weights_from_disk", server_root(endpoint));
            let mut request = client.post(&url).json(&json!({"model_path": dir}));
            if let Some(key) = &api_key {
                request = request.bearer_auth(key);
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("{url}: handing over the weights of iteration {}", version + 1))?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            anyhow::ensure!(
                status.is_success() && body["success"] == json!(true),
                "{url} did not load the weights in {} ({status}: {body}); a ponder server takes them with serve.weight_updates = true and must read this machine's files",
                dir.display()
            );
        }
        tracing::info!(iteration = version + 1, dir = %dir.display(), "rollout servers hold new weights");
        // Older hand-overs are loaded and done with.
        if let Ok(entries) = std::fs::read_dir(&self.handover) {
            for entry in entries.flatten() {
                if entry.path() != dir {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::server_root;

    #[test]
    fn the_weights_endpoint_sits_at_the_server_root() {
        assert_eq!(server_root("http://gpu1:8000/v1"), "http://gpu1:8000");
        assert_eq!(server_root("http://gpu1:8000/v1/"), "http://gpu1:8000");
        assert_eq!(server_root("http://gpu1:8000"), "http://gpu1:8000");
    }
}
