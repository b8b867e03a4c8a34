//! Training on the CPU: the decoder's forward pass ([`super::forward`], from empty caches,
//! recording activations) and the backward pass written out by hand on host memory, for the
//! shapes of small models where burn's op-by-op autodiff spends most of its time outside the
//! matrix products (in a profile of burn's training step, element-wise ops on one thread,
//! copies and page faults took most of the time beside matrix products at ~37%).
//!
//! - Sequences are packed without padding: the linear layers see all tokens of a batch as one
//!   matrix; attention runs per sequence (its backward per head, on gathered heads).
//! - The batch is split across threads by token count; each thread runs forward and backward
//!   on its sequences with single-threaded matrix products, and the weight gradients are summed
//!   in thread order (deterministic for a given thread count).
//! - The loss is a callback on each sequence's logits (and optional scalar head), so supervised
//!   training, reward models and the RL losses share one engine.
//!
//! Gradients match burn's autodiff on the same model to float rounding (tested through
//! [`crate::backend::Backend`], which runs either).

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::cpu::decode::KvCache;
use crate::cpu::forward::{LayerActs, PassWeights, blocks, gather_columns};
use crate::cpu::layers::{Stacked, rms_norm, rms_norm_backward, rotate, swiglu_backward};
use crate::cpu::linalg::{dot, fast_exp, lane_max, lane_sum_exp, matmul, matmul_lhs_transposed, matmul_transposed};
use crate::weights::{HostTensor, Layout};

/// A scalar head read at every position: `h · weight + bias` (a value or reward head).
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarHead {
    pub weight: Vec<f32>,
    pub bias: f32,
}

/// What a loss sees of one sequence and where it writes its gradients.
pub struct SeqOutputs<'a> {
    /// `[len, vocab]` logits, when the language-model head is on.
    pub logits: Option<&'a [f32]>,
    /// `[len]` scalar-head outputs, when a scalar head is present.
    pub values: Option<&'a [f32]>,
    /// Gradient of the loss with respect to `logits` (zeroed before the call).
    pub dlogits: Option<&'a mut [f32]>,
    /// Gradient of the loss with respect to `values` (zeroed before the call).
    pub dvalues: Option<&'a mut [f32]>,
}

/// A loss over a batch of sequences, evaluated one sequence at a time (in parallel). It
/// returns that sequence's contribution to the batch loss, already normalised.
pub trait SequenceLoss: Sync {
    fn loss(&self, seq: usize, outputs: SeqOutputs<'_>) -> f64;
}

/// Gradients of every parameter, in [`Layout`] order, and of the scalar head.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub tensors: Vec<Vec<f32>>,
    pub head: Option<ScalarHead>,
}

impl Gradients {
    fn zeros(tensors: &[HostTensor], head: Option<&ScalarHead>) -> Gradients {
        Gradients {
            tensors: tensors.iter().map(|t| vec![0.0; t.data.len()]).collect(),
            head: head.map(|h| ScalarHead {
                weight: vec![0.0; h.weight.len()],
                bias: 0.0,
            }),
        }
    }

    fn add(&mut self, other: &Gradients) {
        for (a, b) in self.tensors.iter_mut().zip(&other.tensors) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        if let (Some(a), Some(b)) = (&mut self.head, &other.head) {
            for (x, y) in a.weight.iter_mut().zip(&b.weight) {
                *x += y;
            }
            a.bias += b.bias;
        }
    }
}

/// The model, ready for training steps: parameters borrowed from the trainer, the projections
/// stacked as the decoder stacks them.
pub struct TrainingPass<'a> {
    config: &'a ModelConfig,
    tensors: &'a [HostTensor],
    layout: Layout,
    head: Option<&'a ScalarHead>,
    /// Whether the language-model head (and its logits) is computed.
    lm: bool,
    stacked: Stacked,
}

