//! Searchers on countdown with a policy that plays uniformly random legal moves and the exact
//! process labels as reward: search must find what single samples rarely do, spend what it
//! reports, and give the same outcome whether problems run alone or in lockstep.

use std::sync::Arc;

use async_trait::async_trait;
use ponder_datagen::countdown::{Countdown, CountdownConfig, moves};
use ponder_datagen::{Problem, Task, TaskRng, Trace};
use ponder_policy_init::{Finish, GenRequest, Generation, Policy, PolicyError, Sampling};
use ponder_reward::oracle::OracleProcessReward;
use ponder_reward::{Aggregation, RewardModel};
use ponder_search::beam::{BeamMode, BeamSearch, BeamSettings};
use ponder_search::best_of_n::{BestOfN, BestOfNSettings};
use ponder_search::lockstep::Lockstep;
use ponder_search::mcts::{AnswerBy, Evaluation, Mcts, MctsSettings, RootSelection};
use ponder_search::record::{NodeKind, SearchRecord};
use ponder_search::revision::{Revision, RevisionSettings};
use ponder_search::{Budget, SearchEnv, SearchOutcome, Searcher, Selection};
use rand::{Rng, SeedableRng};

/// Plays a uniformly random legal move per step; writes the answer when one number is left.
struct RandomMoves;

fn state_of(text: &str) -> Option<(Vec<(u64, String)>, u64)> {
    let mut lines = text.lines();
    let head = lines.next()?.strip_prefix("countdown ")?;
    let (nums, target) = head.split_once(" target ")?;
    let mut state: Vec<(u64, String)> = nums
        .split(' ')
        .map(|n| n.parse().ok().map(|v: u64| (v, n.to_string())))
        .collect::<Option<_>>()?;
    for line in lines {
        let (eq, _) = line.split_once(" left ")?;
        let (lhs, _) = eq.split_once('=')?;
        let pos = lhs.find(|c: char| "+-*/".contains(c))?;
        let (a, op, b): (u64, char, u64) = (
            lhs[..pos].parse().ok()?,
            lhs[pos..].chars().next()?,
            lhs[pos + 1..].parse().ok()?,
        );
        let ia = state.iter().position(|(v, _)| *v == a)?;
        let (_, ea) = state.remove(ia);
        let ib = state.iter().position(|(v, _)| *v == b)?;
        let (_, eb) = state.remove(ib);
        let v = match op {
            '+' => a + b,
            '-' => a - b,
            '*' => a * b,
            _ => a / b,
        };
        state.push((v, format!("({ea}{op}{eb})")));
    }
    Some((state, target.parse().ok()?))
}

#[async_trait]
impl Policy for RandomMoves {
    fn describe(&self) -> String {
        "random legal moves".into()
    }

    fn params(&self) -> Option<usize> {
        None
    }

    async fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>, PolicyError> {
        Ok(requests
            .iter()
            .map(|r| {
                let mut rng = TaskRng::seed_from_u64(r.seed);
                let mut text = String::new();
                let mut logprobs = Vec::new();
                loop {
                    let (state, _) = state_of(&format!("{}{}", r.prompt, text)).unwrap_or_default();
                    if state.len() <= 1 {
                        let answer = state.first().map(|(_, e)| e.clone()).unwrap_or_default();
                        text.push_str(&format!("Answer: {answer}\n"));
                        logprobs.push(0.0);
                        return Generation {
                            text,
                            token_ids: Vec::new(),
                            logprobs,
                            finish: Finish::Answer,
                            prompt_tokens: 0,
                            computed_prompt_tokens: 0,
                        };
                    }
                    let mut values: Vec<u64> = state.iter().map(|(v, _)| *v).collect();
                    values.sort_unstable();
                    let ms = moves(&values);
                    let m = &ms[rng.random_range(0..ms.len())];
                    text.push_str(&m.render());
                    text.push('\n');
                    logprobs.push(-(ms.len() as f32).ln());
                    if r.stop == ponder_policy_init::Stop::StepEnd {
                        return Generation {
                            text,
                            token_ids: Vec::new(),
                            logprobs,
                            finish: Finish::StepEnd,
                            prompt_tokens: 0,
                            computed_prompt_tokens: 0,
                        };
                    }
                }
            })
            .collect())
    }

    async fn logprobs(&self, _: &str, _: &str) -> Result<Vec<f32>, PolicyError> {
        Ok(Vec::new())
    }
}

