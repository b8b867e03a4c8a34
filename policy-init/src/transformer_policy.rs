//! The transformer as a [`Policy`]: batched, KV-cached generation on the CPU engine (or, with
//! the burn backend, burn's decoder), with prefix reuse across calls and per-request seeded
//! sampling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ponder_datagen::ANSWER_PREFIX;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::backend::Backend;
#[cfg(feature = "burn")]
use crate::burn_decode::BurnDecoder;
use crate::config::ModelConfig;
use crate::cpu::{Engine, KvCache, Want};
use crate::error::PolicyError;
use crate::policy::{Finish, GenRequest, Generation, Policy, Stop};
use crate::prefix_cache::PrefixCache;
use crate::sampling::{logprob, sample};
use crate::tokenizer::Tokenizer;
use crate::weights::HostWeights;

/// Memory the prefix cache may hold by default: 1 GiB of keys and values, whatever the model
/// (262,144 tokens of the tiny preset, about 43,000 of a 24-layer model with 128-wide keys).
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 1 << 30;

/// How many tokens of keys and values fit in [`DEFAULT_PREFIX_CACHE_BYTES`] for a model.
pub fn default_prefix_cache_tokens(config: &ModelConfig) -> usize {
    let per_token = 2 * config.n_layers * config.kv_dim() * std::mem::size_of::<f32>();
    DEFAULT_PREFIX_CACHE_BYTES / per_token.max(1)
}

/// What runs the passes: the CPU engine or burn's decoder (same caches, same logits to
/// float rounding).
#[derive(Debug)]
enum Decoder {
    Cpu(Box<Engine>),
    #[cfg(feature = "burn")]
    Burn(Box<BurnDecoder>),
}

impl Decoder {
    fn config(&self) -> &ModelConfig {
        match self {
            Decoder::Cpu(engine) => &engine.config,
            #[cfg(feature = "burn")]
            Decoder::Burn(burn) => burn.config(),
        }
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config().n_layers)
    }

    fn forward(&self, caches: &mut [KvCache], tokens: &[&[u32]], want: &[Want]) -> Vec<Vec<f32>> {
        match self {
            Decoder::Cpu(engine) => engine.forward(caches, tokens, want),
            #[cfg(feature = "burn")]
            Decoder::Burn(burn) => burn.forward(caches, tokens, want),
        }
    }
}

pub struct TransformerPolicy {
    decoder: Decoder,
    tokenizer: Tokenizer,
    prefix_cache: Mutex<PrefixCache>,
    computed: AtomicU64,
    generated: AtomicU64,
    label: String,
}

impl std::fmt::Debug for TransformerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransformerPolicy({})", self.label)
    }
}

struct Sequence {
    request: usize,
    cache: KvCache,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    generated: Vec<u32>,
    logprobs: Vec<f32>,
    line: String,
    finish: Option<Finish>,
}

/// Sequences decoded together at most (far beyond where batching stops paying on a CPU).
const GENERATE_CHUNK: usize = 1024;

/// Positions a sampled sequence's own KV cache holds before it first grows.
const BRANCH_ROOM_POSITIONS: usize = 32;

impl TransformerPolicy {
    pub fn new(weights: &HostWeights, tokenizer: Tokenizer) -> TransformerPolicy {
        Self::with_decoder(Decoder::Cpu(Box::new(Engine::new(weights))), weights, tokenizer)
    }

    /// The policy decoding on `backend`: the CPU engine on its threads, or burn's decoder on
    /// its device.
    pub fn on_backend(weights: &HostWeights, tokenizer: Tokenizer, backend: &Backend) -> TransformerPolicy {
        match backend {
            Backend::Cpu { threads: 0 } => Self::new(weights, tokenizer),
            Backend::Cpu { threads } => Self::new(weights, tokenizer).with_threads(*threads),
            #[cfg(feature = "burn")]
            Backend::Burn(device) => Self::with_decoder(
                Decoder::Burn(Box::new(BurnDecoder::new(weights, device))),
                weights,
                tokenizer,
            ),
        }
    }

    fn with_decoder(decoder: Decoder, weights: &HostWeights, tokenizer: Tokenizer) -> TransformerPolicy {
        let kv_dim = weights.config.kv_dim();
        TransformerPolicy {
            label: format!(
                "transformer ({:.2}M parameters, d={}, {} layers)",
                weights.params() as f64 / 1e6,
                weights.config.d_model,
                weights.config.n_layers
            ),
            decoder,
            tokenizer,
            prefix_cache: Mutex::new(PrefixCache::new(default_prefix_cache_tokens(&weights.config), kv_dim)),
            computed: AtomicU64::new(0),
            generated: AtomicU64::new(0),
        }
    }

