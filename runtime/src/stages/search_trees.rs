//! Search-eval's recorded searches: the first problems' searches, per searcher and budget, node
//! by node, with every node's exact step labels, in `search_trees.jsonl` (one line per search;
//! `docs/format.md`). Each searcher's lines are written when it finishes, beside search-eval's
//! checkpoint, so a resumed stage keeps those of the searchers it does not run again.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ponder_datagen::{Problem, Task};
use ponder_search::record::SearchRecord;
use ponder_search::{Candidate, Cost, SearchOutcome, Selection, select};
use serde::{Deserialize, Serialize};

/// The file a run's recorded searches end in.
pub const FILE: &str = "search_trees.jsonl";

/// One recorded search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeLine {
    /// The searcher's label in `[pipeline.search_eval]`.
    pub searcher: String,
    pub budget: usize,
    /// The problem's place among the held-out problems.
    pub problem: usize,
    pub id: String,
    pub prompt: String,
    /// The answer the search gave, and whether it is right.
    pub answer: Option<String>,
    pub correct: bool,
    #[serde(flatten)]
    pub record: SearchRecord,
}

/// The record of one search, labelled: the searcher's own, or the trie of its candidates.
pub fn record_of(task: &dyn Task, problem: &Problem, outcome: &SearchOutcome) -> SearchRecord {
    let mut record = outcome.record.clone().unwrap_or_else(|| {
        let chosen = outcome.chosen_candidate();
        SearchRecord::from_candidates(&outcome.candidates, chosen, outcome.cost)
    });
    record.label(task, problem);
    record
}

/// The record of a budget-`b` run read off a larger run whose candidates come in the order they
/// were made: the first `b` candidates, as revision's chain of attempts (`attempts`) or as the
/// trie of independent samples; its cost is theirs (tokens generated, traces scored).
pub fn prefix_record(
    task: &dyn Task,
    problem: &Problem,
    candidates: &[Candidate],
    b: usize,
    how: Selection,
    attempts: bool,
) -> SearchRecord {
    let sub = &candidates[..b.min(candidates.len())];
    let chosen = select(task, problem, sub, how);
    let cost = Cost {
        generated_tokens: sub.iter().map(|c| c.tokens).sum(),
        policy_requests: sub.len() as u64,
        reward_traces: sub.iter().filter(|c| c.scores.is_some()).count() as u64,
        ..Cost::default()
    };
    let mut record = if attempts {
        SearchRecord::attempt_chains(sub, &vec![0; sub.len()], chosen, cost)
    } else {
        SearchRecord::from_candidates(sub, chosen, cost)
    };
    record.label(task, problem);
    record
}

/// Where searcher number `index` keeps its lines until the stage ends.
pub fn part(checkpoints: &Path, index: usize) -> PathBuf {
    checkpoints.join(format!("trees-{index}.jsonl"))
}

/// Writes one searcher's lines (replacing what a killed attempt left).
pub fn write_part(path: &Path, lines: &[TreeLine]) -> anyhow::Result<()> {
    let mut text = String::new();
    for line in lines {
        text.push_str(&serde_json::to_string(line)?);
        text.push('\n');
    }
    ponder_datagen::io::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Joins the searchers' parts, in order, into the run's `search_trees.jsonl`; returns how many
/// searches it holds.
pub fn join_parts(checkpoints: &Path, searchers: usize, out: &Path) -> anyhow::Result<usize> {
    let tmp = out.with_extension("jsonl.tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let mut count = 0;
    for index in 0..searchers {
        let path = part(checkpoints, index);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        count += text.lines().filter(|l| !l.trim().is_empty()).count();
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(count)
}

/// Reads a run's recorded searches; a bad line is an error that names it.
pub fn read(path: &Path) -> anyhow::Result<Vec<TreeLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    (text.lines().enumerate())
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
        .collect()
}
