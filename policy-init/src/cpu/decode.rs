//! Decoding on the CPU: the transformer evaluated on host memory with a per-sequence KV cache
//! (each new token attends to the cached keys and values, nothing is recomputed), batched
//! matrix products across sequences, and the sequences of a batch split across threads. The
//! weight layout and the row kernels are training's ([`super::layers`]). Its logits match
//! burn's forward to float rounding (tested).
//!
//! burn 0.22's own attention cache (`MhaCache`) takes the whole prefix every step and grows
//! quadratically (2.7-3x over no cache, measured); a hand-written cache attends the new token
//! only (17-27x, logits within 1.4e-6 of the uncached ones): that is this file.

use std::sync::Arc;

use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::cpu::forward::{PassWeights, blocks};
use crate::cpu::layers::{Stacked, add_bias, rms_norm};
use crate::cpu::linalg::linear;
use crate::weights::{HostWeights, Layout};
use pulp::{Simd, WithSimd};

/// The keys and values one sequence has cached, per layer `[len, kv_dim]`, and, for a
/// scoring engine, the head's outputs at every cached position.
///
/// A cache may start with positions held by another: the sequences sampled from one prompt
/// share its prefilled cache ([`KvCache::branch`]) rather than each copying it, and attending
/// to one copy of the prompt that stays in the processor's cache while they take turns is what
/// makes batched sampling fast (decoding reads every cached key and value for each new token).
/// `keys`, `values` and `scores` then hold only the positions after the shared ones; `len`
/// counts all of them.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub len: usize,
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    /// `[len, head_rows]` for an engine built [`Engine::with_scoring_head`]; empty otherwise.
    pub scores: Vec<f32>,
    /// The first positions, held by a cache that does not change (itself holding no shared
    /// positions).
    pub shared: Option<Arc<KvCache>>,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache {
            len: 0,
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            scores: Vec::new(),
            shared: None,
        }
    }

    /// A cache that goes on from every position of `base` without copying them, with room
    /// for `room` more values per layer (the new positions times the key width) before it
    /// grows.
    pub fn branch(base: &Arc<KvCache>, room: usize) -> KvCache {
        KvCache {
            len: base.len,
            keys: vec![Vec::with_capacity(room); base.keys.len()],
            values: vec![Vec::with_capacity(room); base.values.len()],
            scores: Vec::new(),
            shared: Some(Arc::clone(base)),
        }
    }

    /// This cache as the base of branches: holding all its positions itself.
    pub fn into_shared(mut self) -> Arc<KvCache> {
        self.flatten();
        Arc::new(self)
    }

    /// Copies the shared positions in, so that `keys`, `values` and `scores` hold every
    /// position.
    pub fn flatten(&mut self) {
        if let Some(base) = self.shared.take() {
            let join = |base: &[f32], own: &mut Vec<f32>| {
                let mut all = Vec::with_capacity(base.len() + own.len());
                all.extend_from_slice(base);
                all.append(own);
                *own = all;
            };
            for (own, base) in self.keys.iter_mut().zip(&base.keys) {
                join(base, own);
            }
            for (own, base) in self.values.iter_mut().zip(&base.values) {
                join(base, own);
            }
            join(&base.scores, &mut self.scores);
        }
    }

    /// Layer `layer`'s keys and values, shared positions first.
    pub fn layer(&self, layer: usize, kv_dim: usize) -> LayerCache<'_> {
        let (shared_keys, shared_values): (&[f32], &[f32]) = match &self.shared {
            Some(base) => (&base.keys[layer], &base.values[layer]),
            None => (&[], &[]),
        };
        LayerCache {
            keys: Rows::new(shared_keys, &self.keys[layer], kv_dim),
            values: Rows::new(shared_values, &self.values[layer], kv_dim),
        }
    }

    /// A copy of the first `len` positions, holding them all itself.
    pub fn prefix(&self, len: usize, kv_dim: usize) -> KvCache {
        let len = len.min(self.len);
        let shared_scores: &[f32] = self.shared.as_ref().map_or(&[], |s| &s.scores);
        let per_position = (shared_scores.len() + self.scores.len()) / self.len.max(1);
        let layers = 0..self.keys.len();
        KvCache {
            len,
            keys: layers
                .clone()
                .map(|l| self.layer(l, kv_dim).keys.columns(len, 0, kv_dim))
                .collect(),
            values: layers
                .map(|l| self.layer(l, kv_dim).values.columns(len, 0, kv_dim))
                .collect(),
            scores: shared_scores
                .iter()
                .chain(&self.scores)
                .take(len * per_position)
                .copied()
                .collect(),
            shared: None,
        }
    }
}

