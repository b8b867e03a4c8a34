//! Decoding on the CPU: the transformer evaluated on host memory with a per-sequence KV cache
//! (each new token attends to the cached keys and values, nothing is recomputed), batched
//! matrix products across sequences, and the sequences of a batch split across threads. The
//! weight layout and the row kernels are training's ([`super::layers`]). Its logits match
//! burn's forward to float rounding (tested).
//!
//! burn 0.22's own attention cache (`MhaCache`) takes the whole prefix every step and grows
//! quadratically (2.7-3x over no cache, measured); a hand-written cache attends the new token
//! only (17-27x, logits within 1.4e-6 of the uncached ones): that is this file.

use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::cpu::forward::{PassWeights, blocks};
use crate::cpu::layers::{Stacked, add_bias, rms_norm};
use crate::cpu::linalg::linear;
use crate::weights::{HostWeights, Layout};
use pulp::{Simd, WithSimd};

/// The keys and values one sequence has cached, per layer `[len, kv_dim]`, and, for a
/// scoring engine, the head's outputs at every cached position.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub len: usize,
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    /// `[len, head_rows]` for an engine built [`Engine::with_scoring_head`]; empty otherwise.
    pub scores: Vec<f32>,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache {
            len: 0,
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            scores: Vec::new(),
        }
    }

    /// A copy of the first `len` positions.
    pub fn prefix(&self, len: usize, kv_dim: usize) -> KvCache {
        let len = len.min(self.len);
        let per_position = self.scores.len() / self.len.max(1);
        KvCache {
            len,
            keys: self.keys.iter().map(|k| k[..len * kv_dim].to_vec()).collect(),
            values: self.values.iter().map(|v| v[..len * kv_dim].to_vec()).collect(),
            scores: self.scores[..len * per_position].to_vec(),
        }
    }
}

/// What a forward pass should return for one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Logits of the last new position.
    Last,
    /// Logits of every new position.
    All,
    /// Nothing (the tokens only extend the cache).
    Nothing,
}

struct Group<'a, 'b, 'c> {
    engine: &'a Engine,
    caches: &'b mut [KvCache],
    tokens: &'c [&'c [u32]],
    want: &'c [Want],
    threads: usize,
}

impl WithSimd for Group<'_, '_, '_> {
    type Output = Vec<Vec<f32>>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        self.engine
            .forward_group_kernel(simd, self.caches, self.tokens, self.want, self.threads)
    }
}

pub struct Engine {
    pub config: ModelConfig,
    weights: HostWeights,
    layout: Layout,
    stacked: Stacked,
    /// A scoring head `[rows, d_model]` with its bias, replacing the language-model head:
    /// outputs of every position are kept in the caches.
    scoring: Option<(Vec<f32>, Vec<f32>)>,
    threads: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({} params)", self.config.params())
    }
}

/// The most new tokens one pass of [`Engine::forward`] computes at once; larger batches are
/// split, which bounds activation memory (a batch of 64 traces for each of 200 problems is
/// about a million tokens, and tens of gigabytes of activations in one pass).
pub const MAX_PASS_TOKENS: usize = 16_384;

impl Engine {
    pub fn new(weights: &HostWeights) -> Engine {
        let layout = weights.layout();
        Engine {
            stacked: Stacked::new(&weights.config, &layout, &weights.tensors),
            layout,
            weights: weights.clone(),
            scoring: None,
            threads: rayon::current_num_threads().max(1),
            config: weights.config.clone(),
        }
    }

    /// Sets how many threads a forward pass may use (defaults to rayon's pool size).
    pub fn with_threads(mut self, threads: usize) -> Engine {
        self.threads = threads.max(1);
        self
    }

    /// Replaces the language-model head by a scoring head `[rows, d_model]` (+ bias): the
    /// engine of a reward model. Its outputs at every position are kept in the caches.
    pub fn with_scoring_head(mut self, head: Vec<f32>, bias: Vec<f32>) -> Engine {
        self.scoring = Some((head, bias));
        self
    }

    /// Outputs per position of the head.
    pub fn head_rows(&self) -> usize {
        match &self.scoring {
            Some((_, bias)) => bias.len(),
            None => self.config.vocab_size,
        }
    }