    /// Bounds the prefix cache (0 disables it).
    pub fn with_prefix_cache(self, tokens: usize) -> TransformerPolicy {
        let kv_dim = self.decoder.config().kv_dim();
        TransformerPolicy {
            prefix_cache: Mutex::new(PrefixCache::new(tokens, kv_dim)),
            ..self
        }
    }

    /// Sets the CPU engine's threads (burn's decoder runs as its device does).
    pub fn with_threads(self, threads: usize) -> TransformerPolicy {
        match self.decoder {
            Decoder::Cpu(engine) => TransformerPolicy {
                decoder: Decoder::Cpu(Box::new(engine.with_threads(threads))),
                ..self
            },
            #[cfg(feature = "burn")]
            Decoder::Burn(_) => self,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        self.decoder.config()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Forgets every cached prefix (call at checkpoint boundaries so that a resumed run sees
    /// the same cache history as an uninterrupted one).
    pub fn clear_prefix_cache(&self) {
        if let Ok(mut c) = self.prefix_cache.lock() {
            c.clear();
        }
    }

    /// `[bos] + tokens(text)`.
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut tokens: Vec<u32> = self.tokenizer.bos_id.into_iter().collect();
        tokens.extend(self.tokenizer.encode(text));
        tokens
    }

    fn lookup(&self, tokens: &[u32], max_len: usize) -> Option<KvCache> {
        let ends_line = |t: u32| self.tokenizer.ends_line(t);
        self.prefix_cache.lock().ok()?.lookup(tokens, max_len, &ends_line)
    }

    fn keep(&self, tokens: Vec<u32>, cache: KvCache) {
        let ends_line = |t: u32| self.tokenizer.ends_line(t);
        if let Ok(mut c) = self.prefix_cache.lock() {
            c.insert(tokens, cache, &ends_line);
        }
    }

    /// Prefills distinct prompts (each once, reusing cached prefixes) and returns, per
    /// distinct prompt, its cache, the logits of its last position and how many of its
    /// tokens had to be computed.
    fn prefill(&self, prompts: &[Vec<u32>]) -> Vec<(KvCache, Vec<f32>, usize)> {
        let mut caches = Vec::with_capacity(prompts.len());
        let mut rests: Vec<&[u32]> = Vec::with_capacity(prompts.len());
        for p in prompts {
            // Keep at least the last token to compute: its logits start the generation.
            let cache = self
                .lookup(p, p.len().saturating_sub(1))
                .unwrap_or_else(|| self.decoder.new_cache());
            rests.push(&p[cache.len..]);
            caches.push(cache);
        }
        let computed: Vec<usize> = rests.iter().map(|r| r.len()).collect();
        self.computed
            .fetch_add(computed.iter().sum::<usize>() as u64, Ordering::Relaxed);
        let want = vec![Want::Last; prompts.len()];
        let logits = self.decoder.forward(&mut caches, &rests, &want);
        caches
            .into_iter()
            .zip(logits)
            .zip(computed)
            .map(|((c, l), n)| (c, l, n))
            .collect()
    }

    /// Generates in batches of at most `GENERATE_CHUNK` sequences, so that a huge request
    /// (thousands of samples) never holds all its KV caches at once. Each sequence samples from
    /// its own seeded generator, so the split does not change what is drawn.
    fn generate_sync(&self, requests: &[GenRequest]) -> Vec<Generation> {
        requests
            .chunks(GENERATE_CHUNK)
            .flat_map(|chunk| self.generate_batch(chunk))
            .collect()
    }

    fn generate_batch(&self, requests: &[GenRequest]) -> Vec<Generation> {
        let max_seq = self.decoder.config().max_seq_len;
        // Distinct prompts, computed once each.
        let mut distinct: Vec<Vec<u32>> = Vec::new();
        let mut by_prompt: HashMap<&str, usize> = HashMap::new();
        let mut prompt_of: Vec<usize> = Vec::with_capacity(requests.len());
        for r in requests {
            let idx = *by_prompt.entry(r.prompt.as_str()).or_insert_with(|| {
                distinct.push(self.encode_prompt(&r.prompt));
                distinct.len() - 1
            });
            prompt_of.push(idx);
        }
        let mut results: Vec<Option<Generation>> = vec![None; requests.len()];
        let runnable: Vec<usize> = (0..distinct.len())
            .filter(|&i| !distinct[i].is_empty() && distinct[i].len() < max_seq)
            .collect();
        let prefilled = self.prefill(&runnable.iter().map(|&i| distinct[i].clone()).collect::<Vec<_>>());
        let mut computed_of: HashMap<usize, usize> = HashMap::new();
        // Each prompt's cache is shared by the sequences sampled from it, not copied.
        let mut states: HashMap<usize, (Arc<KvCache>, Vec<f32>)> = HashMap::new();
        for (&i, (cache, logits, computed)) in runnable.iter().zip(prefilled) {
            computed_of.insert(i, computed);
            states.insert(i, (cache.into_shared(), logits));
        }
        let mut sequences: Vec<Sequence> = Vec::new();
        let mut first_logits: Vec<Vec<f32>> = Vec::new();
        for (ri, r) in requests.iter().enumerate() {
            let p = prompt_of[ri];
            let Some((cache, logits)) = states.get(&p) else {
                // An empty prompt, or one that fills the model's context: nothing to generate.
                results[ri] = Some(Generation {
                    text: String::new(),
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                    finish: Finish::Length,
                    prompt_tokens: distinct[p].len(),
                    computed_prompt_tokens: 0,
                });
                continue;
            };
            // Room for the first positions the sequence adds (a step or an answer line),
            // without reserving `max_tokens` for every sequence: long ones grow as usual.
            let room = r
                .max_tokens
                .min(BRANCH_ROOM_POSITIONS)
                .min(max_seq.saturating_sub(cache.len))
                * self.decoder.config().kv_dim();
            sequences.push(Sequence {
                request: ri,
                cache: KvCache::branch(cache, room),
                rng: ChaCha8Rng::seed_from_u64(r.seed),
                tokens: distinct[p].clone(),
                generated: Vec::new(),
                logprobs: Vec::new(),
                line: String::new(),
                finish: None,
            });
            first_logits.push(logits.clone());
        }
        drop(states);
        let mut logits = first_logits;
        loop {
            // Sample one token for every live sequence.
            let mut live = 0;
            for (seq, l) in sequences.iter_mut().filter(|s| s.finish.is_none()).zip(&logits) {
                let r = &requests[seq.request];
                let (token, lp) = sample(l, &r.sampling, &mut seq.rng);
                seq.logprobs.push(lp);
                seq.generated.push(token);
                seq.tokens.push(token);
                seq.finish = self.stop_reason(seq, token, r, max_seq);
                if seq.finish.is_none() {
                    live += 1;
                }
            }
            if live == 0 {
                break;
            }
            let (mut caches, inputs): (Vec<KvCache>, Vec<u32>) = sequences
                .iter_mut()
                .filter(|s| s.finish.is_none())
                .map(|s| (std::mem::take(&mut s.cache), *s.tokens.last().unwrap_or(&0)))
                .unzip();
            let token_slices: Vec<&[u32]> = inputs.iter().map(std::slice::from_ref).collect();
            let want = vec![Want::Last; caches.len()];
            logits = self.decoder.forward(&mut caches, &token_slices, &want);
            for (seq, cache) in sequences.iter_mut().filter(|s| s.finish.is_none()).zip(caches) {
                seq.cache = cache;
            }
        }
        let generated: usize = sequences.iter().map(|s| s.generated.len()).sum();
        let fed: usize = sequences.iter().map(|s| s.generated.len().saturating_sub(1)).sum();
        self.generated.fetch_add(generated as u64, Ordering::Relaxed);
        self.computed.fetch_add(fed as u64, Ordering::Relaxed);
        let mut credited: HashMap<usize, bool> = HashMap::new();
        for seq in sequences {
            let p = prompt_of[seq.request];
            let mut visible = seq.generated.clone();
            if seq.finish == Some(Finish::EndOfSequence) {
                visible.pop();
            }
            // The prompt's computation is credited to the first request that used it.
            let first = !credited.insert(p, true).unwrap_or(false);
            let prompt_len = distinct[p].len();
            let computed = if first {
                computed_of.get(&p).copied().unwrap_or(prompt_len)
            } else {
                0
            };
            results[seq.request] = Some(Generation {
                text: self.tokenizer.decode(&visible),
                token_ids: seq.generated,
                logprobs: seq.logprobs,
                finish: seq.finish.unwrap_or(Finish::Length),
                prompt_tokens: prompt_len,
                computed_prompt_tokens: computed,
            });
            self.keep(seq.tokens, seq.cache);
        }
        results
            .into_iter()
            .map(|g| g.unwrap_or_else(empty_generation))
            .collect()
    }

    fn stop_reason(&self, seq: &mut Sequence, token: u32, r: &GenRequest, max_seq: usize) -> Option<Finish> {
        if Some(token) == self.tokenizer.eos_id && r.stop != Stop::Length {
            return Some(Finish::EndOfSequence);
        }
        let piece = self.tokenizer.piece(token);
        if self.tokenizer.ends_line(token) {
            let before_newline = piece.split('\n').next().unwrap_or("");
            let line = format!("{}{before_newline}", seq.line);
            let is_answer = line.trim_start().starts_with(ANSWER_PREFIX);
            seq.line = piece.rsplit('\n').next().unwrap_or("").to_string();
            match r.stop {
                Stop::StepEnd if is_answer => return Some(Finish::Answer),
                Stop::StepEnd => return Some(Finish::StepEnd),
                Stop::TraceEnd if is_answer => return Some(Finish::Answer),
                _ => {}
            }
        } else {
            seq.line.push_str(piece);
        }
        if seq.generated.len() >= r.max_tokens || seq.tokens.len() >= max_seq {
            return Some(Finish::Length);
        }
        None
    }

    /// Log-probabilities of continuations given contexts, batched.
    pub fn score(&self, pairs: &[(&str, &str)]) -> Vec<Vec<f32>> {
        let sequences: Vec<(Vec<u32>, usize)> = pairs
            .iter()
            .map(|(context, continuation)| {
                let mut tokens = self.encode_prompt(context);
                let first = tokens.len();
                tokens.extend(self.tokenizer.encode(continuation));
                (tokens, first)
            })
            .collect();
        self.score_tokens(&sequences)
    }

    /// Log-probabilities of the tokens from `first` on of each token sequence (`[bos]`, prompt,
    /// continuation, as the policy sampled them), each given the tokens before it; sequences
    /// longer than the context are cut to it.
    pub fn score_tokens(&self, sequences: &[(Vec<u32>, usize)]) -> Vec<Vec<f32>> {
        let max_seq = self.decoder.config().max_seq_len;
        let mut caches = Vec::new();
        let mut inputs: Vec<&[u32]> = Vec::new();
        let mut meta = Vec::new();
        for (tokens, first) in sequences {
            let all = &tokens[..tokens.len().min(max_seq)];
            let first = (*first).clamp(1, tokens.len());
            let cache = self
                .lookup(&tokens[..first], first - 1)
                .unwrap_or_else(|| self.decoder.new_cache());
            let start = cache.len.min(all.len());
            meta.push((first, all.len().saturating_sub(first), start, tokens));
            inputs.push(&all[start..]);
            caches.push(cache);
        }
        let want = vec![Want::All; caches.len()];
        let logits = self.decoder.forward(&mut caches, &inputs, &want);
        let v = self.decoder.config().vocab_size;
        meta.into_iter()
            .zip(logits)
            .map(|((first, n, start, tokens), l)| {
                (0..n)
                    .map(|j| {
                        // The logits at position first - 1 + j predict token first + j.
                        let row = first - 1 + j - start;
                        logprob(&l[row * v..(row + 1) * v], tokens[first + j] as usize)
                    })
                    .collect()
            })
            .collect()
    }
}

fn empty_generation() -> Generation {
    Generation {
        text: String::new(),
        token_ids: Vec::new(),
        logprobs: Vec::new(),
        finish: Finish::Length,
        prompt_tokens: 0,
        computed_prompt_tokens: 0,
    }
}

#[async_trait]
impl Policy for TransformerPolicy {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn params(&self) -> Option<usize> {
        Some(self.decoder.config().params())
    }

    async fn generate(&self, requests: &[GenRequest]) -> Result<Vec<Generation>, PolicyError> {
        Ok(self.generate_sync(requests))
    }

    async fn logprobs(&self, context: &str, continuation: &str) -> Result<Vec<f32>, PolicyError> {
        Ok(self.score(&[(context, continuation)]).pop().unwrap_or_default())
    }

    fn compute_counters(&self) -> (u64, u64) {
        (
            self.computed.load(Ordering::Relaxed),
            self.generated.load(Ordering::Relaxed),
        )
    }
}