/// One layer's cached keys or values: `[len, width]` rows, the shared ones first.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    shared: &'a [f32],
    own: &'a [f32],
    width: usize,
    shared_rows: usize,
}

impl<'a> Rows<'a> {
    fn new(shared: &'a [f32], own: &'a [f32], width: usize) -> Rows<'a> {
        Rows {
            shared,
            own,
            width,
            shared_rows: shared.len() / width.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.shared_rows + self.own.len() / self.width.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Columns `offset..offset + n` of row `t`.
    #[inline(always)]
    pub fn row(&self, t: usize, offset: usize, n: usize) -> &'a [f32] {
        let (rows, t) = if t < self.shared_rows {
            (self.shared, t)
        } else {
            (self.own, t - self.shared_rows)
        };
        &rows[t * self.width + offset..t * self.width + offset + n]
    }

    /// Columns `offset..offset + n` of the first `count` rows, as a contiguous `[count, n]`
    /// matrix.
    pub fn columns(&self, count: usize, offset: usize, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(count * n);
        for t in 0..count {
            out.extend_from_slice(self.row(t, offset, n));
        }
        out
    }
}

/// A layer's cached keys and values.
#[derive(Clone, Copy)]
pub struct LayerCache<'a> {
    pub keys: Rows<'a>,
    pub values: Rows<'a>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `steps` on `cache`: each a slice of new tokens, all of whose logits are kept.
    fn decode(engine: &Engine, mut cache: KvCache, steps: &[&[u32]]) -> (Vec<f32>, KvCache) {
        let mut logits = Vec::new();
        for step in steps {
            let mut caches = [cache];
            logits.extend(engine.forward(&mut caches, &[step], &[Want::All]).remove(0));
            [cache] = caches;
        }
        (logits, cache)
    }

    #[test]
    fn a_branch_of_a_shared_cache_decodes_exactly_as_its_own_copy() {
        let config = ModelConfig::preset("micro", 40).expect("preset");
        let engine = Engine::new(&HostWeights::init(&config, 7).expect("init"));
        let kv = config.kv_dim();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 13 + 5) % 40).collect();
        let (_, prompt) = decode(&engine, engine.new_cache(), &[&tokens[..12]]);
        // One token at a time (attention row by row), then nine at once (as matrix products).
        let steps: Vec<&[u32]> = vec![&tokens[12..13], &tokens[13..14], &tokens[14..23], &tokens[23..24]];
        let (copied_logits, copied) = decode(&engine, prompt.clone(), &steps);
        let base = prompt.into_shared();
        let (shared_logits, shared) = decode(&engine, KvCache::branch(&base, 4 * kv), &steps);
        assert_eq!(shared.shared.as_ref().map(|base| base.len), Some(12));
        assert_eq!(shared.keys[0].len(), 12 * kv, "the branch holds only its own positions");
        assert_eq!(shared_logits, copied_logits, "bit for bit");
        // A prefix reaching past the shared positions, and the flattened cache, hold what the
        // copy holds.
        let (a, b) = (shared.prefix(17, kv), copied.prefix(17, kv));
        assert_eq!((a.len, &a.keys, &a.values), (b.len, &b.keys, &b.values));
        let mut flat = shared.clone();
        flat.flatten();
        assert_eq!(
            (flat.len, &flat.keys, &flat.values),
            (copied.len, &copied.keys, &copied.values)
        );
        assert!(flat.shared.is_none());
    }
}
