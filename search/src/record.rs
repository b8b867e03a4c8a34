//! What a search did, node by node, for looking inside it: every node or beam it made with its
//! text, visits, value, prior and the reward model's score, which answer it chose, and what it
//! cost. A searcher records when [`SearchEnv::record`](crate::SearchEnv) asks it to, through a
//! [`TreeRecorder`]; a searcher that records nothing is shown as the trie of its candidates
//! ([`SearchRecord::from_candidates`]). The exact step labels are filled in afterwards by whoever
//! knows the truth ([`SearchRecord::label`]); the searcher never sees them.

use std::collections::HashMap;

use ponder_datagen::{Problem, Task};
use serde::{Deserialize, Serialize};

use crate::{Candidate, Cost};

/// How a node's steps relate to its parent's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// The problem: no steps.
    #[default]
    Root,
    /// Steps that continue the parent's (tree search, beams, the trie of candidates).
    Step,
    /// A rollout that finished the parent's steps to evaluate it (its steps continue the parent's).
    Rollout,
    /// A whole trace of its own that revises its parent's (sequential revision).
    Attempt,
}

/// One node of a recorded search.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordNode {
    pub id: usize,
    pub parent: Option<usize>,
    pub kind: NodeKind,
    /// The steps this node added (for an attempt: all of its steps).
    pub steps: Vec<String>,
    /// The answer line, on a finished node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// How many times the search passed through the node (MCTS visits; for beams and tries, the
    /// beams or candidates that went through it).
    pub visits: u32,
    /// Mean backed-up value (MCTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    /// The policy's prior among its siblings (MCTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<f32>,
    /// What the reward model said about the node: the score of its last step (or of its whole
    /// evaluation trace, aggregated as the searcher aggregates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// The round of the search that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// Tokens generated to make this node alone, where the searcher knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// The search dropped it (a beam not kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pruned: bool,
    /// On the path to the chosen answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chosen: bool,
    /// Exact labels of `steps` (filled by [`SearchRecord::label`]; empty until then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<bool>,
    /// Whether the answer is right (filled by [`SearchRecord::label`], finished nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
}

impl RecordNode {
    /// The exact verdict on the node: its steps all right (and its answer, if it has one).
    pub fn right(&self) -> Option<bool> {
        if self.kind == NodeKind::Root || (self.labels.is_empty() && self.correct.is_none()) {
            return None;
        }
        Some(self.labels.iter().all(|&l| l) && self.correct.unwrap_or(true))
    }
}

/// A recorded search: its nodes (node 0 is the root), and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchRecord {
    pub nodes: Vec<RecordNode>,
    pub cost: Cost,
    /// Nodes left out to keep the record within [`MAX_NODES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// At most this many nodes are kept per record (the first made, the chosen path always).
pub const MAX_NODES: usize = 1500;

/// Builds a record node by node; node 0, the root, is there from the start.
#[derive(Clone, Debug)]
pub struct TreeRecorder {
    nodes: Vec<RecordNode>,
}

impl Default for TreeRecorder {
    fn default() -> Self {
        TreeRecorder::new()
    }
}

impl TreeRecorder {
    pub const ROOT: usize = 0;

    pub fn new() -> TreeRecorder {
        TreeRecorder {
            nodes: vec![RecordNode::default()],
        }
    }

    /// Adds a node under `parent` and returns its id.
    pub fn add(&mut self, parent: usize, kind: NodeKind, steps: Vec<String>, answer: Option<String>) -> usize {
        let id = self.nodes.len();
        self.nodes.push(RecordNode {
            id,
            parent: Some(parent),
            kind,
            steps,
            answer,
            ..RecordNode::default()
        });
        id
    }

    /// The child of `parent` with these steps and answer, made if there is none yet; its visits
    /// go up by one either way.
    pub fn child(&mut self, parent: usize, kind: NodeKind, steps: &[String], answer: Option<&str>) -> usize {
        let found = self.nodes.iter().position(|n| {
            n.parent == Some(parent) && n.kind == kind && n.steps == steps && n.answer.as_deref() == answer
        });
        let id = found.unwrap_or_else(|| self.add(parent, kind, steps.to_vec(), answer.map(str::to_string)));
        self.nodes[id].visits += 1;
        id
    }

    pub fn node(&self, id: usize) -> &RecordNode {
        &self.nodes[id]
    }

    pub fn node_mut(&mut self, id: usize) -> &mut RecordNode {
        &mut self.nodes[id]
    }

    /// Marks `id` and its ancestors as the chosen path.
    pub fn choose(&mut self, id: usize) {
        let mut at = Some(id);
        while let Some(i) = at {
            self.nodes[i].chosen = true;
            at = self.nodes[i].parent;
        }
    }

    /// [`Self::finish`] after marking the path to `nodes[chosen]`: the node of the candidate a
    /// search returned, when it returned one.
    pub fn finish_choosing(mut self, nodes: &[usize], chosen: Option<usize>, cost: Cost) -> SearchRecord {
        if let Some(&node) = chosen.and_then(|i| nodes.get(i)) {
            self.choose(node);
        }
        self.finish(cost)
    }

