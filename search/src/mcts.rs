//! Monte-Carlo tree search over steps. A node is a partial trace; expanding it samples k next
//! steps from the policy (their log-probabilities become priors); a new child is evaluated by
//! a rollout to the end scored by the reward model (the rolled-out trace is a candidate answer
//! too), or by the reward model on its partial trace; values are backed up along the whole path;
//! finished traces are terminal.
//!
//! Selection is PUCT (`Q + c·P·√N/(1+n)`) with progressive widening, or at the root Gumbel
//! sampling with sequential halving (Danihelka et al., "Policy improvement by planning with
//! Gumbel"), offered against accuracy falling as the budget grows (ReSCALE). Both rise with
//! budget on the default countdown run; PUCT is the default. Simulations run in waves: the
//! leaves of one wave (kept apart by virtual loss) are expanded in one policy call and evaluated
//! in one reward call, and no wave expands more steps than the budget left pays for. The answer
//! is the one with the most value summed over the finished traces that reach it (by default), the
//! finished trace with the best value, or the end of the most visited path.

use std::collections::HashMap;

use async_trait::async_trait;
use ponder_datagen::{Problem, Task, Trace};
use ponder_policy_init::{Finish, GenRequest, Stop};
use ponder_reward::Aggregation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::record::{NodeKind, SearchRecord, TreeRecorder};
use crate::{
    Budget, Candidate, Cost, SearchEnv, SearchError, SearchOutcome, SearchResult, Searcher, Selection,
    continuation_prompt,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evaluation {
    /// The reward model's score of the new node's partial trace (a PRM).
    Reward,
    /// A rollout to the end from the new node, scored by the reward model (PRM, ORM or
    /// verifier); the rolled-out trace is an answer candidate too. The default: on the default
    /// countdown run (200 held-out problems, budgets 1 / 4 / 16 / 64, PUCT root) it reached
    /// 34.5 / 54.5 / 72.5 / 71.0% and PRM evaluation 29.0 / 31.5 / 64.0 / 68.0%. (With the
    /// Gumbel root and the PRM of 300 training steps the two were within noise of each other:
    /// 34.0 / 35.0 / 39.5 / 50.0 against 33.0 / 40.5 / 48.5 / 48.5.)
    Rollout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootSelection {
    /// PUCT at the root as everywhere, with progressive widening. The default: on the default
    /// countdown run (200 held-out problems, budgets 1 / 4 / 16 / 64 generations) it reached
    /// 34.5 / 54.5 / 72.5 / 71.0% against Gumbel's 27.5 / 41.5 / 53.5 / 68.5%. Gumbel fixes its
    /// root children up front, one per four generations of budget (two at budget 4), and the
    /// first step of a countdown trace decides most of it; PUCT keeps sampling the root. At 64
    /// generations PUCT stops early (1,059 tokens of 2,944) when new samples stop bringing new
    /// steps (the policy's entropy is about 0.05 nats per token).
    Puct,
    /// Gumbel top-k sampling of root children and sequential halving over them.
    Gumbel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerBy {
    /// Follow the most visited child from the root.
    Visits,
    /// The finished trace (terminal node or rollout) with the best value: at tens of simulations
    /// visit counts barely separate siblings (with rollout evaluation the most visited path
    /// rarely ends in a terminal node, and visits falls back to this).
    Value,
    /// The answer with the highest total value over the finished traces that reach it (as
    /// best-of-N's weighted vote), answered by its best-valued trace. The default: on the
    /// default countdown run (budgets 1 / 4 / 16 / 64) it reached 42.2 / 62.5 / 76.6 / 76.6% on
    /// the pipeline's 64 problems against 42.2 / 59.4 / 71.9 / 71.9% by value, and
    /// 34.5 / 54.5 / 72.5 / 71.0% on 200 problems against 34.5 / 53.0 / 70.5 / 70.5%: one
    /// wrong trace that the PRM overrates no longer decides alone.
    WeightedVote,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MctsSettings {
    /// Steps sampled per expansion.
    pub expand: usize,
    pub c_puct: f32,
    pub evaluation: Evaluation,
    pub root: RootSelection,
    /// Root children considered by Gumbel sampling.
    pub gumbel_considered: usize,
    pub answer: AnswerBy,
    /// Leaves expanded per batched wave.
    pub wave: usize,
    /// Deepest node (steps): a node this deep is evaluated but not expanded.
    pub max_depth: usize,
    pub aggregation: Aggregation,
    /// Progressive widening: a node visited n times may hold up to `expand · ⌈(n+1)^widening⌉`
    /// children, sampled `expand` at a time, until new samples stop bringing new steps
    /// (0 disables: each node is expanded once).
    pub widening: f32,
}

impl Default for MctsSettings {
    fn default() -> Self {
        MctsSettings {
            expand: 4,
            c_puct: 1.5,
            evaluation: Evaluation::Rollout,
            root: RootSelection::Puct,
            gumbel_considered: 16,
            answer: AnswerBy::WeightedVote,
            wave: 4,
            max_depth: 24,
            aggregation: Aggregation::Last,
            widening: 0.5,
        }
    }
}

#[derive(Debug)]
pub struct Mcts {
    pub settings: MctsSettings,
}

#[derive(Clone, Debug)]
struct Node {
    parent: Option<usize>,
    /// The generated text that made this node (siblings are distinct by it).
    text: String,
    steps: Vec<String>,
    children: Vec<usize>,
    prior: f32,
    /// Log-probability of the step that made this node (root: 0).
    logprob: f32,
    visits: u32,
    value_sum: f32,
    pending: u32,
    expanded: bool,
    /// The finished trace, for a terminal node.
    terminal: Option<Trace>,
    /// No further step could be generated here.
    dead: bool,
    /// Sampling more children brings no new steps.
    saturated: bool,
    /// The reward model's evaluation of the node (aggregated as the search aggregates).
    score: Option<f32>,
    /// The round that made it.
    round: u64,
}

impl Node {
    fn q(&self) -> Option<f32> {
        (self.visits > 0).then(|| self.value_sum / self.visits as f32)
    }
}

struct Tree {
    nodes: Vec<Node>,
    /// Finished traces of rollouts (rollout evaluation): the node rolled out from, the trace and
    /// its value. They are answers too, as the tree's terminal nodes are.
    rollouts: Vec<(usize, Trace, f32)>,
    /// Steps sampled so far (one per expansion request); with the tokens generated, the cost of
    /// one more expanded step, its rollout included.
    steps_sampled: u64,
    /// The price of an expanded step before any was sampled: a whole generation (a step and the
    /// rollout that finishes it).
    generation_tokens: u64,
}

/// A finished trace the search can answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finished {
    Terminal(usize),
    /// An index into `Tree::rollouts`.
    Rollout(usize),
}

impl Tree {
    /// Every finished trace: terminal nodes, then rollouts (each in creation order), with the
    /// node it hangs under and its value.
    fn finished(&self) -> impl Iterator<Item = (Finished, usize, &Trace, Option<f32>)> {
        let terminals = (self.nodes.iter().enumerate())
            .filter_map(|(i, n)| Some((Finished::Terminal(i), i, n.terminal.as_ref()?, n.q())));
        let rollouts =
            (self.rollouts.iter().enumerate()).map(|(j, (node, t, v))| (Finished::Rollout(j), *node, t, Some(*v)));
        terminals.chain(rollouts)
    }

    fn path(&self, mut node: usize) -> Vec<usize> {
        let mut path = vec![node];
        while let Some(p) = self.nodes[node].parent {
            path.push(p);
            node = p;
        }
        path
    }

    fn backup(&mut self, node: usize, value: f32, count: u32) {
        for n in self.path(node) {
            self.nodes[n].visits += count;
            self.nodes[n].value_sum += value;
        }
    }

    /// PUCT child of `node`; `None` when it has none left to explore.
    fn puct_child(&self, node: usize, c: f32) -> Option<usize> {
        let parent = &self.nodes[node];
        let total = (parent.visits + parent.pending) as f32;
        let fpu = parent.q().unwrap_or(0.0);
        parent
            .children
            .iter()
            .copied()
            .filter(|&ch| !self.nodes[ch].dead)
            .max_by(|&a, &b| {
                let score = |i: usize| {
                    let n = &self.nodes[i];
                    let visits = (n.visits + n.pending) as f32;
                    // Pending visits count as losses, keeping a wave's leaves apart.
                    let q = if n.visits + n.pending == 0 {
                        fpu
                    } else {
                        n.value_sum / visits
                    };
                    q + c * n.prior * (total.max(1.0)).sqrt() / (1.0 + visits)
                };
                score(a).total_cmp(&score(b)).then(b.cmp(&a))
            })
    }

    /// Descends from `from` by PUCT to a node to expand (a leaf, or a node allowed more
    /// children by progressive widening) or a terminal to revisit.
    fn select(&mut self, from: usize, c: f32, max_depth: usize, widen: &dyn Fn(u32) -> usize) -> Option<usize> {
        let mut node = from;
        loop {
            let n = &self.nodes[node];
            if n.terminal.is_none() && n.steps.len() >= max_depth {
                // Deep enough: never expanded (its value and rollout stay in the tree).
                self.nodes[node].dead = true;
                return None;
            }
            if n.terminal.is_some() || !n.expanded {
                break;
            }
            if !n.saturated && n.children.len() < widen(n.visits + n.pending) {
                break;
            }
            match self.puct_child(node, c) {
                Some(child) => node = child,
                None => {
                    self.nodes[node].dead = true;
                    return None;
                }
            }
        }
        for n in self.path(node) {
            self.nodes[n].pending += 1;
        }
        Some(node)
    }

    fn clear_pending(&mut self) {
        for n in &mut self.nodes {
            n.pending = 0;
        }
    }
}

/// A Gumbel(0, 1) draw.
fn gumbel(rng: &mut ChaCha8Rng) -> f32 {
    let u: f64 = rng.random::<f64>().clamp(1e-12, 1.0 - 1e-12);
    (-(-u.ln()).ln()) as f32
}

/// A rollout from a node's steps to the end of a trace.
fn rollout_request(problem: &Problem, steps: &[String], env: &SearchEnv<'_>, seed: u64) -> GenRequest {
    GenRequest::new(
        continuation_prompt(problem, steps),
        Stop::TraceEnd,
        env.max_trace_tokens,
        env.sampling,
        seed,
    )
}

/// A node's steps followed by what a rollout from it generated.
fn rolled_out(steps: &[String], generated: &str) -> Trace {
    let rest = Trace::parse(generated);
    let mut all = steps.to_vec();
    all.extend(rest.steps);
    Trace {
        steps: all,
        answer: rest.answer,
    }
}

impl Mcts {
    /// Expands `leaves` (one policy call) and evaluates their new children (one reward call,
    /// after one rollout call in rollout mode); backs the values up.
    async fn expand_and_evaluate(
        &self,
        tree: &mut Tree,
        leaves: &[usize],
        problem: &Problem,
        env: &SearchEnv<'_>,
        round: u64,
        cost: &mut Cost,
        k: usize,
    ) -> Result<(), SearchError> {
        let s = &self.settings;
        // Terminal leaves are revisited: back up their value again.
        let mut to_expand = Vec::new();
        for &leaf in leaves {
            if tree.nodes[leaf].terminal.is_some() {
                let q = tree.nodes[leaf].q().unwrap_or(0.0);
                tree.backup(leaf, q, 1);
            } else if !tree.nodes[leaf].saturated {
                to_expand.push(leaf);
            }
        }
        let mut requests = Vec::new();
        for (li, &leaf) in to_expand.iter().enumerate() {
            let prompt = continuation_prompt(problem, &tree.nodes[leaf].steps);
            for j in 0..k {
                requests.push(env.request(prompt.clone(), Stop::StepEnd, round, (li * k + j) as u64));
            }
        }
        let generations = env.generate(&requests, cost).await?;
        tree.steps_sampled += requests.len() as u64;
        let mut new_children: Vec<usize> = Vec::new();
        for (li, &leaf) in to_expand.iter().enumerate() {
            // Siblings from earlier expansions (progressive widening) count as seen.
            let mut by_text: HashMap<String, usize> = tree.nodes[leaf]
                .children
                .iter()
                .map(|&c| (tree.nodes[c].text.clone(), c))
                .collect();
            let mut children: Vec<usize> = tree.nodes[leaf].children.clone();
            let mut added_any = false;
            for g in &generations[li * k..(li + 1) * k] {
                let added = Trace::parse(&g.text);
                let complete = added.answer.is_some();
                if !complete
                    && (g.finish == Finish::Length || g.finish == Finish::EndOfSequence || added.steps.is_empty())
                {
                    continue;
                }
                let lp: f32 = g.logprobs.iter().sum();
                if let Some(&existing) = by_text.get(&g.text) {
                    // The same step sampled twice: one child, its probability mass counted once.
                    tree.nodes[existing].logprob = tree.nodes[existing].logprob.max(lp);
                    continue;
                }
                let mut steps = tree.nodes[leaf].steps.clone();
                steps.extend(added.steps.iter().cloned());
                let terminal = complete.then(|| Trace {
                    steps: steps.clone(),
                    answer: added.answer.clone(),
                });
                tree.nodes.push(Node {
                    parent: Some(leaf),
                    text: g.text.clone(),
                    steps,
                    children: Vec::new(),
                    prior: 0.0,
                    logprob: lp,
                    visits: 0,
                    value_sum: 0.0,
                    pending: 0,
                    expanded: false,
                    terminal,
                    dead: false,
                    saturated: false,
                    score: None,
                    round,
                });
                let id = tree.nodes.len() - 1;
                by_text.insert(g.text.clone(), id);
                children.push(id);
                new_children.push(id);
                added_any = true;
            }
            // Priors: the children's sequence probabilities, normalised among siblings.
            let max = children
                .iter()
                .map(|&c| tree.nodes[c].logprob)
                .fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = children.iter().map(|&c| (tree.nodes[c].logprob - max).exp()).sum();
            for &c in &children {
                tree.nodes[c].prior = (tree.nodes[c].logprob - max).exp() / z.max(f32::MIN_POSITIVE);
            }
            tree.nodes[leaf].expanded = true;
            // A node is given up on (dead, or saturated: no new steps) only after a full
            // expansion; a budget-trimmed one of fewer samples leaves it open.
            let full = k >= s.expand.max(1);
            tree.nodes[leaf].dead = children.is_empty() && full;
            tree.nodes[leaf].saturated = !added_any && full;
            tree.nodes[leaf].children = children;
        }
        // Evaluation traces: the child's own trace (reward mode or terminal), or a rollout.
        let mut traces: Vec<Trace> = Vec::with_capacity(new_children.len());
        let rollout: Vec<usize> = if s.evaluation == Evaluation::Rollout {
            new_children
                .iter()
                .copied()
                .filter(|&c| tree.nodes[c].terminal.is_none())
                .collect()
        } else {
            Vec::new()
        };
        let rollout_requests: Vec<GenRequest> = rollout
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                rollout_request(
                    problem,
                    &tree.nodes[c].steps,
                    env,
                    env.request_seed(round ^ 0x5555, i as u64),
                )
            })
            .collect();
        let rollouts = env.generate(&rollout_requests, cost).await?;
        let mut rollout_of: HashMap<usize, Trace> = HashMap::new();
        for (&c, g) in rollout.iter().zip(&rollouts) {
            rollout_of.insert(c, rolled_out(&tree.nodes[c].steps, &g.text));
        }
        for &c in &new_children {
            let node = &tree.nodes[c];
            traces.push(match (&node.terminal, rollout_of.remove(&c)) {
                (Some(t), _) => t.clone(),
                (None, Some(r)) => r,
                (None, None) => Trace {
                    steps: node.steps.clone(),
                    answer: None,
                },
            });
        }
        let scores = env.score(problem, &traces, cost).await?;
        for ((&c, sc), trace) in new_children.iter().zip(&scores).zip(traces) {
            let v = sc.aggregate(s.aggregation);
            tree.nodes[c].score = Some(v);
            tree.backup(c, v, 1);
            if tree.nodes[c].terminal.is_none() && trace.answer.is_some() {
                tree.rollouts.push((c, trace, v));
            }
        }
        Ok(())
    }

    fn answer(&self, tree: &Tree, from: usize, task: &dyn Task, problem: &Problem) -> Option<Finished> {
        match self.settings.answer {
            AnswerBy::Visits => {
                let mut node = from;
                loop {
                    if tree.nodes[node].terminal.is_some() {
                        return Some(Finished::Terminal(node));
                    }
                    let best = tree.nodes[node]
                        .children
                        .iter()
                        .copied()
                        .filter(|&c| tree.nodes[c].visits > 0)
                        .max_by(|&a, &b| {
                            let (na, nb) = (&tree.nodes[a], &tree.nodes[b]);
                            na.visits
                                .cmp(&nb.visits)
                                .then(na.q().unwrap_or(0.0).total_cmp(&nb.q().unwrap_or(0.0)))
                                .then(b.cmp(&a))
                        });
                    match best {
                        Some(b) => node = b,
                        None => return self.best_finished(tree, from),
                    }
                }
            }
            AnswerBy::Value => self.best_finished(tree, from),
            AnswerBy::WeightedVote => {
                let (finished, ballots): (Vec<Finished>, Vec<Candidate>) = tree
                    .finished()
                    .filter(|&(_, node, _, _)| tree.path(node).contains(&from))
                    .map(|(f, _, trace, v)| {
                        let ballot = Candidate {
                            trace: trace.clone(),
                            scores: None,
                            score: v,
                            tokens: 0,
                        };
                        (f, ballot)
                    })
                    .unzip();
                crate::select(task, problem, &ballots, Selection::Weighted).map(|i| finished[i])
            }
        }
    }

    /// The end of the most visited path from `from`.
    fn most_visited_leaf(&self, tree: &Tree, from: usize) -> usize {
        let mut node = from;
        while let Some(next) = tree.nodes[node]
            .children
            .iter()
            .copied()
            .filter(|&c| tree.nodes[c].visits > 0)
            .max_by(|&a, &b| tree.nodes[a].visits.cmp(&tree.nodes[b].visits).then(b.cmp(&a)))
        {
            node = next;
        }
        node
    }

    /// The finished trace under `from` (a terminal node, or a rollout from a node) with the best
    /// value; on ties, terminal nodes (in creation order) before rollouts (in creation order).
    fn best_finished(&self, tree: &Tree, from: usize) -> Option<Finished> {
        let mut best: Option<(Finished, f32)> = None;
        for (f, node, _, v) in tree.finished() {
            let v = v.unwrap_or(0.0);
            if tree.path(node).contains(&from) && best.is_none_or(|(_, b)| v.total_cmp(&b).is_gt()) {
                best = Some((f, v));
            }
        }
        best.map(|(f, _)| f)
    }

    /// Runs waves of simulations from `root_child` (or the root) until `stop_tokens`.
    async fn simulate(
        &self,
        tree: &mut Tree,
        from: usize,
        problem: &Problem,
        env: &SearchEnv<'_>,
        stop_tokens: u64,
        round: &mut u64,
        cost: &mut Cost,
    ) -> Result<(), SearchError> {
        let s = &self.settings;
        let widen = |visits: u32| -> usize {
            if s.widening <= 0.0 {
                return s.expand.max(1);
            }
            let factor = ((visits + 1) as f32).powf(s.widening).ceil() as usize;
            s.expand.max(1) * factor.min(8)
        };
        while cost.generated_tokens < stop_tokens {
            // A wave expands no more steps than the budget left pays for (at least one), at the
            // cost of an expanded step so far, its rollout included (a whole generation before
            // any step was sampled): a full wave of 4 leaves × 4 steps at budget 1 spent twice
            // the budget.
            let affordable = match tree.steps_sampled {
                0 => ((stop_tokens - cost.generated_tokens) / tree.generation_tokens.max(1)) as usize,
                n => {
                    let per_step = (cost.generated_tokens as f64 / n as f64).max(1.0);
                    ((stop_tokens - cost.generated_tokens) as f64 / per_step).floor() as usize
                }
            };
            let k = s.expand.max(1).min(affordable.max(1));
            let expandable = s.wave.max(1).min((affordable / k).max(1));
            // Up to `wave` selections; terminal revisits cost nothing and do not count against
            // the leaves the budget allows.
            let mut leaves = Vec::new();
            let mut to_expand = 0;
            for _ in 0..s.wave.max(1) {
                match tree.select(from, s.c_puct, s.max_depth, &widen) {
                    Some(leaf) if !leaves.contains(&leaf) => {
                        if tree.nodes[leaf].terminal.is_none() {
                            to_expand += 1;
                        }
                        leaves.push(leaf);
                        if to_expand >= expandable {
                            break;
                        }
                    }
                    Some(_) => {}
                    // The subtree is exhausted, or the descent ended at the depth limit (that
                    // node is given up on now, and the next descent goes elsewhere).
                    None if tree.nodes[from].dead => break,
                    None => {}
                }
            }
            tree.clear_pending();
            if leaves.is_empty() {
                break; // the subtree is exhausted
            }
            let before = cost.generated_tokens;
            *round += 1;
            self.expand_and_evaluate(tree, &leaves, problem, env, *round, cost, k)
                .await?;
            if cost.generated_tokens == before {
                // Nothing new: every leaf was a terminal (revisited) or a node with nothing left
                // to sample. The revisits raise the exploration bonus of the leaves not taken, so
                // a later wave might take one; on the default countdown run, searching on through
                // up to 1,000 such waves spent 2,045 tokens at 64 generations instead of 1,098 and
                // found no right answer more.
                break;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Searcher for Mcts {
    fn describe(&self) -> String {
        let root = match self.settings.root {
            RootSelection::Puct => "puct",
            RootSelection::Gumbel => "gumbel root",
        };
        format!("mcts ({root}, {} per expansion)", self.settings.expand)
    }

    async fn search(&self, problem: &Problem, env: &SearchEnv<'_>, budget: &Budget) -> SearchResult {
        let s = &self.settings;
        let mut cost = Cost::default();
        let mut tree = Tree {
            nodes: vec![Node {
                parent: None,
                text: String::new(),
                steps: Vec::new(),
                children: Vec::new(),
                prior: 1.0,
                logprob: 0.0,
                visits: 0,
                value_sum: 0.0,
                pending: 0,
                expanded: false,
                terminal: None,
                dead: false,
                saturated: false,
                score: None,
                round: 0,
            }],
            rollouts: Vec::new(),
            steps_sampled: 0,
            generation_tokens: budget.tokens_per_generation as u64,
        };
        let total = budget.tokens();
        let mut round = 0u64;
        let chosen_root_child = match s.root {
            RootSelection::Puct => {
                self.simulate(&mut tree, 0, problem, env, total, &mut round, &mut cost)
                    .await?;
                None
            }
            RootSelection::Gumbel => {
                // Root expansion: m sampled children; Gumbel noise on their log-priors.
                // Consider as many root children as the budget can tell apart: about one per
                // four generations of budget, at least two (one at a budget of one generation,
                // which pays for one child and its rollout), at most `gumbel_considered`.
                let m = (budget.generations / 4)
                    .max(budget.generations.min(2))
                    .min(s.gumbel_considered.max(2));
                // Up to m distinct children: sample again while duplicates leave fewer, until
                // samples bring nothing new.
                for attempt in 0..3u64 {
                    if tree.nodes[0].children.len() >= m || tree.nodes[0].saturated || cost.generated_tokens >= total {
                        break;
                    }
                    let wanted = m - tree.nodes[0].children.len();
                    self.expand_and_evaluate(&mut tree, &[0], problem, env, attempt, &mut cost, wanted)
                        .await?;
                    round = attempt + 1;
                }
                let mut rng = ChaCha8Rng::seed_from_u64(env.seed ^ 0x6a09_e667);
                let mut candidates: Vec<(usize, f32)> = tree.nodes[0]
                    .children
                    .iter()
                    .map(|&c| (c, tree.nodes[c].prior.max(1e-9).ln() + gumbel(&mut rng)))
                    .collect();
                candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
                let phases = (candidates.len().max(2) as f64).log2().ceil() as usize;
                let sigma = |tree: &Tree, c: usize| {
                    // σ(q) = (c_visit + max child visits) · c_scale · q, as in Gumbel MuZero.
                    let max_visits = tree.nodes[0]
                        .children
                        .iter()
                        .map(|&x| tree.nodes[x].visits)
                        .max()
                        .unwrap_or(0);
                    (50.0 + max_visits as f32) * 0.1 * tree.nodes[c].q().unwrap_or(0.0)
                };
                for phase in 0..phases {
                    if candidates.len() <= 1 || cost.generated_tokens >= total {
                        break;
                    }
                    let left = total.saturating_sub(cost.generated_tokens);
                    let per = left / ((phases - phase) as u64 * candidates.len() as u64).max(1);
                    for &(c, _) in &candidates {
                        let stop = cost.generated_tokens + per.max(1);
                        self.simulate(&mut tree, c, problem, env, stop.min(total), &mut round, &mut cost)
                            .await?;
                    }
                    candidates.sort_by(|a, b| (b.1 + sigma(&tree, b.0)).total_cmp(&(a.1 + sigma(&tree, a.0))));
                    candidates.truncate(candidates.len().div_ceil(2));
                }
                // Whatever budget is left goes to the survivor.
                if let Some(&(c, _)) = candidates.first() {
                    self.simulate(&mut tree, c, problem, env, total, &mut round, &mut cost)
                        .await?;
                }
                candidates.first().map(|&(c, _)| c)
            }
        };
        let answer = self
            .answer(&tree, chosen_root_child.unwrap_or(0), env.task, problem)
            .or_else(|| self.best_finished(&tree, 0));
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut chosen = None;
        for (finished, _, trace, score) in tree.finished() {
            if Some(finished) == answer {
                chosen = Some(candidates.len());
            }
            candidates.push(Candidate {
                trace: trace.clone(),
                scores: None,
                score,
                tokens: 0,
            });
        }
        // The node a last-resort rollout finished, with the trace it made.
        let mut last_resort = None;
        if chosen.is_none() {
            // No finished trace (a budget too small to reach one): finish the most visited
            // path with one rollout, so that the search still answers. Its tokens count.
            let leaf = self.most_visited_leaf(&tree, chosen_root_child.unwrap_or(0));
            let steps = &tree.nodes[leaf].steps;
            let request = rollout_request(problem, steps, env, env.request_seed(u64::MAX, 0));
            if let Some(g) = env.generate(&[request], &mut cost).await?.pop() {
                chosen = Some(candidates.len());
                let trace = rolled_out(steps, &g.text);
                last_resort = Some((leaf, trace.clone(), g.tokens() as u64));
                candidates.push(Candidate {
                    trace,
                    scores: None,
                    score: None,
                    tokens: g.tokens() as u64,
                });
            }
        }
        let record = env.record.then(|| record_tree(&tree, answer, last_resort, cost));
        Ok(SearchOutcome {
            answer: chosen.and_then(|c| candidates[c].trace.answer.clone()),
            trace: chosen.map(|c| candidates[c].trace.clone()),
            candidates,
            cost,
            record,
        })
    }
}

/// The searched tree as a record: every node with its visits, value, prior and score, each
/// rollout that finished a trace as a child of the node it evaluated, and the chosen answer's
/// path.
fn record_tree(
    tree: &Tree,
    answer: Option<Finished>,
    last_resort: Option<(usize, Trace, u64)>,
    cost: Cost,
) -> SearchRecord {
    let mut out = TreeRecorder::new();
    // Tree nodes are made parents first, so ids line up: node i is record node i.
    for (i, n) in tree.nodes.iter().enumerate() {
        let id = match n.parent {
            None => TreeRecorder::ROOT,
            Some(p) => {
                let own = n.steps[tree.nodes[p].steps.len().min(n.steps.len())..].to_vec();
                let answer = n.terminal.as_ref().and_then(|t| t.answer.clone());
                out.add(p, NodeKind::Step, own, answer)
            }
        };
        debug_assert_eq!(id, i);
        let r = out.node_mut(id);
        r.visits = n.visits;
        r.value = n.q();
        r.prior = n.parent.map(|_| n.prior);
        r.score = n.score;
        r.round = n.parent.map(|_| n.round);
    }
    let rollout_node = |out: &mut TreeRecorder, from: usize, trace: &Trace| {
        let own = trace.steps[tree.nodes[from].steps.len().min(trace.steps.len())..].to_vec();
        out.add(from, NodeKind::Rollout, own, trace.answer.clone())
    };
    let mut rollout_ids = Vec::with_capacity(tree.rollouts.len());
    for (from, trace, value) in &tree.rollouts {
        let id = rollout_node(&mut out, *from, trace);
        out.node_mut(id).score = Some(*value);
        out.node_mut(id).visits = 1;
        rollout_ids.push(id);
    }
    match (answer, last_resort) {
        (Some(Finished::Terminal(i)), _) => out.choose(i),
        (Some(Finished::Rollout(j)), _) => out.choose(rollout_ids[j]),
        (None, Some((leaf, trace, tokens))) => {
            let id = rollout_node(&mut out, leaf, &trace);
            out.node_mut(id).tokens = Some(tokens);
            out.choose(id);
        }
        (None, None) => {}
    }
    out.finish(cost)
}
