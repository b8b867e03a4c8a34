//! Many searches at once, in lockstep: each search runs as its own task, and a round ends when
//! every live task has made its next call; the round's policy calls then go to the policy as
//! one batch and its reward calls to the reward model as one batch. Batches are assembled in
//! task order, so results do not depend on scheduling: the same seeds give the same outcomes.

use std::sync::Mutex;

use async_trait::async_trait;
use futures::channel::oneshot;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::{GenRequest, Generation, Policy, PolicyError};
use ponder_reward::{Aggregation, Granularity, RewardError, RewardModel, StepScores};

use crate::{Budget, SearchEnv, SearchError, SearchOutcome, Searcher};

enum Call {
    Generate(Vec<GenRequest>),
    Score(Problem, Vec<Trace>),
}

enum Reply {
    Generated(Result<Vec<Generation>, String>),
    Scored(Result<Vec<StepScores>, String>),
}

struct Pending {
    task: usize,
    call: Call,
    reply: oneshot::Sender<Reply>,
}

struct State {
    live: usize,
    pending: Vec<Pending>,
}

/// Runs `searcher` on every problem at once at `budget`, their policy and reward calls batched
/// in lockstep through `env`'s policy and reward model. Each search gets `env` (task, limits,
/// sampling, seed, recording) as `per_problem` adjusts it for its index (its own seed, say).
pub async fn search_all(
    searcher: &dyn Searcher,
    env: &SearchEnv<'_>,
    problems: &[Problem],
    budget: &Budget,
    per_problem: impl Fn(usize, &mut SearchEnv<'_>),
) -> Vec<Result<SearchOutcome, SearchError>> {
    let lockstep = Lockstep::new(env.policy, env.reward, problems.len());
    let runs = problems.iter().enumerate().map(|(i, p)| {
        let (lockstep, per_problem) = (&lockstep, &per_problem);
        async move {
            let me = lockstep.participant(i);
            let mut own = SearchEnv {
                policy: &me,
                reward: &me,
                task: env.task,
                seed: env.seed,
                max_step_tokens: env.max_step_tokens,
                max_trace_tokens: env.max_trace_tokens,
                sampling: env.sampling,
                record: env.record,
            };
            per_problem(i, &mut own);
            let out = searcher.search(p, &own, budget).await;
            lockstep.leave().await;
            out
        }
    });
    futures::future::join_all(runs).await
}

/// Shares one policy and one reward model among `tasks` concurrent searches.
pub struct Lockstep<'a> {
    policy: &'a dyn Policy,
    reward: &'a dyn RewardModel,
    state: Mutex<State>,
}

impl<'a> Lockstep<'a> {
    pub fn new(policy: &'a dyn Policy, reward: &'a dyn RewardModel, tasks: usize) -> Lockstep<'a> {
        Lockstep {
            policy,
            reward,
            state: Mutex::new(State {
                live: tasks,
                pending: Vec::new(),
            }),
        }
    }

    /// The policy and reward model as task `id` sees them.
    pub fn participant(&'a self, id: usize) -> Participant<'a> {
        Participant { lockstep: self, id }
    }

    /// Task `id` is done: it will make no more calls.
    pub async fn leave(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.live = s.live.saturating_sub(1);
        }
        self.run_if_ready().await;
    }

    async fn call(&self, task: usize, call: Call) -> Reply {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut s) = self.state.lock() {
            s.pending.push(Pending { task, call, reply: tx });
        }
        self.run_if_ready().await;
        rx.await
            .unwrap_or_else(|_| Reply::Generated(Err("the batch was dropped".into())))
    }

    /// Runs the round if every live task is waiting.
    async fn run_if_ready(&self) {
        let mut round = match self.state.lock() {
            Ok(mut s) if !s.pending.is_empty() && s.pending.len() >= s.live => std::mem::take(&mut s.pending),
            _ => return,
        };
        round.sort_by_key(|p| p.task);
        let mut requests: Vec<GenRequest> = Vec::new();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut scoring: Vec<(&Problem, &[Trace])> = Vec::new();
        for p in &round {
            match &p.call {
                Call::Generate(r) => {
                    spans.push((requests.len(), r.len()));
                    requests.extend(r.iter().cloned());
                }
                Call::Score(problem, traces) => scoring.push((problem, traces)),
            }
        }
        let generated = if requests.is_empty() {
            Ok(Vec::new())
        } else {
            self.policy.generate(&requests).await.map_err(|e| e.to_string())
        };
        let scored = if scoring.is_empty() {
            Ok(Vec::new())
        } else {
            self.reward.score_many(&scoring).await.map_err(|e| e.to_string())
        };
        let mut spans = spans.into_iter();
        let mut scores = scored.map(|s| s.into_iter());
        for p in round {
            let reply = match p.call {
                Call::Generate(_) => {
                    let (start, len) = spans.next().unwrap_or((0, 0));
                    Reply::Generated(match &generated {
                        Ok(g) => Ok(g[start..start + len].to_vec()),
                        Err(e) => Err(e.clone()),
                    })
                }
                Call::Score(..) => Reply::Scored(match &mut scores {
                    Ok(it) => it.next().ok_or_else(|| "missing scores".to_string()),
                    Err(e) => Err(e.clone()),
                }),
            };
            let _ = p.reply.send(reply);
        }
    }
}

/// One task's view of the shared policy and reward model.
pub struct Participant<'a> {
    lockstep: &'a Lockstep<'a>,
    id: usize,
}

#[async_trait]
impl Policy for Participant<'_> {
    fn describe(&self) -> String {
        self.lockstep.policy.describe()
    }

    fn params(&self) -> Option<usize> {
        self.lockstep.policy.params()
    }

    async fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>, PolicyError> {
        match self.lockstep.call(self.id, Call::Generate(requests.to_vec())).await {
            Reply::Generated(r) => r.map_err(PolicyError::Remote),
            Reply::Scored(_) => Err(PolicyError::Remote("lockstep: wrong reply".into())),
        }
    }

    async fn logprobs(&self, context: &str, continuation: &str) -> Result<Vec<f32>, PolicyError> {
        self.lockstep.policy.logprobs(context, continuation).await
    }
}

#[async_trait]
impl RewardModel for Participant<'_> {
    fn describe(&self) -> String {
        self.lockstep.reward.describe()
    }

    fn granularity(&self) -> Granularity {
        self.lockstep.reward.granularity()
    }

    fn aggregation(&self) -> Aggregation {
        self.lockstep.reward.aggregation()
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        match self
            .lockstep
            .call(self.id, Call::Score(problem.clone(), traces.to_vec()))
            .await
        {
            Reply::Scored(r) => r.map_err(RewardError::Remote),
            Reply::Generated(_) => Err(RewardError::Remote("lockstep: wrong reply".into())),
        }
    }
}
