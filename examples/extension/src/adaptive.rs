//! `adaptive-consistency`: self-consistency that stops sampling once the vote is decided
//! (after Aggarwal et al., 2023, "Let's Sample Step by Step: Adaptive-Consistency"). Samples
//! come in rounds of `round` traces, up to the budget; after each round the search stops when
//! the leading answer's posterior probability of being the true majority (a Beta posterior on
//! the leader's share against the runner-up) passes `confidence`. Easy problems stop after one
//! round, hard ones use the whole budget: the same accuracy as majority voting for fewer tokens.
//!
//! A third-party searcher: it uses only ponder's public API (`Searcher`, `SearchEnv`, `Cost`,
//! `outcome`, and `TreeRecorder` to record what it did for `ponder view`) and is registered by
//! this crate's [`crate::register`].

use std::collections::HashMap;

use async_trait::async_trait;
use ponder_runtime::registry::{Kind, SearchCategory};
use ponder_search::record::{NodeKind, TreeRecorder};
use ponder_search::{
    Budget, Candidate, Cost, GenRequest, Problem, SearchEnv, SearchResult, Searcher, Selection, Stop, Trace, outcome,
};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "adaptive-consistency";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConsistencySettings {
    /// Traces per round (one batch to the policy).
    pub round: usize,
    /// Stop when P(leader is the majority answer) reaches this.
    pub confidence: f64,
}

impl Default for AdaptiveConsistencySettings {
    fn default() -> Self {
        AdaptiveConsistencySettings {
            round: 4,
            confidence: 0.95,
        }
    }
}

impl Kind<SearchCategory> for AdaptiveConsistencySettings {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.round == 0 {
            problems.push("round: must be at least 1".into());
        }
        if !(0.5..1.0).contains(&self.confidence) {
            problems.push(format!("confidence: must be in [0.5, 1), not {}", self.confidence));
        }
        problems
    }

    fn build(&self, _: &()) -> anyhow::Result<Box<dyn Searcher>> {
        Ok(Box::new(AdaptiveConsistency { settings: self.clone() }))
    }
}

#[derive(Debug)]
pub struct AdaptiveConsistency {
    pub settings: AdaptiveConsistencySettings,
}

/// P(p > 1/2) for p ~ Beta(a + 1, b + 1) with integer counts: the chance the leader (a votes)
/// beats the runner-up (b votes) in the long run. Exact, by the binomial identity
/// P(Beta(a+1, b+1) > 1/2) = P(Binomial(a + b + 1, 1/2) <= a).
pub fn leader_probability(a: u64, b: u64) -> f64 {
    let n = a + b + 1;
    let mut term = 0.5f64.powi(n as i32); // C(n, 0) / 2^n
    let mut total = term;
    for k in 1..=a {
        term *= (n - k + 1) as f64 / k as f64;
        total += term;
    }
    total.min(1.0)
}

#[async_trait]
impl Searcher for AdaptiveConsistency {
    fn describe(&self) -> String {
        format!(
            "adaptive-consistency (rounds of {}, confidence {})",
            self.settings.round, self.settings.confidence
        )
    }

    async fn search(&self, problem: &Problem, env: &SearchEnv<'_>, budget: &Budget) -> SearchResult {
        let mut cost = Cost::default();
        let mut candidates: Vec<Candidate> = Vec::new();
        let limit = budget.generations.max(1);
        let mut votes: HashMap<String, u64> = HashMap::new();
        let mut round = 0u64;
        // When asked: the trie of the samples' steps, each sample's answer a leaf that says in
        // which round it was drawn.
        let mut record = env.record.then(TreeRecorder::new);
        let mut leaves: Vec<usize> = Vec::new();
        while candidates.len() < limit {
            let n = self.settings.round.min(limit - candidates.len());
            let requests: Vec<GenRequest> = (0..n)
                .map(|i| env.request(&problem.prompt, Stop::TraceEnd, round, (candidates.len() + i) as u64))
                .collect();
            for g in env.generate(&requests, &mut cost).await? {
                let trace = Trace::parse(&g.text);
                if let Some(key) = trace.answer.as_ref().and_then(|a| env.task.answer_key(problem, a)) {
                    *votes.entry(key).or_default() += 1;
                }
                if let Some(r) = &mut record {
                    let mut at = TreeRecorder::ROOT;
                    for step in &trace.steps {
                        at = r.child(at, NodeKind::Step, std::slice::from_ref(step), None);
                    }
                    let leaf = r.add(at, NodeKind::Step, Vec::new(), trace.answer.clone());
                    let node = r.node_mut(leaf);
                    node.visits = 1;
                    node.round = Some(round);
                    node.tokens = Some(g.tokens() as u64);
                    leaves.push(leaf);
                }
                candidates.push(Candidate {
                    trace,
                    scores: None,
                    score: None,
                    tokens: g.tokens() as u64,
                });
            }
            round += 1;
            let mut counts: Vec<u64> = votes.values().copied().collect();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            let leader = counts.first().copied().unwrap_or(0);
            let second = counts.get(1).copied().unwrap_or(0);
            if leader > 0 && leader_probability(leader, second) >= self.settings.confidence {
                break;
            }
        }
        let mut out = outcome(env.task, problem, candidates, Selection::Majority, cost);
        let chosen = out.chosen_candidate();
        out.record = record.map(|mut r| {
            r.node_mut(TreeRecorder::ROOT).visits = leaves.len() as u32;
            r.finish_choosing(&leaves, chosen, cost)
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_probability_matches_the_beta_posterior() {
        // Beta(1, 1) is uniform: one half.
        assert!((leader_probability(0, 0) - 0.5).abs() < 1e-12);
        // Beta(2, 1): P(p > 1/2) = 3/4.
        assert!((leader_probability(1, 0) - 0.75).abs() < 1e-12);
        // Beta(4, 1): 1 - (1/2)^4.
        assert!((leader_probability(3, 0) - (1.0 - 0.0625)).abs() < 1e-12);
        // Symmetric counts: one half.
        assert!((leader_probability(5, 5) - 0.5).abs() < 1e-12);
        assert!(leader_probability(8, 1) > 0.97 && leader_probability(3, 2) < 0.8);
    }
}
