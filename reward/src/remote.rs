//! A reward model served over HTTP, so a big PRM running elsewhere can guide ponder's search.
//!
//! Protocol (what `ponder serve` answers at `POST /v1/score`):
//! request `{"model": "...", "prompt": "...", "traces": [{"steps": ["..."], "answer": "..." | null}]}`,
//! answer `{"scores": [{"steps": [0.9, ...], "answer": 0.8 | null}]}` with one entry per trace
//! and, for a process model, one step score per step.

use std::time::Duration;

use async_trait::async_trait;
use ponder_datagen::{Problem, Trace};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Aggregation, Granularity, RewardError, RewardModel, StepScores};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteRewardSettings {
    /// Base URL, e.g. `http://prm-host:8080/v1`.
    pub endpoint: String,
    pub model: String,
    pub granularity: Granularity,
    pub aggregation: Aggregation,
    /// An environment variable holding a bearer token.
    pub api_key_env: Option<String>,
    pub timeout_seconds: f64,
    pub attempts: usize,
}

impl Default for RemoteRewardSettings {
    fn default() -> Self {
        RemoteRewardSettings {
            endpoint: "http://127.0.0.1:8080/v1".into(),
            model: "default".into(),
            granularity: Granularity::Process,
            aggregation: Aggregation::Last,
            api_key_env: None,
            timeout_seconds: 60.0,
            attempts: 3,
        }
    }
}

pub struct RemoteReward {
    settings: RemoteRewardSettings,
    client: reqwest::Client,
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct ScoreResponse {
    scores: Vec<StepScores>,
}

impl RemoteReward {
    pub fn new(settings: RemoteRewardSettings) -> Result<RemoteReward, RewardError> {
        if !(settings.endpoint.starts_with("http://") || settings.endpoint.starts_with("https://")) {
            return Err(RewardError::Remote(format!(
                "`{}` is not an http(s) URL",
                settings.endpoint
            )));
        }
        let (client, api_key) =
            ponder_policy_init::remote::http_client(settings.api_key_env.as_deref(), settings.timeout_seconds)
                .map_err(RewardError::Remote)?;
        Ok(RemoteReward {
            settings,
            client,
            api_key,
        })
    }
}

#[async_trait]
impl RewardModel for RemoteReward {
    fn describe(&self) -> String {
        format!(
            "remote reward model {} at {}",
            self.settings.model, self.settings.endpoint
        )
    }

    fn granularity(&self) -> Granularity {
        self.settings.granularity
    }

    fn aggregation(&self) -> Aggregation {
        self.settings.aggregation
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        let url = format!("{}/score", self.settings.endpoint.trim_end_matches('/'));
        let body = json!({
            "model": self.settings.model,
            "prompt": problem.prompt,
            "traces": traces,
        });
        let mut last = String::new();
        for attempt in 0..self.settings.attempts.max(1) {
            let mut request = self.client.post(&url).json(&body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let answer: ScoreResponse = r
                        .json()
                        .await
                        .map_err(|e| RewardError::Remote(format!("{url}: unreadable answer: {e}")))?;
                    if answer.scores.len() != traces.len() {
                        return Err(RewardError::Remote(format!(
                            "{url}: {} scores for {} traces",
                            answer.scores.len(),
                            traces.len()
                        )));
                    }
                    return Ok(answer.scores);
                }
                Ok(r) if r.status().is_server_error() => last = format!("{url}: {}", r.status()),
                Ok(r) => {
                    let status = r.status();
                    return Err(RewardError::Remote(format!(
                        "{url}: {status}: {}",
                        r.text().await.unwrap_or_default()
                    )));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
        }
        Err(RewardError::Remote(format!("gave up: {last}")))
    }
}
