//! The CPU decoding engine: the same transformer as `model.rs`, evaluated on host memory with
//! a per-sequence KV cache (each new token attends to the cached keys and values, nothing is
//! recomputed), batched matrix products across sequences, and the sequences of a batch split
//! across threads. Its logits match the burn forward to float rounding (tested).
//!
//! burn 0.22's own attention cache (`MhaCache`) takes the whole prefix every step and grows
//! quadratically (2.7-3x over no cache, measured); a hand-written cache attends the new token
//! only (17-27x, logits within 1.4e-6 of the uncached ones): that is this file.

use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::linalg::{dot, linear};
use crate::model::rope_tables;
use crate::weights::HostWeights;
use pulp::{Simd, WithSimd};

struct EngineLayer {
    input_norm: Vec<f32>,
    /// q, k and v projections stacked: `[d + 2 kv, d]`.
    qkv: Vec<f32>,
    qkv_bias: Option<Vec<f32>>,
    o: Vec<f32>,
    o_bias: Option<Vec<f32>>,
    post_norm: Vec<f32>,
    /// gate and up projections stacked: `[2 f, d]`.
    gate_up: Vec<f32>,
    down: Vec<f32>,
}

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

    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.len() * 4).sum()
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
    embed: Vec<f32>,
    layers: Vec<EngineLayer>,
    final_norm: Vec<f32>,
    head: Vec<f32>,
    /// Rows of `head` (the vocabulary, or a scoring head's outputs).
    head_rows: usize,
    head_bias: Option<Vec<f32>>,
    /// A scoring head: outputs of every position are kept in the caches.
    scoring: bool,
    /// `[max_seq_len, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    threads: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({} params)", self.config.params())
    }
}

fn rms_norm_rows(x: &[f32], d: usize, gamma: &[f32], eps: f32, out: &mut [f32]) {
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(gamma) {
            *o = v * scale * g;
        }
    }
}

fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// The most new tokens one pass of [`Engine::forward`] computes at once; larger batches are
/// split, which bounds activation memory (a batch of 64 traces for each of 200 problems is
/// about a million tokens, and tens of gigabytes of activations in one pass).
pub const MAX_PASS_TOKENS: usize = 16_384;

impl Engine {
    pub fn new(weights: &HostWeights) -> Engine {
        let c = weights.config.clone();
        let layout = weights.layout();
        let t = |slot: usize| weights.tensors[slot].data.clone();
        let layers = layout
            .layers
            .iter()
            .map(|l| {
                let mut qkv = t(l.q);
                qkv.extend(t(l.k));
                qkv.extend(t(l.v));
                let qkv_bias = l.q_bias.map(|q| {
                    let mut b = t(q);
                    b.extend(l.k_bias.map(t).unwrap_or_else(|| vec![0.0; c.kv_dim()]));
                    b.extend(l.v_bias.map(t).unwrap_or_else(|| vec![0.0; c.kv_dim()]));
                    b
                });
                let mut gate_up = t(l.gate);
                gate_up.extend(t(l.up));
                EngineLayer {
                    input_norm: t(l.input_norm),
                    qkv,
                    qkv_bias,
                    o: t(l.o),
                    o_bias: l.o_bias.map(t),
                    post_norm: t(l.post_norm),
                    gate_up,
                    down: t(l.down),
                }
            })
            .collect();
        let (cos_full, sin_full) = rope_tables(&c, c.max_seq_len);
        let (dh, half) = (c.head_dim(), c.head_dim() / 2);
        let halve = |full: Vec<f32>| -> Vec<f32> { full.chunks_exact(dh).flat_map(|r| r[..half].to_vec()).collect() };
        Engine {
            embed: t(layout.embed),
            head: t(layout.lm_head.unwrap_or(layout.embed)),
            head_rows: c.vocab_size,
            head_bias: None,
            scoring: false,
            final_norm: t(layout.final_norm),
            layers,
            cos: halve(cos_full),
            sin: halve(sin_full),
            threads: rayon::current_num_threads().max(1),
            config: c,
        }
    }

    /// Sets how many threads a forward pass may use (defaults to rayon's pool size).
    pub fn with_threads(mut self, threads: usize) -> Engine {
        self.threads = threads.max(1);
        self
    }

    /// Replaces the language-model head by a scoring head `[rows, d_model]` (+ bias): the
    /// engine of a reward model. Its outputs at every position are kept in the caches.
    pub fn with_scoring_head(mut self, head: Vec<f32>, bias: Vec<f32>, rows: usize) -> Engine {
        self.head = head;
        self.head_bias = Some(bias);
        self.head_rows = rows;
        self.scoring = true;
        self
    }