fn problems(n: usize) -> (Arc<dyn Task>, Vec<Problem>) {
    let task: Arc<dyn Task> = Arc::new(Countdown::new(CountdownConfig::default()).expect("task"));
    let mut rng = TaskRng::seed_from_u64(42);
    let problems = (0..n).map(|_| task.sample(&mut rng, None).expect("samples")).collect();
    (task, problems)
}

fn env<'a>(policy: &'a dyn Policy, reward: &'a dyn RewardModel, task: &'a dyn Task, seed: u64) -> SearchEnv<'a> {
    SearchEnv {
        policy,
        reward,
        task,
        seed,
        max_step_tokens: 8,
        max_trace_tokens: 8,
        sampling: Sampling::default(),
        record: false,
    }
}

async fn accuracy(searcher: &dyn Searcher, generations: usize, n: usize) -> (f64, f64) {
    let (task, problems) = problems(n);
    let reward = OracleProcessReward::new(task.clone(), Aggregation::Last);
    let mut right = 0;
    let mut tokens = 0;
    for (i, p) in problems.iter().enumerate() {
        let e = env(&RandomMoves, &reward, task.as_ref(), i as u64);
        let budget = Budget {
            generations,
            tokens_per_generation: 3,
        };
        let out = searcher.search(p, &e, &budget).await.expect("searches");
        tokens += out.cost.generated_tokens;
        if let Some(a) = &out.answer {
            right += usize::from(task.check_answer(p, a).expect("checks"));
        }
    }
    (right as f64 / n as f64, tokens as f64 / n as f64)
}

#[tokio::test]
async fn process_guided_search_beats_single_samples() {
    let single = BestOfN {
        settings: BestOfNSettings {
            selection: Selection::Majority,
            ..BestOfNSettings::default()
        },
    };
    let (one, _) = accuracy(&single, 1, 60).await;
    let beam = BeamSearch {
        settings: BeamSettings::default(),
    };
    let (beam16, beam_tokens) = accuracy(&beam, 16, 60).await;
    let dvts = BeamSearch {
        settings: BeamSettings {
            mode: BeamMode::Dvts,
            ..BeamSettings::default()
        },
    };
    let (dvts16, _) = accuracy(&dvts, 16, 60).await;
    let weighted = BestOfN {
        settings: BestOfNSettings::default(),
    };
    let (bon16, _) = accuracy(&weighted, 16, 60).await;
    assert!(one < 0.25, "random play rarely solves countdown: {one}");
    assert!(beam16 > 0.7 && dvts16 > 0.7, "beam {beam16}, dvts {dvts16}");
    assert!(bon16 > one, "best-of-16 weighted {bon16} vs single {one}");
    // Beam search spends about N step generations per round: never wildly more.
    assert!(
        beam_tokens <= 16.0 * 3.0 * 2.0,
        "beam spent {beam_tokens} tokens per problem"
    );
}

#[tokio::test]
async fn mcts_accuracy_does_not_fall_with_budget() {
    for (root, evaluation) in [
        (RootSelection::Puct, Evaluation::Reward),
        (RootSelection::Gumbel, Evaluation::Reward),
        (RootSelection::Gumbel, Evaluation::Rollout),
    ] {
        let mcts = Mcts {
            settings: MctsSettings {
                root,
                evaluation,
                ..MctsSettings::default()
            },
        };
        let mut last = 0.0;
        for generations in [1, 2, 8, 32] {
            let (acc, tokens) = accuracy(&mcts, generations, 50).await;
            // Within the budget, give or take one wave's last step and the rollout that
            // finishes the chosen path when no trace ended in the tree (a whole trace is 4
            // tokens here); a full wave of 4 leaves × 4 steps would overshoot by 16.
            let budget = (generations * 3) as f64;
            eprintln!("{root:?} {evaluation:?} at {generations}: {tokens} tokens (budget {budget}), accuracy {acc}");
            assert!(
                tokens <= budget + 5.0,
                "{root:?} {evaluation:?} at {generations}: {tokens} tokens, budget {budget}"
            );
            assert!(
                acc + 0.06 >= last,
                "{root:?} {evaluation:?}: accuracy fell from {last} to {acc} at {generations}"
            );
            last = acc;
        }
        // A uniform policy puts the one good first move among Gumbel's considered root
        // children only so often; PUCT with progressive widening keeps sampling the root.
        let floor = if root == RootSelection::Puct { 0.85 } else { 0.35 };
        assert!(last > floor, "{root:?} at the largest budget: {last}");
    }
}