fn accumulate_head(head: &[f32], x: &mut [f32], stride: usize, base: usize, t: usize, offset: usize, width: usize) {
    for (i, row) in head.chunks_exact(width).enumerate().take(t) {
        let r = base + i;
        for (a, b) in x[r * stride + offset..r * stride + offset + width].iter_mut().zip(row) {
            *a += b;
        }
    }
}

fn column_sums(x: &[f32], width: usize, out: &mut [f32]) {
    for row in x.chunks_exact(width) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

impl<'a> TrainingPass<'a> {
    /// `tensors` in the [`Layout`] of `config`.
    pub fn new(
        config: &'a ModelConfig,
        tensors: &'a [HostTensor],
        head: Option<&'a ScalarHead>,
        lm: bool,
    ) -> TrainingPass<'a> {
        let layout = Layout::new(config);
        let stacked = Stacked::new(config, &layout, tensors);
        TrainingPass {
            config,
            tensors,
            layout,
            head,
            lm,
            stacked,
        }
    }

    /// The batch loss and the gradients of every parameter. Sequences longer than the model's
    /// context are refused by the caller; each must be non-empty.
    pub fn loss_and_gradients(
        &self,
        sequences: &[&[u32]],
        loss: &dyn SequenceLoss,
        threads: usize,
    ) -> (f64, Gradients) {
        let threads = threads.max(1).min(sequences.len().max(1));
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        let target = total.div_ceil(threads);
        let mut bounds = vec![0];
        let mut acc = 0;
        for (i, s) in sequences.iter().enumerate() {
            acc += s.len();
            if acc >= target * bounds.len() && i + 1 < sequences.len() && bounds.len() < threads {
                bounds.push(i + 1);
            }
        }
        bounds.push(sequences.len());
        let parts: Vec<(f64, Gradients)> = bounds
            .par_windows(2)
            .map(|w| {
                pulp::Arch::new().dispatch(Group {
                    model: self,
                    sequences: &sequences[w[0]..w[1]],
                    first: w[0],
                    loss,
                })
            })
            .collect();
        let mut total_loss = 0.0;
        let mut grads = Gradients::zeros(self.tensors, self.head);
        for (l, g) in &parts {
            total_loss += l;
            grads.add(g);
        }
        (total_loss, grads)
    }
}

struct Group<'m, 'a, 's> {
    model: &'m TrainingPass<'a>,
    sequences: &'s [&'s [u32]],
    first: usize,
    loss: &'s dyn SequenceLoss,
}

impl WithSimd for Group<'_, '_, '_> {
    type Output = (f64, Gradients);

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        self.model.group(simd, self.sequences, self.first, self.loss)
    }
}