    /// Outputs per position of the head.
    pub fn head_rows(&self) -> usize {
        self.head_rows
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
        let (d, kv, f, v) = (c.d_model, c.kv_dim(), c.ffn_hidden, c.vocab_size);
        let (h, kvh, dh) = (c.n_heads, c.n_kv_heads, c.head_dim());
        let half = dh / 2;
        let group = h / kvh;
        let scale = 1.0 / (dh as f32).sqrt();
        let total: usize = tokens.iter().map(|t| t.len()).sum();
        let qkv_width = d + 2 * kv;
        // Row -> (sequence, position).
        let mut rows: Vec<(usize, usize)> = Vec::with_capacity(total);
        for (s, t) in tokens.iter().enumerate() {
            let start = caches[s].len;
            rows.extend((0..t.len()).map(|j| (s, start + j)));
        }
        let mut x = vec![0.0f32; total * d];
        for (r, &tok) in tokens.iter().flat_map(|t| t.iter()).enumerate() {
            let tok = (tok as usize).min(v - 1);
            x[r * d..(r + 1) * d].copy_from_slice(&self.embed[tok * d..(tok + 1) * d]);
        }
        let mut normed = vec![0.0f32; total * d];
        let mut qkv = vec![0.0f32; total * qkv_width];
        let mut attn = vec![0.0f32; total * d];
        let mut gate_up = vec![0.0f32; total * 2 * f];
        let mut act = vec![0.0f32; total * f];
        let max_len = rows.iter().map(|&(_, p)| p + 1).max().unwrap_or(1);
        let mut scores = vec![0.0f32; max_len];
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, d, &layer.input_norm, c.rms_eps, &mut normed);
            linear(&normed, total, d, &layer.qkv, qkv_width, &mut qkv, false, threads);
            if let Some(b) = &layer.qkv_bias {
                add_bias(&mut qkv, b);
            }
            // Rotary positions on q and k, then append k and v to the caches.
            for (r, &(s, pos)) in rows.iter().enumerate() {
                let row = &mut qkv[r * qkv_width..(r + 1) * qkv_width];
                let (cos, sin) = (
                    &self.cos[pos * half..(pos + 1) * half],
                    &self.sin[pos * half..(pos + 1) * half],
                );
                for head in row[..d + kv].chunks_exact_mut(dh) {
                    for i in 0..half {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + half] = b * cos[i] + a * sin[i];
                    }
                }
                caches[s].keys[li].extend_from_slice(&row[d..d + kv]);
                caches[s].values[li].extend_from_slice(&row[d + kv..]);
            }
            // Causal attention of each new row over its sequence's cache.
            for (r, &(s, pos)) in rows.iter().enumerate() {
                let keys = &caches[s].keys[li];
                let values = &caches[s].values[li];
                let q_row = &qkv[r * qkv_width..r * qkv_width + d];
                let out = &mut attn[r * d..(r + 1) * d];
                for head in 0..h {
                    let kvo = (head / group) * dh;
                    let q = &q_row[head * dh..(head + 1) * dh];
                    let mut max = f32::NEG_INFINITY;
                    for t in 0..=pos {
                        let k = &keys[t * kv + kvo..t * kv + kvo + dh];
                        let dot = dot(simd, q, k) * scale;
                        scores[t] = dot;
                        max = max.max(dot);
                    }
                    let mut sum = 0.0f32;
                    for s in scores[..=pos].iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let o = &mut out[head * dh..(head + 1) * dh];
                    o.fill(0.0);
                    for t in 0..=pos {
                        let p = scores[t] / sum;
                        let vrow = &values[t * kv + kvo..t * kv + kvo + dh];
                        for (o, &vv) in o.iter_mut().zip(vrow) {
                            *o += p * vv;
                        }
                    }
                }
            }
            linear(&attn, total, d, &layer.o, d, &mut x, true, threads);
            if let Some(b) = &layer.o_bias {
                add_bias(&mut x, b);
            }
            rms_norm_rows(&x, d, &layer.post_norm, c.rms_eps, &mut normed);
            linear(&normed, total, d, &layer.gate_up, 2 * f, &mut gate_up, false, threads);
            for (row, a) in gate_up.chunks_exact(2 * f).zip(act.chunks_exact_mut(f)) {
                let (g, u) = row.split_at(f);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            linear(&act, total, f, &layer.down, d, &mut x, true, threads);
        }
        for (s, t) in tokens.iter().enumerate() {
            caches[s].len += t.len();
        }
        // Logits of the wanted rows only (a scoring head computes every row and keeps them).
        let v = self.head_rows;
        let mut out = Vec::with_capacity(tokens.len());
        let mut row = 0;
        for (s, t) in tokens.iter().enumerate() {
            let (first, count) = match want[s] {
                _ if self.scoring => (row, t.len()),
                Want::Last if !t.is_empty() => (row + t.len() - 1, 1),
                Want::All => (row, t.len()),
                _ => (row, 0),
            };
            row += t.len();
            let mut normed_rows = vec![0.0f32; count * d];
            rms_norm_rows(
                &x[first * d..(first + count) * d],
                d,
                &self.final_norm,
                c.rms_eps,
                &mut normed_rows,
            );
            let mut logits = vec![0.0f32; count * v];
            linear(&normed_rows, count, d, &self.head, v, &mut logits, false, threads);
            if let Some(bias) = &self.head_bias {
                add_bias(&mut logits, bias);
            }
            if self.scoring {
                caches[s].scores.extend_from_slice(&logits);
            }
            out.push(logits);
        }
        out
    }
}
