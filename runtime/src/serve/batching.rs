//! Dynamic batching for the server: concurrent requests' policy and reward calls wait a few
//! milliseconds for company, then go to the CPU engine as one batch, on a worker thread of
//! their own (the async runtime never blocks on model work).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::{GenRequest, Generation, Policy, PolicyError};
use ponder_reward::{Aggregation, Granularity, RewardError, RewardModel, StepScores};
use tokio::sync::oneshot;

enum Job {
    Generate(Vec<GenRequest>, oneshot::Sender<Result<Vec<Generation>, String>>),
    Score(Problem, Vec<Trace>, oneshot::Sender<Result<Vec<StepScores>, String>>),
    Logprobs(String, String, oneshot::Sender<Result<Vec<f32>, String>>),
    /// New weights: the jobs before it run with the old ones, the jobs after it with these.
    Reload(Arc<dyn Policy>, oneshot::Sender<()>),
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct BatchCounters {
    pub batches: AtomicU64,
    pub batched_requests: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub reward_traces: AtomicU64,
    pub weight_updates: AtomicU64,
}

/// The shared model worker: a policy and a reward model behind a channel.
#[derive(Clone)]
pub struct Batcher {
    sender: mpsc::Sender<Job>,
    pub counters: Arc<BatchCounters>,
    describe_policy: String,
    describe_reward: String,
    params: Option<usize>,
    granularity: Granularity,
    aggregation: Aggregation,
}

impl Batcher {
    /// Starts the worker thread.
    pub fn start(policy: Arc<dyn Policy>, reward: Arc<dyn RewardModel>, window: Duration) -> Batcher {
        let (sender, receiver) = mpsc::channel::<Job>();
        let counters = Arc::new(BatchCounters::default());
        let c = counters.clone();
        let (p, r) = (policy.clone(), reward.clone());
        std::thread::Builder::new()
            .name("ponder-batcher".into())
            .spawn(move || worker(p, r, receiver, window, c))
            .ok();
        Batcher {
            sender,
            counters,
            describe_policy: policy.describe(),
            describe_reward: reward.describe(),
            params: policy.params(),
            granularity: reward.granularity(),
            aggregation: reward.aggregation(),
        }
    }
}

fn worker(
    mut policy: Arc<dyn Policy>,
    reward: Arc<dyn RewardModel>,
    receiver: mpsc::Receiver<Job>,
    window: Duration,
    counters: Arc<BatchCounters>,
) {
    // One runtime for the worker's futures: remote reward models need tokio for their HTTP.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ponder serve: the model worker cannot start a runtime: {e}");
            return;
        }
    };
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        let deadline = std::time::Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match receiver.recv_timeout(left) {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A weight update splits the batch: what came before it runs with the old weights.
        let mut batch = Vec::new();
        for job in jobs {
            match job {
                Job::Reload(new, reply) => {
                    run_guarded(&runtime, &policy, &reward, std::mem::take(&mut batch), &counters);
                    policy = new;
                    counters.weight_updates.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(());
                }
                job => batch.push(job),
            }
        }
        run_guarded(&runtime, &policy, &reward, batch, &counters);
    }
}

/// A panic in one batch answers that batch's callers with an error (their reply channels
/// drop) and leaves the worker serving the next.
fn run_guarded(
    runtime: &tokio::runtime::Runtime,
    policy: &Arc<dyn Policy>,
    reward: &Arc<dyn RewardModel>,
    jobs: Vec<Job>,
    counters: &BatchCounters,
) {
    if jobs.is_empty() {
        return;
    }
    let run = std::panic::AssertUnwindSafe(|| run_batch(runtime, policy, reward, jobs, counters));
    if std::panic::catch_unwind(run).is_err() {
        eprintln!("ponder serve: a batch failed inside the model; its requests got errors");
    }
}