    /// The record, cut to [`MAX_NODES`] (the chosen path is always kept).
    pub fn finish(mut self, cost: Cost) -> SearchRecord {
        let mut truncated = 0;
        if self.nodes.len() > MAX_NODES {
            let keep: Vec<bool> = (self.nodes.iter()).map(|n| n.id < MAX_NODES || n.chosen).collect();
            // Keep ancestors of kept nodes, so the tree stays connected.
            let mut keep = keep;
            for i in (0..self.nodes.len()).rev() {
                if keep[i]
                    && let Some(p) = self.nodes[i].parent
                {
                    keep[p] = true;
                }
            }
            let mut new_id = vec![usize::MAX; self.nodes.len()];
            let mut kept = Vec::new();
            for (i, mut n) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
                if !keep[i] {
                    truncated += 1;
                    continue;
                }
                new_id[i] = kept.len();
                n.id = kept.len();
                n.parent = n.parent.map(|p| new_id[p]);
                kept.push(n);
            }
            self.nodes = kept;
        }
        SearchRecord {
            nodes: self.nodes,
            cost,
            truncated,
        }
    }
}

impl SearchRecord {
    /// The trie of finished candidates' steps (what a search that records nothing shows): a node
    /// per distinct step prefix, visited by the candidates through it, with a process reward
    /// model's score of that step where the candidate has one, and a leaf per candidate's answer.
    pub fn from_candidates(candidates: &[Candidate], chosen: Option<usize>, cost: Cost) -> SearchRecord {
        let mut tree = TreeRecorder::new();
        tree.node_mut(TreeRecorder::ROOT).visits = candidates.len() as u32;
        for (ci, c) in candidates.iter().enumerate() {
            let mut at = TreeRecorder::ROOT;
            for (si, step) in c.trace.steps.iter().enumerate() {
                at = tree.child(at, NodeKind::Step, std::slice::from_ref(step), None);
                if let Some(s) = c.scores.as_ref().and_then(|s| s.steps.get(si)) {
                    tree.node_mut(at).score = Some(*s);
                }
            }
            let leaf = tree.add(at, NodeKind::Step, Vec::new(), c.trace.answer.clone());
            let node = tree.node_mut(leaf);
            node.visits = 1;
            node.score = c.score;
            node.tokens = Some(c.tokens);
            if chosen == Some(ci) {
                tree.choose(leaf);
            }
        }
        tree.finish(cost)
    }

    /// Sequential revision's chains: each candidate an attempt revising the one before it in its
    /// chain (`chain_of[i]` names candidate i's chain; attempts come in the order they were made).
    pub fn attempt_chains(
        candidates: &[Candidate],
        chain_of: &[usize],
        chosen: Option<usize>,
        cost: Cost,
    ) -> SearchRecord {
        let mut tree = TreeRecorder::new();
        let mut last: HashMap<usize, usize> = HashMap::new();
        for (ci, c) in candidates.iter().enumerate() {
            let chain = chain_of.get(ci).copied().unwrap_or(0);
            let parent = last.get(&chain).copied().unwrap_or(TreeRecorder::ROOT);
            let id = tree.add(parent, NodeKind::Attempt, c.trace.steps.clone(), c.trace.answer.clone());
            let node = tree.node_mut(id);
            node.visits = 1;
            node.score = c.score;
            node.tokens = Some(c.tokens);
            last.insert(chain, id);
            let attempt = tree_depth(&tree, id);
            tree.node_mut(id).round = Some(attempt as u64);
            if chosen == Some(ci) {
                tree.choose(id);
            }
        }
        tree.node_mut(TreeRecorder::ROOT).visits = candidates.len() as u32;
        tree.finish(cost)
    }

    /// The steps a node stands for, from the problem on: its ancestors' and its own (an attempt
    /// stands alone).
    pub fn trace_steps(&self, id: usize) -> Vec<String> {
        let mut parts: Vec<&[String]> = Vec::new();
        let mut at = Some(id);
        while let Some(i) = at {
            let n = &self.nodes[i];
            parts.push(&n.steps);
            if n.kind == NodeKind::Attempt {
                break;
            }
            at = n.parent;
        }
        parts.iter().rev().flat_map(|s| s.iter().cloned()).collect()
    }

    /// Fills every node's exact step labels and, on finished nodes, whether the answer is right.
    pub fn label(&mut self, task: &dyn Task, problem: &Problem) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].kind == NodeKind::Root {
                continue;
            }
            let steps = self.trace_steps(i);
            let own = self.nodes[i].steps.len();
            if let Ok(labels) = task.check_steps(problem, &steps) {
                self.nodes[i].labels = labels[labels.len().saturating_sub(own)..].to_vec();
            }
            if let Some(answer) = &self.nodes[i].answer {
                self.nodes[i].correct = task.check_answer(problem, answer).ok();
            }
        }
    }

    /// The chosen finished node, if any.
    pub fn chosen_leaf(&self) -> Option<usize> {
        (self.nodes.iter())
            .filter(|n| n.chosen && n.answer.is_some())
            .map(|n| n.id)
            .next_back()
    }
}

/// How many nodes lie above `id` (an attempt's number in its chain).
fn tree_depth(tree: &TreeRecorder, id: usize) -> usize {
    let mut depth = 0;
    let mut at = tree.node(id).parent;
    while let Some(p) = at {
        depth += 1;
        at = tree.node(p).parent;
    }
    depth
}