/// Problem `i` searched with 16 generations' worth of tokens.
async fn search_16(
    searcher: &dyn Searcher,
    reward: &dyn RewardModel,
    task: &dyn Task,
    p: &Problem,
    i: usize,
) -> SearchOutcome {
    let budget = Budget {
        generations: 16,
        tokens_per_generation: 3,
    };
    let e = env(&RandomMoves, reward, task, i as u64);
    searcher.search(p, &e, &budget).await.expect("searches")
}

/// The best score among the candidates that are `trace`.
fn score_of(out: &SearchOutcome, trace: &Trace) -> Option<f32> {
    (out.candidates.iter())
        .filter(|c| &c.trace == trace)
        .filter_map(|c| c.score)
        .reduce(f32::max)
}

#[tokio::test]
async fn mcts_answers_with_the_best_scored_finished_trace_it_saw() {
    let (task, problems) = problems(30);
    let reward = OracleProcessReward::new(task.clone(), Aggregation::Last);
    for evaluation in [Evaluation::Rollout, Evaluation::Reward] {
        // A PUCT root: the answer may come from anywhere in the tree (Gumbel's from one root child).
        let mcts = Mcts {
            settings: MctsSettings {
                root: RootSelection::Puct,
                evaluation,
                answer: AnswerBy::Value,
                ..MctsSettings::default()
            },
        };
        let mut scored = 0;
        for (i, p) in problems.iter().enumerate() {
            let out = search_16(&mcts, &reward, task.as_ref(), p, i).await;
            let chosen = out.trace.as_ref().expect("an answer");
            let best = out.candidates.iter().filter_map(|c| c.score).reduce(f32::max);
            let Some(best) = best else { continue };
            scored += 1;
            assert_eq!(score_of(&out, chosen), Some(best), "{evaluation:?}, problem {i}");
        }
        // Not vacuous: most searches finish traces to choose among.
        assert!(
            scored >= 20,
            "{evaluation:?}: only {scored} of 30 searches finished a trace"
        );
    }
}

#[tokio::test]
async fn mcts_weighted_vote_answers_with_the_heaviest_answer_and_its_best_trace() {
    let (task, problems) = problems(30);
    let reward = OracleProcessReward::new(task.clone(), Aggregation::Last);
    let mcts = Mcts {
        settings: MctsSettings {
            answer: AnswerBy::WeightedVote,
            ..MctsSettings::default()
        },
    };
    let mut contested = 0;
    for (i, p) in problems.iter().enumerate() {
        let out = search_16(&mcts, &reward, task.as_ref(), p, i).await;
        let key = |c: &ponder_search::Candidate| task.answer_key(p, c.trace.answer.as_deref()?);
        let mut totals: std::collections::HashMap<String, f32> = Default::default();
        for c in &out.candidates {
            if let Some(k) = key(c) {
                *totals.entry(k).or_default() += c.score.unwrap_or(0.0);
            }
        }
        let Some(chosen) = out.trace.as_ref() else { continue };
        let chosen_key = task
            .answer_key(p, chosen.answer.as_deref().expect("an answer"))
            .expect("a key");
        let heaviest = totals.values().copied().fold(f32::MIN, f32::max);
        assert!(
            totals[&chosen_key] >= heaviest - 1e-4,
            "problem {i}: {totals:?}, chose {chosen_key}"
        );
        let best_of_key = (out.candidates.iter())
            .filter(|c| key(c).as_ref() == Some(&chosen_key))
            .filter_map(|c| c.score)
            .reduce(f32::max);
        assert_eq!(score_of(&out, chosen), best_of_key, "problem {i}");
        contested += usize::from(totals.len() > 1);
    }
    // Not vacuous: most searches weigh more than one answer.
    assert!(contested >= 15, "only {contested} of 30 searches saw two answers");
}

#[tokio::test]
async fn lockstep_batches_give_the_same_outcomes() {
    let (task, problems) = problems(12);
    let reward = OracleProcessReward::new(task.clone(), Aggregation::Last);
    let mcts = Mcts {
        settings: MctsSettings::default(),
    };
    let budget = Budget {
        generations: 8,
        tokens_per_generation: 3,
    };
    let mut alone = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let e = env(&RandomMoves, &reward, task.as_ref(), i as u64);
        alone.push(mcts.search(p, &e, &budget).await.expect("searches"));
    }
    let lockstep = Lockstep::new(&RandomMoves, &reward, problems.len());
    let runs = problems.iter().enumerate().map(|(i, p)| {
        let lockstep = &lockstep;
        let (mcts, task) = (&mcts, task.as_ref());
        async move {
            let me = lockstep.participant(i);
            let e = env(&me, &me, task, i as u64);
            let out = mcts.search(p, &e, &budget).await.expect("searches");
            lockstep.leave().await;
            out
        }
    });
    let together = futures::future::join_all(runs).await;
    for (a, b) in alone.iter().zip(&together) {
        assert_eq!(a.answer, b.answer);
        assert_eq!(a.cost, b.cost);
    }
}

