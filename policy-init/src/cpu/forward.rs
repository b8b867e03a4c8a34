//! The transformer's forward pass on the CPU, written once for decoding and training: the
//! embedding and every block (RMSNorm, stacked q/k/v projection, rotary positions, causal
//! attention over the sequence's KV cache, output projection, RMSNorm, SwiGLU MLP), for the
//! new tokens of several sequences at once. Decoding appends one or a few tokens to caches
//! that already hold the prefix; training runs whole sequences from empty caches and records
//! what the backward pass reads ([`LayerActs`]). The final norm and the heads are the
//! callers': decoding reads the rows it wants, training every row.

use pulp::Simd;

use crate::config::ModelConfig;
use crate::cpu::decode::KvCache;
use crate::cpu::layers::{Stacked, add_bias, rms_norm, rotate, swiglu};
use crate::cpu::linalg::{dot, fast_exp, lane_max, lane_sum, linear, matmul, matmul_transposed, weighted_rows};
use crate::weights::{HostTensor, Layout};

/// From this many new rows of a sequence on, its attention runs as matrix products per head.
const MATRIX_ATTENTION_ROWS: usize = 8;

/// The buffer's contents, leaving a zeroed buffer of the same length in its place.
fn fresh(buffer: &mut Vec<f32>) -> Vec<f32> {
    std::mem::replace(buffer, vec![0.0; buffer.len()])
}

/// A softmax in place.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let max = lane_max(x);
    for v in x.iter_mut() {
        *v = fast_exp(*v - max);
    }
    let inv = 1.0 / lane_sum(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Columns `offset..offset + width` of rows `first..first + rows` of a row-major `[_, stride]`
/// matrix, as a contiguous `[rows, width]` matrix (one attention head's q, k or v).
pub fn gather_columns(x: &[f32], stride: usize, first: usize, rows: usize, offset: usize, width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * width);
    for r in first..first + rows {
        out.extend_from_slice(&x[r * stride + offset..r * stride + offset + width]);
    }
    out
}

/// The weights one pass reads: the parameters in [`Layout`] order and their stacked form.
#[derive(Clone, Copy)]
pub struct PassWeights<'a> {
    pub config: &'a ModelConfig,
    pub layout: &'a Layout,
    pub tensors: &'a [HostTensor],
    pub stacked: &'a Stacked,
}

impl PassWeights<'_> {
    pub fn tensor(&self, slot: usize) -> &[f32] {
        &self.tensors[slot].data
    }
}

/// What training's backward pass reads of one layer, for the rows of a pass.
pub struct LayerActs {
    /// The residual stream entering the layer.
    pub x_in: Vec<f32>,
    /// The input norm's `1 / rms` per row, and its output.
    pub r1: Vec<f32>,
    pub a: Vec<f32>,
    /// Stacked q, k, v per row, after the rotary positions.
    pub qkv: Vec<f32>,
    /// Per sequence, per head: the attention probabilities of its new rows over its cache,
    /// `[new, cached + new]` (causal, zero above the diagonal); `[t, t]` from an empty cache.
    pub probs: Vec<Vec<f32>>,
    /// The attention output before the output projection.
    pub o: Vec<f32>,
    /// The residual stream after attention, the post-attention norm's `1 / rms` and output.
    pub x_mid: Vec<f32>,
    pub r2: Vec<f32>,
    pub m: Vec<f32>,
    /// Stacked gate and up projections, and `silu(gate) · up`.
    pub gate_up: Vec<f32>,
    pub act: Vec<f32>,
}

