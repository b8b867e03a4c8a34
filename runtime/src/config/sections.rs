//! The run config's plain sections `[run]` and `[serve]`, every field defaulted (`[pipeline]`
//! is in `pipeline.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config_error::ConfigError;

/// The top-level sections a run config may have.
pub const SECTIONS: [&str; 8] = [
    "run", "task", "policy", "reward", "search", "learn", "pipeline", "serve",
];

/// One reasoning effort of the server: a searcher and its budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Effort {
    /// A `[search]` table.
    pub search: Value,
    /// Generations' worth of tokens.
    pub budget: usize,
}

impl Default for Effort {
    fn default() -> Self {
        Effort {
            search: serde_json::json!({"kind": "best-of-n", "selection": "majority"}),
            budget: 1,
        }
    }
}

/// `[serve]`: `ponder serve --run runs/NAME`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    /// The model id clients name (default: `ponder-` and the run's name).
    pub model: Option<String>,
    /// An environment variable holding the bearer token clients must send (none: open).
    pub api_key_env: Option<String>,
    pub max_body_bytes: usize,
    pub max_prompt_chars: usize,
    /// The most tokens (hidden and visible) one completion may use.
    pub max_completion_tokens: usize,
    /// Requests worked on at once; more wait in a queue of `queue`, beyond which they are
    /// refused with 429.
    pub concurrency: usize,
    pub queue: usize,
    pub timeout_seconds: f64,
    /// How long the batcher waits for more requests before running a batch.
    pub batch_window_ms: u64,
    /// `reasoning_effort` low, medium and high: a searcher and budget each.
    pub efforts: std::collections::BTreeMap<String, Effort>,
    /// A request that names no `reasoning_effort` searches with the run's `[search]` searcher
    /// at this budget.
    pub default_budget: usize,
    /// Accept `POST /update_weights_from_disk` (SGLang's protocol): load a policy directory
    /// this server can read and serve it from the next model call on. For RL rollout servers;
    /// off by default, since it lets a client make the server read files.
    pub weight_updates: bool,
}

impl Default for ServeSection {
    fn default() -> Self {
        let effort = |search: Value, budget| Effort { search, budget };
        ServeSection {
            model: None,
            api_key_env: None,
            max_body_bytes: 64 * 1024,
            max_prompt_chars: 2000,
            max_completion_tokens: 4096,
            concurrency: 32,
            queue: 512,
            timeout_seconds: 60.0,
            batch_window_ms: 2,
            default_budget: 8,
            weight_updates: false,
            efforts: [
                (
                    "low".to_string(),
                    effort(serde_json::json!({"kind": "best-of-n", "selection": "majority"}), 1),
                ),
                (
                    "medium".to_string(),
                    effort(serde_json::json!({"kind": "best-of-n", "selection": "weighted"}), 8),
                ),
                ("high".to_string(), effort(serde_json::json!({"kind": "mcts"}), 32)),
            ]
            .into_iter()
            .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// The run directory is `out_dir/name`.
    pub name: String,
    /// The seed every stochastic part derives its own from.
    pub seed: u64,
    /// burn's device for `backend = "burn"`: `cpu` (flex), `ndarray`, or `cuda` / `cuda:N`
    /// (the cargo features of the same names); `cpu` with ponder's own backend.
    pub device: String,
    pub out_dir: String,
    /// Worker threads (decoding, and training on the `cpu` backend); 0 uses every core.
    pub threads: usize,
    /// Where the policy's passes run: `cpu`, ponder's CPU transformer, or `burn`, burn's model
    /// on `device`, training through its autodiff and decoding with its KV-cached decoder (the
    /// reference the CPU path is tested against: the same gradients and logits to float
    /// rounding, several times slower on the CPU). Reward models score on the CPU engine
    /// either way.
    pub backend: String,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            name: "run".into(),
            seed: 1,
            device: "cpu".into(),
            out_dir: "runs".into(),
            threads: 0,
            backend: "cpu".into(),
        }
    }
}

impl RunSection {
    pub(super) fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !self.name.starts_with('.');
        if !name_ok {
            errors.push(ConfigError::new(
                "run.name",
                format!(
                    "`{}` is not a usable directory name (letters, digits, - _ .)",
                    self.name
                ),
            ));
        }
        let device_ok = matches!(self.device.as_str(), "cpu" | "ndarray" | "cuda")
            || self
                .device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !device_ok {
            errors.push(ConfigError::new(
                "run.device",
                format!("unknown device `{}`: cpu, ndarray, cuda or cuda:N", self.device),
            ));
        }
        match self.backend.as_str() {
            "burn" if !ponder_policy_init::BURN_AVAILABLE => errors.push(ConfigError::new(
                "run.backend",
                ponder_policy_init::backend::NO_BURN.to_string(),
            )),
            "burn" => {}
            "cpu" if !device_ok || self.device == "cpu" => {}
            "cpu" => errors.push(ConfigError::new(
                "run.device",
                format!(
                    "`{}` is a burn device: set run.backend = \"burn\" to train on it",
                    self.device
                ),
            )),
            other => errors.push(ConfigError::new(
                "run.backend",
                format!("unknown backend `{other}`: cpu (ponder's CPU transformer) or burn"),
            )),
        }
        errors
    }
}
