//! Best-of-N: N independent traces, the answer chosen by majority vote, by the best reward
//! (ORM, or a PRM's aggregated step scores) or by reward-weighted vote.

use async_trait::async_trait;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::{GenRequest, Stop};
use ponder_reward::Aggregation;
use serde::{Deserialize, Serialize};

use crate::{Budget, Candidate, Cost, SearchEnv, SearchError, SearchResult, Searcher, Selection, outcome};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BestOfNSettings {
    pub selection: Selection,
    /// How a process model's step scores become one score.
    pub aggregation: Aggregation,
}

impl Default for BestOfNSettings {
    fn default() -> Self {
        BestOfNSettings {
            selection: Selection::Weighted,
            aggregation: Aggregation::Last,
        }
    }
}

#[derive(Debug)]
pub struct BestOfN {
    pub settings: BestOfNSettings,
}

/// N full traces from the prompt, in one batch, with the tokens each took.
pub async fn sample_traces(
    problem: &Problem,
    env: &SearchEnv<'_>,
    n: usize,
    cost: &mut Cost,
) -> Result<Vec<(Trace, u64)>, SearchError> {
    let requests: Vec<GenRequest> = (0..n)
        .map(|i| env.request(&problem.prompt, Stop::TraceEnd, 0, i as u64))
        .collect();
    Ok(env
        .generate(&requests, cost)
        .await?
        .iter()
        .map(|g| (Trace::parse(&g.text), g.tokens() as u64))
        .collect())
}

/// Scores candidates with the reward model (unless the selection needs no scores).
pub async fn score_candidates(
    problem: &Problem,
    env: &SearchEnv<'_>,
    traces: Vec<(Trace, u64)>,
    selection: Selection,
    aggregation: Aggregation,
    cost: &mut Cost,
) -> Result<Vec<Candidate>, SearchError> {
    if selection == Selection::Majority {
        return Ok(traces
            .into_iter()
            .map(|(trace, tokens)| Candidate {
                trace,
                scores: None,
                score: None,
                tokens,
            })
            .collect());
    }
    let plain: Vec<Trace> = traces.iter().map(|(t, _)| t.clone()).collect();
    let scores = env.score(problem, &plain, cost).await?;
    Ok(traces
        .into_iter()
        .zip(scores)
        .map(|((trace, tokens), s)| Candidate {
            score: Some(s.aggregate(aggregation)),
            scores: Some(s),
            trace,
            tokens,
        })
        .collect())
}

#[async_trait]
impl Searcher for BestOfN {
    fn describe(&self) -> String {
        format!("best-of-n ({:?} selection)", self.settings.selection).to_lowercase()
    }

    async fn search(&self, problem: &Problem, env: &SearchEnv<'_>, budget: &Budget) -> SearchResult {
        let mut cost = Cost::default();
        let traces = sample_traces(problem, env, budget.generations.max(1), &mut cost).await?;
        let candidates = score_candidates(
            problem,
            env,
            traces,
            self.settings.selection,
            self.settings.aggregation,
            &mut cost,
        )
        .await?;
        Ok(outcome(env.task, problem, candidates, self.settings.selection, cost))
    }
}