/// Embeds `tokens[s]` and runs every block, each new token attending to sequence `s`'s cache
/// (which the pass extends). Returns the residual stream after the last block, `[rows, d]`,
/// rows in sequence order. With `record`, pushes each layer's [`LayerActs`]. Matrix products
/// use up to `threads` threads.
#[inline(always)]
pub fn blocks<S: Simd>(
    simd: S,
    w: PassWeights<'_>,
    caches: &mut [KvCache],
    tokens: &[&[u32]],
    threads: usize,
    mut record: Option<&mut Vec<LayerActs>>,
) -> Vec<f32> {
    let c = w.config;
    let (d, kv, f, v) = (c.d_model, c.kv_dim(), c.ffn_hidden, c.vocab_size);
    let (h, kvh, dh) = (c.n_heads, c.n_kv_heads, c.head_dim());
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
    let embed = w.tensor(w.layout.embed);
    let mut x = vec![0.0f32; total * d];
    for (r, &tok) in tokens.iter().flat_map(|t| t.iter()).enumerate() {
        let tok = (tok as usize).min(v - 1);
        x[r * d..(r + 1) * d].copy_from_slice(&embed[tok * d..(tok + 1) * d]);
    }
    let recording = record.is_some();
    let rows_if = |n: usize| if recording { n } else { 0 };
    let mut normed = vec![0.0f32; total * d];
    let mut r1 = vec![0.0f32; rows_if(total)];
    let mut r2 = vec![0.0f32; rows_if(total)];
    let mut qkv = vec![0.0f32; total * qkv_width];
    let mut attn = vec![0.0f32; total * d];
    let mut gate_up = vec![0.0f32; total * 2 * f];
    let mut act = vec![0.0f32; total * f];
    let max_len = rows.iter().map(|&(_, p)| p + 1).max().unwrap_or(1);
    let mut scores = vec![0.0f32; max_len];
    for (li, (l, stacked)) in w.layout.layers.iter().zip(&w.stacked.layers).enumerate() {
        let x_in = recording.then(|| x.clone());
        rms_norm(
            &x,
            d,
            w.tensor(l.input_norm),
            c.rms_eps,
            &mut normed,
            recording.then_some(r1.as_mut_slice()),
        );
        linear(&normed, total, d, &stacked.qkv, qkv_width, &mut qkv, false, threads);
        if let Some(b) = &stacked.qkv_bias {
            add_bias(&mut qkv, b);
        }
        // Rotary positions on q and k, then append k and v to the caches.
        for (r, &(s, pos)) in rows.iter().enumerate() {
            let row = &mut qkv[r * qkv_width..(r + 1) * qkv_width];
            rotate(&mut row[..d + kv], dh, w.stacked, pos, false);
            caches[s].keys[li].extend_from_slice(&row[d..d + kv]);
            caches[s].values[li].extend_from_slice(&row[d + kv..]);
        }
        // One entry per sequence and head, filled by whichever kernel attends it.
        let mut probs: Vec<Vec<f32>> = vec![Vec::new(); if recording { tokens.len() * h } else { 0 }];
        // Causal attention of each new row over its sequence's cache: as matrix products per
        // head for many new rows (training, a prompt), row by row for a few (decoding).
        let mut base = 0;
        for (s, t) in tokens.iter().enumerate() {
            let cached = caches[s].layer(li, kv);
            let (keys, values) = (cached.keys, cached.values);
            let width = keys.len();
            let (new, start) = (t.len(), width - t.len());
            for head in 0..h {
                let (qo, kvo) = (head * dh, (head / group) * dh);
                let record_to = if recording {
                    Some(&mut probs[s * h + head])
                } else {
                    None
                };
                if new >= MATRIX_ATTENTION_ROWS {
                    let q = gather_columns(&qkv, qkv_width, base, new, qo, dh);
                    let (k, vv) = (keys.columns(width, kvo, dh), values.columns(width, kvo, dh));
                    let mut p = vec![0.0f32; new * width];
                    matmul_transposed(&q, new, dh, &k, width, &mut p, false, 1);
                    for (j, row) in p.chunks_exact_mut(width).enumerate() {
                        let (live, masked) = row.split_at_mut(start + j + 1);
                        for v in live.iter_mut() {
                            *v *= scale;
                        }
                        softmax(live);
                        masked.fill(0.0);
                    }
                    let mut o = vec![0.0f32; new * dh];
                    matmul(&p, new, width, &vv, dh, &mut o, false, 1);
                    for (j, row) in o.chunks_exact(dh).enumerate() {
                        attn[(base + j) * d + qo..(base + j) * d + qo + dh].copy_from_slice(row);
                    }
                    if let Some(to) = record_to {
                        *to = p;
                    }
                    continue;
                }
                let mut record_to = record_to.map(|to| {
                    *to = vec![0.0f32; new * width];
                    to
                });
                for j in 0..new {
                    let (r, pos) = (base + j, start + j);
                    let q = &qkv[r * qkv_width + qo..r * qkv_width + qo + dh];
                    for t in 0..=pos {
                        scores[t] = dot(simd, q, keys.row(t, kvo, dh)) * scale;
                    }
                    softmax(&mut scores[..=pos]);
                    let o = &mut attn[r * d + qo..r * d + qo + dh];
                    weighted_rows(simd, &scores[..=pos], |t| values.row(t, kvo, dh), o);
                    if let Some(to) = record_to.as_deref_mut() {
                        to[j * width..j * width + pos + 1].copy_from_slice(&scores[..=pos]);
                    }
                }
            }
            base += new;
        }
        linear(&attn, total, d, w.tensor(l.o), d, &mut x, true, threads);
        if let Some(b) = l.o_bias {
            add_bias(&mut x, w.tensor(b));
        }
        let x_mid = recording.then(|| x.clone());
        // Recorded buffers move into the record and are replaced by fresh ones (every pass
        // overwrites them whole), rather than copied.
        let a = recording.then(|| fresh(&mut normed));
        rms_norm(
            &x,
            d,
            w.tensor(l.post_norm),
            c.rms_eps,
            &mut normed,
            recording.then_some(r2.as_mut_slice()),
        );
        linear(&normed, total, d, &stacked.gate_up, 2 * f, &mut gate_up, false, threads);
        swiglu(&gate_up, f, &mut act);
        linear(&act, total, f, w.tensor(l.down), d, &mut x, true, threads);
        if let (Some(acts), Some(x_in), Some(x_mid), Some(a)) = (record.as_deref_mut(), x_in, x_mid, a) {
            acts.push(LayerActs {
                x_in,
                r1: fresh(&mut r1),
                a,
                qkv: fresh(&mut qkv),
                probs,
                o: fresh(&mut attn),
                x_mid,
                r2: fresh(&mut r2),
                m: fresh(&mut normed),
                gate_up: fresh(&mut gate_up),
                act: fresh(&mut act),
            });
        }
    }
    for (s, t) in tokens.iter().enumerate() {
        caches[s].len += t.len();
    }
    x
}