fn run_batch(
    runtime: &tokio::runtime::Runtime,
    policy: &Arc<dyn Policy>,
    reward: &Arc<dyn RewardModel>,
    jobs: Vec<Job>,
    counters: &BatchCounters,
) {
    let mut requests = Vec::new();
    let mut generate_replies = Vec::new();
    let mut scoring: Vec<(Problem, Vec<Trace>, oneshot::Sender<Result<Vec<StepScores>, String>>)> = Vec::new();
    for job in jobs {
        match job {
            Job::Generate(r, reply) => {
                generate_replies.push((requests.len(), r.len(), reply));
                requests.extend(r);
            }
            Job::Score(p, t, reply) => scoring.push((p, t, reply)),
            // The worker handles weight updates between batches.
            Job::Reload(..) => {}
            Job::Logprobs(context, continuation, reply) => {
                let lp = runtime.block_on(policy.logprobs(&context, &continuation));
                let _ = reply.send(lp.map_err(|e| e.to_string()));
            }
        }
    }
    if !requests.is_empty() {
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .batched_requests
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let generated = runtime.block_on(policy.generate(&requests)).map_err(|e| e.to_string());
        if let Ok(g) = &generated {
            let tokens: usize = g.iter().map(|x| x.tokens()).sum();
            counters.generated_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        }
        for (start, len, reply) in generate_replies {
            let part = generated
                .as_ref()
                .map(|g| g[start..start + len].to_vec())
                .map_err(|e| e.clone());
            let _ = reply.send(part);
        }
    }
    if !scoring.is_empty() {
        let items: Vec<(&Problem, &[Trace])> = scoring.iter().map(|(p, t, _)| (p, t.as_slice())).collect();
        let traces: usize = items.iter().map(|(_, t)| t.len()).sum();
        counters.reward_traces.fetch_add(traces as u64, Ordering::Relaxed);
        let scored = runtime.block_on(reward.score_many(&items)).map_err(|e| e.to_string());
        for (i, (_, _, reply)) in scoring.into_iter().enumerate() {
            let part = match &scored {
                Ok(s) => Ok(s[i].clone()),
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(part);
        }
    }
}

impl Batcher {
    /// Serves `policy` from the next batch on, once the model calls already queued have run.
    pub async fn reload(&self, policy: Arc<dyn Policy>) -> Result<(), PolicyError> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(Job::Reload(policy, tx))
            .map_err(|_| PolicyError::Remote("the model worker stopped".into()))?;
        rx.await
            .map_err(|_| PolicyError::Remote("the model worker stopped".into()))
    }
}

#[async_trait]
impl Policy for Batcher {
    fn describe(&self) -> String {
        self.describe_policy.clone()
    }

    fn params(&self) -> Option<usize> {
        self.params
    }

    async fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>, PolicyError> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(Job::Generate(requests.to_vec(), tx))
            .map_err(|_| PolicyError::Remote("the model worker stopped".into()))?;
        rx.await
            .map_err(|_| PolicyError::Remote("the model worker stopped".into()))?
            .map_err(PolicyError::Remote)
    }

    async fn logprobs(&self, context: &str, continuation: &str) -> Result<Vec<f32>, PolicyError> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(Job::Logprobs(context.to_string(), continuation.to_string(), tx))
            .map_err(|_| PolicyError::Remote("the model worker stopped".into()))?;
        rx.await
            .map_err(|_| PolicyError::Remote("the model worker stopped".into()))?
            .map_err(PolicyError::Remote)
    }
}

#[async_trait]
impl RewardModel for Batcher {
    fn describe(&self) -> String {
        self.describe_reward.clone()
    }

    fn granularity(&self) -> Granularity {
        self.granularity
    }

    fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(Job::Score(problem.clone(), traces.to_vec(), tx))
            .map_err(|_| RewardError::Remote("the model worker stopped".into()))?;
        rx.await
            .map_err(|_| RewardError::Remote("the model worker stopped".into()))?
            .map_err(RewardError::Remote)
    }
}