    fn tensor(&self, slot: usize) -> &[f32] {
        &self.weights.tensors[slot].data
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layers)
    }

    /// Runs `tokens[i]` through sequence `i` (appending to its cache) and returns the logits
    /// each sequence wants. The sequences are split across threads by token count.
    pub fn forward(&self, caches: &mut [KvCache], tokens: &[&[u32]], want: &[Want]) -> Vec<Vec<f32>> {
        let n = caches.len();
        assert!(
            tokens.len() == n && want.len() == n,
            "one token list and want per cache"
        );
        let total: usize = tokens.iter().map(|t| t.len()).sum();
        if total > MAX_PASS_TOKENS && n > 1 {
            // Consecutive slices of at most MAX_PASS_TOKENS new tokens (or one sequence): the
            // activations of one pass stay bounded however large the batch.
            let mut out = Vec::with_capacity(n);
            let mut start = 0;
            while start < n {
                let (mut end, mut acc) = (start, 0);
                while end < n && (end == start || acc + tokens[end].len() <= MAX_PASS_TOKENS) {
                    acc += tokens[end].len();
                    end += 1;
                }
                out.extend(self.forward(&mut caches[start..end], &tokens[start..end], &want[start..end]));
                start = end;
            }
            return out;
        }
        let groups = if total < 8 || n == 1 { 1 } else { self.threads.min(n) };
        if groups == 1 {
            // One group: the matrix products use the threads (`linear` decides when they pay).
            return self.forward_group(caches, tokens, want, self.threads);
        }
        // Contiguous groups of roughly equal token counts.
        let target = total.div_ceil(groups);
        let mut bounds = vec![0];
        let mut acc = 0;
        for (i, t) in tokens.iter().enumerate() {
            acc += t.len();
            if acc >= target * bounds.len() && i + 1 < n && bounds.len() < groups {
                bounds.push(i + 1);
            }
        }
        bounds.push(n);
        let mut cache_groups: Vec<&mut [KvCache]> = Vec::new();
        let mut rest = caches;
        for w in bounds.windows(2) {
            let (head, tail) = rest.split_at_mut(w[1] - w[0]);
            cache_groups.push(head);
            rest = tail;
        }
        let results: Vec<Vec<Vec<f32>>> = cache_groups
            .into_par_iter()
            .zip(bounds.par_windows(2))
            .map(|(group, w)| self.forward_group(group, &tokens[w[0]..w[1]], &want[w[0]..w[1]], 1))
            .collect();
        results.into_iter().flatten().collect()
    }

    fn forward_group(&self, caches: &mut [KvCache], tokens: &[&[u32]], want: &[Want], threads: usize) -> Vec<Vec<f32>> {
        // Compiled for the best instruction set the CPU has (AVX-512, AVX2 or plain).
        pulp::Arch::new().dispatch(Group {
            engine: self,
            caches,
            tokens,
            want,
            threads,
        })
    }

    #[inline(always)]
    fn forward_group_kernel<S: Simd>(
        &self,
        simd: S,
        caches: &mut [KvCache],
        tokens: &[&[u32]],
        want: &[Want],
        threads: usize,
    ) -> Vec<Vec<f32>> {
        let c = &self.config;
        let d = c.d_model;
        let weights = PassWeights {
            config: c,
            layout: &self.layout,
            tensors: &self.weights.tensors,
            stacked: &self.stacked,
        };
        let x = blocks(simd, weights, caches, tokens, threads, None);
        // Logits of the wanted rows only (a scoring head computes every row and keeps them).
        let v = self.head_rows();
        let (head, head_bias) = match &self.scoring {
            Some((head, bias)) => (head.as_slice(), Some(bias.as_slice())),
            None => (self.tensor(self.layout.lm_head.unwrap_or(self.layout.embed)), None),
        };
        let scoring = self.scoring.is_some();
        let mut out = Vec::with_capacity(tokens.len());
        let mut row = 0;
        for (s, t) in tokens.iter().enumerate() {
            let (first, count) = match want[s] {
                _ if scoring => (row, t.len()),
                Want::Last if !t.is_empty() => (row + t.len() - 1, 1),
                Want::All => (row, t.len()),
                _ => (row, 0),
            };
            row += t.len();
            let mut normed_rows = vec![0.0f32; count * d];
            rms_norm(
                &x[first * d..(first + count) * d],
                d,
                self.tensor(self.layout.final_norm),
                c.rms_eps,
                &mut normed_rows,
                None,
            );
            let mut logits = vec![0.0f32; count * v];
            linear(&normed_rows, count, d, head, v, &mut logits, false, threads);
            if let Some(bias) = head_bias {
                add_bias(&mut logits, bias);
            }
            if scoring {
                caches[s].scores.extend_from_slice(&logits);
            }
            out.push(logits);
        }
        out
    }
}