impl TrainingPass<'_> {
    #[inline(always)]
    fn group<S: Simd>(&self, simd: S, sequences: &[&[u32]], first: usize, loss: &dyn SequenceLoss) -> (f64, Gradients) {
        let c = self.config;
        let (d, kv, f, v) = (c.d_model, c.kv_dim(), c.ffn_hidden, c.vocab_size);
        let (h, kvh, dh) = (c.n_heads, c.n_kv_heads, c.head_dim());
        let group = h / kvh;
        let qw = d + 2 * kv;
        let scale = 1.0 / (dh as f32).sqrt();
        let eps = c.rms_eps;
        let n: usize = sequences.iter().map(|s| s.len()).sum();
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for s in sequences {
            offsets.push(offsets.last().copied().unwrap_or(0) + s.len());
        }
        let w = |slot: usize| self.tensors[slot].data.as_slice();
        let embed_slot = self.layout.embed;
        // ---- forward: the decoder's, from empty caches, recording activations ----
        let tokens: Vec<usize> = sequences
            .iter()
            .flat_map(|s| s.iter().map(|&t| (t as usize).min(v - 1)))
            .collect();
        let mut caches: Vec<KvCache> = sequences.iter().map(|_| KvCache::new(c.n_layers)).collect();
        let mut acts: Vec<LayerActs> = Vec::with_capacity(self.layout.layers.len());
        let weights = PassWeights {
            config: c,
            layout: &self.layout,
            tensors: self.tensors,
            stacked: &self.stacked,
        };
        let x = blocks(simd, weights, &mut caches, sequences, 1, Some(&mut acts));
        drop(caches);
        let mut rf = vec![0.0f32; n];
        let mut hidden = vec![0.0f32; n * d];
        rms_norm(&x, d, w(self.layout.final_norm), eps, &mut hidden, Some(&mut rf));
        // ---- heads and loss ----
        let lm_slot = self.layout.lm_head.unwrap_or(embed_slot);
        let mut logits = Vec::new();
        if self.lm {
            logits = vec![0.0f32; n * v];
            matmul_transposed(&hidden, n, d, w(lm_slot), v, &mut logits, false, 1);
        }
        let values: Option<Vec<f32>> = self.head.map(|hd| {
            hidden
                .chunks_exact(d)
                .map(|row| dot(simd, row, &hd.weight) + hd.bias)
                .collect()
        });
        let mut dlogits = vec![0.0f32; if self.lm { n * v } else { 0 }];
        let mut dvalues = vec![0.0f32; if self.head.is_some() { n } else { 0 }];
        let mut total_loss = 0.0f64;
        for s in 0..sequences.len() {
            let (a, b) = (offsets[s], offsets[s + 1]);
            let outputs = SeqOutputs {
                logits: self.lm.then(|| &logits[a * v..b * v]),
                values: values.as_ref().map(|vals| &vals[a..b]),
                dlogits: if self.lm {
                    Some(&mut dlogits[a * v..b * v])
                } else {
                    None
                },
                dvalues: if self.head.is_some() {
                    Some(&mut dvalues[a..b])
                } else {
                    None
                },
            };
            total_loss += loss.loss(first + s, outputs);
        }
        // ---- backward ----
        let mut grads = Gradients::zeros(self.tensors, self.head);
        let mut dh_ = vec![0.0f32; n * d];
        if self.lm {
            matmul(&dlogits, n, v, w(lm_slot), d, &mut dh_, false, 1);
            matmul_lhs_transposed(&dlogits, n, v, &hidden, d, &mut grads.tensors[lm_slot], true, 1);
        }
        if let (Some(hd), Some(gh)) = (self.head, &mut grads.head) {
            for ((row, dh_row), &dv) in hidden.chunks_exact(d).zip(dh_.chunks_exact_mut(d)).zip(&dvalues) {
                for j in 0..d {
                    dh_row[j] += dv * hd.weight[j];
                    gh.weight[j] += dv * row[j];
                }
                gh.bias += dv;
            }
        }
        let mut dx = vec![0.0f32; n * d];
        rms_norm_backward(
            &dh_,
            &x,
            &rf,
            w(self.layout.final_norm),
            d,
            &mut dx,
            &mut grads.tensors[self.layout.final_norm],
        );
        for (li, l) in self.layout.layers.iter().enumerate().rev() {
            let acts = &acts[li];
            // MLP: x_out = x_mid + act · downᵀ
            matmul_lhs_transposed(&dx, n, d, &acts.act, f, &mut grads.tensors[l.down], true, 1);
            let mut dact = vec![0.0f32; n * f];
            matmul(&dx, n, d, w(l.down), f, &mut dact, false, 1);
            let mut dgu = vec![0.0f32; n * 2 * f];
            swiglu_backward(&acts.gate_up, &dact, f, &mut dgu);
            let stacked = &self.stacked.layers[li];
            let mut dgate_up_w = vec![0.0f32; 2 * f * d];
            matmul_lhs_transposed(&dgu, n, 2 * f, &acts.m, d, &mut dgate_up_w, false, 1);
            for (dst, src) in [(l.gate, 0), (l.up, f * d)] {
                for (g, s) in grads.tensors[dst].iter_mut().zip(&dgate_up_w[src..src + f * d]) {
                    *g += s;
                }
            }
            let mut dm = vec![0.0f32; n * d];
            matmul(&dgu, n, 2 * f, &stacked.gate_up, d, &mut dm, false, 1);
            let mut dx_mid = dx.clone();
            rms_norm_backward(
                &dm,
                &acts.x_mid,
                &acts.r2,
                w(l.post_norm),
                d,
                &mut dx_mid,
                &mut grads.tensors[l.post_norm],
            );
            // Attention: x_mid = x_in + o · oᵀ
            matmul_lhs_transposed(&dx_mid, n, d, &acts.o, d, &mut grads.tensors[l.o], true, 1);
            if let Some(b) = l.o_bias {
                column_sums(&dx_mid, d, &mut grads.tensors[b]);
            }
            let mut do_ = vec![0.0f32; n * d];
            matmul(&dx_mid, n, d, w(l.o), d, &mut do_, false, 1);
            let mut dqkv = vec![0.0f32; n * qw];
            for (s, seq) in sequences.iter().enumerate() {
                let (t, base) = (seq.len(), offsets[s]);
                for hh in 0..h {
                    let p = &acts.probs[s * h + hh];
                    let (qo, ko, vo) = (hh * dh, d + (hh / group) * dh, d + kv + (hh / group) * dh);
                    let qh = gather_columns(&acts.qkv, qw, base, t, qo, dh);
                    let kh = gather_columns(&acts.qkv, qw, base, t, ko, dh);
                    let vh = gather_columns(&acts.qkv, qw, base, t, vo, dh);
                    let doh = gather_columns(&do_, d, base, t, qo, dh);
                    // dV = Pᵀ dO; dP = dO Vᵀ; dS = P ∘ (dP - rowsum(P ∘ dP)) · scale;
                    // dQ = dS K; dK = dSᵀ Q.
                    let mut dvh = vec![0.0f32; t * dh];
                    matmul_lhs_transposed(p, t, t, &doh, dh, &mut dvh, false, 1);
                    let mut ds = vec![0.0f32; t * t];
                    matmul_transposed(&doh, t, dh, &vh, t, &mut ds, false, 1);
                    for i in 0..t {
                        let (prow, drow) = (&p[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
                        let weighted = dot(simd, &prow[..=i], &drow[..=i]);
                        for j in 0..=i {
                            drow[j] = prow[j] * (drow[j] - weighted) * scale;
                        }
                        drow[i + 1..].fill(0.0);
                    }
                    let mut dqh = vec![0.0f32; t * dh];
                    matmul(&ds, t, t, &kh, dh, &mut dqh, false, 1);
                    let mut dkh = vec![0.0f32; t * dh];
                    matmul_lhs_transposed(&ds, t, t, &qh, dh, &mut dkh, false, 1);
                    accumulate_head(&dqh, &mut dqkv, qw, base, t, qo, dh);
                    accumulate_head(&dkh, &mut dqkv, qw, base, t, ko, dh);
                    accumulate_head(&dvh, &mut dqkv, qw, base, t, vo, dh);
                }
                // Rotary positions backward: rotate the q and k gradients back.
                for pidx in 0..t {
                    let row = &mut dqkv[(base + pidx) * qw..(base + pidx + 1) * qw];
                    rotate(&mut row[..d + kv], dh, &self.stacked, pidx, true);
                }
            }
            let mut dqkv_w = vec![0.0f32; qw * d];
            matmul_lhs_transposed(&dqkv, n, qw, &acts.a, d, &mut dqkv_w, false, 1);
            for (dst, src, rows) in [(l.q, 0, d), (l.k, d * d, kv), (l.v, (d + kv) * d, kv)] {
                for (g, s) in grads.tensors[dst].iter_mut().zip(&dqkv_w[src..src + rows * d]) {
                    *g += s;
                }
            }
            if l.q_bias.is_some() {
                let mut sums = vec![0.0f32; qw];
                column_sums(&dqkv, qw, &mut sums);
                for (slot, range) in [(l.q_bias, 0..d), (l.k_bias, d..d + kv), (l.v_bias, d + kv..qw)] {
                    if let Some(slot) = slot {
                        for (g, s) in grads.tensors[slot].iter_mut().zip(&sums[range]) {
                            *g += s;
                        }
                    }
                }
            }
            let mut da = vec![0.0f32; n * d];
            matmul(&dqkv, n, qw, &stacked.qkv, d, &mut da, false, 1);
            dx = dx_mid;
            rms_norm_backward(
                &da,
                &acts.x_in,
                &acts.r1,
                w(l.input_norm),
                d,
                &mut dx,
                &mut grads.tensors[l.input_norm],
            );
        }
        for (r, &tok) in tokens.iter().enumerate() {
            let g = &mut grads.tensors[embed_slot][tok * d..(tok + 1) * d];
            for (gg, &dv) in g.iter_mut().zip(&dx[r * d..(r + 1) * d]) {
                *gg += dv;
            }
        }
        (total_loss, grads)
    }
}

/// Next-token cross-entropy on the trained positions of each sequence, averaged over all
/// trained positions of the batch.
pub struct CrossEntropy<'a> {
    /// Per sequence: the tokens (inputs are `tokens[..n-1]`, targets `tokens[1..]`).
    pub tokens: &'a [Vec<u32>],
    /// Per sequence: the index of the first trained target token.
    pub first_trained: &'a [usize],
    /// All trained positions of the batch (the normaliser).
    pub count: usize,
}

