//! A trained outcome or process reward model at inference: the CPU engine with a scoring head,
//! and the same prefix reuse as the policy (candidates of one search node share their prefix).
//! With the likelihood feature the head also carries the language-model rows, so one pass
//! gives each position's score and the trace's log-likelihood so far.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::Tokenizer;
use ponder_policy_init::cpu::{Engine, KvCache, Want};
use ponder_policy_init::prefix_cache::PrefixCache;
use ponder_policy_init::transformer_policy::default_prefix_cache_tokens;

use crate::training::{RewardWeights, encode_trace, prefix_loglik};
use crate::{Aggregation, Granularity, RewardError, RewardModel, StepScores, sigmoid};

pub struct LearnedReward {
    engine: Engine,
    tokenizer: Tokenizer,
    granularity: Granularity,
    aggregation: Aggregation,
    likelihood_weight: f32,
    cache: Mutex<PrefixCache>,
    calls: AtomicU64,
    /// Tokens run through the network (cached prefixes excluded).
    computed_tokens: AtomicU64,
    /// Parameters a token passes through: the backbone and the scoring head's rows.
    params_per_token: f64,
    label: String,
}

impl LearnedReward {
    pub fn new(weights: &RewardWeights, tokenizer: Tokenizer) -> LearnedReward {
        // With the likelihood feature the scoring head's rows are the reward head and then the
        // language-model head: one pass gives the score and the next-token logits.
        let (head, bias) = if weights.likelihood_weight != 0.0 {
            let vocab = weights.backbone.config.vocab_size;
            let mut bias = vec![0.0; vocab + 1];
            bias[0] = weights.bias;
            ([weights.head.as_slice(), weights.lm_head()].concat(), bias)
        } else {
            (weights.head.clone(), vec![weights.bias])
        };
        let params_per_token = (weights.backbone.params() + head.len() + bias.len()) as f64;
        let engine = Engine::new(&weights.backbone).with_scoring_head(head, bias);
        let kv = engine.config.kv_dim();
        LearnedReward {
            label: format!(
                "{} ({:.2}M parameters)",
                match weights.granularity {
                    Granularity::Process => "process reward model",
                    Granularity::Outcome => "outcome reward model",
                },
                weights.backbone.params() as f64 / 1e6
            ),
            engine,
            tokenizer,
            granularity: weights.granularity,
            aggregation: weights.aggregation,
            likelihood_weight: weights.likelihood_weight,
            // The policy's budget: a beam round scores the candidates of every problem at once,
            // and a cache of 100,000 tokens evicted the prefixes the next round needed (beam
            // search at 64 problems x 64 beams spent twice the CPU time recomputing them).
            cache: Mutex::new(PrefixCache::new(
                default_prefix_cache_tokens(&weights.backbone.config),
                kv,
            )),
            calls: AtomicU64::new(0),
            computed_tokens: AtomicU64::new(0),
            params_per_token,
        }
    }

    pub fn with_aggregation(mut self, aggregation: Aggregation) -> LearnedReward {
        self.aggregation = aggregation;
        self
    }

    /// Scores many (problem, trace) pairs in batched passes of at most `SCORE_CHUNK` traces
    /// (so that the KV caches of a huge batch are never all alive at once).
    pub fn score_pairs(&self, pairs: &[(&Problem, &Trace)]) -> Vec<StepScores> {
        pairs
            .chunks(SCORE_CHUNK)
            .flat_map(|chunk| self.score_chunk(chunk))
            .collect()
    }

    fn score_chunk(&self, pairs: &[(&Problem, &Trace)]) -> Vec<StepScores> {
        let max_seq = self.engine.config.max_seq_len;
        let ends_line = |t: u32| self.tokenizer.ends_line(t);
        let mut encoded = Vec::with_capacity(pairs.len());
        let mut caches: Vec<KvCache> = Vec::with_capacity(pairs.len());
        for (problem, trace) in pairs {
            let mut e = encode_trace(&self.tokenizer, problem, trace);
            e.tokens.truncate(max_seq);
            let cache = self
                .cache
                .lock()
                .ok()
                .and_then(|mut c| c.lookup(&e.tokens, e.tokens.len(), &ends_line))
                .unwrap_or_else(|| self.engine.new_cache());
            caches.push(cache);
            encoded.push(e);
        }
        let rests: Vec<&[u32]> = encoded.iter().zip(&caches).map(|(e, c)| &e.tokens[c.len..]).collect();
        let want = vec![Want::All; pairs.len()];
        self.calls.fetch_add(1, Ordering::Relaxed);
        let computed: usize = rests.iter().map(|r| r.len()).sum();
        self.computed_tokens.fetch_add(computed as u64, Ordering::Relaxed);
        self.engine.forward(&mut caches, &rests, &want);
        let mut out = Vec::with_capacity(pairs.len());
        let rows = self.engine.head_rows();
        for (e, cache) in encoded.into_iter().zip(caches) {
            let loglik = if rows > 1 {
                prefix_loglik(|t| &cache.scores[t * rows + 1..(t + 1) * rows], &e.tokens, e.prompt_end)
            } else {
                Vec::new()
            };
            let at = |p: usize| {
                let z = cache.scores.get(p * rows).copied()?;
                Some(sigmoid(
                    z + self.likelihood_weight * loglik.get(p).copied().unwrap_or(0.0),
                ))
            };
            let scores = match self.granularity {
                Granularity::Process => StepScores {
                    steps: e.step_ends.iter().filter_map(|&p| at(p)).collect(),
                    answer: e.answer_end.and_then(at),
                },
                Granularity::Outcome => StepScores {
                    steps: Vec::new(),
                    answer: e.tokens.len().checked_sub(1).and_then(at),
                },
            };
            out.push(scores);
            if let Ok(mut c) = self.cache.lock() {
                c.insert(e.tokens, cache, &ends_line);
            }
        }
        out
    }
}

/// Traces scored per batched pass.
const SCORE_CHUNK: usize = 1024;

#[async_trait]
impl RewardModel for LearnedReward {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn granularity(&self) -> Granularity {
        self.granularity
    }

    fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    async fn score(&self, problem: &Problem, traces: &[Trace]) -> Result<Vec<StepScores>, RewardError> {
        let pairs: Vec<(&Problem, &Trace)> = traces.iter().map(|t| (problem, t)).collect();
        Ok(self.score_pairs(&pairs))
    }

    async fn score_many(&self, items: &[(&Problem, &[Trace])]) -> Result<Vec<Vec<StepScores>>, RewardError> {
        crate::score_grouped(items, |pairs| Ok(self.score_pairs(pairs)))
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn flops(&self) -> f64 {
        2.0 * self.params_per_token * self.computed_tokens.load(Ordering::Relaxed) as f64
    }
}