#[tokio::test]
async fn mcts_answers_even_when_the_budget_ends_before_any_trace_does() {
    let (task, problems) = problems(20);
    let reward = OracleProcessReward::new(task.clone(), Aggregation::Last);
    // Scoring partial traces (rollouts would finish traces by themselves).
    let mcts = Mcts {
        settings: MctsSettings {
            evaluation: Evaluation::Reward,
            ..MctsSettings::default()
        },
    };
    for (i, p) in problems.iter().enumerate() {
        let e = env(&RandomMoves, &reward, task.as_ref(), i as u64);
        let budget = Budget {
            generations: 1,
            tokens_per_generation: 3,
        };
        let out = mcts.search(p, &e, &budget).await.expect("searches");
        assert!(out.trace.is_some(), "problem {i}: no trace at budget 1");
        assert!(out.cost.generated_tokens > 0);
    }
}

#[tokio::test]
async fn mcts_expands_no_node_at_the_depth_limit() {
    let (task, problems) = problems(20);
    let reward = OracleProcessReward::new(task.clone(), Aggregation::Last);
    // Partial traces scored, no rollouts: every finished trace but the closing rollout is a
    // terminal node, the answer sampled below a node of two steps (three numbers, two moves).
    let searched = |max_depth: usize| Mcts {
        settings: MctsSettings {
            evaluation: Evaluation::Reward,
            max_depth,
            ..MctsSettings::default()
        },
    };
    let mut unlimited_finished = 0;
    for (i, p) in problems.iter().enumerate() {
        let shallow = search_16(&searched(2), &reward, task.as_ref(), p, i).await;
        // Only the rollout that finishes the chosen path: no node of two steps was expanded.
        assert_eq!(shallow.candidates.len(), 1, "problem {i}: {:?}", shallow.candidates);
        assert!(shallow.trace.is_some(), "problem {i}: no answer");
        let deep = search_16(&searched(24), &reward, task.as_ref(), p, i).await;
        unlimited_finished += usize::from(deep.candidates.len() > 1);
    }
    // Not vacuous: without the limit the tree finishes traces of its own.
    assert!(unlimited_finished >= 5, "{unlimited_finished} of 20");
}

/// Asserts what every record must hold: ids in order, parents made before children, one chosen
/// path from the root to a finished node whose answer is the outcome's, and exact labels that
/// agree with the task on that node's whole trace.
fn check_record(record: &SearchRecord, out: &SearchOutcome, task: &dyn Task, p: &Problem, what: &str) {
    assert_eq!(record.nodes[0].kind, NodeKind::Root, "{what}");
    for (i, n) in record.nodes.iter().enumerate() {
        assert_eq!(n.id, i, "{what}: ids in order");
        if i > 0 {
            assert!(n.parent.is_some_and(|q| q < i), "{what}: node {i}'s parent comes first");
        }
    }
    let leaf = record
        .chosen_leaf()
        .unwrap_or_else(|| panic!("{what}: a chosen finished node"));
    assert_eq!(
        record.nodes[leaf].answer, out.answer,
        "{what}: the chosen node is the answer"
    );
    let mut at = Some(leaf);
    while let Some(i) = at {
        assert!(record.nodes[i].chosen, "{what}: the chosen path reaches the root");
        at = record.nodes[i].parent;
    }
    let steps = record.trace_steps(leaf);
    assert_eq!(
        Some(&steps),
        out.trace.as_ref().map(|t| &t.steps),
        "{what}: the path is the chosen trace"
    );
    let truth = task.check_steps(p, &steps).expect("labels");
    let own = record.nodes[leaf].steps.len();
    assert_eq!(
        record.nodes[leaf].labels,
        truth[truth.len() - own..],
        "{what}: exact labels"
    );
    let right = out.answer.as_ref().map(|a| task.check_answer(p, a).expect("checks"));
    assert_eq!(record.nodes[leaf].correct, right, "{what}: the answer's verdict");
}

