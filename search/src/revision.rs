//! Sequential revision: each attempt sees the attempts before it (never whether they were
//! right) and writes a new one; a selector that needs no verifier (majority vote, or the reward
//! model) picks the final answer among all attempts. Several chains can run side by side
//! (Snell et al.'s mix of sequential and parallel compute). The policy must have learned to
//! revise: `datagen` writes revision data (wrong attempts followed by a right one).

use async_trait::async_trait;
use ponder_datagen::trace::revision_context;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::{GenRequest, Stop};
use ponder_reward::Aggregation;
use serde::{Deserialize, Serialize};

use crate::best_of_n::score_candidates;
use crate::record::SearchRecord;
use crate::{Budget, Cost, SearchEnv, SearchResult, Searcher, Selection, outcome};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevisionSettings {
    /// Independent revision chains; each gets budget / chains attempts.
    pub chains: usize,
    /// How the final answer is chosen among all attempts.
    pub selection: Selection,
    pub aggregation: Aggregation,
    /// Attempts a context keeps (the most recent ones), bounding its length.
    pub window: usize,
}

impl Default for RevisionSettings {
    fn default() -> Self {
        RevisionSettings {
            chains: 1,
            selection: Selection::Majority,
            aggregation: Aggregation::Last,
            window: 2,
        }
    }
}

#[derive(Debug)]
pub struct Revision {
    pub settings: RevisionSettings,
}

#[async_trait]
impl Searcher for Revision {
    fn describe(&self) -> String {
        format!(
            "revision ({} chain{})",
            self.settings.chains,
            if self.settings.chains == 1 { "" } else { "s" }
        )
    }

    async fn search(&self, problem: &Problem, env: &SearchEnv<'_>, budget: &Budget) -> SearchResult {
        let s = &self.settings;
        let n = budget.generations.max(1);
        let chains = s.chains.clamp(1, n);
        let per_chain = n.div_ceil(chains);
        let mut cost = Cost::default();
        let mut histories: Vec<Vec<Trace>> = vec![Vec::new(); chains];
        let mut attempts: Vec<(Trace, u64)> = Vec::new();
        // Which chain made each attempt.
        let mut chain_of: Vec<usize> = Vec::new();
        for round in 0..per_chain {
            let live: Vec<usize> = (0..chains).filter(|&c| c * per_chain + round < n).collect();
            let requests: Vec<GenRequest> = live
                .iter()
                .map(|&c| {
                    let history = &histories[c];
                    let kept = &history[history.len().saturating_sub(s.window)..];
                    let prompt = format!("{}{}", problem.prompt, revision_context(kept));
                    env.request(prompt, Stop::TraceEnd, round as u64, c as u64)
                })
                .collect();
            let generations = env.generate(&requests, &mut cost).await?;
            for (&c, g) in live.iter().zip(&generations) {
                let t = Trace::parse(&g.text);
                histories[c].push(t.clone());
                attempts.push((t, g.tokens() as u64));
                chain_of.push(c);
            }
        }
        let candidates = score_candidates(problem, env, attempts, s.selection, s.aggregation, &mut cost).await?;
        let mut out = outcome(env.task, problem, candidates, s.selection, cost);
        if env.record {
            let chosen = out.chosen_candidate();
            out.record = Some(SearchRecord::attempt_chains(&out.candidates, &chain_of, chosen, cost));
        }
        Ok(out)
    }
}
