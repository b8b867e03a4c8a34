//! Best-of-N's shared draw: the samples every selection rule chooses from, drawn once; the
//! searcher that only scores and selects among them; and difficulty predicted from each
//! problem's first sample, as a deployed system could.

use std::collections::HashMap;

use ponder_datagen::{Problem, Trace};
use ponder_reward::RewardModel;
use ponder_search::best_of_n::{BestOfNSettings, score_candidates};
use ponder_search::{Budget, Cost, SearchEnv, SearchResult, Searcher, outcome};
use serde::{Deserialize, Serialize};

/// Best-of-N samples drawn once for every selection rule: per problem id, the traces and
/// their tokens; what drawing them cost, and its FLOPs.
#[derive(Serialize, Deserialize)]
pub(super) struct SharedDraw {
    pub(super) samples: HashMap<String, Vec<(Trace, u64)>>,
    pub(super) cost: Cost,
    pub(super) flops: f64,
}

/// Best-of-N over samples drawn once for every selection rule (keyed by problem id): it only
/// scores (with its own reward model) and selects, so the rules are compared on the same samples
/// and the policy samples them once.
pub(super) struct SharedSamples<'s> {
    pub(super) samples: &'s HashMap<String, Vec<(Trace, u64)>>,
    pub(super) settings: BestOfNSettings,
}

#[async_trait::async_trait]
impl Searcher for SharedSamples<'_> {
    fn describe(&self) -> String {
        format!(
            "best-of-n over shared samples ({:?} selection)",
            self.settings.selection
        )
        .to_lowercase()
    }

    async fn search(&self, problem: &Problem, env: &SearchEnv<'_>, _budget: &Budget) -> SearchResult {
        let traces = self.samples.get(&problem.id).cloned().unwrap_or_default();
        let mut cost = Cost::default();
        let (selection, aggregation) = (self.settings.selection, self.settings.aggregation);
        let candidates = score_candidates(problem, env, traces, selection, aggregation, &mut cost).await?;
        Ok(outcome(env.task, problem, candidates, selection, cost))
    }
}

/// Difficulty as a deployed system could predict it, and what predicting cost: the run's reward
/// model scores one sample per problem (the first of the shared best-of-N samples), and a high
/// score means easy. Per problem: the predicted ease and the FLOPs of the sample and its
/// scoring. `None` without shared samples.
pub(super) async fn predicted_ease(
    problems: &[Problem],
    draw: Option<&SharedDraw>,
    reward: &dyn RewardModel,
) -> anyhow::Result<Option<(Vec<f64>, Vec<f64>)>> {
    let Some(draw) = draw else {
        return Ok(None);
    };
    let total_tokens: u64 = draw.samples.values().flatten().map(|(_, t)| *t).sum();
    let sample_flops_per_token = draw.flops / total_tokens.max(1) as f64;
    let firsts: Vec<Option<&(Trace, u64)>> = problems
        .iter()
        .map(|p| draw.samples.get(&p.id).and_then(|s| s.first()))
        .collect();
    let traces: Vec<Vec<Trace>> = firsts
        .iter()
        .map(|f| f.map(|(t, _)| vec![t.clone()]).unwrap_or_default())
        .collect();
    let items: Vec<(&Problem, &[Trace])> = problems.iter().zip(&traces).map(|(p, t)| (p, t.as_slice())).collect();
    let before = reward.flops();
    let scored = reward.score_many(&items).await?;
    let scoring = (reward.flops() - before).max(0.0) / problems.len().max(1) as f64;
    let ease = scored
        .iter()
        .map(|s| s.first().map_or(0.0, |s| f64::from(s.aggregate(reward.aggregation()))))
        .collect();
    let cost = firsts
        .iter()
        .map(|f| f.map_or(0.0, |(_, t)| *t as f64 * sample_flops_per_token) + scoring)
        .collect();
    Ok(Some((ease, cost)))
}