#[tokio::test]
async fn recorded_searches_show_their_nodes_and_chosen_path_and_recording_changes_nothing() {
    let (task, problems) = problems(6);
    let reward = OracleProcessReward::new(task.clone(), Aggregation::Last);
    let searchers: Vec<(&str, Box<dyn Searcher>)> = vec![
        (
            "mcts",
            Box::new(Mcts {
                settings: MctsSettings::default(),
            }),
        ),
        (
            "mcts rollout",
            Box::new(Mcts {
                settings: MctsSettings {
                    evaluation: Evaluation::Rollout,
                    ..MctsSettings::default()
                },
            }),
        ),
        (
            "beam",
            Box::new(BeamSearch {
                settings: BeamSettings::default(),
            }),
        ),
        (
            "dvts",
            Box::new(BeamSearch {
                settings: BeamSettings {
                    mode: BeamMode::Dvts,
                    ..BeamSettings::default()
                },
            }),
        ),
        (
            "revision",
            Box::new(Revision {
                settings: RevisionSettings {
                    chains: 2,
                    ..RevisionSettings::default()
                },
            }),
        ),
    ];
    let budget = Budget {
        generations: 8,
        tokens_per_generation: 3,
    };
    let mut mcts_nodes = 0;
    for (what, searcher) in &searchers {
        for (i, p) in problems.iter().enumerate() {
            let plain = searcher
                .search(p, &env(&RandomMoves, &reward, task.as_ref(), i as u64), &budget)
                .await
                .expect("searches");
            assert!(plain.record.is_none(), "{what}: no record unless asked");
            let mut e = env(&RandomMoves, &reward, task.as_ref(), i as u64);
            e.record = true;
            let recorded = searcher.search(p, &e, &budget).await.expect("searches");
            assert_eq!(
                (&plain.answer, &plain.trace, plain.cost),
                (&recorded.answer, &recorded.trace, recorded.cost),
                "{what}: recording changes nothing"
            );
            let mut record = recorded.record.clone().unwrap_or_else(|| panic!("{what}: a record"));
            assert_eq!(record.cost, recorded.cost, "{what}: the record's cost");
            record.label(task.as_ref(), p);
            check_record(&record, &recorded, task.as_ref(), p, what);
            if what.starts_with("mcts") {
                // The tree's root was visited once per evaluation backed up.
                assert!(
                    record.nodes[0].visits as usize >= record.nodes.len() / 2,
                    "{what}: root visits"
                );
                mcts_nodes += record.nodes.len();
            }
            if *what == "revision" {
                let attempts = record.nodes.iter().filter(|n| n.kind == NodeKind::Attempt).count();
                assert_eq!(attempts, recorded.candidates.len(), "revision: one node per attempt");
            }
        }
    }
    assert!(mcts_nodes > 6 * 2 * 4, "MCTS recorded its trees ({mcts_nodes} nodes)");
}

#[test]
fn a_search_that_records_nothing_is_shown_as_the_trie_of_its_candidates() {
    use ponder_reward::StepScores;
    use ponder_search::Candidate;
    let c = |steps: &[&str], answer: &str, scores: &[f32]| Candidate {
        trace: Trace::new(steps.iter().map(|s| s.to_string()).collect(), answer),
        scores: Some(StepScores {
            steps: scores.to_vec(),
            answer: None,
        }),
        score: scores.last().copied(),
        tokens: 5,
    };
    let candidates = vec![
        c(&["a", "b"], "x", &[0.9, 0.8]),
        c(&["a", "c"], "y", &[0.9, 0.2]),
        c(&["d"], "z", &[0.1]),
    ];
    let r = SearchRecord::from_candidates(&candidates, Some(1), Default::default());
    // root, a, b, x-leaf, c, y-leaf, d, z-leaf
    assert_eq!(r.nodes.len(), 8);
    let a = &r.nodes[1];
    assert_eq!(
        (a.steps.as_slice(), a.visits, a.score),
        (&["a".to_string()][..], 2, Some(0.9))
    );
    assert_eq!(r.nodes[0].visits, 3);
    let chosen: Vec<usize> = r.nodes.iter().filter(|n| n.chosen).map(|n| n.id).collect();
    assert_eq!(chosen, vec![0, 1, 4, 5], "the second candidate's path");
    assert_eq!(r.trace_steps(5), vec!["a".to_string(), "c".to_string()]);
    assert_eq!(r.chosen_leaf(), Some(5));
}