impl SequenceLoss for CrossEntropy<'_> {
    fn loss(&self, seq: usize, outputs: SeqOutputs<'_>) -> f64 {
        let (Some(logits), Some(dlogits)) = (outputs.logits, outputs.dlogits) else {
            return 0.0;
        };
        let tokens = &self.tokens[seq];
        let v = logits.len() / (tokens.len() - 1).max(1);
        let norm = 1.0 / self.count.max(1) as f32;
        let mut total = 0.0f64;
        for p in 0..tokens.len() - 1 {
            if p + 1 < self.first_trained[seq] {
                continue;
            }
            let row = &logits[p * v..(p + 1) * v];
            let target = tokens[p + 1] as usize;
            let max = lane_max(row);
            let log_z = max + lane_sum_exp(row, max).ln();
            total += f64::from(log_z - row[target]) * f64::from(norm);
            let drow = &mut dlogits[p * v..(p + 1) * v];
            for (dl, &l) in drow.iter_mut().zip(row) {
                *dl = fast_exp(l - log_z) * norm;
            }
            drow[target] -= norm;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_matches_a_hand_computation_on_the_trained_positions_only() {
        // Tokens 0 1 2, the trace starting at index 2: only the prediction of token 2 (read at
        // position 1) is trained. Its logits (0, ln 2, 0) give log Z = ln 4 and a loss of ln 4.
        let tokens = vec![vec![0u32, 1, 2]];
        let loss = CrossEntropy {
            tokens: &tokens,
            first_trained: &[2],
            count: 1,
        };
        let logits = [5.0f32, -1.0, 0.0, 0.0, std::f32::consts::LN_2, 0.0];
        let mut dlogits = [0.0f32; 6];
        let value = loss.loss(
            0,
            SeqOutputs {
                logits: Some(&logits),
                values: None,
                dlogits: Some(&mut dlogits),
                dvalues: None,
            },
        );
        assert!((value - 4f64.ln()).abs() < 1e-6, "{value}");
        let expected = [0.0f32, 0.0, 0.0, 0.25, 0.5, -0.75];
        for (got, want) in dlogits.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{dlogits:?}");
        }
    }
}
